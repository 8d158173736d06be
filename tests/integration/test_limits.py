"""Limits of the SMTP server, with Postfix's reply codes: message size (at MAIL SIZE= and after
DATA), recipients, command line length, header size, hop count, error limits, idle timeout,
and per-client connection count and rates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


@pytest.fixture
def start(start_gateway: Callable[..., Gateway], sink: Sink) -> Callable[..., Gateway]:
    def run(advanced: dict[str, Any] | None = None, main: dict[str, Any] | None = None) -> Gateway:
        return start_gateway(
            {
                "domains": [
                    {"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}
                ],
                "main": {"trusted_networks": ["127.0.0.30/32"], **(main or {})},
                "advanced": {"limits": advanced or {}},
            }
        )

    return run


def session(gw: Gateway, source: str = EXTERNAL_CLIENT_IP) -> RawSmtp:
    client = RawSmtp(GATEWAY_IP, gw.port, source)
    assert client.reply().code == 220
    assert client.command("EHLO client.example").code == 250
    return client


def test_size_declared_at_mail_over_the_limit(start: Callable[..., Gateway]) -> None:
    gw = start()
    with session(gw) as c:
        reply = c.command("MAIL FROM:<a@ext.org> SIZE=10240001")
        assert str(reply) == "552 5.3.4 Message size exceeds fixed limit"
        assert c.command("MAIL FROM:<a@ext.org> SIZE=10240000").code == 250


def test_message_over_the_limit_after_data_is_refused_and_not_delivered(
    start: Callable[..., Gateway], sink: Sink
) -> None:
    gw = start(main={"message_size_limit": 4096})
    with session(gw) as c:
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        assert c.command("DATA").code == 354
        c.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n")
        c.send((b"y" * 998 + b"\r\n") * 200 + b".\r\n")
        assert str(c.reply()) == "552 5.3.4 Error: message file too big"
        # The session goes on; a message within the limit is accepted.
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        c.command("DATA")
        c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        assert c.reply().code == 250
    (message,) = sink.wait_for(1)
    assert message.parsed()["Subject"] == "small"


def test_recipient_limit(start: Callable[..., Gateway]) -> None:
    gw = start({"recipient_limit": 3})
    with session(gw) as c:
        c.command("MAIL FROM:<a@ext.org>")
        for n in range(3):
            assert c.command(f"RCPT TO:<u{n}@example.com>").code == 250
        assert str(c.command("RCPT TO:<u3@example.com>")) == "452 4.5.3 Error: too many recipients"


def test_overlong_command_line_is_refused_once_and_the_session_continues(
    start: Callable[..., Gateway],
) -> None:
    gw = start({"line_length_limit": 512})
    with session(gw) as c:
        c.send("NOOP " + "x" * 5000 + "\r\n")
        assert str(c.reply()) == "500 5.5.2 Error: line too long"
        assert str(c.command("NOOP")) == "250 2.0.0 Ok"


def test_header_size_limit(start: Callable[..., Gateway], sink: Sink) -> None:
    gw = start({"header_size_limit": 1024})
    with session(gw) as c:
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        c.command("DATA")
        c.send("".join(f"X-Filler-{n}: {'z' * 60}\r\n" for n in range(30)) + "\r\nbody\r\n.\r\n")
        assert str(c.reply()) == "552 5.3.4 Error: message header size exceeds limit"
    assert sink.messages == []


def test_too_many_hops(start: Callable[..., Gateway], sink: Sink) -> None:
    gw = start({"hopcount_limit": 5})
    with session(gw) as c:
        c.command("MAIL FROM:<a@ext.org>")
        c.command("RCPT TO:<bob@example.com>")
        c.command("DATA")
        c.send("".join(f"Received: from hop{n}\r\n" for n in range(5)) + "\r\nloop\r\n.\r\n")
        assert str(c.reply()) == "554 5.4.0 Error: too many hops"


def test_hard_error_limit_ends_the_session(start: Callable[..., Gateway]) -> None:
    gw = start({"hard_error_limit": 3})
    with session(gw) as c:
        assert c.command("BOGUS").code == 502
        assert c.command("BOGUS").code == 502
        c.send("BOGUS\r\n")
        assert str(c.reply()) == "502 5.5.2 Error: command not recognized"
        assert str(c.reply()) == "421 4.7.0 mailgate.test Error: too many errors"
        assert c.closed()


def test_idle_session_times_out(start: Callable[..., Gateway]) -> None:
    gw = start({"session_timeout": 1})
    with session(gw) as c:
        assert str(c.reply(timeout=10)) == "421 4.4.2 mailgate.test Error: timeout exceeded"
        assert c.closed()


def test_connection_count_per_client(start: Callable[..., Gateway]) -> None:
    gw = start({"client_connection_count_limit": 2})
    first, second = session(gw), session(gw)
    try:
        with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as third:
            reply = third.reply()
            assert str(reply) == (
                "421 4.7.0 mailgate.test Error: too many connections from 127.0.0.100"
            )
            assert third.closed()
        # Another client, and a trusted one, are not affected.
        with session(gw, "127.0.0.101"):
            pass
        with session(gw, "127.0.0.30"), session(gw, "127.0.0.30"), session(gw, "127.0.0.30"):
            pass
        first.command("QUIT")
        assert first.closed()
        with session(gw) as again:  # a slot is free again
            assert again.command("NOOP").code == 250
    finally:
        first.close()
        second.close()


def test_message_rate_per_client(start: Callable[..., Gateway]) -> None:
    gw = start({"client_message_rate_limit": 2, "client_rate_time_unit": 3600})
    with session(gw) as c:
        for _ in range(2):
            assert c.command("MAIL FROM:<a@ext.org>").code == 250
            c.command("RSET")
        assert str(c.command("MAIL FROM:<a@ext.org>")) == (
            "450 4.7.1 Error: too much mail from 127.0.0.100"
        )


def test_recipient_rate_per_client(start: Callable[..., Gateway]) -> None:
    gw = start({"client_recipient_rate_limit": 2, "client_rate_time_unit": 3600})
    with session(gw) as c:
        c.command("MAIL FROM:<a@ext.org>")
        assert c.command("RCPT TO:<u1@example.com>").code == 250
        assert c.command("RCPT TO:<u2@example.com>").code == 250
        assert str(c.command("RCPT TO:<u3@example.com>")) == (
            "450 4.7.1 Error: too many recipients from 127.0.0.100"
        )


def test_connection_rate_per_client(start: Callable[..., Gateway]) -> None:
    gw = start({"client_connection_rate_limit": 2, "client_rate_time_unit": 3600})
    for _ in range(2):
        with session(gw) as c:
            c.command("QUIT")
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        assert (
            str(c.reply()) == "421 4.7.0 mailgate.test Error: too many connections from 127.0.0.100"
        )
