"""Anti-Spam over the wire with a real Rspamd (offline): spam gets its action, probable spam is
delivered tagged, Rspamd stopped gives the scanner-error action."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.rspamd import GTUBE, GTUBE_ADD_HEADER, RspamdInstance
from mailgate.testing.sink import Sink
from tests.conftest import INTERNAL_IP, Gateway


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RspamdInstance]:
    with RspamdInstance("127.0.0.72") as instance:
        yield instance


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


def scanning(
    start_gateway: Callable[..., Gateway], internal: Sink, url: str, spam: str = "reject"
) -> Gateway:
    return start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "protection": {"antispam": {"enabled": True, "url": url, "timeout": 5}},
        "default_rule": {"name": "Default", "antispam": {"spam": spam}},
    })  # fmt: skip


def message(body: str, subject: str = "offer") -> bytes:
    return (f"From: alice@ext.org\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@ext.org>\r\n"
            f"\r\n{body}\r\n").encode()  # fmt: skip


def send(gw: Gateway, data: bytes) -> tuple[int, bytes]:
    with gw.client() as client:
        client.ehlo("mx.ext.org")
        client.mail("alice@ext.org")
        client.rcpt("bob@example.com")
        return client.data(data)


def test_spam_is_refused(
    start_gateway: Callable[..., Gateway], internal: Sink, rspamd: RspamdInstance
) -> None:
    gw = scanning(start_gateway, internal, rspamd.url)
    assert send(gw, message(GTUBE)) == (554, b"5.7.1 Error: message rejected: spam")
    assert send(gw, message("Hello Bob, see you at lunch.", "lunch"))[0] == 250
    (delivered,) = internal.wait_for(1)
    assert delivered.parsed()["Subject"] == "lunch"
    assert delivered.parsed()["X-Spam-Status"].startswith("No")


def test_spam_quarantined_and_probable_spam_tagged(
    start_gateway: Callable[..., Gateway], internal: Sink, rspamd: RspamdInstance
) -> None:
    gw = scanning(start_gateway, internal, rspamd.url, spam="quarantine")
    assert send(gw, message(GTUBE, "spam"))[0] == 250
    assert send(gw, message(GTUBE_ADD_HEADER, "maybe"))[0] == 250
    (delivered,) = internal.wait_for(1)
    parsed = delivered.parsed()
    assert parsed["Subject"] == "[!!Probable Spam] maybe"
    assert parsed["X-Spam-Status"].startswith("Yes")
    assert float(parsed["X-Spam-Score"]) >= 6
    kept = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), "quarantine", "list", "--json"])
    (spam,) = json.loads(kept.output)
    assert spam["subject"] == "spam"
    assert spam["verdicts"]["antispam"].startswith("spam (score")


def test_rspamd_down_gives_the_error_action(
    start_gateway: Callable[..., Gateway], internal: Sink
) -> None:
    gw = scanning(start_gateway, internal, "http://127.0.0.73:9")
    assert send(gw, message("hello")) == (
        451,
        b"4.7.1 Error: the message could not be scanned; try again later",
    )
