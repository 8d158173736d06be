"""`mailgate trace`: what would happen to a message from a given client, sender and
recipients (relay decision, recipient check, reply, next hop, rule), without sending it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from mailgate import trace as tracing
from mailgate.cli.common import Context, fail
from mailgate.config.model import Config
from mailgate.trace import LiveLookups, Lookup, TraceError, cached_lookup, render
from mailgate.types import Mailbox
from mailgate.verify.cache import Entry, VerifyStore
from mailgate.verify.service import cache_key, probe_once

if TYPE_CHECKING:
    from mailgate.dns import DnsPythonResolver


@click.command()
@click.option("--client", required=True, metavar="IP", help="Address of the connecting client.")
@click.option("--helo", default="", help="The client's HELO name (shown; rules do not use it).")
@click.option("--from", "sender", required=True, metavar="ADDRESS",
              help='Envelope sender; "" or "<>" for the null sender.')  # fmt: skip
@click.option("--to", "recipients", required=True, multiple=True, metavar="ADDRESS",
              help="Envelope recipient (repeat for several).")  # fmt: skip
@click.option("--size", type=click.IntRange(min=0), default=None, help="Message size (MAIL SIZE=).")
@click.option("--smtputf8", is_flag=True, help="The client declares SMTPUTF8.")
@click.option("--probe", is_flag=True,
              help="Ask the next hop now about recipients to verify (a probe, as at RCPT time; "
              "the result goes to the verification cache). Default: the cache only.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def trace(ctx: Context, client: str, helo: str, sender: str, recipients: tuple[str, ...],
          size: int | None, smtputf8: bool, probe: bool, as_json: bool) -> None:  # fmt: skip
    """What the gateway would do with a message from CLIENT: MAIL FROM and each RCPT TO's
    reply (relay decision, recipient verification), each accepted recipient's next hop and
    the addresses delivery would try, and the rule and scan modules that would apply. Nothing
    is sent; uses the stored configuration, which is the running gateway's."""
    config = ctx.config_service().current().config
    lookups = LiveLookups(config, _resolver(config), _verifier(ctx, config, probe))
    try:
        result = asyncio.run(
            tracing.trace(config, lookups, client=client, sender=sender,
                          recipients=list(recipients), helo=helo, size=size, smtputf8=smtputf8)
        )  # fmt: skip
    except TraceError as exc:
        fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in render(result):
        click.echo(line)


def _resolver(config: Config) -> DnsPythonResolver:
    from mailgate.service import make_resolver

    return make_resolver(config.advanced.dns)


def _verifier(ctx: Context, config: Config, probe: bool) -> Callable[[Mailbox], Awaitable[Lookup]]:
    """Recipient verification for the trace: a probe with --probe, else the cache (the
    running gateway's, which includes its memory, or the store's when it does not run)."""
    running = ctx.call("ping") is not None

    async def verify(mailbox: Mailbox) -> Lookup:
        address = mailbox.address
        if probe:
            if running:
                entry = Entry(**ctx.call("verify.test", address=address))
            else:
                entry = await probe_once(config, address, _store(ctx))
            return Lookup(entry.status, entry.reply, "probe")
        if running:
            shown = ctx.call("verify.show", address=address)
            cached = Entry(**shown) if shown else None
        else:
            cached = _store(ctx).get(cache_key(mailbox))
        return cached_lookup(cached, config.advanced.verification, time.time())

    return verify


def _store(ctx: Context) -> VerifyStore:
    return VerifyStore(ctx.config_service().repository.engine)
