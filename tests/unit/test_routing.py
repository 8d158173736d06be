"""Next hop per recipient domain (mailgate.queue.routing), as Postfix's trivial-rewrite and
transport decide it: the nearest domain record's route, then the relayhost (border gateway),
then DNS (MX). SPEC section 2, "Next hop".
"""

from __future__ import annotations

from typing import Any

import pytest

from mailgate.config.model import TlsLevel, validate
from mailgate.queue.routing import Destination, Router


def router(**data: Any) -> Router:
    return Router(validate(data))


BORDER = {"destination": "border_gateway", "relayhost": {"host": "border.example.net", "port": 587}}


def test_exact_domain_route() -> None:
    r = router(domains=[{"name": "example.com", "route": {"host": "192.0.2.10", "port": 2525}}])
    hop = r.next_hop("example.com")
    assert hop == Destination("192.0.2.10", 2525, False, TlsLevel.MAY, "route example.com")
    assert str(hop) == "[192.0.2.10]:2525"


def test_parent_domain_route_for_subdomain() -> None:
    r = router(domains=[{"name": "example.com", "route": {"host": "192.0.2.10"}}])
    for domain in ("sub.example.com", "a.b.example.com"):
        hop = r.next_hop(domain)
        assert (hop.host, hop.port, hop.mx, hop.via) == (
            "192.0.2.10",
            25,
            False,
            "route example.com",
        )


def test_parent_match_is_by_label_not_by_suffix() -> None:
    r = router(domains=[{"name": "example.com", "route": {"host": "192.0.2.10"}}])
    hop = r.next_hop("notexample.com")
    assert (hop.host, hop.mx, hop.via) == ("notexample.com", True, "dns")


def test_subdomain_record_without_route_does_not_inherit_parent_route() -> None:
    r = router(
        domains=[
            {"name": "example.com", "route": {"host": "192.0.2.10"}},
            {"name": "own.example.com"},
        ]
    )
    hop = r.next_hop("own.example.com")
    assert (hop.host, hop.port, hop.mx, hop.via) == ("own.example.com", 25, True, "dns")
    # Its own subdomains find its record first, so they go by DNS as well.
    assert r.next_hop("x.own.example.com").via == "dns"


def test_subdomain_record_without_route_falls_to_relayhost() -> None:
    r = router(
        domains=[
            {"name": "example.com", "route": {"host": "192.0.2.10"}},
            {"name": "own.example.com"},
        ],
        main=BORDER,
    )
    hop = r.next_hop("own.example.com")
    assert hop == Destination("border.example.net", 587, False, TlsLevel.MAY, "relayhost")
    assert str(hop) == "[border.example.net]:587"


def test_relayhost_for_every_domain_without_route() -> None:
    r = router(domains=[{"name": "example.com", "route": {"host": "192.0.2.10"}}], main=BORDER)
    assert r.next_hop("example.com").via == "route example.com"
    for domain in ("other.net", "com", "example.org"):
        hop = r.next_hop(domain)
        assert (hop.host, hop.port, hop.mx, hop.via) == (
            "border.example.net",
            587,
            False,
            "relayhost",
        )


def test_relayhost_ignored_unless_destination_is_border_gateway() -> None:
    r = router(main={"destination": "dns", "relayhost": {"host": "border.example.net"}})
    hop = r.next_hop("other.net")
    assert hop == Destination("other.net", 25, True, TlsLevel.MAY, "dns")
    assert str(hop) == "other.net:25"


def test_dns_by_default() -> None:
    hop = router().next_hop("example.org")
    assert hop == Destination("example.org", 25, True, TlsLevel.MAY, "dns")


def test_relayhost_with_mx_lookup() -> None:
    r = router(
        main={
            "destination": "border_gateway",
            "relayhost": {"host": "border.example.net", "mx_lookup": True},
        }
    )
    hop = r.next_hop("other.net")
    assert (hop.host, hop.port, hop.mx) == ("border.example.net", 25, True)
    assert str(hop) == "border.example.net:25"


