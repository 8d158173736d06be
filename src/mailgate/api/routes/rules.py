"""Processing rules (KSMG's model): list in order (the default rule last), show, add at a
position, change fields and "module.verdict" actions, remove, move, and replace one action by
another in every rule (the seed's step 5: Reject → Delete).

"default" (any case) names the default rule wherever a rule is named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, create_model

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    AdminOf,
    Invalid,
    Patch,
    api_route,
    optional,
)
from mailgate.config import service as edits
from mailgate.config.model import Config
from mailgate.config.protection import Action, Rule

router = APIRouter(prefix="/rules", tags=["rules"], route_class=api_route(), responses=ERRORS)


class PlacedRule(Rule):
    """A rule and its place: rules are tried by position; the default rule comes last."""

    position: int = Field(description="1 = tried first; the default rule's is the last.")
    default: bool = Field(description="This is the default rule.")


class NewRule(Rule):
    """A rule to add; module actions left out start at their defaults."""

    position: int | None = Field(
        None,
        ge=1,
        description="1-based place among the rules; default: last (before the default rule).",
    )


class Move(BaseModel):
    position: int = Field(ge=1, description="New 1-based place (1 = tried first).")


class ReplaceAction(BaseModel):
    old: Action = Field(description="Action to replace, in every module of every rule.")
    new: Action = Field(description="Its replacement.")


class Replaced(BaseModel):
    replaced: int = Field(description="How many actions (and rule modes) were changed.")
    revision: int = Field(description="The configuration revision now in force.")


def _rule_patch() -> type[Patch]:
    """Rule fields, and each module's verdict as "module.verdict" (e.g. "antivirus.infected")."""
    fields: dict[str, Any] = {}
    for key, info in Rule.model_fields.items():
        section = info.annotation
        if key not in edits.RULE_MODULES:
            fields[key] = optional(info)
            continue
        assert isinstance(section, type)
        assert issubclass(section, BaseModel)
        for verdict, action in section.model_fields.items():
            fields[f"{key}_{verdict}"] = optional(action, Action, alias=f"{key}.{verdict}")
    return create_model("RulePatch", __base__=Patch, __doc__="Changes to a rule.", **fields)


# mypy cannot see through a model made at run time; FastAPI needs the real one.
if TYPE_CHECKING:
    RulePatch = Patch
else:
    RulePatch = _rule_patch()


def _placed(config: Config, name: str) -> PlacedRule:
    everything = [*config.rules, config.default_rule]
    if name.lower() == "default":
        index = len(everything) - 1
    else:
        found = [i for i, r in enumerate(config.rules) if r.name == name]
        if not found:
            raise HTTPException(404, f"no rule named {name!r}")
        index = found[0]
    rule = everything[index]
    return PlacedRule(**rule.model_dump(), position=index + 1, default=rule is config.default_rule)


def _not_default(field: str, name: str | None) -> None:
    # "default" always finds the default rule, so a rule with that name could not be reached.
    if name is not None and name.lower() == "default":
        raise Invalid(field, '"default" names the default rule; choose another name')


@router.get("", summary="The rules in order, the default rule last")
async def list_rules(admin: AdminOf, _: Reader) -> list[PlacedRule]:
    config = admin.config
    return [_placed(config, r.name) for r in config.rules] + [_placed(config, "default")]


@router.get("/{name}", summary="One rule", responses=NOT_FOUND)
async def get_rule(name: str, admin: AdminOf, _: Reader) -> PlacedRule:
    return _placed(admin.config, name)


@router.post("", status_code=201, summary="Add a rule", responses=CONFLICT)
async def create_rule(body: NewRule, admin: AdminOf, identity: Administrator) -> PlacedRule:
    _not_default("name", body.name)
    record = body.model_dump(mode="json", exclude={"position"})
    await admin.change(
        edits.add_rule(record, body.position), identity.account, f"add rule {body.name}"
    )
    return _placed(admin.config, body.name)


@router.patch(
    "/{name}",
    summary="Change a rule",
    responses={**NOT_FOUND, **CONFLICT},
    description='Rule fields, and module actions as "module.verdict": `{"antivirus.infected": '
    '"delete", "enabled": false}`. Fields left out stay as they are.',
)
async def update_rule(
    name: str, body: RulePatch, admin: AdminOf, identity: Administrator
) -> PlacedRule:
    current = _placed(admin.config, name)
    # Rule fields are plain values and lists, so the set fields dump as they are.
    changes = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if not current.default:
        _not_default("name", changes.get("name"))
    target = "default" if current.default else current.name
    await admin.change(
        edits.update_rule(target, changes),
        identity.account,
        f"change rule {current.name}: {', '.join(changes) or 'nothing'}",
    )
    return _placed(admin.config, target if current.default else changes.get("name", target))


@router.delete(
    "/{name}", status_code=204, summary="Remove a rule", responses={**NOT_FOUND, **CONFLICT}
)
async def delete_rule(name: str, admin: AdminOf, identity: Administrator) -> None:
    current = _placed(admin.config, name)
    if current.default:
        raise Invalid("name", "the default rule cannot be removed")
    await admin.change(
        edits.remove_rule(current.name), identity.account, f"remove rule {current.name}"
    )


@router.post(
    "/{name}/move", summary="Move a rule to another position", responses={**NOT_FOUND, **CONFLICT}
)
async def move_rule(name: str, body: Move, admin: AdminOf, identity: Administrator) -> PlacedRule:
    current = _placed(admin.config, name)
    if current.default:
        raise Invalid("name", "the default rule is always last")
    await admin.change(
        edits.move_rule(current.name, body.position),
        identity.account,
        f"move rule {current.name} to {body.position}",
    )
    return _placed(admin.config, current.name)


@router.post("/replace-action", summary="Replace an action in every rule", responses=CONFLICT)
async def replace_action(body: ReplaceAction, admin: AdminOf, identity: Administrator) -> Replaced:
    counter: list[int] = [0]
    revision = await admin.change(
        edits.replace_action(body.old.value, body.new.value, counter),
        identity.account,
        f"replace action {body.old.value} by {body.new.value}",
    )
    return Replaced(replaced=counter[0], revision=revision.id)
