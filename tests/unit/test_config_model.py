"""The configuration model (mailgate.config.model): every bad value refused with an error that
names its field, valid values normalised, defaults equal to Postfix's; and the generated
reference (mailgate.config.reference, docs/configuration.md) covering every field.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mailgate.config.model import Config, ConfigError, TlsLevel, validate
from mailgate.config.reference import render

REPO = Path(__file__).resolve().parents[2]


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert info.value.errors, "a refused configuration names at least one error"
    assert str(info.value) == "; ".join(info.value.errors)
    return info.value.errors


def assert_error(data: Any, prefix: str, *fragments: str) -> None:
    errors = errors_of(data)
    matching = [e for e in errors if e.startswith(prefix)]
    assert matching, f"no error starting with {prefix!r} in {errors}"
    for fragment in fragments:
        assert any(fragment in e for e in matching), f"{fragment!r} not in {matching}"


# -- refusals name the field -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "prefix", "fragment"),
    [
        ({"main": {"trusted_networks": ["bad"]}}, "main.trusted_networks[0]: ", "'bad'"),
        (
            {"main": {"trusted_networks": ["10.0.0.0/8", "10.0.0.0/33"]}},
            "main.trusted_networks[1]: ",
            "10.0.0.0/33",
        ),
        (
            {"main": {"trusted_networks": ["2001:db8::/129"]}},
            "main.trusted_networks[0]: ",
            "2001:db8::/129",
        ),
        (
            {"main": {"trusted_networks": ["192.0.2.0/24 "], "smtp_listen": ["1.2.3.4:x"]}},
            "main.smtp_listen[0]: ",
            "1.2.3.4:x",
        ),
    ],
)
def test_bad_network_or_listen(data: Any, prefix: str, fragment: str) -> None:
    assert_error(data, prefix, fragment)


@pytest.mark.parametrize("port", [0, 70000, -1, 65536])
def test_bad_relayhost_port(port: int) -> None:
    assert_error(
        {"main": {"relayhost": {"host": "border.example.net", "port": port}}},
        "main.relayhost.port: ",
    )


@pytest.mark.parametrize(
    ("antispam", "fragment"),
    [
        ({"socket": "run/rspamd.sock"}, "socket must be an absolute path"),
        ({"url": "https://rspamd.example", "socket": "/run/rspamd.sock"}, "needs an http:// url"),
    ],
)
def test_bad_rspamd_socket(antispam: dict[str, str], fragment: str) -> None:
    assert_error({"protection": {"antispam": antispam}}, "protection.antispam", fragment)


def test_rspamd_socket_is_optional() -> None:
    assert validate({}).protection.antispam.socket is None
    settings = validate({"protection": {"antispam": {"socket": "/run/rspamd/normal.sock"}}})
    assert settings.protection.antispam.socket == "/run/rspamd/normal.sock"


@pytest.mark.parametrize("port", [0, 70000])
def test_bad_route_port(port: int) -> None:
    data = {"domains": [{"name": "example.com", "route": {"host": "192.0.2.1", "port": port}}]}
    assert_error(data, "domains[0].route.port: ")


@pytest.mark.parametrize(
    "name",
    [
        "exa mple.com",
        "exa_mple.com",
        "-example.com",
        "example..com",
        "xn--zz.com",
        "",
        "a" * 64 + ".com",
        "[192.0.2.1]",
        "user@example.com",
    ],
)
def test_bad_domain_name(name: str) -> None:
    assert_error({"domains": [{"name": name}]}, "domains[0].name: ", "not a valid domain name")


@pytest.mark.parametrize("name", ["192.0.2.1", "192.0.2.1.", "10.1", "2001:db8::1"])
def test_ip_address_is_not_a_domain_name(name: str) -> None:
    assert_error({"domains": [{"name": name}]}, "domains[0].name: ")


def test_bad_second_domain_is_located() -> None:
    assert_error(
        {"domains": [{"name": "example.com"}, {"name": "bad domain"}]}, "domains[1].name: "
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("example.com", "example.com"),
        ("example.com", "EXAMPLE.com"),
        ("example.com", "example.com."),
        ("exämple.com", "xn--exmple-cua.com"),
        ("EXÄMPLE.COM.", "exämple.com"),
    ],
)
def test_duplicate_domains_refused(first: str, second: str) -> None:
    errors = errors_of({"domains": [{"name": first}, {"name": second}]})
    assert any("listed twice" in e for e in errors), errors


def test_duplicate_domain_error_names_the_field() -> None:
    # Like every other refusal, the error names where the problem is (domains[...]), not
    # just "config".
    errors = errors_of({"domains": [{"name": "example.com"}, {"name": "Example.COM."}]})
    assert any(e.startswith("domains") and "listed twice" in e for e in errors), errors


@pytest.mark.parametrize("value", [1, 77, -1, 1_000_001])
def test_line_length_limit_out_of_range_refused(value: int) -> None:
    errors = errors_of({"advanced": {"delivery": {"line_length_limit": value}}})
    assert any(e.startswith("advanced.delivery.line_length_limit") for e in errors), errors


@pytest.mark.parametrize("value", [0, 78, 998, 5000])
def test_line_length_limit_zero_or_at_least_78(value: int) -> None:
    config = validate({"advanced": {"delivery": {"line_length_limit": value}}})
    assert config.advanced.delivery.line_length_limit == value


def test_border_gateway_needs_relayhost() -> None:
    errors = errors_of({"main": {"destination": "border_gateway"}})
    assert any(e.startswith("main") and "relayhost" in e for e in errors), errors


def test_unknown_destination() -> None:
    assert_error({"main": {"destination": "smarthost"}}, "main.destination: ")


@pytest.mark.parametrize("host", ["192.0.2.1", "[192.0.2.1]", "2001:db8::1", "[IPv6:2001:db8::1]"])
def test_mx_lookup_needs_a_name(host: str) -> None:
    assert_error(
        {"main": {"relayhost": {"host": host, "mx_lookup": True}}}, "main.relayhost", "mx_lookup"
    )
    assert_error(
        {"domains": [{"name": "example.com", "route": {"host": host, "mx_lookup": True}}]},
        "domains[0].route",
        "mx_lookup",
    )


@pytest.mark.parametrize("host", ["bad host", "exa_mple.com", "", "[]", "-a.example"])
def test_bad_next_hop_host(host: str) -> None:
    assert_error({"main": {"relayhost": {"host": host}}}, "main.relayhost.host: ")


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        ({"bogus": 1}, "bogus: "),
        ({"main": {"relay_host": "x"}}, "main.relay_host: "),
        ({"domains": [{"name": "example.com", "local_domain": True}]}, "domains[0].local_domain: "),
        ({"advanced": {"limits": {"recipients": 5}}}, "advanced.limits.recipients: "),
        ({"main": {"relayhost": {"host": "a.example", "prt": 25}}}, "main.relayhost.prt: "),
    ],
)
def test_unknown_keys_refused(data: Any, prefix: str) -> None:
    assert_error(data, prefix, "Extra inputs are not permitted")


def test_backoff_order() -> None:
    assert_error(
        {"advanced": {"queue": {"minimal_backoff_time": 500, "maximal_backoff_time": 400}}},
        "advanced.queue",
        "maximal_backoff_time",
    )
    # Equal is fine.
    config = validate(
        {"advanced": {"queue": {"minimal_backoff_time": 500, "maximal_backoff_time": 500}}}
    )
    assert config.advanced.queue.maximal_backoff_time == 500


@pytest.mark.parametrize(
    "tls",
    [{"cert_file": "/etc/mailgate/cert.pem"}, {"key_file": "/etc/mailgate/key.pem"}],
)
def test_tls_cert_and_key_go_together(tls: dict[str, str]) -> None:
    assert_error({"advanced": {"tls": tls}}, "advanced.tls", "cert_file")


def test_inbound_encrypt_needs_certificate() -> None:
    assert_error(
        {"advanced": {"tls": {"inbound_level": "encrypt"}}}, "advanced.tls", "inbound_level"
    )
    config = validate(
        {
            "advanced": {
                "tls": {
                    "inbound_level": "encrypt",
                    "cert_file": "/etc/mailgate/cert.pem",
                    "key_file": "/etc/mailgate/key.pem",
                }
            }
        }
    )
    assert config.advanced.tls.inbound_level is TlsLevel.ENCRYPT


def test_bad_tls_level() -> None:
    assert_error({"domains": [{"name": "example.com", "tls": "maybe"}]}, "domains[0].tls: ")
    assert_error(
        {"advanced": {"tls": {"outbound_level": "secure"}}}, "advanced.tls.outbound_level: "
    )


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1",
        "mail.example.com:25",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "[::1]",
        "::1:25x",
        "[::1]x",
    ],
)
def test_bad_listen_address(listen: str) -> None:
    assert_error({"main": {"smtp_listen": ["127.0.0.1:25", listen]}}, "main.smtp_listen[1]: ")


@pytest.mark.parametrize(
    "nameserver", ["ns.example.com", "192.0.2.53:0", "192.0.2.53:99999", "300.1.1.1", "[::1"]
)
def test_bad_nameserver(nameserver: str) -> None:
    assert_error(
        {"advanced": {"dns": {"nameservers": [nameserver]}}}, "advanced.dns.nameservers[0]: "
    )


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        ({"main": {"message_size_limit": 1000}}, "main.message_size_limit: "),
        ({"advanced": {"limits": {"recipient_limit": 0}}}, "advanced.limits.recipient_limit: "),
        ({"advanced": {"limits": {"session_timeout": -1}}}, "advanced.limits.session_timeout: "),
        (
            {"advanced": {"limits": {"client_rate_time_unit": 0}}},
            "advanced.limits.client_rate_time_unit: ",
        ),
        ({"advanced": {"delivery": {"bind_address": "eth0"}}}, "advanced.delivery.bind_address: "),
        ({"advanced": {"dns": {"timeout": 0}}}, "advanced.dns.timeout: "),
        ({"advanced": {"dns": {"timeout": float("inf")}}}, "advanced.dns.timeout: "),
        ({"advanced": {"dns": {"cache_size": -1}}}, "advanced.dns.cache_size: "),
        ({"protection": {"scan_timeout": float("nan")}}, "protection.scan_timeout: "),
    ],
)
def test_bad_numbers_and_addresses(data: Any, prefix: str) -> None:
    assert_error(data, prefix)


def test_every_bad_field_is_reported() -> None:
    errors = errors_of(
        {
            "domains": [{"name": "bad domain"}],
            "main": {"trusted_networks": ["nope"], "relayhost": {"host": "a.example", "port": 0}},
        }
    )
    for prefix in ("domains[0].name: ", "main.trusted_networks[0]: ", "main.relayhost.port: "):
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)


# -- normalisation ---------------------------------------------------------------------------


def test_networks_normalised() -> None:
    config = validate(
        {
            "main": {
                "trusted_networks": [
                    "10.1.2.3/8",
                    " 192.0.2.1 ",
                    "2001:DB8:0:0::1/64",
                    "2001:db8::5",
                    "::ffff:192.0.2.0/120",
                ]
            }
        }
    )
    assert config.main.trusted_networks == [
        "10.0.0.0/8",
        "192.0.2.1/32",
        "2001:db8::/64",
        "2001:db8::5/128",
        "::ffff:c000:200/120",
    ]


def test_domain_names_normalised() -> None:
    config = validate(
        {
            "domains": [
                {"name": "EXÄMPLE.com."},
                {"name": " Sub.Example.ORG "},
                {"name": "a-b.example"},
            ]
        }
    )
    assert [d.name for d in config.domains] == [
        "xn--exmple-cua.com",
        "sub.example.org",
        "a-b.example",
    ]
    assert config.domain("xn--exmple-cua.com") is config.domains[0]
    assert config.domain("exämple.com") is None  # lookups use the canonical form


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("[Border.Example.NET.]", "border.example.net"),
        ("border.example.net", "border.example.net"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:DB8:0::1]", "2001:db8::1"),
        ("[2001:db8:0:0::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("bördergw.example", "xn--brdergw-90a.example"),
    ],
)
def test_next_hop_host_normalised(host: str, canonical: str) -> None:
    config = validate({"main": {"relayhost": {"host": host}}})
    assert config.main.relayhost is not None
    assert config.main.relayhost.host == canonical


def test_listen_and_nameservers_normalised() -> None:
    config = validate(
        {
            "main": {"smtp_listen": ["0.0.0.0:25", "[::1]:2525", "[2001:DB8::1]:25"]},
            "advanced": {
                "dns": {
                    "nameservers": ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[::1]:53"]
                }
            },
        }
    )
    assert config.main.smtp_listen == ["0.0.0.0:25", "[::1]:2525", "[2001:db8::1]:25"]
    assert config.advanced.dns.nameservers == [
        "192.0.2.53:53",
        "192.0.2.54:5353",
        "[2001:db8::53]:53",
        "[::1]:53",
    ]


def test_border_gateway_configuration() -> None:
    config = validate(
        {
            "main": {
                "destination": "border_gateway",
                "relayhost": {"host": "border.example.net", "port": 2525, "mx_lookup": True},
            }
        }
    )
    assert config.main.relayhost is not None
    assert config.main.relayhost.postfix_form() == "border.example.net:2525"


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_are_postfix_defaults() -> None:
    config = validate({})
    assert config.domains == []
    assert config.main.destination == "dns"
    assert config.main.relayhost is None
    assert config.main.trusted_networks == []  # nothing relayed beyond the local domains
    assert config.main.message_size_limit == 10_240_000
    limits = config.advanced.limits
    assert limits.recipient_limit == 1000
    assert limits.hard_error_limit == 20
    assert limits.soft_error_limit == 10
    assert limits.client_connection_count_limit == 50
    assert limits.session_timeout == 300
    assert limits.hopcount_limit == 50
    assert limits.header_size_limit == 102_400
    assert limits.client_rate_time_unit == 60
    queue = config.advanced.queue
    assert queue.minimal_backoff_time == 300
    assert queue.maximal_backoff_time == 4000
    assert queue.maximal_queue_lifetime == 432_000
    assert queue.bounce_queue_lifetime == 432_000
    assert config.advanced.tls.outbound_level is TlsLevel.MAY
    assert config.advanced.tls.inbound_level is TlsLevel.MAY


def test_domain_defaults() -> None:
    config = validate({"domains": [{"name": "example.com"}]})
    domain = config.domains[0]
    assert domain.local is True
    assert domain.route is None
    assert domain.tls is None


def test_next_hop_defaults() -> None:
    config = validate({"main": {"relayhost": {"host": "border.example.net"}}})
    assert config.main.relayhost is not None
    assert config.main.relayhost.port == 25
    assert config.main.relayhost.mx_lookup is False
    assert config.main.relayhost.postfix_form() == "[border.example.net]:25"


# -- the generated reference -------------------------------------------------------------------


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The models an annotation holds, each with whether it sits inside a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    in_list = typing.get_origin(annotation) is list
    return [
        (model, in_list or nested)
        for arg in typing.get_args(annotation)
        for model, nested in _models_in(arg)
    ]


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        paths.append(key)
        for sub, in_list in _models_in(field.annotation):
            paths += field_paths(sub, f"{key}[]" if in_list else key)
    return paths


def test_field_walk_sees_nested_sections() -> None:
    paths = field_paths(Config)
    for expected in (
        "domains[].name",
        "domains[].route.host",
        "main.relayhost.mx_lookup",
        "advanced.limits.recipient_limit",
        "advanced.dns.nameservers",
    ):
        assert expected in paths


def test_reference_mentions_every_field() -> None:
    text = render()
    missing = [path for path in field_paths(Config) if f"`{path}`" not in text]
    assert not missing, f"fields missing from the configuration reference: {missing}"


def test_reference_documents_every_field() -> None:
    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            if not field.description:
                out.append(key)
            for sub, in_list in _models_in(field.annotation):
                out += undocumented(sub, f"{key}[]" if in_list else key)
        return out

    assert undocumented(Config) == []


def test_reference_names_postfix_defaults() -> None:
    text = render()
    assert "| `main.message_size_limit` | `10240000` |" in text
    assert "| `advanced.queue.maximal_backoff_time` | `4000` |" in text


def test_docs_configuration_is_up_to_date() -> None:
    docs = REPO / "docs" / "configuration.md"
    fix = "run `uv run mailgate config reference --output docs/configuration.md`"
    if not docs.exists():
        pytest.fail(f"docs/configuration.md does not exist: {fix}")
    if docs.read_text(encoding="utf-8") != render():
        pytest.fail(f"docs/configuration.md differs from the model: {fix}")
