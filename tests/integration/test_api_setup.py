"""POST /api/v1/setup/border-gateway against a running gateway: the seed's scheme in one
revision, applied at once (an untrusted client's mail for the new local domain is accepted at
the next RCPT), bad input refused with the field named and nothing changed; administrators
only."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from mailgate.testing.raw import RawSmtp
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, Gateway
from tests.integration.test_api import clients, field_errors, login, ok, revision

__all__ = ["clients"]  # the API client fixture, shared with test_api

PASSWORD = "correct horse battery"
SCHEME = {"domains": ["example.com"], "internal": "10.0.0.30:2525", "border": "192.0.2.10"}


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(web=True)


@pytest.fixture
def admin(gw: Gateway, clients: Callable[..., httpx.Client]) -> httpx.Client:
    return login(clients(gw), *gw.admin_login)


def rcpt(gw: Gateway, address: str) -> str:
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.command("MAIL FROM:<alice@ext.org>")
        return str(smtp.command(f"RCPT TO:<{address}>"))


def test_the_seed_in_one_revision_applied_at_once(gw: Gateway, admin: httpx.Client) -> None:
    assert rcpt(gw, "bob@example.com") == "554 5.7.1 <bob@example.com>: Relay access denied"
    before = revision(admin)
    applied = ok(admin.post("/setup/border-gateway", json=SCHEME))
    assert applied["revision"] == before + 1 == revision(admin)
    assert applied["steps"][0] == "1. local domains example.com, routed to [10.0.0.30]:2525"
    assert len(applied["steps"]) == 6
    config = ok(admin.get("/config"))["config"]
    assert config["main"]["destination"] == "border_gateway"
    assert config["main"]["relayhost"]["host"] == "192.0.2.10"
    assert config["main"]["trusted_networks"] == ["10.0.0.30/32"]
    assert config["protection"]["upstream_gateways"] == ["192.0.2.10/32"]
    assert config["advanced"]["verification"]["mode"] == "reject_unverified"
    # Verification is on now: the next hop (nothing listens there) cannot confirm bob.
    assert rcpt(gw, "bob@example.com").startswith(
        "450 4.1.1 <bob@example.com>: Recipient address rejected: unverified address"
    )


def test_an_open_relay_through_the_border_is_refused_and_nothing_changes(
    admin: httpx.Client,
) -> None:
    before = revision(admin)
    errors = field_errors(admin.post("/setup/border-gateway", json={
        **SCHEME, "border": "10.0.0.1", "trusted_networks": ["10.0.0.0/8"]}))  # fmt: skip
    assert errors == {"trusted_networks": "10.0.0.0/8 contains the border gateway 10.0.0.1/32: "
                      "mail from the internet arrives through it and would be relayed anywhere"}  # fmt: skip
    assert "internal" in field_errors(admin.post("/setup/border-gateway",
                                                 json={**SCHEME, "internal": "10.0.0.30:0"}))  # fmt: skip
    assert "domains" in field_errors(admin.post("/setup/border-gateway",
                                                json={**SCHEME, "domains": []}))  # fmt: skip
    assert revision(admin) == before


def test_only_administrators_set_up(
    gw: Gateway, admin: httpx.Client, clients: Callable[..., httpx.Client]
) -> None:
    ok(admin.post("/accounts", json={"username": "audrey", "password": PASSWORD,
                                     "role": "auditor"}), 201)  # fmt: skip
    before = revision(admin)
    auditor = login(clients(gw), "audrey", PASSWORD)
    assert auditor.post("/setup/border-gateway", json=SCHEME).status_code == 403
    assert clients(gw).post("/setup/border-gateway", json=SCHEME).status_code == 401
    assert revision(admin) == before
