"""`mailgate domain`: the domain records (Settings → Built-in MTA → Domains)."""

from __future__ import annotations

import json
from typing import Any

import click

from mailgate.cli.common import Context, fail
from mailgate.config import service as edits
from mailgate.config.model import split_host_port


def _route(route: str | None, port: int | None, mx_lookup: bool) -> dict[str, Any] | None:
    if route is None:
        return None
    text = route.strip()
    try:
        host, parsed_port = split_host_port(text, 25)
    except ValueError as exc:
        fail(str(exc), 2)
    return {
        "host": host,
        "port": port if port is not None else parsed_port,
        "mx_lookup": mx_lookup,
    }


_ROUTE_HELP = "Next hop for this domain: HOST, HOST:PORT, [IPv6]:PORT."


@click.group()
def domain() -> None:
    """Local domains and per-domain routes."""


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(ctx: Context, as_json: bool) -> None:
    """List the domain records."""
    config = ctx.config_service().current().config
    if as_json:
        click.echo(json.dumps([d.model_dump(mode="json") for d in config.domains], indent=2))
        return
    if not config.domains:
        click.echo("no domains: mailgate accepts no mail for internal servers")
        return
    for d in config.domains:
        route = d.route.postfix_form() if d.route else "default (relayhost or MX)"
        kind = "local" if d.local else "not local"
        tls = f", tls {d.tls.value}" if d.tls else ""
        click.echo(f"{d.name:30} {kind:10} route {route}{tls}")


@domain.command()
@click.argument("name")
@click.option("--local/--not-local", default=True, show_default=True,
              help="Local domain: accept its mail from any client.")  # fmt: skip
@click.option("--route", default=None, help=_ROUTE_HELP)
@click.option("--port", type=int, default=None, help="Port of the route [default: 25].")
@click.option("--mx-lookup/--no-mx-lookup", default=False, show_default=True,
              help="Use the MX records of the route's host name.")  # fmt: skip
@click.option("--tls", type=click.Choice(["none", "may", "encrypt"]), default=None,
              help="TLS level for mail sent to this domain.")  # fmt: skip
@click.pass_obj
def add(ctx: Context, name: str, local: bool, route: str | None, port: int | None,
        mx_lookup: bool, tls: str | None) -> None:  # fmt: skip
    """Add a domain record."""
    record: dict[str, Any] = {"name": name, "local": local, "route": _route(route, port, mx_lookup)}
    if tls:
        record["tls"] = tls
    ctx.change(edits.add_domain(record), f"add domain {name}")


@domain.command("set")
@click.argument("name")
@click.option("--local/--not-local", default=None, help="Local domain switch.")
@click.option("--route", default=None, help=_ROUTE_HELP)
@click.option("--port", type=int, default=None, help="Port of the route.")
@click.option("--mx-lookup/--no-mx-lookup", default=False, help="MX lookup for the route.")
@click.option("--no-route", is_flag=True, help="Remove the route (use relayhost or MX).")
@click.option("--tls", type=click.Choice(["none", "may", "encrypt", "default"]), default=None)
@click.pass_obj
def set_(ctx: Context, name: str, local: bool | None, route: str | None, port: int | None,
         mx_lookup: bool, no_route: bool, tls: str | None) -> None:  # fmt: skip
    """Change a domain record."""
    changes: dict[str, Any] = {}
    if local is not None:
        changes["local"] = local
    if route is not None:
        changes["route"] = _route(route, port, mx_lookup)
    if no_route:
        changes["route"] = None
    if tls is not None:
        changes["tls"] = None if tls == "default" else tls
    if not changes:
        fail("nothing to change", 2)
    ctx.change(edits.update_domain(name, changes), f"change domain {name}")


@domain.command()
@click.argument("name")
@click.pass_obj
def remove(ctx: Context, name: str) -> None:
    """Remove a domain record."""
    ctx.change(edits.remove_domain(name), f"remove domain {name}")
