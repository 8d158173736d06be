"""Tests of mailgate.dns against the real loopback DNS server of mailgate.testing.dns_server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from mailgate.dns import (
    DnsNotFound,
    DnsPythonResolver,
    DnsTempError,
    MxHost,
    NullMx,
    ascii_name,
    parse_nameserver,
)
from mailgate.testing.dns_server import DnsServer, DnsZone

# Not 127.0.0.1 or 127.0.0.53, where a real resolver may listen.
HOST = "127.0.83.53"


@pytest.fixture
def zone() -> DnsZone:
    return DnsZone()


@pytest.fixture
def server(zone: DnsZone) -> Iterator[DnsServer]:
    with DnsServer(zone, host=HOST) as srv:
        yield srv


@pytest.fixture
def resolver(server: DnsServer) -> DnsPythonResolver:
    return DnsPythonResolver([server.address], timeout=2.0)


def test_mx_sorted_by_preference_then_host(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("example.com", "MX", "20 mx2.example.com")
    zone.add("example.com", "MX", (10, "MX-B.Example.com."))
    zone.add("example.com", "MX", "10 mx-a.example.com")
    assert asyncio.run(resolver.mx("example.com")) == [
        MxHost(10, "mx-a.example.com"),
        MxHost(10, "mx-b.example.com"),
        MxHost(20, "mx2.example.com"),
    ]


def test_no_mx_is_empty_list(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("example.com", "A", "192.0.2.1")
    assert asyncio.run(resolver.mx("example.com")) == []


def test_null_mx(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.null_mx("example.com")
    with pytest.raises(NullMx) as info:
        asyncio.run(resolver.mx("example.com"))
    assert info.value.name == "example.com"


def test_root_exchange_beside_real_mx_is_skipped(
    zone: DnsZone, resolver: DnsPythonResolver
) -> None:
    zone.null_mx("example.com")
    zone.add("example.com", "MX", "10 mx.example.com")
    assert asyncio.run(resolver.mx("example.com")) == [MxHost(10, "mx.example.com")]


def test_nxdomain_is_permanent(resolver: DnsPythonResolver) -> None:
    with pytest.raises(DnsNotFound) as info:
        asyncio.run(resolver.mx("nowhere.example"))
    assert info.value.name == "nowhere.example"
    assert "NXDOMAIN" in info.value.reason
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.txt("nowhere.example"))
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.addresses("nowhere.example"))


def test_empty_non_terminal_is_nodata(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("sel._domainkey.example.com", "TXT", "v=DKIM1; p=")
    assert asyncio.run(resolver.txt("_domainkey.example.com")) == []


def test_servfail_is_temporary(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("example.com", "MX", "10 mx.example.com")
    zone.servfail("example.com")
    with pytest.raises(DnsTempError):
        asyncio.run(resolver.mx("example.com"))
    with pytest.raises(DnsTempError):
        asyncio.run(resolver.addresses("example.com"))


def test_timeout_is_temporary(zone: DnsZone, server: DnsServer) -> None:
    zone.timeout("slow.example")
    resolver = DnsPythonResolver([server.address], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DnsTempError) as info:
        asyncio.run(resolver.mx("slow.example"))
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 2.0
    assert server.queries["slow.example", "MX"] >= 1


def test_unreachable_nameserver_is_temporary() -> None:
    # Nothing listens there: the ICMP error or the timeout must both read as temporary.
    resolver = DnsPythonResolver(["127.0.83.54:9"], timeout=0.5)
    with pytest.raises(DnsTempError):
        asyncio.run(resolver.mx("example.com"))


def test_addresses_ipv4_first(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("mx.example.com", "AAAA", "2001:db8::2")
    zone.add("mx.example.com", "A", "192.0.2.2")
    zone.add("mx.example.com", "AAAA", "2001:DB8:0::1")
    zone.add("mx.example.com", "A", "192.0.2.1")
    addresses = asyncio.run(resolver.addresses("mx.example.com"))
    assert sorted(addresses[:2]) == ["192.0.2.1", "192.0.2.2"]
    assert sorted(addresses[2:]) == ["2001:db8::1", "2001:db8::2"]


def test_addresses_only_aaaa(zone: DnsZone, server: DnsServer) -> None:
    zone.add("v6.example.com", "AAAA", "2001:db8::25")
    resolver = DnsPythonResolver([server.address])
    assert asyncio.run(resolver.addresses("v6.example.com")) == ["2001:db8::25"]
    # Both families were asked.
    assert server.queries["v6.example.com", "A"] == 1
    assert server.queries["v6.example.com", "AAAA"] == 1


def test_addresses_nodata(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("example.com", "MX", "10 mx.example.com")
    assert asyncio.run(resolver.addresses("example.com")) == []


def test_txt_long_record_split_and_joined(zone: DnsZone, server: DnsServer) -> None:
    head = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(10, 40)) + " exists:"
    tail = ".example -all"
    record = head + "x" * (600 - len(head) - len(tail)) + tail
    assert len(record) == 600
    zone.add("example.com", "TXT", record)
    zone.add("example.com", "TXT", "other")

    async def raw() -> list[int]:
        query = dns.message.make_query("example.com", "TXT")
        response = await dns.asyncquery.tcp(query, HOST, port=server.port, timeout=2.0)
        rrset = response.find_rrset(
            response.answer, query.question[0].name, dns.rdataclass.IN, dns.rdatatype.TXT
        )
        return sorted(len(s) for rdata in rrset for s in rdata.strings)

    # On the wire the record is three strings; the resolver joins them back without spaces.
    assert asyncio.run(raw()) == [5, 90, 255, 255]
    resolver = DnsPythonResolver([server.address])
    assert sorted(asyncio.run(resolver.txt("example.com"))) == sorted([record, "other"])


def test_txt_too_big_for_udp_retries_over_tcp(zone: DnsZone, server: DnsServer) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 2000
    zone.add("sel._domainkey.example.com", "TXT", key)
    resolver = DnsPythonResolver([server.address])
    assert asyncio.run(resolver.txt("sel._domainkey.example.com")) == [key]
    # One truncated UDP answer, then the same question over TCP.
    assert server.queries["sel._domainkey.example.com", "TXT"] == 2


def test_txt_utf8_decoded(zone: DnsZone, server: DnsServer) -> None:
    zone.add("example.com", "TXT", "caf\u00e9")
    resolver = DnsPythonResolver([server.address])
    assert asyncio.run(resolver.txt("example.com")) == ["caf\u00e9"]


def test_cname_followed(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("mail.example.com", "CNAME", "host.example.net")
    zone.add("host.example.net", "A", "192.0.2.7")
    zone.add("alias.example.com", "CNAME", "example.com")
    zone.add("example.com", "MX", "10 mail.example.com")
    assert asyncio.run(resolver.addresses("mail.example.com")) == ["192.0.2.7"]
    assert asyncio.run(resolver.mx("alias.example.com")) == [MxHost(10, "mail.example.com")]


def test_unicode_domain_queried_as_a_label(zone: DnsZone, server: DnsServer) -> None:
    zone.add("xn--bcher-kva.example", "MX", "10 mx.xn--bcher-kva.example")
    zone.add("_dmarc.xn--bcher-kva.example", "TXT", "v=DMARC1; p=reject")
    resolver = DnsPythonResolver([server.address])
    assert asyncio.run(resolver.mx("B\u00fccher.example")) == [
        MxHost(10, "mx.xn--bcher-kva.example")
    ]
    assert server.queries["xn--bcher-kva.example", "MX"] == 1
    # Underscore labels are not IDNA-valid but must survive beside a Unicode label.
    assert asyncio.run(resolver.txt("_dmarc.b\u00fccher.example.")) == ["v=DMARC1; p=reject"]


@pytest.mark.parametrize("name", ["a..example", "", ".", "x" * 64 + ".example", "\u2488.example"])
def test_invalid_name_is_not_found(resolver: DnsPythonResolver, name: str) -> None:
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.mx(name))


def test_ascii_name() -> None:
    assert ascii_name("B\u00dcCHER.example.") == "xn--bcher-kva.example"
    assert ascii_name("_dmarc.Example.com") == "_dmarc.Example.com"
    with pytest.raises(ValueError, match="empty label"):
        ascii_name("a..b")


def test_ptr(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("192.0.2.25", "PTR", "MX.example.com.")
    zone.add("2001:db8::25", "PTR", "mx6.example.com")
    assert asyncio.run(resolver.ptr("192.0.2.25")) == ["mx.example.com"]
    assert asyncio.run(resolver.ptr("2001:db8::25")) == ["mx6.example.com"]
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.ptr("192.0.2.26"))
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.ptr("not-an-ip"))


def test_tcp_answered(zone: DnsZone, server: DnsServer) -> None:
    zone.add("example.com", "MX", "10 mx.example.com")

    async def query_twice() -> list[dns.message.Message]:
        query = dns.message.make_query("example.com", "MX")
        return [
            await dns.asyncquery.tcp(query, HOST, port=server.port, timeout=2.0) for _ in range(2)
        ]

    for response in asyncio.run(query_twice()):
        assert response.flags & dns.flags.AA
        assert [rr.to_text() for rr in response.answer[0]] == ["10 mx.example.com."]
    assert server.queries["EXAMPLE.COM.", "mx"] == 2


def test_nxdomain_is_authoritative(server: DnsServer) -> None:
    async def query() -> dns.message.Message:
        request = dns.message.make_query("nowhere.example", "A")
        return await dns.asyncquery.udp(request, HOST, port=server.port, timeout=2.0)

    response = asyncio.run(query())
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA


def test_zone_remove_and_clear(zone: DnsZone, resolver: DnsPythonResolver) -> None:
    zone.add("example.com", "MX", "10 mx.example.com")
    zone.add("example.com", "A", "192.0.2.1")
    zone.remove("Example.COM.", "MX")
    assert asyncio.run(resolver.mx("example.com")) == []
    zone.servfail("example.com")
    zone.remove("example.com")
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.mx("example.com"))
    zone.add("example.com", "A", "192.0.2.1")
    zone.clear()
    with pytest.raises(DnsNotFound):
        asyncio.run(resolver.addresses("example.com"))


def test_zone_rejects_bad_records(zone: DnsZone) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        zone.add("example.com", "SRV", "x")
    with pytest.raises(ValueError, match="IPv4"):
        zone.add("example.com", "A", "2001:db8::1")
    with pytest.raises(ValueError, match="PREFERENCE HOST"):
        zone.add("example.com", "MX", "mx.example.com")
    zone.add("alias.example.com", "CNAME", "example.com")
    with pytest.raises(ValueError, match="CNAME"):
        zone.add("alias.example.com", "A", "192.0.2.1")


def test_stop_closes_idle_tcp_connections(zone: DnsZone) -> None:
    server = DnsServer(zone, host=HOST)
    server.start()
    with socket.create_connection((HOST, server.port), timeout=2.0) as client:
        # A query for an unanswered name leaves the server waiting on this connection.
        zone.timeout("slow.example")
        wire = dns.message.make_query("slow.example", "A").to_wire()
        client.sendall(len(wire).to_bytes(2, "big") + wire)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
        try:
            data = client.recv(1)
        except ConnectionResetError:  # stopped before the connection was accepted
            data = b""
        assert data == b""  # closed by the server, no answer sent


def test_server_restart_and_double_stop(zone: DnsZone) -> None:
    server = DnsServer(zone, host=HOST)
    server.start()
    assert parse_nameserver(server.address) == (HOST, server.port)
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.port
    with server:
        assert server.port > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        (" 2001:DB8::1 ", ("2001:db8::1", 53)),
    ],
)
def test_parse_nameserver_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "300.1.1.1",
        "127.0.0.1:70000",
        "host:abc",
        "127.0.0.1:0",
        "127.0.0.1:",
        "127.0.0.1:+53",
        "[127.0.0.1]:53",
        "[::1]5353",
        "dns.example.com",
        "",
    ],
)
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(text)


def test_cache_answers_within_ttl_without_asking_again(zone: DnsZone, server: DnsServer) -> None:
    zone.add("cached.example", "TXT", "v=spf1 -all", ttl=300)
    zone.add("short.example", "TXT", "v=spf1 ~all", ttl=0)
    resolver = DnsPythonResolver([server.address], timeout=2.0, cache_size=100)
    uncached = DnsPythonResolver([server.address], timeout=2.0)

    async def twice(r: DnsPythonResolver, name: str) -> list[list[str]]:
        return [await r.txt(name), await r.txt(name)]

    assert asyncio.run(twice(resolver, "cached.example")) == [["v=spf1 -all"]] * 2
    assert server.queries["cached.example", "TXT"] == 1
    # A TTL of 0 is not cached; a resolver without a cache always asks.
    assert asyncio.run(twice(resolver, "short.example")) == [["v=spf1 ~all"]] * 2
    assert server.queries["short.example", "TXT"] == 2
    asyncio.run(twice(uncached, "cached.example"))
    assert server.queries["cached.example", "TXT"] == 3


def test_cache_answers_within_ttl_and_asks_again_after(zone: DnsZone, server: DnsServer) -> None:
    zone.add("cached.example", "TXT", "v=spf1 -all", ttl=300)
    zone.add("short.example", "TXT", "v=spf1 ~all", ttl=0)
    resolver = DnsPythonResolver([server.address], timeout=2.0, cache_size=2)

    async def lookups() -> None:
        for _ in range(3):
            assert await resolver.txt("cached.example") == ["v=spf1 -all"]
            assert await resolver.txt("short.example") == ["v=spf1 ~all"]
        with pytest.raises(DnsNotFound):
            await resolver.txt("missing.example")
        with pytest.raises(DnsNotFound):
            await resolver.txt("missing.example")

    asyncio.run(lookups())
    assert server.queries["cached.example", "TXT"] == 1
    assert server.queries["short.example", "TXT"] == 3  # a zero TTL is never kept
    assert server.queries["missing.example", "TXT"] == 1  # dnspython's negative cache

    # Bounded: a third name pushes the oldest kept answer out, which is then asked again.
    zone.add("a.example", "TXT", "a")
    zone.add("b.example", "TXT", "b")

    async def more() -> None:
        for name in ("a.example", "b.example", "cached.example"):
            await resolver.txt(name)

    asyncio.run(more())
    assert server.queries["cached.example", "TXT"] == 2
    zone.add("cached.example", "TXT", "v=spf1 +all", ttl=300)  # the zone changes...
    assert asyncio.run(resolver.txt("cached.example")) == ["v=spf1 -all"]  # ...within the TTL
