"""Recipient verification over the wire (SPEC section 1 step 6): mailgate probes the internal
server (a capture sink here; Postfix in the end-to-end tests) before answering RCPT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import (
    EXTERNAL_CLIENT_IP,
    GATEWAY_IP,
    INTERNAL_IP,
    Gateway,
    free_port,
    wait_until,
)

TRUSTED_IP = "127.0.0.30"
MAILBOXES = {"bob@example.com", "carol@example.com"}


def verifying(start_gateway: Callable[..., Gateway], port: int, **settings: Any) -> Gateway:
    return start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": port}}],
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"verification": {"mode": "reject_unverified", **settings}},
    })  # fmt: skip


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))


def session(gw: Gateway, source: str = EXTERNAL_CLIENT_IP) -> RawSmtp:
    c = RawSmtp(GATEWAY_IP, gw.port, source)
    c.reply()
    c.command("EHLO border.test")
    assert c.command("MAIL FROM:<alice@ext.org>").code == 250
    return c


def test_existing_mailbox_accepted_unknown_refused_with_the_reason(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    gw = verifying(start_gateway, internal.port)
    with session(gw) as c:
        assert str(c.command("RCPT TO:<bob@example.com>")) == "250 2.1.5 Ok"
        reply = c.command("RCPT TO:<nobody@example.com>")
        assert reply.code == 550
        assert reply.last == (
            f"5.1.1 <nobody@example.com>: Recipient address rejected: undeliverable address: "
            f"host {INTERNAL_IP}[{INTERNAL_IP}]:{internal.port} said: 550 5.1.1 "
            "<nobody@example.com>: Recipient address rejected: User unknown (in reply to RCPT TO command)"
        )
        assert c.command("DATA").code == 354
        c.send("Subject: verified\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    (message,) = internal.wait_for(1)
    assert message.rcpt_to == ["bob@example.com"]
    # The probes themselves never reached DATA: one message arrived, and it is the real one.
    assert internal.counters.messages == 1
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_probe_uses_the_probe_sender_and_one_session_for_pipelined_rcpts(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    seen: list[str] = []

    def record(address: str) -> str:
        seen.append(address)
        return refuse_unknown(MAILBOXES)(address)

    internal = start_sink(INTERNAL_IP, rcpt_reply=record)
    gw = verifying(start_gateway, internal.port)
    with session(gw) as c:
        c.send(
            "RCPT TO:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<carol@example.com>\r\n"
        )
        assert [r.code for r in c.replies(3)] == [250, 550, 250]
    assert internal.counters.sessions == 1
    assert sorted(seen) == ["bob@example.com", "carol@example.com", "nobody@example.com"]
    stats = gw.control("stats")
    assert stats["verify.probes"] == 1
    assert stats["verify.probed_addresses"] == 3


def test_pipelined_rcpts_count_toward_the_limit_only_once_accepted(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    # Recipient limit 2: a refused recipient takes no place, pipelined or not (Postfix's
    # smtpd counts accepted recipients only). Carol, after an unknown one and bob, is the
    # second accepted; the fourth RCPT is over the limit.
    gw = start_gateway({
        "domains": [{"name": "example.com",
                     "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "advanced": {"verification": {"mode": "reject_unverified"},
                     "limits": {"recipient_limit": 2}},
    })  # fmt: skip
    rcpts = ["nobody@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]
    expected = [550, 250, 250, 452]
    with session(gw) as c:
        c.send("".join(f"RCPT TO:<{address}>\r\n" for address in rcpts))
        replies = c.replies(4)
        assert [r.code for r in replies] == expected
        assert str(replies[3]) == "452 4.5.3 Error: too many recipients"
        assert c.command("DATA").code == 354
        c.send("Subject: limit\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    (message,) = internal.wait_for(1)
    assert message.rcpt_to == ["bob@example.com", "carol@example.com"]
    # The same RCPTs one at a time get the same replies.
    with session(gw) as c:
        assert [c.command(f"RCPT TO:<{address}>").code for address in rcpts] == expected


def test_next_hop_down_gives_450_and_back_up_accepts_within_seconds(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    port = free_port(INTERNAL_IP)
    gw = verifying(start_gateway, port, temporary_expire_time=1)
    with session(gw) as c:
        reply = c.command("RCPT TO:<bob@example.com>")
        assert reply.code == 450
        assert reply.last.startswith(
            "4.1.1 <bob@example.com>: Recipient address rejected: unverified address: connect to"
        )
        assert "Connection refused" in reply.last
    assert gw.queue() == []  # nothing was accepted, nothing will bounce
    start_sink(INTERNAL_IP, port, rcpt_reply=refuse_unknown(MAILBOXES))
    with session(gw) as c:  # a fresh address is probed at once
        assert str(c.command("RCPT TO:<carol@example.com>")) == "250 2.1.5 Ok"

    def bob_accepted() -> bool:  # the temporary failure is forgotten within seconds
        with session(gw) as c:
            return c.command("RCPT TO:<bob@example.com>").code == 250

    wait_until(bob_accepted, 10, "bob to be accepted again")


def test_known_good_address_stays_accepted_while_the_next_hop_is_down(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    port = free_port(INTERNAL_IP)
    internal = start_sink(INTERNAL_IP, port, rcpt_reply=refuse_unknown(MAILBOXES))
    gw = verifying(start_gateway, port)
    with session(gw) as c:
        assert c.command("RCPT TO:<bob@example.com>").code == 250
    internal.stop()
    with session(gw) as c:
        assert c.command("RCPT TO:<bob@example.com>").code == 250  # from the cache
        assert c.command("RCPT TO:<carol@example.com>").code == 450  # never verified


def test_trusted_clients_are_never_verified(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    gw = verifying(start_gateway, internal.port)
    with session(gw, TRUSTED_IP) as c:
        assert str(c.command("RCPT TO:<nobody@example.com>")) == "250 2.1.5 Ok"
    assert gw.control("stats").get("verify.probes", 0) == 0
    assert internal.counters.sessions == 0


def test_reject_code_450_and_hidden_reason(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    gw = verifying(start_gateway, internal.port, reject_code=450, show_reason=False)
    with session(gw) as c:
        assert str(c.command("RCPT TO:<nobody@example.com>")) == (
            "450 4.1.1 <nobody@example.com>: Recipient address rejected: undeliverable address"
        )


def test_thousand_concurrent_rcpts_for_one_uncached_address_make_one_probe(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    seen: list[str] = []

    def record(address: str) -> str:
        seen.append(address)
        return "250 2.1.5 Ok"

    internal = start_sink(INTERNAL_IP, rcpt_reply=record)
    gw = start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "advanced": {"verification": {"mode": "reject_unverified"},
                     "limits": {"client_connection_count_limit": 0}},
    })  # fmt: skip

    ready: list[int] = []

    async def one(all_ready: asyncio.Event, start: asyncio.Event) -> str:
        reader, writer = await asyncio.open_connection(
            GATEWAY_IP, gw.port, local_addr=(EXTERNAL_CLIENT_IP, 0)
        )
        try:
            await reader.readline()
            writer.write(b"EHLO c\r\nMAIL FROM:<a@ext.org>\r\n")
            while not (await reader.readline()).startswith(b"250 "):
                pass
            await reader.readline()
            ready.append(1)
            if len(ready) == 1000:
                all_ready.set()
            await start.wait()
            writer.write(b"RCPT TO:<new@example.com>\r\n")
            return (await reader.readline()).decode().strip()
        finally:
            writer.close()

    async def run() -> list[str]:
        all_ready, start = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(one(all_ready, start)) for _ in range(1000)]
        await asyncio.wait_for(all_ready.wait(), 60)  # every session has reached RCPT
        start.set()
        return await asyncio.gather(*tasks)

    replies = asyncio.run(run())
    assert replies == ["250 2.1.5 Ok"] * 1000
    assert seen == ["new@example.com"]


def test_unknown_recipient_domains(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
) -> None:
    zone, nameserver = dns_zone
    zone.add("exists.test", "MX", "10 mx.exists.test")
    zone.add("a-only.test", "A", "127.0.0.66")
    zone.null_mx("nomail.test")
    zone.servfail("broken.test")
    gw = start_gateway({
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"verification": {"reject_unknown_domains": True},
                     "dns": {"nameservers": [nameserver], "timeout": 1}},
    })  # fmt: skip
    with session(gw, TRUSTED_IP) as c:
        assert str(c.command("RCPT TO:<x@exists.test>")) == "250 2.1.5 Ok"
        assert str(c.command("RCPT TO:<x@a-only.test>")) == "250 2.1.5 Ok"
        assert str(c.command("RCPT TO:<x@missing.test>")) == (
            "550 5.1.2 <x@missing.test>: Recipient address rejected: Domain not found"
        )
        assert str(c.command("RCPT TO:<x@nomail.test>")) == (
            "550 5.1.2 <x@nomail.test>: Recipient address rejected: Domain nomail.test does not accept mail (nullMX)"
        )
        assert str(c.command("RCPT TO:<x@broken.test>")) == (
            "450 4.1.2 <x@broken.test>: Recipient address rejected: Domain not found"
        )


def test_cli_shows_tests_and_flushes_the_cache(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    gw = verifying(start_gateway, internal.port)

    def mailgate(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "bob@example.com  ok" in mailgate("verify", "test", "bob@example.com")
    assert "nobody@example.com  bad" in mailgate("verify", "test", "nobody@example.com")
    assert "nobody@example.com  bad" in mailgate("verify", "show", "nobody@example.com")
    wait_until(lambda: "bob@example.com" in mailgate("verify", "list")
               and "nobody@example.com" in mailgate("verify", "list"), what="the store writes")  # fmt: skip
    assert "nobody@example.com" in mailgate("verify", "list", "--status", "bad")
    assert mailgate("verify", "flush", "--status", "bad").strip() == "1 cache entry removed"
    assert "not in the cache" in mailgate("verify", "show", "nobody@example.com")
    assert "verify.probes" in mailgate("stats")
