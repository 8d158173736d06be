"""The diagnostics over the REST API against a running gateway: POST /api/v1/trace (what the
gateway would do with a message, from the cache or by probing, probes audited) and POST
/api/v1/check (the integration check against real listeners: a capture sink as the border
gateway, another as the internal server); invalid input named by field; administrators only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import BORDER_IP, EXTERNAL_CLIENT_IP, INTERNAL_IP, Gateway, free_port
from tests.integration.test_api import clients, login

__all__ = ["clients"]  # the API client fixture, shared with test_api

API = "/api/v1"
PASSWORD = "correct horse battery"
MAILBOXES = {"postmaster@example.com", "bob@example.com"}
TIMEOUT = 3.0


def seed(relay_port: int, internal_port: int, nameserver: str) -> dict[str, Any]:
    """The seed's scheme, done right: every check passes when the peers answer."""
    return {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal_port}}],
        "main": {
            "destination": "border_gateway",
            "relayhost": {"host": BORDER_IP, "port": relay_port},
            "trusted_networks": [f"{INTERNAL_IP}/32"],
        },
        "advanced": {
            "dns": {"nameservers": [nameserver], "timeout": 2},
            "verification": {"mode": "reject_unverified"},
        },
        "protection": {"upstream_gateways": [BORDER_IP]},
    }


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))


@pytest.fixture
def nameserver(dns_zone: tuple[Any, str]) -> str:
    return dns_zone[1]


@pytest.fixture
def gw(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    internal: Sink,
    nameserver: str,
) -> Gateway:
    border = start_sink(BORDER_IP)
    return start_gateway(seed(border.port, internal.port, nameserver), web=True)


@pytest.fixture
def admin(gw: Gateway, clients: Callable[..., httpx.Client]) -> httpx.Client:
    return login(clients(gw), *gw.admin_login)


def ok(reply: httpx.Response, status: int = 200) -> Any:
    assert reply.status_code == status, f"{reply.request.method} {reply.request.url}: {reply.text}"
    return reply.json()


def field_errors(reply: httpx.Response) -> dict[str, str]:
    assert reply.status_code == 422, reply.text
    return {e["field"]: e["message"] for e in reply.json()["errors"]}


def trace_body(**override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client": EXTERNAL_CLIENT_IP,
        "helo": "mx.ext.org",
        "sender": "alice@ext.org",
        "recipients": ["bob@example.com", "x@other.example"],
    }
    return {**body, **override}


# -- trace -----------------------------------------------------------------------------------


def test_trace_of_a_local_and_a_non_local_recipient(
    gw: Gateway, admin: httpx.Client, internal: Sink
) -> None:
    # From the cache: bob has not been verified yet, so his reply depends on the next hop.
    cached = ok(admin.post("/trace", json=trace_body()))
    bob, other = cached["recipients"]
    assert bob["accepted"] is None
    assert bob["reply"].startswith("250 2.1.5 Ok if the next hop accepts <bob@example.com>")
    assert bob["check"] == "verify"
    assert bob["check_result"]["status"] == "unknown"
    assert other["reply"] == "554 5.7.1 <x@other.example>: Relay access denied"
    assert internal.sessions == 0  # nothing was asked

    probed = ok(admin.post("/trace", json=trace_body(probe=True)))
    assert internal.sessions > 0
    assert (probed["client"], probed["helo"], probed["trusted"], probed["upstream"]) == (
        EXTERNAL_CLIENT_IP, "mx.ext.org", False, False,
    )  # fmt: skip
    assert probed["mail_reply"] == "250 2.1.0 Ok"
    bob, other = probed["recipients"]
    assert bob["reply"] == "250 2.1.5 Ok"
    assert bob["accepted"] is True
    assert bob["check_result"] == {"status": "ok", "detail": bob["check_result"]["detail"],
                                   "source": "probe"}  # fmt: skip
    assert (bob["next_hop"], bob["via"], bob["hosts"]) == (
        f"[{INTERNAL_IP}]:{internal.port}", "route example.com", [INTERNAL_IP],
    )  # fmt: skip
    assert bob["rule"] == "Default"
    assert other["reply"] == "554 5.7.1 <x@other.example>: Relay access denied"
    assert other["accepted"] is False
    assert other["relay"] == "other.example is not a local domain"
    assert other["next_hop"] == ""
    assert probed["data_reply"] == "354 End data with <CR><LF>.<CR><LF>"

    # The probe went to the verification cache: a trace without probe now reads it.
    again = ok(admin.post("/trace", json=trace_body()))
    assert again["recipients"][0]["reply"] == "250 2.1.5 Ok"
    assert again["recipients"][0]["check_result"]["source"].startswith("cache, ")
    # ... and was audited as a verification test.
    audit = ok(admin.get("/audit?action=verify.test"))
    assert [(e["target"], e["actor"]) for e in audit] == [("bob@example.com", "admin")]


