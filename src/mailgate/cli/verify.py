"""`mailgate verify`: the recipient verification cache (show, list, test now, flush), and
`mailgate stats`: the node's counters."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import click

from mailgate.cli.common import Context, fail
from mailgate.verify.cache import VerifyStore
from mailgate.verify.service import cache_key, entry_json, parse_address, probe_once


def _store(ctx: Context) -> VerifyStore:
    return VerifyStore(ctx.config_service().repository.engine)


def _show(entry: dict[str, Any] | None, address: str) -> None:
    if entry is None:
        click.echo(f"{address}: not in the cache")
        return
    updated = datetime.fromtimestamp(entry["updated"]).strftime("%Y-%m-%d %H:%M:%S")
    click.echo(f"{entry['address']}  {entry['status']}  (since {updated})  {entry['reply']}")


def _key(address: str) -> str:
    try:
        return cache_key(parse_address(address))
    except ValueError as exc:
        fail(str(exc), 2)


@click.group()
def verify() -> None:
    """Recipient verification: the cache of probe results."""


@verify.command()
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(ctx: Context, address: str, as_json: bool) -> None:
    """What the cache knows about ADDRESS."""
    key = _key(address)
    running = ctx.call("ping") is not None
    if running:
        entry = ctx.call("verify.show", address=address)
    else:
        found = _store(ctx).get(key)
        entry = entry_json(found) if found else None
    if as_json:
        click.echo(json.dumps(entry))
    else:
        _show(entry, address)


@verify.command("list")
@click.option("--status", type=click.Choice(["ok", "bad", "temp"]), default=None)
@click.option("--contains", default=None, help="Only addresses containing this text.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(ctx: Context, status: str | None, contains: str | None, limit: int,
          as_json: bool) -> None:  # fmt: skip
    """List cached results, newest first."""
    entries = [entry_json(e) for e in _store(ctx).list(status, contains, limit)]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("the verification cache is empty")
    for entry in entries:
        _show(entry, entry["address"])


@verify.command()
@click.argument("address")
@click.pass_obj
def test(ctx: Context, address: str) -> None:
    """Probe ADDRESS now (its next hop, as delivery would) and record the result."""
    _key(address)
    if ctx.call("ping") is not None:
        entry = ctx.call("verify.test", address=address)
    else:
        config = ctx.config_service().current().config
        entry = entry_json(asyncio.run(probe_once(config, address, _store(ctx))))
    _show(entry, address)


@verify.command()
@click.argument("address", required=False)
@click.option("--status", type=click.Choice(["ok", "bad", "temp"]), default=None)
@click.option("--all", "everything", is_flag=True, help="Empty the whole cache.")
@click.pass_obj
def flush(ctx: Context, address: str | None, status: str | None, everything: bool) -> None:
    """Forget ADDRESS, every entry of a --status, or --all of them."""
    if not address and not status and not everything:
        fail("name an ADDRESS, a --status, or --all", 2)
    if address:
        _key(address)
    if ctx.call("ping") is not None:
        count = ctx.call("verify.flush", address=address, status=status)
    else:
        count = _store(ctx).delete(_key(address) if address else None, status)
    click.echo(f"{count} cache entr{'y' if count == 1 else 'ies'} removed")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats(ctx: Context, as_json: bool) -> None:
    """Counters of the running gateway on this node (probes, cache hits, outcomes...)."""
    values = ctx.call("stats")
    if values is None:
        fail("mailgate is not running here", 3)
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        click.echo(f"{name:40} {value}")
