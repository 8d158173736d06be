"""DNS lookups for mail routing and authentication: MX (RFC 5321 §5.1, RFC 7505), A/AAAA, TXT, PTR.

`Resolver` is the interface the rest of mailgate depends on; `DnsPythonResolver` implements it on
dnspython's asyncio stub resolver. Failures are reported as exceptions that say whether they are
permanent (`DnsNotFound`, `NullMx`) or temporary (`DnsTempError`), because that decides whether a
message bounces or stays queued.

Security notes: answers are not DNSSEC-validated here; names from mail (possibly Unicode) are
converted to A-labels before they reach the wire, and names that cannot be converted are treated as
nonexistent rather than passed on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
import idna

__all__ = [
    "DnsError",
    "DnsNotFound",
    "DnsPythonResolver",
    "DnsTempError",
    "MxHost",
    "NullMx",
    "Resolver",
    "ascii_name",
    "parse_nameserver",
]

DEFAULT_PORT = 53
# DNS flag day 2020 value: large enough for most DKIM keys, small enough to avoid IP fragmentation.
_EDNS_PAYLOAD = 1232
_PORT_RE = re.compile(r"[0-9]{1,5}")


class DnsError(Exception):
    """A lookup failed; `name` is what was asked for, `reason` a short explanation."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class DnsNotFound(DnsError):
    """The name does not exist (NXDOMAIN) or cannot be a DNS name: a permanent failure."""


class DnsTempError(DnsError):
    """SERVFAIL, timeout or network error: the same lookup may succeed later."""


