"""`mailgate settings`: main and advanced settings (Settings → Built-in MTA)."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from mailgate.cli.common import Context, fail, parse_assignments
from mailgate.config import service as edits
from mailgate.config.model import split_host_port


@click.group()
def settings() -> None:
    """Show and change main and advanced settings."""


@settings.command()
@click.argument("section", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(ctx: Context, section: str | None, as_json: bool) -> None:
    """Show settings: all, or one SECTION such as main or advanced.limits."""
    data: Any = ctx.config_service().current().config.model_dump(mode="json")
    data.pop("domains")
    for part in (section or "").split(".") if section else []:
        if not isinstance(data, dict) or part not in data:
            fail(f"{section}: no such section", 2)
        data = data[part]
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


@settings.command("set")
@click.argument("section")
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def set_(ctx: Context, section: str, assignments: tuple[str, ...]) -> None:
    """Set KEY=VALUE pairs in SECTION (e.g. `advanced.limits recipient_limit=500`).

    Values are read as YAML: numbers, true/false, null, and lists like [a, b].
    """
    changes = parse_assignments(assignments)
    ctx.change(edits.set_values(section, changes), f"set {section}: {', '.join(changes)}")


@settings.command()
@click.option("--hostname", default=None, help="This gateway's host name.")
@click.option("--destination", type=click.Choice(["dns", "border_gateway"]), default=None,
              help='Message destination address: DNS, or "send via border gateway".')  # fmt: skip
@click.option("--relayhost", default=None, help="Border gateway: HOST, HOST:PORT, [IPv6]:PORT.")
@click.option("--relayhost-mx-lookup/--no-relayhost-mx-lookup", default=None,
              help="Use MX record lookup for the border gateway's name.")  # fmt: skip
@click.option("--trusted-network", "trusted", multiple=True,
              help="Trusted network or address (repeat). Replaces the list.")  # fmt: skip
@click.option("--no-trusted-networks", is_flag=True, help="Empty the trusted networks.")
@click.option("--message-size-limit", type=int, default=None, help="In bytes.")
@click.option("--smtp-listen", multiple=True, help="ip:port to listen on (repeat). Replaces.")
@click.pass_obj
def main(ctx: Context, hostname: str | None, destination: str | None, relayhost: str | None,
         relayhost_mx_lookup: bool | None, trusted: tuple[str, ...], no_trusted_networks: bool,
         message_size_limit: int | None, smtp_listen: tuple[str, ...]) -> None:  # fmt: skip
    """Change main settings (message destination, border gateway, trusted networks...)."""
    changes: dict[str, Any] = {}
    if hostname is not None:
        changes["hostname"] = hostname
    if destination is not None:
        changes["destination"] = destination
    if trusted or no_trusted_networks:
        changes["trusted_networks"] = list(trusted)
    if message_size_limit is not None:
        changes["message_size_limit"] = message_size_limit
    if smtp_listen:
        changes["smtp_listen"] = list(smtp_listen)
    relay_change: dict[str, Any] = {}
    if relayhost is not None:
        try:
            host, port = split_host_port(relayhost, 25)
        except ValueError as exc:
            fail(str(exc), 2)
        relay_change = {"host": host, "port": port}
    if relayhost_mx_lookup is not None:
        relay_change["mx_lookup"] = relayhost_mx_lookup
    if not changes and not relay_change:
        fail("nothing to change", 2)

    def edit(data: dict[str, Any]) -> None:
        main_data = data["main"]
        main_data.update(changes)
        if relay_change:
            current = main_data.get("relayhost") or {}
            if relayhost is not None:
                current = {"mx_lookup": current.get("mx_lookup", False)}
            current.update(relay_change)
            main_data["relayhost"] = current

    ctx.change(edit, "change main settings")


@settings.command()
@click.argument("assignments", nargs=-1, required=True)
@click.pass_obj
def advanced(ctx: Context, assignments: tuple[str, ...]) -> None:
    """Set advanced settings as PATH=VALUE, e.g. limits.recipient_limit=500
    queue.minimal_backoff_time=60 tls.outbound_level=encrypt."""
    changes = parse_assignments(assignments)
    grouped: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        section, _, key = path.rpartition(".")
        if not section:
            fail(f"{path}: use SECTION.KEY, e.g. limits.recipient_limit", 2)
        grouped.setdefault(f"advanced.{section}", {})[key] = value

    def edit(data: dict[str, Any]) -> None:
        for section, values in grouped.items():
            edits.set_values(section, values)(data)

    ctx.change(edit, f"change advanced settings: {', '.join(changes)}")
