"""STARTTLS (RFC 3207): inbound with a configured certificate, the plaintext injection attack
(CVE-2011-0411), mandatory TLS, and outbound TLS levels none / may / encrypt."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway, wait_until


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("mailgate.test", "127.0.0.20")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


def tls_gateway(start: Callable[..., Gateway], sink: Sink, files: tuple[str, str],
                level: str = "may") -> Gateway:  # fmt: skip
    return start(
        {
            "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}],
            "advanced": {"tls": {"cert_file": files[0], "key_file": files[1], "inbound_level": level}},
        }
    )  # fmt: skip


def test_inbound_starttls(
    start_gateway: Callable[..., Gateway], sink: Sink, cert_files: tuple[str, str],
    client_context: ssl.SSLContext,
) -> None:  # fmt: skip
    gw = tls_gateway(start_gateway, sink, cert_files)
    with smtplib.SMTP(GATEWAY_IP, gw.port, source_address=(EXTERNAL_CLIENT_IP, 0)) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=client_context)
        assert code == 220
        client.ehlo("client.example")
        assert not client.has_extn("starttls")  # not offered twice
        client.sendmail("a@ext.org", ["bob@example.com"], b"Subject: tls\r\n\r\nsecret\r\n")
    (message,) = sink.wait_for(1)
    head = message.data.split(b"; ", 1)[0]
    assert b"with ESMTPS id" in head
    assert b"(using TLSv1.3 with cipher" in head


def test_starttls_command_injection(
    start_gateway: Callable[..., Gateway], sink: Sink, cert_files: tuple[str, str],
    client_context: ssl.SSLContext,
) -> None:  # fmt: skip
    """CVE-2011-0411: a command pipelined after STARTTLS in plaintext must not run."""
    gw = tls_gateway(start_gateway, sink, cert_files)
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        assert str(c.reply()) == "220 2.0.0 Ready to start TLS"
        c.starttls(client_context, server_hostname="mailgate.test")
        reply = c.command("EHLO client.example")
        assert reply.code == 250
        assert reply.lines[0] == "mailgate.test"
        # The injected MAIL was dropped: a new MAIL is not "nested".
        assert str(c.command("MAIL FROM:<a@ext.org>")) == "250 2.1.0 Ok"


def test_mandatory_inbound_tls(
    start_gateway: Callable[..., Gateway], sink: Sink, cert_files: tuple[str, str],
    client_context: ssl.SSLContext,
) -> None:  # fmt: skip
    gw = tls_gateway(start_gateway, sink, cert_files, level="encrypt")
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        assert (
            str(c.command("MAIL FROM:<a@ext.org>"))
            == "530 5.7.0 Must issue a STARTTLS command first"
        )
        assert c.command("STARTTLS").code == 220
        c.starttls(client_context, server_hostname="mailgate.test")
        c.command("EHLO client.example")
        assert c.command("MAIL FROM:<a@ext.org>").code == 250
        assert str(c.command("STARTTLS")) == "554 5.5.1 Error: TLS already active"


def test_starttls_without_certificate(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway()
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        assert str(c.command("STARTTLS")) == "454 4.7.0 TLS not available due to local problem"


def outbound(start_gateway: Callable[..., Gateway], sink: Sink, level: str,
             per_domain: str | None = None) -> Gateway:  # fmt: skip
    domain: dict[str, Any] = {
        "name": "example.com",
        "route": {"host": INTERNAL_IP, "port": sink.port},
    }
    if per_domain:
        domain["tls"] = per_domain
    return start_gateway({"domains": [domain], "advanced": {"tls": {"outbound_level": level}}})


@pytest.fixture
def tls_sink(start_sink: Callable[..., Sink], ca: trustme.CA) -> Sink:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("internal.test").configure_cert(context)
    return start_sink(INTERNAL_IP, ssl_context=context)


@pytest.mark.parametrize(("level", "per_domain", "tls"), [
    ("may", None, True), ("none", None, False), ("encrypt", None, True), ("none", "may", True),
    ("may", "none", False),
])  # fmt: skip
def test_outbound_tls_levels(
    start_gateway: Callable[..., Gateway], tls_sink: Sink, level: str, per_domain: str | None,
    tls: bool,
) -> None:  # fmt: skip
    gw = outbound(start_gateway, tls_sink, level, per_domain)
    with gw.client() as client:
        client.sendmail("a@ext.org", ["bob@example.com"], b"Subject: out\r\n\r\nx\r\n")
    (message,) = tls_sink.wait_for(1)
    assert message.tls is tls


def test_outbound_encrypt_defers_when_tls_is_not_offered(
    start_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    gw = outbound(start_gateway, sink, "may", per_domain="encrypt")
    with gw.client() as client:
        client.sendmail("a@ext.org", ["bob@example.com"], b"Subject: out\r\n\r\nx\r\n")
    (item,) = wait_deferred(gw)
    reason = item["recipients"][0]["reason"]
    assert reason.startswith("TLS is required, but was not offered by host")
    assert sink.messages == []


def wait_deferred(gw: Gateway) -> list[dict[str, Any]]:
    def deferred() -> list[dict[str, Any]]:
        items = gw.queue()
        return items if items and all(i["recipients"][0]["reason"] for i in items) else []

    result: list[dict[str, Any]] = wait_until(deferred, 10, "a deferred message")
    return result
