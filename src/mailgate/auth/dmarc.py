"""DMARC (RFC 7489): does the RFC5322.From domain's own policy accept the SPF and DKIM
results, and what does it ask the receiver to do with a message that fails?

Steps: the policy record is looked up at `_dmarc.<From domain>`, then at
`_dmarc.<Organizational Domain>` (RFC 7489 §6.6.3); the organisational domain comes from the
Public Suffix List bundled with the `publicsuffixlist` package (no network; it is as fresh as
the package). DMARC passes when SPF passed for an aligned domain (the MAIL FROM domain, or the
HELO name for the null sender) or a DKIM signature passed with an aligned d= (RFC 7489 §3.1,
strict or relaxed per aspf and adkim).

Results (RFC 8601 §2.7.1 / RFC 7489 §11.2): pass; fail; none (no usable policy record:
DMARC does not apply); temperror (the policy lookup failed for now, or the message failed only
because an aligned SPF or DKIM check had a temporary DNS error: a retry may pass); permerror
(no usable RFC5322.From domain).

The policy to apply (`DmarcResult.policy`) is "none" unless the result is fail; then it is p=,
or sp= for a subdomain of the domain that published the record, lowered one step
(reject→quarantine→none) for messages outside the pct= sample (RFC 7489 §6.6.4). Sampling is
deterministic, so tests and retries of one message agree: a message is in the sample when
SHA-256 of its Message-ID (stripped) read as a number is below pct% of the hash space
(bucket = first 8 bytes mod 100, in the sample when bucket < pct). Messages without a
Message-ID all share one bucket.

Security notes: records come from the sender's DNS and are parsed without regular-expression
backtracking on their content; unknown tags are ignored and bad optional values fall back to
their defaults (RFC 7489 §6.3).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from publicsuffixlist import PublicSuffixList

from mailgate.auth.dkim import DkimSignatureResult, TxtDns
from mailgate.auth.spf import SpfResult
from mailgate.dns import DnsError, DnsNotFound, ascii_name

__all__ = [
    "DmarcPolicy",
    "DmarcRecord",
    "DmarcRecordError",
    "DmarcResult",
    "DmarcResultCode",
    "aligned",
    "check_dmarc",
    "is_dmarc_record",
    "normalize_domain",
    "organizational_domain",
    "parse_record",
    "sample_bucket",
]

DmarcPolicy = Literal["none", "quarantine", "reject"]
DmarcResultCode = Literal["pass", "fail", "none", "temperror", "permerror"]
Alignment = Literal["r", "s"]

_POLICIES: dict[str, DmarcPolicy] = {"none": "none", "quarantine": "quarantine", "reject": "reject"}
_ALIGNMENTS: dict[str, Alignment] = {"r": "r", "s": "s"}
# RFC 7489 §6.6.4 / §6.3 pct: messages outside the sample get the next policy lower.
_LOWER: dict[DmarcPolicy, DmarcPolicy] = {
    "reject": "quarantine",
    "quarantine": "none",
    "none": "none",
}


class DmarcRecordError(ValueError):
    """The TXT record is not a usable DMARC policy record."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed policy record (RFC 7489 §6.3); `subdomain_policy` None means "as p"."""

    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100


def _tag_list(text: str) -> list[tuple[str, str]]:
    tags: list[tuple[str, str]] = []
    for spec in text.split(";"):
        if not spec.strip():
            continue  # an empty spec, e.g. after a trailing ";"
        name, sep, value = spec.partition("=")
        if not sep:
            raise DmarcRecordError(f"tag without '=': {spec.strip()[:40]!r}")
        tags.append((name.strip().lower(), value.strip()))
    return tags


def is_dmarc_record(text: str) -> bool:
    """RFC 7489 §6.3 v: the record's first tag is v=DMARC1, exactly."""
    name, sep, rest = text.partition("=")
    return bool(sep) and name.strip().lower() == "v" and rest.partition(";")[0].strip() == "DMARC1"


def _valid_rua(value: str) -> bool:
    # RFC 7489 §6.4: a comma-separated list of URIs, each optionally followed by "!size".
    for uri in value.split(","):
        scheme, sep, rest = uri.strip().partition(":")
        if sep and scheme and scheme[0].isalpha() and rest and " " not in rest:
            return True
    return False


@functools.lru_cache(maxsize=1024)  # a record is immutable; the same few come back all day
def parse_record(text: str) -> DmarcRecord:
    """Parse a DMARC record; raise DmarcRecordError when it cannot be used.

    RFC 7489 §6.6.3 step 6: without a valid p= (or with an invalid sp=), a record that has a
    valid rua= counts as p=none; otherwise it is unusable.
    """
    if not is_dmarc_record(text):
        raise DmarcRecordError("not a DMARC record (must start with v=DMARC1)")
    tags = dict(_tag_list(text))  # a repeated tag: the last wins; nothing in the RFC says
    policy = _POLICIES.get(tags.get("p", "").lower())
    sp_text = tags.get("sp")
    subdomain_policy = _POLICIES.get(sp_text.lower()) if sp_text is not None else None
    if policy is None or (sp_text is not None and subdomain_policy is None):
        if _valid_rua(tags.get("rua", "")):
            return DmarcRecord(policy="none")
        raise DmarcRecordError(f"no valid p= (p={tags.get('p', '')!r}, sp={sp_text!r})")
    # RFC 7489 §6.3: invalid values of the other tags fall back to their defaults.
    adkim = _ALIGNMENTS.get(tags.get("adkim", "r").lower(), "r")
    aspf = _ALIGNMENTS.get(tags.get("aspf", "r").lower(), "r")
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isascii() and pct_text.isdigit() else 100
    if not 0 <= pct <= 100:
        pct = 100
    return DmarcRecord(policy, subdomain_policy, adkim, aspf, pct)


