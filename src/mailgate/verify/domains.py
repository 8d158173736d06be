"""Unknown recipient domains (Postfix reject_unknown_recipient_domain): a domain with no MX,
no A and no AAAA record, or with a null MX (RFC 7505), cannot receive mail; refuse it at
RCPT instead of accepting and bouncing. Answers are kept briefly in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from mailgate.dns import DnsNotFound, DnsTempError, NullMx, Resolver
from mailgate.metrics import Counters

DomainStatus = Literal["ok", "bad", "temp"]
_KEEP = {"ok": 300.0, "bad": 300.0, "temp": 5.0}


class DomainChecker:
    def __init__(
        self,
        resolver: Callable[[], Resolver],
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._counters = counters
        self._clock = clock
        self._cache: dict[str, tuple[DomainStatus, str, float]] = {}

    async def check(self, domain: str) -> tuple[DomainStatus, str]:
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and cached[2] > now:
            return cached[0], cached[1]
        status, reason = await self._lookup(domain)
        self._counters.inc(f"verify.domains.{status}")
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[domain] = (status, reason, now + _KEEP[status])
        return status, reason

    async def _lookup(self, domain: str) -> tuple[DomainStatus, str]:
        resolver = self._resolver()
        try:
            if await resolver.mx(domain):
                return "ok", ""
            if await resolver.addresses(domain):
                return "ok", ""
        except NullMx:
            return "bad", f"Domain {domain} does not accept mail (nullMX)"
        except DnsNotFound:
            return "bad", "Domain not found"
        except DnsTempError:
            return "temp", "Domain not found"
        return "bad", "Domain not found"