@pytest.mark.parametrize(
    ("route", "host", "mx", "text"),
    [
        # "[host]": the name's A/AAAA, no MX lookup.
        ({"host": "[mail.example.com]"}, "mail.example.com", False, "[mail.example.com]:25"),
        ({"host": "mail.example.com"}, "mail.example.com", False, "[mail.example.com]:25"),
        (
            {"host": "Mail.Example.COM.", "mx_lookup": True},
            "mail.example.com",
            True,
            "mail.example.com:25",
        ),
        ({"host": "192.0.2.7", "port": 10025}, "192.0.2.7", False, "[192.0.2.7]:10025"),
        ({"host": "2001:db8::1"}, "2001:db8::1", False, "[ipv6:2001:db8::1]:25"),
        ({"host": "[IPv6:2001:DB8:0::1]"}, "2001:db8::1", False, "[ipv6:2001:db8::1]:25"),
        ({"host": "[2001:db8::1]", "port": 26}, "2001:db8::1", False, "[ipv6:2001:db8::1]:26"),
    ],
)
def test_route_forms(route: dict[str, Any], host: str, mx: bool, text: str) -> None:
    r = router(domains=[{"name": "example.com", "route": route}])
    hop = r.next_hop("example.com")
    assert (hop.host, hop.mx) == (host, mx)
    assert str(hop) == text


@pytest.mark.parametrize(
    ("domain", "host", "text"),
    [
        ("[192.0.2.1]", "192.0.2.1", "[192.0.2.1]:25"),
        ("[IPv6:2001:db8::5]", "2001:db8::5", "[ipv6:2001:db8::5]:25"),
    ],
)
def test_address_literal_goes_direct(domain: str, host: str, text: str) -> None:
    r = router(main=BORDER)
    hop = r.next_hop(domain)
    assert (hop.host, hop.port, hop.mx, hop.via) == (host, 25, False, "address literal")
    assert str(hop) == text


def test_per_domain_tls_level() -> None:
    r = router(
        domains=[
            {"name": "secure.example", "tls": "encrypt"},
            {"name": "plain.example", "route": {"host": "192.0.2.3"}, "tls": "none"},
            {"name": "default.example"},
        ],
        main=BORDER,
        advanced={"tls": {"outbound_level": "may"}},
    )
    assert r.next_hop("secure.example").tls is TlsLevel.ENCRYPT
    assert r.next_hop("secure.example").via == "relayhost"
    assert r.next_hop("mx.secure.example").tls is TlsLevel.ENCRYPT
    assert r.next_hop("plain.example").tls is TlsLevel.NONE
    assert r.next_hop("default.example").tls is TlsLevel.MAY
    assert r.next_hop("elsewhere.example").tls is TlsLevel.MAY


@pytest.mark.parametrize("level", [TlsLevel.NONE, TlsLevel.MAY, TlsLevel.ENCRYPT])
def test_default_tls_level(level: TlsLevel) -> None:
    r = router(
        domains=[{"name": "example.com", "route": {"host": "192.0.2.10"}}],
        advanced={"tls": {"outbound_level": level.value}},
    )
    assert r.next_hop("example.com").tls is level
    assert r.next_hop("other.org").tls is level
    assert r.next_hop("[192.0.2.1]").tls is level


def test_nearest_record() -> None:
    r = router(domains=[{"name": "example.com"}, {"name": "a.example.com"}])
    record = r.nearest_record("x.a.example.com")
    assert record is not None
    assert record.name == "a.example.com"
    record = r.nearest_record("b.example.com")
    assert record is not None
    assert record.name == "example.com"
    assert r.nearest_record("example.org") is None
    assert r.nearest_record("com") is None


def test_domain_records_are_canonical() -> None:
    # A route configured for a Unicode domain applies to its A-label (the canonical form
    # of recipient domains).
    r = router(domains=[{"name": "EXÄMPLE.com.", "route": {"host": "192.0.2.10"}}])
    assert r.next_hop("xn--exmple-cua.com").via == "route xn--exmple-cua.com"


@pytest.mark.parametrize(
    ("destination", "text"),
    [
        (Destination("192.0.2.1", 25, False, TlsLevel.MAY, "x"), "[192.0.2.1]:25"),
        (Destination("mx.example.com", 25, True, TlsLevel.MAY, "x"), "mx.example.com:25"),
        (Destination("mx.example.com", 2525, False, TlsLevel.MAY, "x"), "[mx.example.com]:2525"),
        (Destination("2001:db8::1", 25, False, TlsLevel.MAY, "x"), "[ipv6:2001:db8::1]:25"),
    ],
)
def test_destination_in_postfix_syntax(destination: Destination, text: str) -> None:
    assert str(destination) == text
