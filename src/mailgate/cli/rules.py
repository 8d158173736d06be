"""`mailgate rules`: the processing rules (KSMG's model): list, show, add, set, remove, move,
and replacing one action by another everywhere (the seed's step 5: Reject -> Delete)."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from mailgate.cli.common import Context, fail, parse_assignments
from mailgate.config import service as edits
from mailgate.config.model import ConfigError
from mailgate.config.protection import Action


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
        click.echo(yaml.safe_dump(edits.find_rule(data, name), sort_keys=False).rstrip())
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

    ctx.change(edits.add_rule(record, position), f"add rule {name}")


@rules.command("set")
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def set_(ctx: Context, name: str, assignments: tuple[str, ...]) -> None:
    """Change a rule: KEY=VALUE, e.g. antivirus.infected=delete mode=skip enabled=false
    senders='[*@example.com]'."""
    changes = parse_assignments(assignments)
    ctx.change(edits.update_rule(name, changes), f"change rule {name}: {', '.join(changes)}")


@rules.command()
@click.argument("name")
@click.pass_obj
def remove(ctx: Context, name: str) -> None:
    """Remove a rule (the default rule stays)."""

    ctx.change(edits.remove_rule(name), f"remove rule {name}")


@rules.command()
@click.argument("name")
@click.argument("position", type=int)
@click.pass_obj
def move(ctx: Context, name: str, position: int) -> None:
    """Move a rule to POSITION (1 = tried first)."""

    ctx.change(edits.move_rule(name, position), f"move rule {name} to {position}")


@rules.command("replace-action")
@click.argument("old", type=click.Choice([a.value for a in Action]))
@click.argument("new", type=click.Choice([a.value for a in Action]))
@click.pass_obj
def replace_action(ctx: Context, old: str, new: str) -> None:
    """Replace action OLD by NEW for every module of every rule, the default rule included
    (behind a border gateway: `mailgate rules replace-action reject delete`)."""
    counter = [0]
    ctx.change(
        edits.replace_action(old, new, counter), f"replace action {old} by {new} in every rule"
    )
    count = counter[0]
    click.echo(f"{count} action(s) changed")
