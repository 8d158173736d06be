"""SPF, DKIM and DMARC over the wire: records served by `mailgate.testing.dns_server.DnsServer`
on loopback, read through mailgate's real resolver path (`DnsPythonResolver` for TXT, MX, PTR
and `DnsPythonRecords` for A/AAAA, combined by `ResolverSpfDns`), up to a full `AuthCheck.scan`
with its verdict and Authentication-Results header.

The scene: example.com (the sender's domain) allows 192.0.2.0/24 and its MX, signs with DKIM
and publishes p=reject; the message reaches mailgate through a border gateway (127.0.0.10)
that reported the real client by XFORWARD.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailgate.auth.dmarc import DmarcResult, check_dmarc
from mailgate.auth.spf import DnsPythonRecords, ResolverSpfDns, SpfRecord, SpfResult, check_spf
from mailgate.checks.auth import AuthCheck
from mailgate.config.protection import ExternalServices, Protection
from mailgate.dns import DnsPythonResolver
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.testing.dns_server import DnsServer, DnsZone
from mailgate.types import ClientInfo, Envelope, Recipient
from tests.unit.test_auth_results import parse_authres

DNS_IP = "127.0.0.53"
BORDER_IP = "127.0.0.10"
LOOKUP_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture
def zone(dkim_key: tuple[bytes, str]) -> DnsZone:
    zone = DnsZone()
    # SPF
    zone.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 mx -all")
    zone.add("example.com", "TXT", "google-site-verification=not-spf")
    zone.add("example.com", "MX", "10 mx.example.com")
    zone.add("mx.example.com", "A", "198.51.100.25")
    zone.add("mx.example.com", "AAAA", "2001:db8::25")
    zone.add("mx.example.com", "TXT", "v=spf1 a -all")
    zone.add("soft.example", "TXT", "v=spf1 ip4:192.0.2.1 ~all")
    zone.add("nospf.example", "TXT", "just some text")
    zone.add("alias.example", "CNAME", "example.com")
    zone.add("ptr.example", "TXT", "v=spf1 ptr -all")
    zone.add("203.0.113.7", "PTR", "host7.ptr.example")
    zone.add("host7.ptr.example", "A", "203.0.113.7")
    zone.add("2001:db8::7", "PTR", "host7.ptr.example")
    zone.add("host7.ptr.example", "AAAA", "2001:db8::7")
    zone.add("include.example", "TXT", "v=spf1 include:example.com -all")
    zone.add("broken.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.add("slow.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.servfail("broken.example")
    zone.timeout("slow.example")
    zone.add("attacker.example", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    # DKIM
    zone.add("sel._domainkey.example.com", "TXT", dkim_key[1])
    # DMARC
    zone.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@example.com")
    zone.add("quarantined.example", "TXT", "v=spf1 -all")
    zone.add("_dmarc.quarantined.example", "TXT", "v=DMARC1; p=quarantine")
    zone.add("relaxed.example", "TXT", "v=spf1 -all")
    zone.add("_dmarc.relaxed.example", "TXT", "v=DMARC1; p=none")
    zone.add("_dmarc.dmarcfail.example", "TXT", "v=DMARC1; p=reject")
    zone.servfail("_dmarc.dmarcfail.example")
    return zone


@pytest.fixture
def server(zone: DnsZone) -> Iterator[DnsServer]:
    with DnsServer(zone, host=DNS_IP) as server:
        yield server


@pytest.fixture
def auth_dns(server: DnsServer) -> ResolverSpfDns:
    return _auth_dns(server)


def _auth_dns(server: DnsServer) -> ResolverSpfDns:
    resolver = DnsPythonResolver([server.address], timeout=LOOKUP_TIMEOUT)
    records = DnsPythonRecords(resolver)
    return ResolverSpfDns(resolver, records)


def spf(dns: ResolverSpfDns, ip: str, sender: str, helo: str = "mail.client.example") -> SpfResult:
    return asyncio.run(check_spf(ip, helo, sender, dns))


# -- SPF ---------------------------------------------------------------------------------------


def test_spf_pass_ip4(auth_dns: ResolverSpfDns) -> None:
    result = spf(auth_dns, "192.0.2.10", "alice@example.com")
    assert (result.result, result.domain, result.identity) == ("pass", "example.com", "mailfrom")
    assert result.mechanism == "ip4:192.0.2.0/24"


def test_spf_pass_through_mx_a_and_aaaa(auth_dns: ResolverSpfDns) -> None:
    assert spf(auth_dns, "198.51.100.25", "alice@example.com").result == "pass"
    assert spf(auth_dns, "2001:db8::25", "alice@example.com").result == "pass"


def test_spf_fail(auth_dns: ResolverSpfDns) -> None:
    result = spf(auth_dns, "203.0.113.9", "alice@Example.COM")
    assert (result.result, result.domain) == ("fail", "Example.COM")


def test_spf_softfail(auth_dns: ResolverSpfDns) -> None:
    assert spf(auth_dns, "192.0.2.99", "bob@soft.example").result == "softfail"


def test_spf_none(auth_dns: ResolverSpfDns) -> None:
    assert spf(auth_dns, "192.0.2.10", "bob@nospf.example").result == "none"
    assert spf(auth_dns, "192.0.2.10", "bob@nonexistent.example").result == "none"


def test_spf_cname_ptr_and_include(auth_dns: ResolverSpfDns) -> None:
    assert spf(auth_dns, "192.0.2.10", "x@alias.example").result == "pass"
    assert spf(auth_dns, "203.0.113.7", "x@ptr.example").result == "pass"
    assert spf(auth_dns, "203.0.113.8", "x@ptr.example").result == "fail"
    assert spf(auth_dns, "2001:db8::7", "x@ptr.example").result == "pass"
    assert spf(auth_dns, "192.0.2.10", "x@include.example").result == "pass"


def test_spf_helo_identity_for_null_sender(auth_dns: ResolverSpfDns) -> None:
    ok = spf(auth_dns, "198.51.100.25", "", helo="mx.example.com")
    assert (ok.result, ok.identity, ok.domain, ok.sender) == (
        "pass",
        "helo",
        "mx.example.com",
        "postmaster@mx.example.com",
    )
    assert spf(auth_dns, "192.0.2.10", "", helo="mx.example.com").result == "fail"


def test_spf_servfail_is_temperror(auth_dns: ResolverSpfDns) -> None:
    result = spf(auth_dns, "192.0.2.10", "x@broken.example")
    assert result.result == "temperror"


def test_spf_timeout_is_temperror(auth_dns: ResolverSpfDns) -> None:
    started = time.monotonic()
    result = spf(auth_dns, "192.0.2.10", "x@slow.example")
    assert result.result == "temperror"
    assert time.monotonic() - started < 10


def test_spf_temperror_when_dns_server_is_gone(server: DnsServer) -> None:
    dns = _auth_dns(server)
    server.stop()
    assert spf(dns, "192.0.2.10", "alice@example.com").result == "temperror"


def test_concurrent_evaluations_use_their_own_dns(server: DnsServer) -> None:
    """Two evaluations at once, one against the real server and one against a DNS that says
    everything passes: neither sees the other's answers (the pyspf hook is per evaluation)."""

    class Permissive:
        async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
            await asyncio.sleep(0.05)
            if rtype == "TXT":
                return [SpfRecord(name, "TXT", (b"v=spf1 +all",))]
            return []

    async def both() -> list[SpfResult]:
        real = _auth_dns(server)
        calls = []
        for _ in range(5):
            calls.append(check_spf("203.0.113.9", "h", "alice@example.com", real))
            calls.append(check_spf("203.0.113.9", "h", "alice@example.com", Permissive()))
        return list(await asyncio.gather(*calls))

    results = asyncio.run(both())
    assert [r.result for r in results] == ["fail", "pass"] * 5


