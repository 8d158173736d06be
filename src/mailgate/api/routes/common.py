"""What the API's route modules share: the error replies and how OpenAPI describes them,
validation errors that name the field the way configuration errors do, PATCH models made from
the configuration's own sections, and the Admin of the running node.

A request the API refuses as invalid gets 422 with `{"detail", "errors": [{"field",
"message"}]}` whether FastAPI's validation, the configuration's validation or a route's own
check refused it, so a client (and the web interface) reads every refusal the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from functools import cache
from typing import Annotated, Any, cast

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from mailgate.admin.service import Admin
from mailgate.config.service import Edit
from mailgate.config.service import set_values as _set_values


class FieldProblem(BaseModel):
    field: str = Field(description='The setting or parameter, e.g. "main.relayhost.port".')
    message: str


class Problem(BaseModel):
    """Every error reply. `errors` is set for invalid requests (422)."""

    detail: str
    errors: list[FieldProblem] = Field(
        default_factory=list, description="One entry per bad field (422 only)."
    )


def _reply(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


# Documented on every route: authentication and roles apply everywhere, and any parameter or
# body can be invalid.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _reply("The body could not be read: not UTF-8 text."),
    401: _reply("Not logged in: no session cookie or API token, or an unknown one."),
    403: _reply(
        "Not allowed: an auditor changes nothing; a change with the session cookie "
        "needs the X-CSRF-Token header."
    ),
    422: _reply("Invalid request: `errors` names each bad field; nothing was changed."),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _reply("No such object.")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _reply("The configuration changed while this change was being saved; try again.")
}


class Invalid(Exception):
    """A request a route refuses itself: 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def problem(status: int, detail: str, errors: Sequence[tuple[str, str]] = ()) -> JSONResponse:
    body = Problem(detail=detail, errors=[FieldProblem(field=f, message=m) for f, m in errors])
    return JSONResponse(body.model_dump(), status_code=status)


def _field_name(loc: Sequence[int | str], prefix: str) -> str:
    """A Pydantic error location as a configuration field name: ("body", "relayhost", "port")
    under prefix "main" -> "main.relayhost.port"; ("query", "limit") -> "limit"."""
    where, *rest = list(loc) or ["body"]
    name = prefix if where == "body" else ""
    for part in rest:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part.startswith("function-") or part[:1].isupper():
            continue  # validator wrappers and union member tags are no field names
        else:
            name += f".{part}" if name else part
    return name or prefix or str(where)


def describe_validation(exc: RequestValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            out.append(("body", f"not valid JSON ({error.get('ctx', {}).get('error', '')})"))
            continue
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((_field_name(error.get("loc", ()), prefix), message))
    return out


def _nul_in(value: Any, name: str) -> str | None:
    """The field (as _field_name names it) of the first text holding a NUL, or None."""
    if isinstance(value, str):
        return name if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{name}.{key}" if name else str(key)
            if "\x00" in str(key):
                return inner
            found = _nul_in(item, inner)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_in(item, f"{name}[{index}]")
            if found is not None:
                return found
    return None


async def _nul_field(request: Request, prefix: str) -> str | None:
    """Where a request carries a NUL character: no setting, name or search text has one, and
    PostgreSQL cannot store or compare text with one (the query would fail: a 500)."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if "\x00" in str(value) or "\x00" in name:
            return name
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.body()  # kept by the request: the handler reads it again
        if b"\\u0000" in body or b"\x00" in body:
            try:
                return _nul_in(json.loads(body), prefix)
            except ValueError:
                return None  # not JSON: the handler says so
    return None


@cache
def api_route(prefix: str = "") -> type[APIRoute]:
    """A route class whose invalid requests get the API's 422 reply, body fields named under
    `prefix` (the configuration section the body stands for)."""

    class Route(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                nul = await _nul_field(request, prefix)
                if nul is not None:
                    return problem(422, "invalid request; nothing was changed",
                                   [(nul, "the NUL character is not allowed")])  # fmt: skip
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return problem(
                        422,
                        "invalid request; nothing was changed",
                        describe_validation(exc, prefix),
                    )
                except Invalid as exc:
                    return problem(
                        422, "invalid request; nothing was changed", [(exc.field, exc.message)]
                    )

            return run

    Route.__name__ = f"ApiRoute[{prefix}]" if prefix else "ApiRoute"
    return Route


def _admin(request: Request) -> Admin:
    return cast(Admin, request.app.state.admin)


AdminOf = Annotated[Admin, Depends(_admin)]


class Result(BaseModel):
    """What an action did, in words (as the CLI prints it)."""

    result: str


# -- PATCH models ----------------------------------------------------------------------------


class Patch(BaseModel):
    """Base of the PATCH models: every field optional, unknown fields refused. Sections given
    are merged field by field; any other value (a list, a next hop) replaces the old one."""

    # Not-a-number and infinity are no setting's value (and JSON cannot store them).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def optional(info: FieldInfo, kind: Any = None, alias: str | None = None) -> tuple[Any, Any]:
    """A PATCH field for a model field: its type, constraints and validators, not required."""
    annotation: Any = info.annotation if kind is None else kind
    if kind is None and info.metadata:
        annotation = Annotated.__class_getitem__((annotation, *info.metadata))  # type: ignore[attr-defined]
    return annotation, Field(
        None, alias=alias, description=info.description, json_schema_extra=_no_default
    )


def _no_default(schema: dict[str, Any]) -> None:
    # A left-out field is "unchanged", not null: the document must not claim a null default
    # for a field that cannot be null.
    schema.pop("default", None)


@cache
def patch_model(model: type[BaseModel], exclude: frozenset[str] = frozenset()) -> type[Patch]:
    """A model with the fields of `model` (constraints and validators kept), each optional;
    sub-sections become PATCH models too. Cross-field checks stay with the whole
    configuration, which is validated again before anything is saved."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        if key in exclude:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields[key] = optional(info, patch_model(annotation))
        else:
            fields[key] = optional(info)
    return create_model(
        f"{model.__name__}Patch",
        __base__=Patch,
        __doc__=f"Changes to {model.__name__}.",
        **fields,
    )


def patch_values(patch: BaseModel) -> dict[str, Any]:
    """The fields a PATCH body set, as configuration data (sub-sections not descended)."""
    return {
        key: patch.model_dump(mode="json", include={key})[key]
        for key in type(patch).model_fields
        if key in patch.model_fields_set
    }


def section_changes(patch: Patch, section: str) -> list[tuple[str, dict[str, Any]]]:
    """(dotted section, {field: value}) for every section a PATCH body touches."""
    out: list[tuple[str, dict[str, Any]]] = []
    values: dict[str, Any] = {}
    for key in type(patch).model_fields:
        if key not in patch.model_fields_set:
            continue
        value = getattr(patch, key)
        if isinstance(value, Patch):
            out += section_changes(value, f"{section}.{key}")
        else:
            values[key] = patch.model_dump(mode="json", include={key})[key]
    return [(section, values), *out] if values else out


def set_sections(changes: list[tuple[str, dict[str, Any]]]) -> Edit:
    """One edit setting fields in several sections (validated and saved together)."""
    parts = [_set_values(section, values) for section, values in changes]

    def edit(data: dict[str, Any]) -> None:
        for part in parts:
            part(data)

    return edit