class NullMx(DnsError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail at all."""

    def __init__(self, name: str, reason: str = "null MX: domain accepts no mail") -> None:
        super().__init__(name, reason)


@dataclass(frozen=True, order=True)
class MxHost:
    """One mail exchanger; field order makes sorting go by preference, then host."""

    preference: int
    host: str


class Resolver(Protocol):
    """The lookups mailgate needs; every method raises only `DnsError` subclasses."""

    async def mx(self, domain: str) -> list[MxHost]:
        """MX hosts sorted by preference; [] when the domain has no MX (use its A/AAAA)."""
        ...

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of `host`, as text."""
        ...

    async def txt(self, name: str) -> list[str]:
        """TXT records, each one's strings concatenated."""
        ...

    async def ptr(self, ip: str) -> list[str]:
        """Host names of the reverse (PTR) records of `ip`."""
        ...


def ascii_name(name: str) -> str:
    """Return `name` in ASCII form: non-ASCII labels become A-labels after UTS-46 mapping.

    ASCII labels are kept as they are, because DNS names used by mail authentication
    (`_dmarc`, `selector._domainkey`) contain underscores that IDNA rejects. A single trailing
    dot is dropped. Raises ValueError when the name is empty or not a valid IDN.
    """
    text = name.strip().removesuffix(".")
    if not text.isascii():
        try:
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
            text = ".".join(
                label if label.isascii() else idna.alabel(label).decode("ascii")
                for label in text.split(".")
            )
        except idna.IDNAError as exc:
            raise ValueError(f"invalid domain name {name!r}: {exc}") from exc
    if not text or ".." in text or text.startswith("."):
        raise ValueError(f"invalid domain name {name!r}: empty label")
    return text


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse "IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address into (address, port).

    Raises ValueError with a message fit for a configuration error report.
    """
    value = text.strip()
    port_text: str | None = None
    if value.startswith("["):
        address, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [IPv6] or [IPv6]:PORT")
        port_text = rest[1:] if rest else None
        family = "IPv6"
    elif value.count(":") >= 2:
        # More than one colon can only be an IPv6 address; a port needs the bracket form.
        address, family = value, "IPv6"
    else:
        address, sep, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if sep else None
        family = "IPv4"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: {address!r} is not an IP address") from None
    if (family == "IPv6") != (ip.version == 6):
        raise ValueError(f"nameserver {text!r}: {address!r} is not an {family} address")
    if port_text is None:
        return str(ip), DEFAULT_PORT
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"nameserver {text!r}: port must be a number from 1 to 65535")
    return str(ip), int(port_text)


def _host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class DnsPythonResolver:
    """`Resolver` on dnspython, querying the given nameservers or those of /etc/resolv.conf.

    `timeout` bounds one whole lookup, retries and TCP fallback included. With `cache_size`,
    up to that many answers (negative ones included) are kept for their TTL, so the records
    every message asks for (the sender domain's SPF and DMARC) cost no round trip.
    """

    def __init__(
        self, nameservers: list[str] | None = None, timeout: float = 5.0, cache_size: int = 0
    ) -> None:
        if nameservers:
            servers = [parse_nameserver(ns) for ns in nameservers]
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in servers
            ]
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise DnsError("/etc/resolv.conf", f"no usable nameserver: {exc}") from exc
        self._resolver.lifetime = timeout
        # Without EDNS every answer over 512 bytes (DKIM keys, long SPF records) costs a
        # truncated UDP answer and a TCP retry (RFC 6891).
        self._resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        # dnspython's cache answers after it has built a whole resolution (name, request
        # state, lock): some 30 us a lookup, and every message asks for its sender domain's
        # SPF and DMARC records. Answers still within their TTL are taken from this table
        # first, by the name as asked; negative answers are left to dnspython's cache.
        self._answers: dict[tuple[str, int], dns.resolver.Answer] | None = None
        self._cache_size = cache_size
        if cache_size:
            self._resolver.cache = dns.resolver.LRUCache(cache_size)
            self._answers = {}

    async def query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        """The answer for any record type, errors mapped to `DnsError` subclasses."""
        answers = self._answers
        if answers is not None:
            kept = answers.get((name, rdtype))
            if kept is not None:
                if kept.expiration > time.time():
                    return kept
                del answers[(name, rdtype)]
        answer = await self._query(name, rdtype)
        if answers is not None and answer.rrset is not None:
            if len(answers) >= self._cache_size:
                del answers[next(iter(answers))]  # the oldest entry
            answers[(name, rdtype)] = answer
        return answer

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        try:
            # Built from labels, not parsed as zone-file text, so "@" or "\\" mean nothing special.
            labels = [label.encode("ascii") for label in ascii_name(name).split(".")]
            qname = dns.name.Name([*labels, b""])
        except (ValueError, dns.exception.DNSException) as exc:
            raise DnsNotFound(name, f"invalid name: {exc}") from exc
        try:
            return await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            raise DnsNotFound(name, "no such domain (NXDOMAIN)") from exc
        except dns.resolver.YXDOMAIN as exc:
            raise DnsNotFound(name, "name too long after DNAME substitution (YXDOMAIN)") from exc
        except dns.resolver.LifetimeTimeout as exc:
            raise DnsTempError(name, "timeout") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(name, "no nameserver answered (SERVFAIL or refused)") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTempError(name, f"lookup failed: {exc}") from exc

    async def mx(self, domain: str) -> list[MxHost]:
        answer = await self.query(domain, dns.rdatatype.MX)
        records = list(answer.rrset or ())
        # RFC 7505 §3: a null MX is the only MX of its domain; like mox, accept any preference.
        # A "." exchange mixed with real ones is a misconfiguration: skip it, use the others.
        real = [
            MxHost(r.preference, _host_text(r.exchange))
            for r in records
            if r.exchange != dns.name.root
        ]
        if records and not real:
            raise NullMx(domain)
        return sorted(real)

    async def addresses(self, host: str) -> list[str]:
        results = await asyncio.gather(
            self.query(host, dns.rdatatype.A),
            self.query(host, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        found: list[str] = []
        errors: list[DnsError] = []
        for result in results:
            if isinstance(result, DnsError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(r.address for r in result.rrset or ())
        if found or not errors:
            return found
        # An empty answer beside a failure proves nothing: the failed family may hold the only
        # addresses, so a temporary error must not become a permanent "no address".
        temporary = [e for e in errors if isinstance(e, DnsTempError)]
        if temporary:
            raise DnsTempError(host, temporary[0].reason)
        if len(errors) == len(results):
            raise DnsNotFound(host, errors[0].reason)
        # One family NXDOMAIN, the other NODATA: inconsistent servers; nothing to connect to.
        return []

    async def txt(self, name: str) -> list[str]:
        answer = await self.query(name, dns.rdatatype.TXT)
        # RFC 7208 §3.3 and RFC 6376 §3.6.2.2: a record's strings are concatenated without spaces.
        return [b"".join(r.strings).decode("utf-8", errors="replace") for r in answer.rrset or ()]

    async def ptr(self, ip: str) -> list[str]:
        try:
            reverse = dns.reversename.from_address(ip).to_text()
        except (ValueError, dns.exception.DNSException) as exc:
            raise DnsNotFound(ip, f"not an IP address: {exc}") from exc
        answer = await self.query(reverse, dns.rdatatype.PTR)
        return sorted({_host_text(r.target) for r in answer.rrset or ()})
