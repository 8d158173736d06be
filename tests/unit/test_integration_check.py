"""The configuration checks of `mailgate check` (SPEC section 4.3), without the network: local
domains, trusted networks against the border gateway, Reject actions behind a border gateway,
and how probe answers are judged. The network steps are tested over real sockets in
tests/integration/test_cli_check.py."""

from __future__ import annotations

import asyncio
from typing import Any

from mailgate.config.model import Config
from mailgate.integration_check import (
    Finding,
    judge_verification,
    local_domains,
    reject_actions,
    run_checks,
    trusted_networks,
    unrouted,
)
from mailgate.queue.routing import Router
from mailgate.verify.cache import Entry

BORDER = "192.0.2.10"
INTERNAL = "10.1.2.3"
NO_AUTH = {"external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False}}


def config(**sections: Any) -> Config:
    return Config.model_validate(sections)


def seed_config(**extra: Any) -> Config:
    """The seed's scheme done right: local domain routed inside, border as relayhost, only the
    internal server trusted, Delete instead of Reject, authentication off."""
    data: dict[str, Any] = {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL}}],
        "main": {
            "destination": "border_gateway",
            "relayhost": {"host": BORDER},
            "trusted_networks": [f"{INTERNAL}/32"],
        },
        "protection": {**NO_AUTH, "upstream_gateways": [BORDER]},
        "default_rule": {"name": "Default", "antivirus": {"infected": "delete"}},
    }
    data.update(extra)
    return Config.model_validate(data)


def statuses(findings: list[Finding]) -> list[str]:
    return [f.status for f in findings]


def test_no_local_domain_fails_and_names_the_command() -> None:
    found = local_domains(config(domains=[{"name": "example.com", "local": False}]))
    assert statuses(found) == ["fail"]
    assert "accepts no mail for the internal servers" in found[0].detail
    assert "mailgate domain add" in found[0].fix


def test_local_domains_listed() -> None:
    found = local_domains(config(domains=[{"name": "example.com"}, {"name": "corp.example"}]))
    assert found == [Finding("local domains", "ok", "example.com, corp.example")]


def test_trusted_network_holding_an_upstream_gateway_fails() -> None:
    cfg = seed_config(main={"trusted_networks": ["192.0.2.0/24"]})
    found = trusted_networks(cfg, [(BORDER, "upstream gateway")])
    assert statuses(found) == ["fail"]
    assert "192.0.2.0/24 contains the border gateway 192.0.2.10" in found[0].detail
    assert "open relay through the border" in found[0].detail
    assert "remove 192.0.2.0/24" in found[0].fix


def test_ipv4_mapped_gateway_counts_as_ipv4() -> None:
    cfg = seed_config(main={"trusted_networks": ["192.0.2.0/28"]})
    found = trusted_networks(cfg, [(f"::ffff:{BORDER}", "relayhost [::ffff:192.0.2.10]:25")])
    assert statuses(found) == ["fail"]


def test_every_address_trusted_fails() -> None:
    for everything in ("0.0.0.0/0", "::/0"):
        found = trusted_networks(seed_config(main={"trusted_networks": [everything]}), [])
        assert statuses(found) == ["fail"], everything
        assert "trusts every client: an open relay" in found[0].detail


def test_no_trusted_network_warns() -> None:
    found = trusted_networks(seed_config(main={}), [])
    assert statuses(found) == ["warn"]
    assert "cannot send mail out through mailgate" in found[0].detail
    assert "--trusted-network" in found[0].fix


def test_trusted_networks_apart_from_the_border_are_ok() -> None:
    found = trusted_networks(seed_config(), [(BORDER, "upstream gateway")])
    assert statuses(found) == ["ok"]
    assert "none contains the border gateway" in found[0].detail


def test_reject_actions_behind_a_border_warn_naming_rule_and_verdict() -> None:
    cfg = seed_config(
        rules=[{"name": "Sales", "mode": "reject"}],
        default_rule={"name": "Default"},  # antivirus/infected etc. reject by default
        protection={**NO_AUTH, "antivirus": {"enabled": True}},
    )
    found = reject_actions(cfg)
    assert statuses(found) == ["warn", "warn"]
    assert found[0].name == "rule Sales"
    assert "mode reject" in found[0].detail
    assert found[0].fix == "mailgate rules set Sales mode=delete"
    assert found[1].name == "rule Default"
    assert "antivirus/infected" in found[1].detail
    assert "content" not in found[1].detail  # content filtering is off: never a verdict
    assert "backscatter" in found[1].detail
    assert "mailgate rules replace-action reject delete" in found[1].fix


def test_reject_without_a_border_is_fine() -> None:
    cfg = config(domains=[{"name": "example.com"}], protection={"antivirus": {"enabled": True}})
    assert statuses(reject_actions(cfg)) == ["ok"]


def test_local_domain_without_route_warns_of_a_loop() -> None:
    cfg = seed_config(domains=[{"name": "example.com"}])
    found = unrouted("example.com", Router(cfg).next_hop("example.com"))
    assert statuses(found) == ["warn"]
    assert "the relayhost [192.0.2.10]:25" in found[0].detail
    assert "loop" in found[0].detail
    assert found[0].fix.endswith("mailgate domain set example.com --route HOST[:PORT]")


def _entry(address: str, status: str, reply: str = "250 2.1.5 Ok") -> Entry:
    return Entry(address, status, reply, 0.0, 0.0)  # type: ignore[arg-type]


def test_probe_answers_judged() -> None:
    dest = Router(seed_config()).next_hop("example.com")
    pm, nobody = "postmaster@example.com", "nobody@example.com"
    good = judge_verification("example.com", dest, _entry(pm, "ok"), _entry(nobody, "bad"))
    assert good.status == "ok"
    catch_all = judge_verification("example.com", dest, _entry(pm, "ok"), _entry(nobody, "ok"))
    assert catch_all.status == "warn"
    assert "accepts every address" in catch_all.detail
    refused = judge_verification(
        "example.com", dest, _entry(pm, "bad", "550 5.1.1 no"), _entry(nobody, "bad")
    )
    assert refused.status == "fail"
    assert "550 5.1.1 no" in refused.detail
    assert "refuse (550) real recipients" in refused.detail


def test_seed_configuration_passes_every_configuration_check() -> None:
    """The seed's scheme done right: nothing to fix in the configuration (the network steps
    are judged over real sockets in the integration tests)."""
    cfg = seed_config()
    findings = [
        *local_domains(cfg),
        *trusted_networks(cfg, [(BORDER, "upstream gateway")]),
        *reject_actions(cfg),
        *unrouted("example.com", Router(cfg).next_hop("example.com")),
    ]
    assert statuses(findings) == ["ok", "ok", "ok"]


def test_a_broken_check_becomes_a_failed_finding() -> None:
    async def broken(config: Config, address: str, store: None) -> Entry:
        raise RuntimeError("boom")

    cfg = seed_config(
        domains=[{"name": "example.com", "local": True}],
        main={"destination": "dns", "trusted_networks": [f"{INTERNAL}/32"]},
        advanced={"verification": {"mode": "reject_unverified"}},
    )
    findings = asyncio.run(run_checks(cfg, timeout=1, probe=broken))
    failed = [f for f in findings if f.name == "verification"]
    assert statuses(failed) == ["fail"]
    assert "boom" in failed[0].detail
