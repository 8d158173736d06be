"""Mail Authentication module: SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489) for each
message, reported in an Authentication-Results header (RFC 8601).

Switches (Settings → General → Protection → External services, `ExternalServices`): use_spf,
use_dkim, use_dmarc. A method switched off is neither evaluated nor reported.

SPF checks the real client (`ctx.real_client`: the server that handed the message to the
border gateway, learned from XFORWARD, XCLIENT or the border's Received header, SPEC 4.3), not
the border gateway itself, with the envelope sender (or the HELO name for the null sender).
DKIM verifies every signature of the message as received. DMARC takes the RFC5322.From
domain(s) and combines both.

Verdict (checks report; the rule's auth actions decide):

1. DMARC_REJECT / DMARC_QUARANTINE: DMARC fails and the applicable policy (p=, or sp= for a
   subdomain, after pct= sampling) is reject / quarantine;
2. SPF_FAIL: SPF says fail and DMARC gave no decision (DMARC off, no policy record, no usable
   From, or a temporary error). A DMARC pass (aligned DKIM) or a DMARC fail under p=none is a
   decision, and the domain owner's: SPF fail alone then changes nothing;
3. ERROR, only when nothing could be decided because of a temporary DNS failure: DMARC
   temperror (its record lookup, or an aligned SPF/DKIM check, failed for now), or, when DMARC
   gave no decision, SPF temperror. A DKIM temperror alone never makes an ERROR: without DMARC
   no verdict depends on DKIM;
4. CLEAN otherwise.

From domains: a message should have one From field with one address (RFC 5322 §3.6). When the
field holds several addresses, or several From fields exist, or two parsers disagree about
what it holds, DMARC is evaluated for every domain found (at most `MAX_FROM_DOMAINS`) and
the strictest outcome counts (RFC 7489 §6.6.1 lets receivers apply DMARC to each): an
ambiguous From never lets a sender pick the domain that is checked.

Security notes: everything here comes from the sender; results.py makes it safe to put in a
header. `scan` never raises; unexpected failures are Verdict.ERROR with the reason.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import functools
import logging
from collections.abc import Callable, Sequence
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Protocol

from mailgate.auth.dkim import DkimSignatureResult, TxtDns, is_signed, verify_dkim
from mailgate.auth.dmarc import DmarcResult, check_dmarc
from mailgate.auth.results import HEADER, authentication_results, one_line
from mailgate.auth.spf import AsyncSpfDns, SpfMemo, SpfResult, check_spf
from mailgate.pipeline.api import CheckResult, ScanContext, Verdict

if TYPE_CHECKING:
    from mailgate.pipeline.message import ParsedMessage

__all__ = ["MAX_FROM_DOMAINS", "AuthCheck", "AuthDns", "from_domains"]

log = logging.getLogger(__name__)

MODULE = "auth"
MAX_FROM_DOMAINS = 10
_MAX_HEADER_SECTION = 1024 * 1024  # what is looked at for From and Message-ID


class AuthDns(AsyncSpfDns, TxtDns, Protocol):
    """The DNS the module needs: `lookup` (any record type, for SPF) and `txt` (DKIM keys,
    DMARC records). `mailgate.auth.spf.ResolverSpfDns` is mailgate's real one."""


def _header_section(content: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = content.find(separator, 0, _MAX_HEADER_SECTION)
        if end >= 0:
            return content[: end + len(separator)]
    return content[:_MAX_HEADER_SECTION]


def _domain_of(address: str) -> str:
    local, at, domain = address.strip().rpartition("@")
    return domain.strip().rstrip(".").lower() if at and local else ""


def from_domains(content: bytes, parsed: ParsedMessage | None = None) -> tuple[list[str], str]:
    """The RFC5322.From domains of a message (see the module doc) and its Message-ID.

    From `parsed` (the undecoded top-level fields the pipeline's parser already read) when a
    check has parsed the message and its parser got that far, else from the header section of
    `content`.
    """
    if parsed is not None and parsed.raw_headers:
        fields = parsed.raw_headers
        froms = [value for name, value in fields if name.lower() == "from"]
        ids = [value for name, value in fields if name.lower() == "message-id"]
    else:
        headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            _header_section(content)
        )
        froms = [str(raw) for raw in headers.get_all("From") or []]
        ids = [str(headers.get("Message-ID", "") or "")]
    domains: list[str] = []
    for raw in froms:
        for domain in _from_field_domains(raw):
            if domain not in domains:
                domains.append(domain)
    return domains, one_line(ids[0] if ids else "")


@functools.lru_cache(maxsize=1024)
def _from_field_domains(text: str) -> tuple[str, ...]:
    """The domains one From field names, by both parsers (the strict one is the costly part,
    and the same From comes back message after message: hence the cache)."""
    found = [_domain_of(address) for _name, address in email.utils.getaddresses([text])]
    try:
        parsed = email.policy.default.header_factory("From", text)
        found += [str(a.domain).lower() for a in getattr(parsed, "addresses", ())]
    except Exception as exc:  # a header the strict parser cannot read: keep the other's
        log.debug("From header not parsed: %r", exc)
    return tuple(dict.fromkeys(d for d in found if d))


