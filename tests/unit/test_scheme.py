"""The seed's scheme in one step (mailgate.config.scheme): one edit that sets every step of
SPEC section 1, refusing bad input and an open relay through the border, field named."""

from __future__ import annotations

from typing import Any

import pytest

from mailgate.config.model import Config, ConfigError, validate
from mailgate.config.scheme import Applied, BorderScheme, border_gateway_scheme


def applied(scheme: BorderScheme, start: dict[str, Any] | None = None) -> tuple[Config, Applied]:
    data = (start or Config()).model_dump(mode="json")
    done = Applied()
    border_gateway_scheme(scheme, done)(data)
    return validate(data), done


def test_every_step_of_the_seed_at_once() -> None:
    config, done = applied(BorderScheme(["example.com", "sub.example.com"], "10.0.0.30:2525",
                                        "192.0.2.10"))  # fmt: skip
    assert [(d.name, d.local, d.route.host if d.route else None, d.route.port if d.route else 0)
            for d in config.domains] == [("example.com", True, "10.0.0.30", 2525),
                                          ("sub.example.com", True, "10.0.0.30", 2525)]  # fmt: skip
    main = config.main
    assert main.destination == "border_gateway"
    assert main.relayhost is not None
    assert (main.relayhost.host, main.relayhost.port, main.relayhost.mx_lookup) == (
        "192.0.2.10", 25, False)  # fmt: skip
    assert main.trusted_networks == ["10.0.0.30/32"]
    assert config.protection.upstream_gateways == ["192.0.2.10/32"]
    assert config.advanced.verification.mode == "reject_unverified"
    for rule in [*config.rules, config.default_rule]:
        for module in ("antivirus", "antispam", "phishing", "content", "auth"):
            assert "reject" not in getattr(rule, module).model_dump().values()
    assert [line.split(" ", 1)[0] for line in done.steps] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert done.steps[0] == "1. local domains example.com, sub.example.com, routed to " \
        "[10.0.0.30]:2525"  # fmt: skip


def test_existing_domain_records_are_made_local_and_routed_and_others_kept() -> None:
    start = Config.model_validate({"domains": [
        {"name": "example.com", "local": False},
        {"name": "partner.example", "local": False, "route": {"host": "10.9.9.9"}},
    ]})  # fmt: skip
    config, _ = applied(BorderScheme(["EXAMPLE.com"], "[2001:db8::30]:25", "border.example.net",
                                     border_mx_lookup=True, trusted_networks=["2001:db8::/64"],
                                     upstream_gateways=["198.51.100.7"]), start)  # fmt: skip
    records = {d.name: d for d in config.domains}
    assert set(records) == {"example.com", "partner.example"}
    assert records["example.com"].local
    assert records["example.com"].route is not None
    assert records["example.com"].route.host == "2001:db8::30"
    assert not records["partner.example"].local
    assert config.main.relayhost is not None
    assert (config.main.relayhost.host, config.main.relayhost.mx_lookup) == (
        "border.example.net", True)  # fmt: skip
    assert config.protection.upstream_gateways == ["198.51.100.7/32"]  # as the model writes it


def test_a_rule_in_reject_mode_becomes_delete() -> None:
    start = Config.model_validate({"rules": [{"name": "block", "senders": ["*@spam.example"],
                                              "mode": "reject"}]})  # fmt: skip
    config, done = applied(BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10"), start)
    assert config.rules[0].mode == "delete"
    assert "Reject replaced by Delete message in every rule" in done.steps[4]


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (BorderScheme([], "10.0.0.30", "192.0.2.10"), "domains: name at least one"),
        (BorderScheme(["example.com"], "10.0.0.30:0", "192.0.2.10"), "internal: "),
        (BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10:70000"), "border: "),
        (BorderScheme(["example.com"], "mail.example.com", "192.0.2.10"),
         "trusted_networks: the internal servers are given by name"),
        (BorderScheme(["example.com"], "10.0.0.30", "border.example.net"),
         "upstream_gateways: the border gateway are given by name"),
        (BorderScheme(["example.com"], "10.0.0.30", "10.0.0.1", trusted_networks=["10.0.0.0/24"]),
         "trusted_networks: 10.0.0.0/24 contains the border gateway 10.0.0.1/32: mail from"),
        (BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10", trusted_networks=["::/0"]),
         "trusted_networks: ::/0 trusts every client"),
        (BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10",
                      trusted_networks=["::ffff:0:0/96"]),
         "trusted_networks: ::ffff:0:0/96 trusts every client"),
        (BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10",
                      trusted_networks=["::ffff:192.0.2.0/120"]),
         "trusted_networks: ::ffff:192.0.2.0/120 contains the border gateway"),
        (BorderScheme(["example.com"], "10.0.0.30", "192.0.2.10", trusted_networks=["10.0.0/8"]),
         "trusted_networks: "),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_the_field_named(scheme: BorderScheme, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        applied(scheme)
    assert refused.value.errors[0].startswith(message), refused.value.errors


def test_a_bad_domain_name_is_refused_by_the_configuration_model() -> None:
    with pytest.raises(ConfigError) as refused:
        applied(BorderScheme(["bad domain"], "10.0.0.30", "192.0.2.10"))
    assert "is not a valid domain name" in refused.value.errors[0]
