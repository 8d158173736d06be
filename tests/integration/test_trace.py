"""`mailgate trace` against a running gateway: for every recipient, the reply the trace
predicts is the reply the gateway then gives over the wire, for an untrusted and a trusted
client, with recipient verification probing a real next hop and the domain check asking a
real DNS server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway

TRUSTED_IP = "127.0.0.40"
MAILBOXES = {"bob@example.com", "postmaster@example.com"}
RECIPIENTS = [
    "bob@example.com",
    "nobody@example.com",
    "<Bob@EXAMPLE.com.>",
    "eve@elsewhere.example",
    "bob%elsewhere.example@example.com",
    "<@example.com:bob@elsewhere.example>",
    "bob@[127.0.0.30]",
]


def mailgate(gw: Gateway, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), *args])
    assert result.exit_code == code, result.output
    return result.output


def traced(gw: Gateway, client: str, *extra: str) -> dict[str, Any]:
    args = ["trace", "--client", client, "--from", "alice@ext.org", "--json", *extra]
    for recipient in RECIPIENTS:
        args += ["--to", recipient]
    return json.loads(mailgate(gw, *args))


def on_the_wire(gw: Gateway, client: str) -> list[str]:
    with RawSmtp(GATEWAY_IP, gw.port, client) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        assert smtp.command("MAIL FROM:<alice@ext.org>").code == 250
        return [str(smtp.command(f"RCPT TO:{_path(r)}")) for r in RECIPIENTS]


def _path(recipient: str) -> str:
    return recipient if recipient.startswith("<") else f"<{recipient}>"


def test_trace_predicts_every_rcpt_reply(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
) -> None:
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    _zone, nameserver = dns_zone  # empty: every outside domain is unknown
    gw = start_gateway({
        "domains": [{"name": "example.com",
                     "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"verification": {"mode": "reject_unverified",
                                      "reject_unknown_domains": True},
                     "dns": {"nameservers": [nameserver]}},
    })  # fmt: skip

    # Without --probe, nothing is asked: an address not yet verified is undecided.
    before = traced(gw, EXTERNAL_CLIENT_IP)
    assert [r["accepted"] for r in before["recipients"]][:3] == [None, None, None]
    assert before["recipients"][0]["reply"].startswith("250 2.1.5 Ok if the next hop accepts")
    assert internal.sessions == 0  # no probe

    untrusted = traced(gw, EXTERNAL_CLIENT_IP, "--probe")
    assert internal.sessions > 0  # the next hop was asked
    assert not untrusted["trusted"]
    predicted = [r["reply"] for r in untrusted["recipients"]]
    assert predicted == on_the_wire(gw, EXTERNAL_CLIENT_IP)
    assert predicted[0] == "250 2.1.5 Ok"
    assert predicted[1].startswith("550 5.1.1 <nobody@example.com>: Recipient address rejected")
    assert predicted[2] == "250 2.1.5 Ok"
    assert all(reply.startswith("554 5.7.1 <") for reply in predicted[3:])

    trusted = traced(gw, TRUSTED_IP)
    assert trusted["trusted"]
    predicted = [r["reply"] for r in trusted["recipients"]]
    assert predicted == on_the_wire(gw, TRUSTED_IP)
    assert predicted[3] == (
        "550 5.1.2 <eve@elsewhere.example>: Recipient address rejected: Domain not found"
    )

    bob = untrusted["recipients"][0]
    assert (bob["next_hop"], bob["via"]) == (
        f"[{INTERNAL_IP}]:{internal.port}",
        "route example.com",
    )
    assert bob["hosts"] == [INTERNAL_IP]
    assert bob["rule"] == "Default"


def test_trace_text_output_and_errors(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    internal = start_sink(INTERNAL_IP)
    gw = start_gateway({
        "domains": [{"name": "example.com",
                     "route": {"host": INTERNAL_IP, "port": internal.port}}],
    })  # fmt: skip
    text = mailgate(gw, "trace", "--client", EXTERNAL_CLIENT_IP, "--helo", "mx.ext.org",
                    "--from", "alice@ext.org", "--to", "bob@example.com",
                    "--to", "eve@elsewhere.example")  # fmt: skip
    assert text.splitlines() == [
        f"client {EXTERNAL_CLIENT_IP} (HELO mx.ext.org): not in trusted networks",
        "MAIL FROM:<alice@ext.org>: 250 2.1.0 Ok",
        "RCPT TO:<bob@example.com>: 250 2.1.5 Ok",
        "    relay: local domain example.com",
        f"    next hop: [{INTERNAL_IP}]:{internal.port} (route example.com), TLS may",
        f"    tries: {INTERNAL_IP}",
        "    rule: Default (scanned by no module enabled)",
        "RCPT TO:<eve@elsewhere.example>: 554 5.7.1 <eve@elsewhere.example>: Relay access denied",
        "    relay: elsewhere.example is not a local domain",
        "DATA: 354 End data with <CR><LF>.<CR><LF>",
    ]
    error = mailgate(gw, "trace", "--client", "mx.ext.org", "--from", "a@ext.org",
                     "--to", "bob@example.com", code=2)  # fmt: skip
    assert "error: client: 'mx.ext.org' is not an IP address" in error