def _dmarc_rank(result: DmarcResult) -> int:
    """Strictness, to pick the outcome that counts among several From domains."""
    if result.result == "fail":
        return {"reject": 5, "quarantine": 4}.get(result.policy, 2)
    return {"temperror": 3, "permerror": 1, "none": 1}.get(result.result, 0)


def _source(ctx: ScanContext) -> str:
    return ctx.real_client.source or "connection"


class AuthCheck:
    """The Mail Authentication module (`module = "auth"`).

    `dns_factory` returns the DNS to use for one message (called once per scan, so a
    configuration reload that changes the nameservers applies to the next message).
    """

    module = MODULE

    def __init__(
        self,
        dns_factory: Callable[[], AuthDns],
        *,
        spf_time_limit: float = 20.0,
        dkim_time_limit: float = 20.0,
    ) -> None:
        self._dns_factory = dns_factory
        self._spf_time_limit = spf_time_limit
        self._dkim_time_limit = dkim_time_limit
        self.spf_memo = SpfMemo()

    async def scan(self, ctx: ScanContext) -> CheckResult:
        try:
            return await self._scan(ctx)
        except Exception as exc:
            log.exception("authentication check failed")
            return CheckResult(MODULE, Verdict.ERROR, detail=f"authentication failed: {exc!r}")

    async def _scan(self, ctx: ScanContext) -> CheckResult:
        services = ctx.protection.external_services
        if not (services.use_spf or services.use_dkim or services.use_dmarc):
            return CheckResult(MODULE, Verdict.CLEAN, detail="SPF, DKIM and DMARC are off")
        dns = self._dns_factory()
        client = ctx.real_client

        async def run_spf() -> SpfResult | None:
            if not services.use_spf:
                return None
            return await check_spf(
                client.ip,
                client.helo,
                ctx.envelope.sender,
                dns,
                time_limit=self._spf_time_limit,
                memo=self.spf_memo,
            )

        async def run_dkim() -> tuple[DkimSignatureResult, ...] | None:
            if not services.use_dkim:
                return None
            return await verify_dkim(ctx.content, dns, time_limit=self._dkim_time_limit)

        if services.use_dkim and is_signed(ctx.content):
            spf, dkim = await asyncio.gather(run_spf(), run_dkim())
        else:  # nothing to verify: no second task
            spf, dkim = await run_spf(), (() if services.use_dkim else None)

        dmarc: list[DmarcResult] = []
        if services.use_dmarc:
            domains, message_id = from_domains(ctx.content, ctx.parsed())
            if len(domains) > MAX_FROM_DOMAINS:
                domains = []  # an absurd From: treated like a missing one (permerror)
            targets: Sequence[str | None] = domains or [None]
            checks = [
                check_dmarc(d, dns, spf=spf, dkim=dkim or (), message_id=message_id)
                for d in targets
            ]
            dmarc = [await checks[0]] if len(checks) == 1 else list(await asyncio.gather(*checks))

        verdict = _verdict(spf, dmarc)
        header = authentication_results(
            ctx.hostname,
            spf=spf,
            dkim=dkim,
            dmarc=dmarc,
            client_ip=client.ip,
            client_source=_source(ctx),
        )
        return CheckResult(
            MODULE,
            verdict,
            detail=_detail(spf, dkim, dmarc, client.ip, _source(ctx), verdict),
            headers=((HEADER, header),),
        )


def _verdict(spf: SpfResult | None, dmarc: Sequence[DmarcResult]) -> Verdict:
    worst = max(dmarc, key=_dmarc_rank) if dmarc else None
    if worst is not None and worst.result == "fail":
        if worst.policy == "reject":
            return Verdict.DMARC_REJECT
        if worst.policy == "quarantine":
            return Verdict.DMARC_QUARANTINE
    decided = worst is not None and worst.result in ("pass", "fail")
    if spf is not None and spf.result == "fail" and not decided:
        return Verdict.SPF_FAIL
    if worst is not None and worst.result == "temperror":
        return Verdict.ERROR
    if spf is not None and spf.result == "temperror" and not decided:
        return Verdict.ERROR
    return Verdict.CLEAN


def _detail(
    spf: SpfResult | None,
    dkim: Sequence[DkimSignatureResult] | None,
    dmarc: Sequence[DmarcResult],
    client_ip: str,
    source: str,
    verdict: Verdict,
) -> str:
    parts: list[str] = []
    if spf is not None:
        checked = spf.helo if spf.identity == "helo" else spf.sender
        identity = f"smtp.{spf.identity}={checked}"
        parts.append(f"spf={spf.result} ({identity}, client {client_ip} from {source})")
    if dkim is not None:
        if not dkim:
            parts.append("dkim=none")
        for signature in dkim:
            why = f", {signature.reason}" if signature.reason else ""
            parts.append(
                f"dkim={signature.result} (d={signature.domain} s={signature.selector}{why})"
            )
    for result in dmarc:
        policy = f", p={result.published_policy} dis={result.policy}" if result.record else ""
        why = f", {result.reason}" if result.reason else ""
        parts.append(f"dmarc={result.result} (from={result.from_domain}{policy}{why})")
    parts.append(f"verdict={verdict.value}")
    return one_line(" ".join(parts), 2000)
