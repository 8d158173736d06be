"""Long lines on the way out (Postfix's smtp_line_length_limit): mailgate breaks a line longer
than 998 octets exactly as a real Postfix relaying the same message does, and sends lines as
they are when the limit is 0."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator

import pytest

from mailgate.testing.postfix import PostfixInstance, border_gateway, postfix_available
from mailgate.testing.sink import Sink
from tests.conftest import (
    BORDER_IP,
    EXTERNAL_CLIENT_IP,
    INTERNAL_IP,
    INTERNET_IP,
    Gateway,
    free_port,
)

BODY = (
    b"exactly the limit: " + b"a" * 979 + b"\r\n"
    + b"one more: " + b"b" * 989 + b"\r\n"
    + b"." + b"c" * 3000 + b"\r\n"
    + b"short\r\n"
    + b"QUJD" * 1500 + b"\r\n"
)  # fmt: skip
MESSAGE = (
    b"From: <alice@example.net>\r\nTo: <bob@example.com>\r\nSubject: long lines\r\n"
    b"X-Long: " + b"word " * 400 + b"end\r\n\r\n" + BODY
)


def _header(message: bytes, name: bytes) -> bytes:
    """The field `name` as it arrived: its first line and every continuation line."""
    lines = message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(name + b":"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\r\n".join(lines[start:end])


def _body(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


@pytest.fixture
def postfix_relay(start_sink: Callable[..., Sink]) -> Iterator[tuple[PostfixInstance, Sink]]:
    """A real Postfix (the test command installs it: never a skip) relaying example.com to a
    sink of its own, with its default smtp_line_length_limit."""
    assert postfix_available(), "Debian's postfix package is not installed"
    received = start_sink(INTERNET_IP)
    relay = border_gateway(
        BORDER_IP, free_port(BORDER_IP), ["example.com"], received.next_hop, received.next_hop,
        [f"{EXTERNAL_CLIENT_IP}/32"], verify_recipients=False, name="long-lines",
    )  # fmt: skip
    try:
        relay.start()
        yield relay, received
    finally:
        relay.remove()


def _through_mailgate(
    start_gateway: Callable[..., Gateway], sink: Sink, limit: int | None = None
) -> bytes:
    extra: dict[str, object] = {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}]
    }
    if limit is not None:
        extra["advanced"] = {"delivery": {"line_length_limit": limit}}
    gateway = start_gateway(extra)
    with gateway.client() as client:
        assert client.sendmail("alice@example.net", ["bob@example.com"], MESSAGE) == {}
    [message] = sink.wait_for(1, timeout=30)
    return message.data


def test_long_lines_are_broken_as_postfix_breaks_them(
    postfix_relay: tuple[PostfixInstance, Sink],
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
) -> None:
    relay, postfix_out = postfix_relay
    with smtplib.SMTP(relay.address, relay.port, source_address=(EXTERNAL_CLIENT_IP, 0),
                      timeout=30) as client:  # fmt: skip
        assert client.sendmail("alice@example.net", ["bob@example.com"], MESSAGE) == {}
    [by_postfix] = postfix_out.wait_for(1, timeout=30)
    by_mailgate = _through_mailgate(start_gateway, start_sink(INTERNAL_IP))

    assert _body(by_mailgate) == _body(by_postfix.data)
    assert _header(by_mailgate, b"X-Long") == _header(by_postfix.data, b"X-Long")
    # Both are within the limit, and taking the breaks out gives the original back.
    assert max(len(line) for line in by_mailgate.split(b"\r\n")) <= 998
    assert _body(by_mailgate).replace(b"\r\n ", b"") == BODY
    assert _body(by_mailgate) != BODY


def test_limit_zero_sends_lines_as_they_are(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    by_mailgate = _through_mailgate(start_gateway, start_sink(INTERNAL_IP), limit=0)
    assert _body(by_mailgate) == BODY
    assert _header(by_mailgate, b"X-Long") == b"X-Long: " + b"word " * 400 + b"end"