def test_cancelled_check_abandons_its_lookup() -> None:
    cancelled = threading.Event()

    class Hanging:
        async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

    async def run() -> None:
        task = asyncio.create_task(check_spf("192.0.2.1", "h", "a@example.com", Hanging()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)

    asyncio.run(run())
    assert cancelled.wait(2)


def test_pyspf_own_dns_hook_is_left_to_other_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever replaces `spf.DNSLookup` (pyspf's own test driver does) does not change what an
    evaluation asks, and still gets the calls made outside mailgate's evaluations."""
    import spf as pyspf

    import mailgate.auth.spf

    outside: list[tuple[str, str]] = []

    def replaced(
        name: str, qtype: str, strict: object = True, timeout: object = None
    ) -> list[object]:
        outside.append((name, qtype))
        return []

    monkeypatch.setattr(pyspf, "DNSLookup", replaced)
    # Restored after the test: the hook remembers the function it displaced.
    monkeypatch.setattr(mailgate.auth.spf, "_fallback_lookup", mailgate.auth.spf._fallback_lookup)

    class Zone:
        async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
            return (
                [SpfRecord(name, "TXT", (b"v=spf1 ip4:192.0.2.0/24 -all",))]
                if rtype == "TXT"
                else []
            )

    assert asyncio.run(check_spf("192.0.2.1", "h", "a@example.com", Zone())).result == "pass"
    assert outside == []
    assert pyspf.query(i="192.0.2.1", s="a@example.org", h="h").check()[0] == "none"
    assert outside == [("example.org", "TXT")]


# -- DMARC -------------------------------------------------------------------------------------


def dmarc(dns: ResolverSpfDns, from_domain: str, spf_result: SpfResult) -> DmarcResult:
    return asyncio.run(check_dmarc(from_domain, dns, spf=spf_result, dkim=()))


def test_dmarc_reject_unaligned(auth_dns: ResolverSpfDns) -> None:
    spf_pass = spf(auth_dns, "203.0.113.5", "bounce@attacker.example")
    assert spf_pass.result == "pass"
    result = dmarc(auth_dns, "example.com", spf_pass)
    assert (result.result, result.policy, result.spf_aligned) == ("fail", "reject", False)


def test_dmarc_pass_aligned(auth_dns: ResolverSpfDns) -> None:
    spf_pass = spf(auth_dns, "192.0.2.10", "bounce@example.com")
    result = dmarc(auth_dns, "example.com", spf_pass)
    assert (result.result, result.policy, result.spf_aligned) == ("pass", "none", True)


def test_dmarc_quarantine_and_none(auth_dns: ResolverSpfDns) -> None:
    failed = spf(auth_dns, "192.0.2.10", "x@quarantined.example")
    quarantined = dmarc(auth_dns, "quarantined.example", failed)
    assert (quarantined.result, quarantined.policy) == ("fail", "quarantine")
    relaxed_fail = spf(auth_dns, "192.0.2.10", "x@relaxed.example")
    none = dmarc(auth_dns, "relaxed.example", relaxed_fail)
    assert (none.result, none.policy, none.published_policy) == ("fail", "none", "none")


def test_dmarc_subdomain_falls_back_to_organisational_domain(auth_dns: ResolverSpfDns) -> None:
    spf_pass = spf(auth_dns, "192.0.2.10", "bounce@example.com")
    aligned = dmarc(auth_dns, "news.example.com", spf_pass)
    assert (aligned.result, aligned.record_domain) == ("pass", "example.com")
    spf_other = spf(auth_dns, "203.0.113.5", "bounce@attacker.example")
    unaligned = dmarc(auth_dns, "news.example.com", spf_other)
    assert (unaligned.result, unaligned.policy) == ("fail", "reject")


def test_dmarc_no_record_and_servfail(auth_dns: ResolverSpfDns) -> None:
    spf_pass = spf(auth_dns, "192.0.2.10", "x@nospf.example")
    assert dmarc(auth_dns, "nospf.example", spf_pass).result == "none"
    assert dmarc(auth_dns, "dmarcfail.example", spf_pass).result == "temperror"


# -- the whole module --------------------------------------------------------------------------


def message(from_header: str, dkim_key: tuple[bytes, str] | None = None, body: str = "Hi") -> bytes:
    content = (
        f"From: {from_header}\r\n"
        "To: bob@corp.test\r\n"
        "Subject: integration\r\n"
        "Message-ID: <auth-1@example.com>\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()
    if dkim_key is not None:
        signature = dkim.sign(
            content,
            b"sel",
            b"example.com",
            dkim_key[0],
            include_headers=[b"from", b"to", b"subject", b"message-id"],
        )
        content = bytes(signature) + content
    return content


def scan(
    server: DnsServer,
    content: bytes,
    sender: str,
    real_ip: str,
    services: ExternalServices | None = None,
    helo: str = "mail.client.example",
) -> CheckResult:
    check = AuthCheck(lambda: _auth_dns(server))
    client = ClientInfo(ip=BORDER_IP, helo="border.corp.test")
    ctx = ScanContext(
        envelope=Envelope(
            qid="Q1",
            sender=sender,
            recipients=[Recipient("bob@corp.test", "corp.test")],
            client=client,
            arrival=time.time(),
        ),
        content=content,
        client=client,
        real_client=RealClient(ip=real_ip, helo=helo, source="xforward"),
        hostname="mailgate.corp.test",
        protection=Protection(external_services=services or ExternalServices()),
    )
    return asyncio.run(check.scan(ctx))


def header(result: CheckResult) -> dict[str, list[tuple[str, dict[str, str], list[str]]]]:
    ((name, value),) = result.headers
    assert name == "Authentication-Results"
    authserv, infos = parse_authres(value)
    assert authserv == "mailgate.corp.test"
    out: dict[str, list[tuple[str, dict[str, str], list[str]]]] = {}
    for info in infos:
        out.setdefault(info.method, []).append((info.result, info.props, info.comments))
    return out


def test_scan_legitimate_message_is_clean(server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    # The border gateway's own address is not in example.com's SPF: the real client is.
    result = scan(
        server, message("Alice <alice@example.com>", dkim_key), "alice@example.com", "192.0.2.10"
    )
    assert result.module == "auth"
    assert result.verdict == Verdict.CLEAN
    fields = header(result)
    assert fields["spf"] == [
        (
            "pass",
            {"smtp.mailfrom": "alice@example.com"},
            ["mailgate: client 192.0.2.10 from XFORWARD"],
        )
    ]
    assert fields["dkim"] == [("pass", {"header.d": "example.com", "header.s": "sel"}, [])]
    assert fields["dmarc"] == [("pass", {"header.from": "example.com"}, ["p=reject dis=none"])]
    assert "client 192.0.2.10 from xforward" in result.detail


def test_scan_dkim_alone_saves_a_forwarded_message(
    server: DnsServer, dkim_key: tuple[bytes, str]
) -> None:
    # Forwarded: SPF fails for the forwarder's address, the aligned signature still passes.
    result = scan(
        server, message("alice@example.com", dkim_key), "alice@example.com", "203.0.113.50"
    )
    assert result.verdict == Verdict.CLEAN
    fields = header(result)
    assert fields["spf"][0][0] == "fail"
    assert fields["dmarc"][0][0] == "pass"


def test_scan_spoofed_from_is_dmarc_reject(server: DnsServer) -> None:
    result = scan(
        server, message("CEO <ceo@example.com>"), "bounce@attacker.example", "203.0.113.5"
    )
    assert result.verdict == Verdict.DMARC_REJECT
    fields = header(result)
    assert fields["spf"][0][0] == "pass"
    assert fields["dkim"] == [("none", {}, [])]
    assert fields["dmarc"] == [("fail", {"header.from": "example.com"}, ["p=reject dis=reject"])]


def test_scan_tampered_signature_is_dmarc_reject(
    server: DnsServer, dkim_key: tuple[bytes, str]
) -> None:
    content = message("alice@example.com", dkim_key).replace(b"Hi\r\n", b"Pay now\r\n")
    result = scan(server, content, "alice@example.com", "203.0.113.50")
    assert result.verdict == Verdict.DMARC_REJECT
    assert header(result)["dkim"][0][0] == "fail"


def test_scan_quarantine_policy(server: DnsServer) -> None:
    result = scan(server, message("x@quarantined.example"), "x@quarantined.example", "192.0.2.10")
    assert result.verdict == Verdict.DMARC_QUARANTINE


def test_scan_p_none_is_a_decision(server: DnsServer) -> None:
    result = scan(server, message("x@relaxed.example"), "x@relaxed.example", "192.0.2.10")
    assert result.verdict == Verdict.CLEAN
    assert header(result)["dmarc"][0][0] == "fail"


def test_scan_spf_fail_without_dmarc_record(server: DnsServer) -> None:
    result = scan(server, message("x@attacker.example"), "x@attacker.example", "192.0.2.10")
    assert result.verdict == Verdict.SPF_FAIL
    assert header(result)["dmarc"][0][0] == "none"


def test_scan_dmarc_temperror_is_error(server: DnsServer) -> None:
    result = scan(server, message("x@dmarcfail.example"), "x@nospf.example", "192.0.2.10")
    assert result.verdict == Verdict.ERROR
    assert header(result)["dmarc"][0][0] == "temperror"


def test_scan_spf_temperror_without_dmarc_is_error(server: DnsServer) -> None:
    result = scan(server, message("x@nospf.example"), "x@slow.example", "192.0.2.10")
    assert result.verdict == Verdict.ERROR
    assert header(result)["spf"][0][0] == "temperror"


def test_scan_ambiguous_from_checks_every_domain(server: DnsServer) -> None:
    content = message("friend@attacker.example, CEO <ceo@example.com>")
    result = scan(server, content, "bounce@attacker.example", "203.0.113.5")
    assert result.verdict == Verdict.DMARC_REJECT
    assert [r[0] for r in header(result)["dmarc"]] == ["none", "fail"]


def test_scan_null_sender_uses_helo(server: DnsServer) -> None:
    result = scan(
        server, message("mailer-daemon@example.com"), "", "198.51.100.25", helo="mx.example.com"
    )
    assert result.verdict == Verdict.CLEAN
    fields = header(result)
    assert fields["spf"][0][:2] == ("pass", {"smtp.helo": "mx.example.com"})
    assert fields["dmarc"][0][0] == "pass"


def test_scan_switches(server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    content = message("CEO <ceo@example.com>")
    dkim_only = ExternalServices(use_spf=False, use_dkim=True, use_dmarc=False)
    result = scan(server, content, "bounce@attacker.example", "198.51.100.99", dkim_only)
    assert result.verdict == Verdict.CLEAN  # SPF would fail and DMARC reject: both off
    assert set(header(result)) == {"dkim"}
    spf_only = ExternalServices(use_spf=True, use_dkim=False, use_dmarc=False)
    result = scan(server, content, "bounce@attacker.example", "198.51.100.99", spf_only)
    assert result.verdict == Verdict.SPF_FAIL
    assert set(header(result)) == {"spf"}
    off = ExternalServices(use_spf=False, use_dkim=False, use_dmarc=False)
    result = scan(server, content, "bounce@attacker.example", "198.51.100.99", off)
    assert (result.verdict, result.headers) == (Verdict.CLEAN, ())
    assert server.queries.total() > 0
    before = server.queries.total()
    scan(server, content, "bounce@attacker.example", "198.51.100.99", off)
    assert server.queries.total() == before  # nothing evaluated, nothing asked


def test_scan_never_raises(server: DnsServer) -> None:
    def broken() -> ResolverSpfDns:
        raise RuntimeError("no resolver")

    check = AuthCheck(broken)
    client = ClientInfo(ip=BORDER_IP)
    ctx = ScanContext(
        envelope=Envelope("Q2", "a@example.com", [], client, time.time()),
        content=message("a@example.com"),
        client=client,
        real_client=RealClient(ip="192.0.2.10", helo="h"),
        hostname="mailgate.corp.test",
        protection=Protection(),
    )
    result = asyncio.run(check.scan(ctx))
    assert result.verdict == Verdict.ERROR
    assert "no resolver" in result.detail
