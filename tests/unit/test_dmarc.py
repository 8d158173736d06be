"""DMARC (mailgate.auth.dmarc): record parsing, organisational domains from the bundled Public
Suffix List, alignment, policy discovery and the policy to apply."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.auth.dkim import DkimSignatureResult
from mailgate.auth.dmarc import (
    DmarcRecord,
    DmarcRecordError,
    DmarcResult,
    aligned,
    check_dmarc,
    organizational_domain,
    parse_record,
    sample_bucket,
)
from mailgate.auth.spf import SpfResult
from mailgate.checks.auth import from_domains
from mailgate.dns import DnsNotFound, DnsTempError
from mailgate.pipeline.message import ParsedMessage


class FakeTxt:
    def __init__(self, records: dict[str, list[str] | Exception] | None = None) -> None:
        self.records = dict(records or {})
        self.queries: list[str] = []

    async def txt(self, name: str) -> list[str]:
        self.queries.append(name)
        found = self.records.get(name)
        if found is None:
            raise DnsNotFound(name, "NXDOMAIN")
        if isinstance(found, Exception):
            raise found
        return found


def spf(result: str, domain: str, identity: str = "mailfrom") -> SpfResult:
    sender = f"bounce@{domain}" if identity == "mailfrom" else f"postmaster@{domain}"
    return SpfResult(result, "", domain, identity, sender, "192.0.2.1", "mx." + domain)  # type: ignore[arg-type]


def dkim(result: str, domain: str) -> DkimSignatureResult:
    return DkimSignatureResult(result, domain, "sel")  # type: ignore[arg-type]


def dmarc(
    from_domain: str | None,
    records: dict[str, list[str] | Exception],
    *,
    spf_result: SpfResult | None = None,
    dkim_results: Sequence[DkimSignatureResult] = (),
    message_id: str = "<m@x>",
) -> DmarcResult:
    return asyncio.run(
        check_dmarc(
            from_domain,
            FakeTxt(records),
            spf=spf_result,
            dkim=dkim_results,
            message_id=message_id,
        )
    )


# -- records ----------------------------------------------------------------------------------


def test_parse_full_record() -> None:
    record = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=30; rua=mailto:d@example.com"
    )
    assert record == DmarcRecord("reject", "quarantine", "s", "s", 30)


def test_parse_defaults_and_spacing() -> None:
    assert parse_record("v = DMARC1 ;p = Quarantine;") == DmarcRecord("quarantine")


@pytest.mark.parametrize(
    "text",
    [
        "p=reject; v=DMARC1",  # v= must come first
        "v=DMARC2; p=reject",
        "v=dmarc1; p=reject",  # the value is exact
        "v=spf1 -all",
        "",
    ],
)
def test_not_a_dmarc_record(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


@pytest.mark.parametrize(
    "text", ["v=DMARC1", "v=DMARC1; p=block", "v=DMARC1; p=reject; sp=maybe", "v=DMARC1; p"]
)
def test_invalid_policy_without_rua_is_unusable(text: str) -> None:
    with pytest.raises(DmarcRecordError):
        parse_record(text)


def test_invalid_policy_with_rua_is_p_none() -> None:
    # RFC 7489 §6.6.3 step 6.
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:dmarc@example.com").policy == "none"


def test_invalid_optional_values_fall_back_to_defaults() -> None:
    record = parse_record("v=DMARC1; p=reject; adkim=x; aspf=; pct=150; fo=9; unknown=1")
    assert record == DmarcRecord("reject", None, "r", "r", 100)
    assert parse_record("v=DMARC1; p=reject; pct=-5").pct == 100
    assert parse_record("v=DMARC1; p=reject; pct=0").pct == 0


# -- organisational domain and alignment ---------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own organisational domain
        ("Mail.Example.COM.", "example.com"),
        ("mail.bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_alignment_modes() -> None:
    assert aligned("example.com", "example.com", "s")
    assert aligned("EXAMPLE.com", "example.com.", "s")
    assert not aligned("mail.example.com", "example.com", "s")
    assert aligned("mail.example.com", "example.com", "r")
    assert aligned("bounces.example.com", "news.example.com", "r")
    assert not aligned("example.net", "example.com", "r")
    # Two registrants under one public suffix are not aligned.
    assert not aligned("alice.co.uk", "bob.co.uk", "r")
    assert not aligned("", "example.com", "r")


# -- evaluation -------------------------------------------------------------------------------


REJECT = {"_dmarc.example.com": ["v=DMARC1; p=reject"]}


def test_aligned_spf_passes() -> None:
    result = dmarc("example.com", REJECT, spf_result=spf("pass", "example.com"))
    assert (result.result, result.policy, result.spf_aligned) == ("pass", "none", True)
    assert result.published_policy == "reject"
    assert result.record_domain == "example.com"


def test_aligned_dkim_passes_even_when_spf_fails() -> None:
    result = dmarc(
        "example.com",
        REJECT,
        spf_result=spf("fail", "example.com"),
        dkim_results=[dkim("pass", "example.com")],
    )
    assert (result.result, result.dkim_aligned, result.spf_aligned) == ("pass", True, False)


@pytest.mark.parametrize("policy", ["reject", "quarantine", "none"])
def test_unaligned_pass_fails_with_the_policy(policy: str) -> None:
    records = {"_dmarc.example.com": [f"v=DMARC1; p={policy}"]}
    result = dmarc(
        "example.com",
        records,
        spf_result=spf("pass", "attacker.example"),
        dkim_results=[dkim("pass", "attacker.example")],
    )
    assert (result.result, result.policy, result.published_policy) == ("fail", policy, policy)


def test_failed_dkim_of_the_domain_does_not_count() -> None:
    result = dmarc("example.com", REJECT, dkim_results=[dkim("fail", "example.com")])
    assert (result.result, result.policy) == ("fail", "reject")


def test_relaxed_alignment_accepts_subdomains() -> None:
    result = dmarc(
        "example.com",
        REJECT,
        spf_result=spf("pass", "bounces.example.com"),
        dkim_results=[dkim("pass", "mail.example.com")],
    )
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", True, True)


def test_strict_spf_alignment() -> None:
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; aspf=s"]}
    sub = dmarc("example.com", records, spf_result=spf("pass", "bounces.example.com"))
    assert (sub.result, sub.policy) == ("fail", "reject")
    exact = dmarc("example.com", records, spf_result=spf("pass", "example.com"))
    assert exact.result == "pass"


def test_strict_dkim_alignment() -> None:
    records = {"_dmarc.example.com": ["v=DMARC1; p=quarantine; adkim=s"]}
    sub = dmarc("example.com", records, dkim_results=[dkim("pass", "mail.example.com")])
    assert (sub.result, sub.policy) == ("fail", "quarantine")
    exact = dmarc("example.com", records, dkim_results=[dkim("pass", "Example.COM")])
    assert exact.result == "pass"


def test_helo_identity_aligns_for_the_null_sender() -> None:
    result = dmarc("example.com", REJECT, spf_result=spf("pass", "mx.example.com", "helo"))
    assert (result.result, result.spf_aligned) == ("pass", True)


def test_subdomain_policy_applies_below_the_organisational_domain() -> None:
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; sp=quarantine"]}
    sub = dmarc("news.example.com", records)
    assert (sub.result, sub.policy, sub.record_domain) == ("fail", "quarantine", "example.com")
    top = dmarc("example.com", records)
    assert top.policy == "reject"


def test_subdomain_without_sp_gets_p() -> None:
    result = dmarc("news.example.com", REJECT)
    assert (result.result, result.policy) == ("fail", "reject")


def test_subdomain_own_record_wins_and_its_sp_is_ignored() -> None:
    records = {
        "_dmarc.news.example.com": ["v=DMARC1; p=none; sp=reject"],
        "_dmarc.example.com": ["v=DMARC1; p=reject"],
    }
    result = dmarc("news.example.com", records)
    assert (result.result, result.policy, result.record_domain) == (
        "fail",
        "none",
        "news.example.com",
    )


def test_org_domain_fallback_uses_the_public_suffix_list() -> None:
    records = {"_dmarc.example.co.uk": ["v=DMARC1; p=reject; sp=quarantine"]}
    fake = FakeTxt(records)
    result = asyncio.run(check_dmarc("mail.example.co.uk", fake, spf=None, dkim=()))
    assert (result.result, result.policy, result.record_domain) == (
        "fail",
        "quarantine",
        "example.co.uk",
    )
    # Never _dmarc.co.uk: the public suffix is not an organisational domain.
    assert fake.queries == ["_dmarc.mail.example.co.uk", "_dmarc.example.co.uk"]


def test_no_record_is_none() -> None:
    result = dmarc("example.com", {}, spf_result=spf("fail", "example.com"))
    assert (result.result, result.policy, result.published_policy) == ("none", "none", None)


def test_non_dmarc_txt_records_are_discarded() -> None:
    records = {"_dmarc.example.com": ["v=spf1 -all", "hello", "v=DMARC1; p=reject"]}
    assert dmarc("example.com", records).result == "fail"


@pytest.mark.parametrize(
    "record", ["v=DMARC1; p=nonsense", "v=DMARC1", "v=DMARC1; p=reject; sp=everything"]
)
def test_invalid_record_is_none(record: str) -> None:
    result = dmarc("example.com", {"_dmarc.example.com": [record]})
    assert (result.result, result.policy) == ("none", "none")
    assert "unusable" in result.reason


def test_invalid_record_at_from_domain_does_not_fall_back() -> None:
    # A DMARC record was found (step 2 kept it), so discovery stops there (RFC 7489 §6.6.3).
    records = {
        "_dmarc.news.example.com": ["v=DMARC1; p=bogus"],
        "_dmarc.example.com": ["v=DMARC1; p=reject"],
    }
    assert dmarc("news.example.com", records).result == "none"


def test_several_records_is_none() -> None:
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}
    result = dmarc("example.com", records)
    assert result.result == "none"
    assert "2 DMARC records" in result.reason


def test_lookup_failure_is_temperror() -> None:
    records: dict[str, list[str] | Exception] = {"_dmarc.example.com": DnsTempError("x", "timeout")}
    result = dmarc("example.com", records)
    assert (result.result, result.policy) == ("temperror", "none")
    # The organisational domain's failure counts too.
    sub = dmarc("news.example.com", records)
    assert sub.result == "temperror"


def test_aligned_temporary_failure_is_temperror_not_fail() -> None:
    result = dmarc("example.com", REJECT, spf_result=spf("temperror", "example.com"))
    assert (result.result, result.policy) == ("temperror", "none")
    result = dmarc("example.com", REJECT, dkim_results=[dkim("temperror", "example.com")])
    assert result.result == "temperror"


def test_unaligned_temporary_failure_still_fails() -> None:
    result = dmarc("example.com", REJECT, spf_result=spf("temperror", "other.example"))
    assert (result.result, result.policy) == ("fail", "reject")


@pytest.mark.parametrize("from_domain", [None, "", "bad..domain", "-" * 70 + ".example"])
def test_unusable_from_domain_is_permerror(from_domain: str | None) -> None:
    assert dmarc(from_domain, REJECT).result == "permerror"


# -- pct sampling ------------------------------------------------------------------------------


def _ids_by_bucket(pct: int) -> tuple[str, str]:
    """A Message-ID inside the pct sample and one outside."""
    inside = next(f"<{i}@x>" for i in range(1000) if sample_bucket(f"<{i}@x>") < pct)
    outside = next(f"<{i}@x>" for i in range(1000) if sample_bucket(f"<{i}@x>") >= pct)
    return inside, outside


def test_sample_bucket_is_stable() -> None:
    assert sample_bucket("<abc@example.com>") == sample_bucket(" <abc@example.com> ")
    assert 0 <= sample_bucket("") < 100
    # SHA-256 of "<abc@example.com>", first 8 bytes big-endian, mod 100: fixed for all time.
    digest = hashlib.sha256(b"<abc@example.com>").digest()
    assert sample_bucket("<abc@example.com>") == int.from_bytes(digest[:8], "big") % 100


def test_pct_lowers_the_policy_outside_the_sample() -> None:
    inside, outside = _ids_by_bucket(50)
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=50"]}
    sampled = dmarc("example.com", records, message_id=inside)
    assert (sampled.result, sampled.policy, sampled.sampled) == ("fail", "reject", True)
    spared = dmarc("example.com", records, message_id=outside)
    assert (spared.result, spared.policy, spared.sampled) == ("fail", "quarantine", False)
    quarantine = {"_dmarc.example.com": ["v=DMARC1; p=quarantine; pct=50"]}
    assert dmarc("example.com", quarantine, message_id=outside).policy == "none"


def test_pct_zero_and_hundred() -> None:
    zero = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=0"]}
    assert {dmarc("example.com", zero, message_id=f"<{i}@x>").policy for i in range(50)} == {
        "quarantine"
    }
    full = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=100"]}
    assert {dmarc("example.com", full, message_id=f"<{i}@x>").policy for i in range(50)} == {
        "reject"
    }


def test_pct_sample_size_is_about_right() -> None:
    records = {"_dmarc.example.com": ["v=DMARC1; p=reject; pct=20"]}
    rejected = sum(
        dmarc("example.com", records, message_id=f"<{i}@example.net>").policy == "reject"
        for i in range(1000)
    )
    assert 150 <= rejected <= 250


# -- fuzzing and the From domains the module feeds in ------------------------------------------


@given(st.text(max_size=200))
def test_parse_record_accepts_or_refuses_anything(text: str) -> None:
    try:
        record = parse_record(text)
    except DmarcRecordError:
        return
    assert record.policy in ("none", "quarantine", "reject")
    assert 0 <= record.pct <= 100


@given(st.text(max_size=100), st.text(max_size=100))
def test_alignment_never_raises(a: str, b: str) -> None:
    assert aligned(a, b, "r") in (True, False)
    assert aligned(a, b, "s") in (True, False)


@pytest.mark.parametrize(
    ("from_field", "domains"),
    [
        ("Alice <alice@Example.COM>", ["example.com"]),
        ('"ceo@example.com" <x@attacker.example>', ["attacker.example"]),
        ("a@one.example, b@two.example", ["one.example", "two.example"]),
        # CVE-2023-27043 shape: parsers disagree, so every domain either sees is checked.
        ("alice@attacker.example)<ceo@example.com>", ["attacker.example", "example.com"]),
        ("undisclosed-recipients:;", []),
        ("", []),
    ],
)
@pytest.mark.parametrize("parsed", [False, True], ids=["from content", "from parsed"])
def test_from_domains(from_field: str, domains: list[str], parsed: bool) -> None:
    content = f"From: {from_field}\r\nMessage-ID: <m1@x>\r\n\r\nbody\r\n".encode()
    found, message_id = from_domains(content, parse(content) if parsed else None)
    assert sorted(found) == sorted(domains)
    assert message_id == "<m1@x>"


@pytest.mark.parametrize("parsed", [False, True], ids=["from content", "from parsed"])
def test_from_domains_of_several_from_fields(parsed: bool) -> None:
    content = b"From: a@one.example\r\nFrom: b@two.example\r\n\r\n"
    expected = (["one.example", "two.example"], "")
    assert from_domains(content, parse(content) if parsed else None) == expected


def parse(content: bytes) -> ParsedMessage:
    return ParsedMessage.parse(content, max_parts=100, max_depth=10)


_HEADER_TEXT = st.lists(
    st.sampled_from([*'abc@.<>()",:; \t=?Q', "\r\n", "\r\n ", "From: ", "=?utf-8?q?x?="]),
    max_size=40,
).map("".join)


@given(_HEADER_TEXT, _HEADER_TEXT)
@settings(max_examples=300)
def test_from_domains_are_the_same_from_the_parsed_message(first: str, second: str) -> None:
    # The pipeline's parser hands the authentication check the same undecoded fields its own
    # parse of the header section would read (an encoded word is never decoded into an
    # address). Line ends are CRLF only: the SMTP server turns bare CR and LF into CRLF.
    content = f"Subject: s\r\nFrom: {first}\r\nMessage-ID: {second}\r\n\r\nbody\r\n".encode()
    assert from_domains(content, parse(content)) == from_domains(content)


@given(st.binary(max_size=300))
def test_from_domains_never_raises(header: bytes) -> None:
    domains, message_id = from_domains(b"From: " + header + b"\r\n\r\nbody")
    assert all(isinstance(d, str) for d in domains)
    assert "\n" not in message_id


def test_from_domains_read_the_content_when_the_parser_stopped_before_the_header() -> None:
    content = b"From: alice@example.com\r\nMessage-ID: <m1@x>\r\n\r\nbody\r\n"
    stopped = ParsedMessage(content)  # as a parse that ended before the top-level fields
    assert stopped.raw_headers == []
    assert from_domains(content, stopped) == (["example.com"], "<m1@x>")