def test_trace_of_an_unknown_recipient_and_the_null_sender(
    gw: Gateway, admin: httpx.Client, internal: Sink
) -> None:
    result = ok(admin.post("/trace", json=trace_body(
        sender="", recipients=["nobody@example.com", "bob@example.com"], probe=True)))  # fmt: skip
    assert result["sender"] == ""
    assert result["mail_reply"] == "250 2.1.0 Ok"
    replies = [r["reply"] for r in result["recipients"]]
    assert replies == [
        "550 5.1.1 <nobody@example.com>: Recipient address rejected: undeliverable address: "
        f"host {INTERNAL_IP}[{INTERNAL_IP}]:{internal.port} said: 550 5.1.1 "
        "<nobody@example.com>: Recipient address rejected: User unknown (in reply to RCPT TO "
        "command)",
        "250 2.1.5 Ok",
    ]
    assert result["recipients"][0]["check_result"]["status"] == "bad"


def test_trace_refuses_bad_input_naming_the_field(gw: Gateway, admin: httpx.Client) -> None:
    assert field_errors(admin.post("/trace", json=trace_body(client="mx.ext.org"))) == {
        "client": "'mx.ext.org' is not an IP address"
    }
    assert "recipients" in field_errors(admin.post("/trace", json=trace_body(recipients=[])))
    assert "recipients[0]" in field_errors(
        admin.post("/trace", json=trace_body(recipients=["a" * 513]))
    )
    assert "sender" in field_errors(
        admin.post("/trace", json={"client": EXTERNAL_CLIENT_IP, "recipients": ["b@example.com"]})
    )
    assert "size" in field_errors(admin.post("/trace", json=trace_body(size=-1)))


def test_an_auditor_traces_from_the_cache_but_neither_probes_nor_checks(
    gw: Gateway, admin: httpx.Client, clients: Callable[..., httpx.Client], internal: Sink
) -> None:
    ok(admin.post("/accounts", json={"username": "audrey", "password": PASSWORD,
                                     "role": "auditor"}), 201)  # fmt: skip
    auditor = login(clients(gw), "audrey", PASSWORD)
    refused = auditor.post("/trace", json=trace_body(probe=True))
    assert refused.status_code == 403, refused.text
    assert "probe: only an administrator may probe the next hops" in refused.text
    assert auditor.post("/check", json={"timeout": TIMEOUT}).status_code == 403
    assert internal.sessions == 0  # no probe, no check made

    # A trace from the cache: the same answer an administrator gets, and nothing asked.
    traced = ok(auditor.post("/trace", json=trace_body()))
    assert traced == ok(admin.post("/trace", json=trace_body()))
    bob, other = traced["recipients"]
    assert bob["check_result"]["status"] == "unknown"
    assert other["reply"] == "554 5.7.1 <x@other.example>: Relay access denied"
    assert internal.sessions == 0
    # After an administrator's probe, the auditor's trace reads its result from the cache.
    ok(admin.post("/trace", json=trace_body(probe=True)))
    sessions = internal.sessions
    bob = ok(auditor.post("/trace", json=trace_body()))["recipients"][0]
    assert bob["reply"] == "250 2.1.5 Ok"
    assert bob["check_result"]["source"].startswith("cache, ")
    assert internal.sessions == sessions
    assert [e["actor"] for e in ok(admin.get("/audit?action=verify.test"))] == ["admin"]

    anonymous = clients(gw)
    assert anonymous.post("/trace", json=trace_body()).status_code == 401
    assert anonymous.post("/check", json={}).status_code == 401


# -- integration check -----------------------------------------------------------------------


def test_check_of_the_seed_scheme_is_all_ok(
    gw: Gateway, admin: httpx.Client, internal: Sink
) -> None:
    report = ok(admin.post("/check", json={"timeout": TIMEOUT}))
    assert report["failed"] is False
    findings = report["findings"]
    assert [f["status"] for f in findings] == ["ok"] * len(findings), findings
    names = [f["name"] for f in findings]
    assert names[0] == "local domains"
    assert any(n.startswith(f"relayhost [{BORDER_IP}]:") for n in names)
    assert f"route example.com [{INTERNAL_IP}]:{internal.port}" in names
    assert "verification example.com" in names
    assert all(f["fix"] == "" for f in findings)


def test_check_against_a_relayhost_where_nothing_listens_fails(
    start_gateway: Callable[..., Gateway],
    internal: Sink,
    nameserver: str,
    clients: Callable[..., httpx.Client],
) -> None:
    dead_port = free_port(BORDER_IP)
    gw = start_gateway(seed(dead_port, internal.port, nameserver), web=True)
    admin = login(clients(gw), *gw.admin_login)
    report = ok(admin.post("/check", json={"timeout": TIMEOUT}))
    assert report["failed"] is True
    relay = f"relayhost [{BORDER_IP}]:{dead_port}"
    (finding,) = [f for f in report["findings"] if f["name"] == relay]
    assert finding["status"] == "fail"
    assert (
        finding["detail"] == f"connect to {BORDER_IP}[{BORDER_IP}]:{dead_port}: Connection refused"
    )
    assert "mailgate settings main --relayhost" in finding["fix"]
    others = [f["status"] for f in report["findings"] if f["name"] != relay]
    assert set(others) == {"ok"}


def test_check_timeout_is_bounded(gw: Gateway, admin: httpx.Client) -> None:
    assert "timeout" in field_errors(admin.post("/check", json={"timeout": 0}))
    assert "timeout" in field_errors(admin.post("/check", json={"timeout": 61}))
