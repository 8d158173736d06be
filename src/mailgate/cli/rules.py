"""`mailgate rules`: the processing rules (KSMG's model): list, show, add, set, remove, move,
and replacing one action by another everywhere (the seed's step 5: Reject -> Delete)."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from mailgate.cli.common import Context, fail, parse_assignments
from mailgate.config.model import ConfigError
from mailgate.config.protection import Action

_MODULES = ("antivirus", "antispam", "phishing", "content", "auth")


def _find(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name.lower() == "default":
        rule: dict[str, Any] = data["default_rule"]
        return rule
    rule_list: list[dict[str, Any]] = data["rules"]
    for rule in rule_list:
        if rule["name"] == name:
            return rule
    raise ConfigError([f"rules: no rule named {name!r}"])


@click.group()
def rules() -> None:
    """Processing rules, tried top to bottom; then the default rule."""


@rules.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(ctx: Context, as_json: bool) -> None:
    """The rules in order, and the default rule last."""
    config = ctx.config_service().current().config
    everything = [*config.rules, config.default_rule]
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in everything], indent=2))
        return
    for position, rule in enumerate(everything, 1):
        state = "" if rule.enabled else " (off)"
        where = "default" if rule is config.default_rule else f"{position}."
        click.echo(f"{where:8} {rule.name}{state}: mode {rule.mode}; senders {rule.senders}; "
                   f"recipients {rule.recipients}")  # fmt: skip


@rules.command()
@click.argument("name")
@click.pass_obj
def show(ctx: Context, name: str) -> None:
    """One rule with every module's actions (NAME "default" for the default rule)."""
    data = ctx.config_service().current().config.model_dump(mode="json")
    try:
        click.echo(yaml.safe_dump(_find(data, name), sort_keys=False).rstrip())
    except ConfigError as exc:
        fail(exc.errors[0], 2)


@rules.command()
@click.argument("name")
@click.option("--sender", "senders", multiple=True, help="Sender mask or re:REGEX (repeat).")
@click.option("--recipient", "recipients", multiple=True, help="Recipient mask or re:REGEX.")
@click.option("--network", "networks", multiple=True, help="Client network (repeat).")
@click.option("--mode", type=click.Choice(["modules", "skip", "reject", "delete"]),
              default="modules", show_default=True)  # fmt: skip
@click.option("--position", type=int, default=None, help="1-based place; default: last.")
@click.pass_obj
def add(ctx: Context, name: str, senders: tuple[str, ...], recipients: tuple[str, ...],
        networks: tuple[str, ...], mode: str, position: int | None) -> None:  # fmt: skip
    """Add a rule (module actions start at their defaults; change them with `rules set`)."""
    record: dict[str, Any] = {
        "name": name, "senders": list(senders) or ["*"], "recipients": list(recipients) or ["*"],
        "client_networks": list(networks), "mode": mode,
    }  # fmt: skip

    def edit(data: dict[str, Any]) -> None:
        if any(r["name"] == name for r in data["rules"]):
            raise ConfigError([f"rules: {name!r} already exists"])
        at = len(data["rules"]) if position is None else max(0, position - 1)
        data["rules"].insert(at, record)

    ctx.change(edit, f"add rule {name}")


@rules.command("set")
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def set_(ctx: Context, name: str, assignments: tuple[str, ...]) -> None:
    """Change a rule: KEY=VALUE, e.g. antivirus.infected=delete mode=skip enabled=false
    senders='[*@example.com]'."""
    changes = parse_assignments(assignments)

    def edit(data: dict[str, Any]) -> None:
        rule = _find(data, name)
        for key, value in changes.items():
            section, _, field = key.rpartition(".")
            target = rule[section] if section else rule
            if (section and section not in _MODULES) or field not in target:
                raise ConfigError([f"rules.{name}.{key}: no such setting"])
            target[field] = value

    ctx.change(edit, f"change rule {name}: {', '.join(changes)}")


@rules.command()
@click.argument("name")
@click.pass_obj
def remove(ctx: Context, name: str) -> None:
    """Remove a rule (the default rule stays)."""

    def edit(data: dict[str, Any]) -> None:
        kept = [r for r in data["rules"] if r["name"] != name]
        if len(kept) == len(data["rules"]):
            raise ConfigError([f"rules: no rule named {name!r}"])
        data["rules"] = kept

    ctx.change(edit, f"remove rule {name}")


@rules.command()
@click.argument("name")
@click.argument("position", type=int)
@click.pass_obj
def move(ctx: Context, name: str, position: int) -> None:
    """Move a rule to POSITION (1 = tried first)."""

    def edit(data: dict[str, Any]) -> None:
        rule = _find(data, name)
        if rule is data["default_rule"]:
            raise ConfigError(["rules: the default rule is always last"])
        data["rules"].remove(rule)
        data["rules"].insert(max(0, position - 1), rule)

    ctx.change(edit, f"move rule {name} to {position}")


@rules.command("replace-action")
@click.argument("old", type=click.Choice([a.value for a in Action]))
@click.argument("new", type=click.Choice([a.value for a in Action]))
@click.pass_obj
def replace_action(ctx: Context, old: str, new: str) -> None:
    """Replace action OLD by NEW for every module of every rule, the default rule included
    (behind a border gateway: `mailgate rules replace-action reject delete`)."""
    count = 0

    def edit(data: dict[str, Any]) -> None:
        nonlocal count
        count = 0
        for rule in [*data["rules"], data["default_rule"]]:
            for module in _MODULES:
                for verdict, action in rule[module].items():
                    if action == old:
                        rule[module][verdict] = new
                        count += 1
            if old == "reject" and new == "delete" and rule["mode"] == "reject":
                rule["mode"] = "delete"
                count += 1

    ctx.change(edit, f"replace action {old} by {new} in every rule")
    click.echo(f"{count} action(s) changed")