_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


def _public_suffix_list() -> PublicSuffixList:
    global _psl
    with _psl_lock:  # parsing the list takes a moment; do it once
        if _psl is None:
            _psl = PublicSuffixList()
        return _psl


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Lowercase A-label form without trailing dot; ValueError for what is not a domain."""
    text = ascii_name(domain).lower()
    if any(not label or len(label) > 63 for label in text.split(".")) or len(text) > 253:
        raise ValueError(f"invalid domain name {domain!r}")
    return text


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself if it is a suffix)."""
    name = normalize_domain(domain)
    private = _public_suffix_list().privatesuffix(name)
    return private.lower() if private else name


def aligned(domain: str, from_domain: str, mode: Alignment) -> bool:
    """RFC 7489 §3.1: strict = the same name; relaxed = the same organisational domain."""
    try:
        a, b = normalize_domain(domain), normalize_domain(from_domain)
    except ValueError:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def sample_bucket(message_id: str) -> int:
    """The message's pct bucket, 0-99, from SHA-256 of its Message-ID (see the module doc)."""
    digest = hashlib.sha256(message_id.strip().encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % 100


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC outcome for one message.

    `policy` is what to do (none unless fail); `published_policy` the p= or sp= that applied
    before pct sampling; `record_domain` where the record was found ("" for none).
    """

    result: DmarcResultCode
    from_domain: str
    policy: DmarcPolicy = "none"
    published_policy: DmarcPolicy | None = None
    record_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled: bool = True
    reason: str = ""
    record: DmarcRecord | None = None


async def _records(dns: TxtDns, domain: str) -> list[str]:
    """DMARC records at _dmarc.`domain` (RFC 7489 §6.6.3 steps 1-2, 3-4)."""
    try:
        texts = await dns.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return []
    return [t for t in texts if is_dmarc_record(t)]


async def _discover(dns: TxtDns, from_domain: str) -> tuple[str, DmarcRecord] | str:
    """(record domain, record), or why no policy applies. DnsTempError passes through."""
    domain = from_domain
    records = await _records(dns, domain)
    if not records:
        org = organizational_domain(from_domain)
        if org != from_domain:
            domain = org
            records = await _records(dns, domain)
    if not records:
        return "no DMARC record"
    if len(records) > 1:
        # RFC 7489 §6.6.3 step 5: several records: DMARC is not applied.
        return f"{len(records)} DMARC records at _dmarc.{domain}"
    try:
        return domain, parse_record(records[0])
    except DmarcRecordError as exc:
        return f"unusable DMARC record at _dmarc.{domain}: {exc}"


async def check_dmarc(
    from_domain: str | None,
    dns: TxtDns,
    *,
    spf: SpfResult | None,
    dkim: Sequence[DkimSignatureResult],
    message_id: str = "",
) -> DmarcResult:
    """Evaluate DMARC for a message whose RFC5322.From domain is `from_domain` (None when the
    message has no single usable one), given its SPF result (None: SPF not evaluated) and DKIM
    signature results. Never raises for DNS trouble."""
    if not from_domain:
        # RFC 7489 §6.6.1: DMARC needs exactly one RFC5322.From domain.
        return DmarcResult("permerror", "", reason="no single RFC5322.From domain")
    try:
        domain = normalize_domain(from_domain)
    except ValueError:
        return DmarcResult("permerror", from_domain, reason="invalid RFC5322.From domain")
    try:
        found = await _discover(dns, domain)
    except DnsError as exc:  # DnsTempError; NXDOMAIN is handled as "no record"
        return DmarcResult("temperror", domain, reason=f"policy lookup failed: {exc.reason}")
    if isinstance(found, str):
        # RFC 7489 §6.6.3: without a policy record DMARC is not applied.
        return DmarcResult("none", domain, reason=found)
    record_domain, record = found

    spf_domain = spf.domain if spf is not None else ""
    spf_candidate = bool(spf_domain) and aligned(spf_domain, domain, record.aspf)
    spf_aligned = spf_candidate and spf is not None and spf.result == "pass"
    dkim_candidates = [s for s in dkim if s.domain and aligned(s.domain, domain, record.adkim)]
    dkim_aligned = any(s.result == "pass" for s in dkim_candidates)

    # RFC 7489 §6.3 sp: the subdomain policy, when the record is the organisational domain's
    # and the From domain is below it (sp on a subdomain's own record is never used).
    subdomain = record_domain != domain
    published = record.subdomain_policy if subdomain and record.subdomain_policy else record.policy
    sampled = sample_bucket(message_id) < record.pct
    base = DmarcResult(
        "fail",
        domain,
        published_policy=published,
        record_domain=record_domain,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
        sampled=sampled,
        record=record,
    )
    if spf_aligned or dkim_aligned:
        via = "SPF" if spf_aligned else "DKIM"
        return replace(base, result="pass", reason=f"aligned {via} pass")
    temporary = (spf_candidate and spf is not None and spf.result == "temperror") or any(
        s.result == "temperror" for s in dkim_candidates
    )
    if temporary:
        reason = "an aligned SPF or DKIM check failed temporarily"
        return replace(base, result="temperror", reason=reason)
    # RFC 7489 §6.6.4: apply the policy to pct% of failing messages, the next lower to the rest.
    policy = published if sampled else _LOWER[published]
    return replace(base, policy=policy, reason="no aligned SPF or DKIM pass")
