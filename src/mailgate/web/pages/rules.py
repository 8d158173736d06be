"""Rules: the list in the order they are tried (the default rule last), add, edit, delete,
move up and down, and the seed's step 5 as one button (Reject → Delete message everywhere)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.config import service as edits
from mailgate.config.model import ConfigError
from mailgate.config.protection import Action, Rule
from mailgate.web.pages.common import (
    Ctx,
    changer,
    done,
    error_page,
    page,
    redirect,
    render,
    text,
    viewer,
)
from mailgate.web.pages.forms import FormField, attach_errors, model_fields, read_all, relative
from mailgate.web.pages.labels import ACTION_NAMES, MODE_NAMES, MODULE_NAMES, VERDICT_NAMES

router = APIRouter()
BASE = "/rules"
ACTIONS = [(a.value, ACTION_NAMES[a.value]) for a in Action]
# The default rule applies to every message no other rule takes: no match fields of its own.
DEFAULT_FIXED = ("enabled", "senders", "recipients", "client_networks")


def rule_fields(rule: dict[str, Any]) -> tuple[list[FormField], list[tuple[str, list[FormField]]]]:
    """The rule's own fields, and per module its verdicts' action selects."""
    own = model_fields(
        Rule,
        "rules",
        rule,
        only=[
            "name",
            "enabled",
            "senders",
            "recipients",
            "client_networks",
            "mode",
            "spam_tag",
            "probable_spam_tag",
            "x_headers",
        ],
        labels={
            "name": "Rule name",
            "enabled": "Rule enabled",
            "client_networks": "Client networks",
            "x_headers": "Add X-Mailgate headers",
            "spam_tag": "Subject tag for spam",
            "probable_spam_tag": "Subject tag for probable spam",
        },
        choice_labels={"mode": MODE_NAMES},
    )
    modules = []
    for module, title in MODULE_NAMES.items():
        model = Rule.model_fields[module].annotation
        assert isinstance(model, type)
        fields = model_fields(model, f"rules.{module}", rule.get(module, {}), labels=VERDICT_NAMES)
        for f in fields:
            f.choices = list(ACTIONS)
        modules.append((title, fields))
    return own, modules


def _record(values: dict[str, Any]) -> dict[str, Any]:
    flat = relative(values, "rules")
    record: dict[str, Any] = {k: v for k, v in flat.items() if "." not in k}
    for module in MODULE_NAMES:
        record[module] = relative(flat, module)
    return record


def _summary(rule: Rule) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for module, title in MODULE_NAMES.items():
        actions = getattr(rule, module).model_dump(mode="json")
        out.append(
            (title, [(VERDICT_NAMES.get(v, v), ACTION_NAMES[a]) for v, a in actions.items()])
        )
    return out


@router.get(BASE)
@page
async def rules(request: Request) -> Response:
    ctx = await viewer(request)
    config = ctx.admin.config
    listed = [(n + 1, r, False) for n, r in enumerate(config.rules)]
    listed.append((len(config.rules) + 1, config.default_rule, True))
    return render(
        ctx,
        "rules.html",
        title="Rules",
        section="rules",
        rules=listed,
        summary=_summary,
        mode_names=MODE_NAMES,
        last=len(config.rules),
    )


def _form(
    ctx: Ctx,
    rule: dict[str, Any],
    original: str,
    is_default: bool,
    errors: list[str] | None = None,
    fields: Any = None,
) -> Response:
    own, modules = fields or rule_fields(rule)
    title = "Add rule" if not original else f"Rule {original}"
    return render(
        ctx,
        "rule_form.html",
        422 if errors is not None else 200,
        title=title,
        section="rules",
        own=own,
        modules=modules,
        original=original,
        is_default=is_default,
        general=errors or [],
    )


@router.get(BASE + "/new")
@page
async def new_rule(request: Request) -> Response:
    ctx = await viewer(request)
    return _form(ctx, Rule(name="New rule").model_dump(mode="json") | {"name": ""}, "", False)


@router.get(BASE + "/edit")
@page
async def edit_rule(request: Request) -> Response:
    ctx = await viewer(request)
    name = request.query_params.get("name", "")
    data = ctx.admin.config.model_dump(mode="json")
    try:
        rule = edits.find_rule(data, name)
    except ConfigError:
        return error_page(ctx, 404, "There is no such rule.")
    is_default = rule is data["default_rule"]
    return _form(ctx, rule, "default" if is_default else rule["name"], is_default)


@router.post(BASE + "/save")
@page
async def save_rule(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    original = text(form, "original")
    fields = rule_fields({})
    own, modules = fields
    values = read_all(own + [f for _, group in modules for f in group], form)
    record = _record(values)
    if original:
        fixed = DEFAULT_FIXED if original == "default" else ()
        changes = {k: v for k, v in record.items() if k not in MODULE_NAMES and k not in fixed}
        for module in MODULE_NAMES:
            changes.update({f"{module}.{k}": v for k, v in record[module].items()})
        edit, comment = edits.update_rule(original, changes), f"web: rule {original}"
    else:
        edit, comment = edits.add_rule(record), f"web: add rule {record['name']}"
    try:
        await ctx.admin.change(edit, ctx.account, comment)
    except ConfigError as exc:
        every = own + [f for _, group in modules for f in group]
        general = attach_errors(every, exc.errors, {"default_rule": "rules"})
        return _form(ctx, {}, original, original == "default", general, fields)
    return done(BASE, "saved" if original else "rule.added")


@router.post(BASE + "/delete")
@page
async def delete_rule(request: Request) -> Response:
    ctx = await changer(request)
    name = text(await request.form(), "name")
    try:
        await ctx.admin.change(edits.remove_rule(name), ctx.account, f"web: delete rule {name}")
    except ConfigError:
        return error_page(ctx, 404, "There is no such rule.")
    return done(BASE, "rule.deleted")


@router.post(BASE + "/move")
@page
async def move_rule(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    name, direction = text(form, "name"), text(form, "direction")
    names = [r.name for r in ctx.admin.config.rules]
    if name not in names or direction not in ("up", "down"):
        return error_page(ctx, 404, "There is no such rule.")
    position = names.index(name) + 1 + (-1 if direction == "up" else 1)
    if not 1 <= position <= len(names):
        return redirect(BASE)
    await ctx.admin.change(
        edits.move_rule(name, position), ctx.account, f"web: move rule {name} {direction}"
    )
    return done(BASE, "rule.moved")


@router.post(BASE + "/replace-reject")
@page
async def replace_reject(request: Request) -> Response:
    ctx = await changer(request)
    await ctx.admin.change(
        edits.replace_action("reject", "delete"),
        ctx.account,
        "web: Reject replaced with Delete message in every rule",
    )
    return done(BASE, "rules.replaced")
