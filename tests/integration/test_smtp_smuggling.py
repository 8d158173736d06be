"""SMTP smuggling (CVE-2023-51766 and kin): only <CR><LF>.<CR><LF> ends DATA; one DATA never
yields two messages; no bare CR or LF is ever passed on, so the next hop cannot be made to see
an end of data that mailgate did not see."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway

# End-of-data look-alikes that some servers accept.
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\n.\r"]


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway], sink: Sink) -> Gateway:
    return start_gateway(
        {"domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}]}
    )


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggled_message_stays_inside_the_first(gw: Gateway, sink: Sink, fake_end: bytes) -> None:
    smuggled = (
        b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        b"From: admin@example.com\r\nSubject: smuggled\r\n\r\nforged\r\n"
    )
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO attacker.example")
        c.command("MAIL FROM:<attacker@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        assert c.command("DATA").code == 354
        c.send(b"Subject: carrier\r\n\r\nhello" + fake_end + smuggled + b".\r\n")
        reply = c.reply()
        assert reply.code == 250
        assert str(c.command("NOOP")) == "250 2.0.0 Ok"  # no stray replies were queued
    (message,) = sink.wait_for(1)
    assert message.rcpt_to == ["bob@example.com"]
    assert message.parsed()["Subject"] == "carrier"
    data = message.data
    # Every line ending that reached the next hop is CRLF; nothing bare.
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
    assert b"forged" in data
    assert sink.counters.messages == 1


def test_the_real_end_of_data_is_followed_by_commands(gw: Gateway, sink: Sink) -> None:
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        c.command("DATA")
        c.send(b"Subject: one\r\n\r\nx\r\n.\r\nNOOP\r\n")
        assert c.reply().code == 250
        assert str(c.reply()) == "250 2.0.0 Ok"
    assert len(sink.wait_for(1)) == 1


def test_a_dot_line_after_a_bare_newline_is_content_when_passed_on(gw: Gateway, sink: Sink) -> None:
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        c.command("DATA")
        c.send(b"Subject: dots\r\n\r\nbefore\n.\nafter\r\n.\r\n")
        assert c.reply().code == 250
    (message,) = sink.wait_for(1)
    # The sink unstuffs what mailgate stuffed: the lone dot arrives as a content line.
    assert message.data.endswith(b"before\r\n.\r\nafter\r\n")
