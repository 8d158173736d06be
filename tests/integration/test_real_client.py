"""The real client behind the border gateway (SPEC section 4.3): XFORWARD and XCLIENT from the
configured upstream gateway only, else its Received header; recorded in the message log."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import (
    BORDER_IP,
    EXTERNAL_CLIENT_IP,
    GATEWAY_IP,
    INTERNAL_IP,
    Gateway,
    wait_until,
)


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]) -> Gateway:
    sink = start_sink(INTERNAL_IP)
    return start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}],
        "protection": {"upstream_gateways": [f"{BORDER_IP}/32"],
                       "external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False}},
    })  # fmt: skip


def session(gw: Gateway, source: str) -> tuple[RawSmtp, list[str]]:
    c = RawSmtp(GATEWAY_IP, gw.port, source)
    c.reply()
    return c, c.command("EHLO border.test").lines


def logged(gw: Gateway, subject: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), "log", "search",
                                          "--subject", subject, "--json"])  # fmt: skip
        rows = json.loads(result.output)
        return rows[0] if rows else None

    found: dict[str, Any] = wait_until(find, what=f"{subject} in the message log")
    return found


def deliver(c: RawSmtp, subject: str, headers: str = "") -> None:
    assert c.command("MAIL FROM:<alice@sender.example>").code == 250
    assert c.command("RCPT TO:<bob@example.com>").code == 250
    assert c.command("DATA").code == 354
    c.send(f"{headers}Subject: {subject}\r\n\r\nx\r\n.\r\n")
    assert c.reply().code == 250


def test_offered_and_accepted_from_the_border_only(gw: Gateway) -> None:
    c, extensions = session(gw, BORDER_IP)
    with c:
        assert "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT" in extensions
        assert "XCLIENT NAME ADDR PROTO HELO LOGIN" in extensions
        assert str(c.command("XFORWARD NAME=mail.sender.example ADDR=192.0.2.5")) == "250 2.0.0 Ok"
        assert (
            str(c.command("XFORWARD HELO=mx.sender.example PROTO=ESMTP SOURCE=REMOTE"))
            == "250 2.0.0 Ok"
        )
        assert (
            str(c.command("XFORWARD COLOR=blue")) == "501 5.5.4 Bad XFORWARD attribute name: COLOR"
        )
        deliver(c, "forwarded")
        c.command("MAIL FROM:<alice@sender.example>")
        assert (
            str(c.command("XFORWARD ADDR=192.0.2.9"))
            == "503 5.5.1 Error: MAIL transaction in progress"
        )
    row = logged(gw, "forwarded")
    assert (row["real_client_ip"], row["real_client_source"]) == ("192.0.2.5", "xforward")
    assert row["client_ip"] == BORDER_IP
    c, extensions = session(gw, EXTERNAL_CLIENT_IP)
    with c:
        assert not any(e.startswith(("XFORWARD", "XCLIENT")) for e in extensions)
        assert (
            str(c.command("XFORWARD ADDR=192.0.2.5"))
            == "550 5.7.0 Error: insufficient authorization"
        )
        assert (
            str(c.command("XCLIENT ADDR=192.0.2.5"))
            == "550 5.7.0 Error: insufficient authorization"
        )


def test_xclient_starts_the_session_over_as_the_named_client(gw: Gateway) -> None:
    c, _ = session(gw, BORDER_IP)
    with c:
        assert str(c.command("XCLIENT ADDR=192.0.2.6 HELO=mx.cl.example NAME=[UNAVAILABLE]")) == (
            "220 mailgate.test ESMTP mailgate"
        )
        c.command("EHLO border.test")
        deliver(c, "xclient")
    row = logged(gw, "xclient")
    assert (row["real_client_ip"], row["real_client_source"]) == ("192.0.2.6", "xclient")


def test_received_header_of_the_border_when_it_sends_nothing(gw: Gateway) -> None:
    received = ("Received: from mx.sender.example (mail.sender.example [192.0.2.77])\r\n"
                "\tby border.test (Postfix) with ESMTP id 4ABC; Fri, 27 Nov 2026 10:00:00 +0000\r\n")  # fmt: skip
    c, _ = session(gw, BORDER_IP)
    with c:
        deliver(c, "via received", received)
    row = logged(gw, "via received")
    assert (row["real_client_ip"], row["real_client_source"]) == ("192.0.2.77", "received")
    # The same header from anyone else is not believed.
    c, _ = session(gw, EXTERNAL_CLIENT_IP)
    with c:
        deliver(c, "forged received", received)
    row = logged(gw, "forged received")
    assert (row["real_client_ip"], row["real_client_source"]) == (EXTERNAL_CLIENT_IP, "connection")
