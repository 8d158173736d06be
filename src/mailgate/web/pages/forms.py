"""Settings forms: fields made from the configuration model (its descriptions are the help
texts), the submitted values read back, and a refused change's errors ("field.path: message")
put next to the fields they name.

A field's `name` is its configuration path ("main.relayhost.port"), also the form input's name,
so an error line finds its field without a table per form.
"""

from __future__ import annotations

import enum
import re
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from starlette.datastructures import FormData

from mailgate.web.pages.common import text

Kind = Literal["text", "number", "checkbox", "select", "radio", "lines", "password"]


@dataclass(slots=True)
class FormField:
    name: str
    label: str
    kind: Kind = "text"
    help: str = ""
    value: Any = None
    choices: list[tuple[str, str]] = field(default_factory=list)  # (value, label)
    optional: bool = False  # an empty input means None
    error: str = ""
    typed: list[Any] = field(default_factory=list)  # the choices' own values (ints, enums)

    @property
    def id(self) -> str:
        return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.name)

    @property
    def input_value(self) -> str:
        """The value as the input shows it."""
        if self.value is None:
            return ""
        if self.kind == "lines":
            return "\n".join(str(v) for v in self.value)
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, float) and self.value.is_integer():
            return str(int(self.value))
        return str(self.value)

    @property
    def shown(self) -> str:
        """The value as read-only text."""
        if self.kind == "checkbox":
            return "On" if self.value else "Off"
        if self.kind in ("select", "radio"):
            for value, label in self.choices:
                if value == self.input_value:
                    return label
        if self.kind == "lines":
            return ", ".join(str(v) for v in self.value or []) or "(none)"
        return self.input_value or "(not set)"

    def read(self, form: FormData) -> Any:
        """The submitted value, typed where the form knows the type; anything else goes to
        the model as given, so its validation names the field."""
        raw = text(form, self.name)
        if self.kind == "checkbox":
            return self.name in form
        if self.kind == "lines":
            return [line.strip() for line in raw.splitlines() if line.strip()]
        raw = raw.strip()
        if raw == "" and self.optional:
            return None
        if self.kind in ("select", "radio"):
            for value, _ in self.choices:
                if value == raw:
                    return self._typed_choice(value)
        return raw

    def _typed_choice(self, value: str) -> Any:
        for original in self.typed:
            if str(original) == value:
                return original
        return value


def _humanize(name: str) -> str:
    words = name.replace("_", " ").strip()
    out = words[:1].upper() + words[1:]
    for short in ("tls", "dns", "mx", "ip", "url", "spf", "dkim", "dmarc"):
        out = re.sub(rf"\b{short}\b", short.upper(), out, flags=re.IGNORECASE)
    return out


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def model_fields(
    model: type[BaseModel],
    prefix: str,
    values: dict[str, Any],
    *,
    only: list[str] | None = None,
    skip: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    choice_labels: dict[str, dict[str, str]] | None = None,
    kinds: dict[str, Kind] | None = None,
) -> list[FormField]:
    """Fields for the plain settings of a model section (nested sections are left out)."""
    labels = labels or {}
    choice_labels = choice_labels or {}
    kinds = kinds or {}
    out: list[FormField] = []
    for name in only or list(model.model_fields):
        if name in skip:
            continue
        info = model.model_fields[name]
        annotation, optional = _unwrap(info.annotation)
        originals: list[Any] = []
        kind: Kind
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        if annotation is bool:
            kind = "checkbox"
        elif annotation in (int, float):
            kind = "number"
        elif get_origin(annotation) is Literal:
            kind, originals = "select", list(get_args(annotation))
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            kind, originals = "select", [m.value for m in annotation]
        elif get_origin(annotation) is list:
            kind = "lines"
        else:
            kind = "text"
        kind = kinds.get(name, kind)
        path = f"{prefix}.{name}" if prefix else name
        names = choice_labels.get(name, {})
        choices = [(str(v), names.get(str(v), _humanize(str(v)))) for v in originals]
        if optional and choices:
            choices.insert(0, ("", names.get("", "(default)")))
        made = FormField(
            name=path,
            label=labels.get(name, _humanize(name)),
            kind=kind,
            help=info.description or "",
            value=values.get(name),
            choices=choices,
            optional=optional,
            typed=originals,
        )
        out.append(made)
    return out


def read_all(fields: list[FormField], form: FormData) -> dict[str, Any]:
    """{field name: submitted value}; the fields keep what was typed, for a re-rendered form."""
    values = {}
    for f in fields:
        values[f.name] = f.read(form)
        f.value = values[f.name]
    return values


def relative(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The values under `prefix.`, keyed by the rest of their path."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in values.items() if k.startswith(start)}


_INDEX = re.compile(r"\[\d+\]")


def attach_errors(
    fields: list[FormField], errors: list[str], aliases: dict[str, str] | None = None
) -> list[str]:
    """Put each error line ("field.path: message") next to its field; return the lines that
    name no field of the form (shown above it). `aliases` rename path prefixes, e.g.
    {"default_rule": "rules"} for a form whose fields are named "rules.*"."""
    general: list[str] = []
    for line in errors:
        path, sep, message = line.partition(": ")
        if not sep:
            general.append(line)
            continue
        path = _INDEX.sub("", path)
        for old, new in (aliases or {}).items():
            if path == old or path.startswith(old + "."):
                path = new + path[len(old) :]
        target = _field_for(fields, path, message)
        if target is None:
            general.append(line)
        else:
            target.error = f"{target.error} {message}".strip()
    return general


def _field_for(fields: list[FormField], path: str, message: str) -> FormField | None:
    while path:
        for f in fields:
            if f.name == path:
                return f
        under = [f for f in fields if f.name.startswith(path + ".")]
        if under:
            # A section's own check ("relayhost is required when ..."): the field its
            # message names first, else the section's first field.
            best: tuple[int, FormField] | None = None
            for f in under:
                first = f.name[len(path) + 1 :].split(".")[0]
                found = re.search(rf"\b{re.escape(first)}\b", message)
                if found and (best is None or found.start() < best[0]):
                    best = (found.start(), f)
            return best[1] if best else under[0]
        path = path.rpartition(".")[0]
    return None
