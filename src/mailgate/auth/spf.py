"""SPF (RFC 7208): is the client allowed to send mail for the MAIL FROM (or HELO) domain?

The evaluation itself is pyspf's (`spf.query`); mailgate only feeds it DNS. pyspf is blocking
code, so `check_spf` runs it in a worker thread and answers each of its DNS questions from the
event loop through an `AsyncSpfDns` (`LoopBridge`), so SPF uses mailgate's resolver, its
nameservers and deadlines, never pyspf's own DNS client.

How the DNS is swapped without touching concurrent evaluations: pyspf asks DNS in exactly one
place, `query.dns()`, through the module-level function `spf.DNSLookup`. `_install_hook` puts a
dispatcher there (at each evaluation, idempotently); it reads the lookup function of the
evaluation in progress from a context variable that `_Query.dns()` (our `spf.query` subclass)
sets around each call and resets after, so every evaluation, in whatever thread, answers from
its own DNS. Code calling pyspf directly (no context variable set) still gets pyspf's own
lookup. pyspf's own logic stays intact: its per-evaluation cache, CNAME following, the
10-lookup and 2-void-lookup limits (RFC 7208 §4.6.4).

Repeated checks (`SpfMemo`): the result of check_host() depends only on its arguments and the
DNS answers pyspf was given. A memo keeps each recent result with the answers, in order, that
produced it; the next check with the same client address, HELO and sender asks those same
questions again on the loop (answered by the resolver's TTL-bound cache) and, when every answer
is the same, returns the result without running pyspf. Any difference, or any DNS error, and
the check runs in full. Results that a DNS error took part in, and those whose records use the
time macro (``%{t}``), are not kept.

Results are those of RFC 7208 §2.6: pass, fail, softfail, neutral, none, permerror, temperror.

Security notes: every name and record comes from the sender's DNS: pyspf bounds the work
(lookups, void lookups, CNAME chains) and `time_limit` bounds the elapsed time. Explanations
(`exp=`) are sender-controlled text; never put them into a header unsanitised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ipaddress
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import dns.rdatatype

from mailgate.dns import (
    DnsError,
    DnsNotFound,
    DnsPythonResolver,
    DnsTempError,
    NullMx,
    Resolver,
)

with warnings.catch_warnings():
    # pyspf 2.0.14's docstrings hold invalid escape sequences, which Python reports when it
    # compiles the module (DeprecationWarning, SyntaxWarning from 3.12): not our concern.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    import spf  # type: ignore[import-untyped]

__all__ = [
    "AsyncSpfDns",
    "DnsPythonRecords",
    "LoopBridge",
    "ResolverSpfDns",
    "SpfDns",
    "SpfMemo",
    "SpfRecord",
    "SpfResult",
    "SpfResultCode",
    "check_spf",
    "evaluate_spf",
    "run_with_loop_dns",
]

log = logging.getLogger(__name__)

SpfResultCode = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]
_RESULTS: frozenset[str] = frozenset(
    {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}
)

# RFC 7208 §4.6.4: a limit on the elapsed time of one evaluation SHOULD allow at least 20 s.
DEFAULT_TIME_LIMIT = 20.0
_RTYPES = frozenset({"A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME"})

# SPF and DKIM evaluations block a thread while they wait for DNS; they get their own pool so
# that a burst of slow lookups cannot starve the loop's default executor (used for fsync etc.).
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(
    max_workers=16, thread_name_prefix="mailgate-auth"
)

T = TypeVar("T")

SpfValue = str | tuple[int, str] | tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SpfRecord:
    """One resource record as pyspf wants it.

    `value` by type: A and AAAA, the address as text; MX, (preference, exchange); PTR and
    CNAME, the target name; TXT and SPF, the record's character-strings as bytes, not yet
    joined (RFC 7208 §3.3: pyspf joins them without spaces).
    """

    name: str
    rtype: str
    value: SpfValue


class SpfDns(Protocol):
    """Synchronous DNS for one SPF evaluation (what pyspf runs on, in a worker thread).

    `lookup` returns the records of `rtype` at `name`, CNAMEs included or already followed;
    [] when the name exists without such records. It raises `mailgate.dns.DnsNotFound` for
    NXDOMAIN (both count as void lookups, RFC 7208 §4.6.4) and `mailgate.dns.DnsTempError`
    for SERVFAIL or a timeout (the result becomes temperror, RFC 7208 §4.4).
    """

    def lookup(self, name: str, rtype: str) -> list[SpfRecord]: ...


class AsyncSpfDns(Protocol):
    """The same contract as `SpfDns`, as a coroutine on the event loop."""

    async def lookup(self, name: str, rtype: str) -> list[SpfRecord]: ...


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one check_host() (RFC 7208 §2.6 result, §6.2 explanation).

    `identity` is "mailfrom", or "helo" when MAIL FROM was null and the HELO name was checked
    as postmaster@HELO (RFC 7208 §2.4); `domain` is the domain whose policy was evaluated,
    `sender` the identity as checked.
    """

    result: SpfResultCode
    explanation: str
    domain: str
    identity: Literal["mailfrom", "helo"]
    sender: str
    ip: str
    helo: str
    mechanism: str = ""

    @property
    def authenticated_domain(self) -> str | None:
        """The SPF-authenticated domain for DMARC (RFC 7489 §3.1.2), when SPF passed."""
        return self.domain if self.result == "pass" and self.domain else None


# -- pyspf's DNS hook ------------------------------------------------------------------------

_PyspfAnswer = list[tuple[tuple[str, str], Any]]
_current_lookup: contextvars.ContextVar[Callable[[str, str], _PyspfAnswer] | None] = (
    contextvars.ContextVar("mailgate_spf_lookup", default=None)
)
_hook_lock = threading.Lock()
_fallback_lookup: Callable[..., Any] | None = None


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> Any:
    """Installed as `spf.DNSLookup`: the current evaluation's DNS, else pyspf's own."""
    lookup = _current_lookup.get()
    if lookup is not None:
        return lookup(name, qtype)
    if _fallback_lookup is None:  # pragma: no cover - _install_hook sets it first
        raise spf.TempError("DNS: no lookup function")
    return _fallback_lookup(name, qtype, strict, timeout)


def _install_hook() -> None:
    """Put `_dispatch` in pyspf's module (again, if someone replaced it since)."""
    global _fallback_lookup
    with _hook_lock:
        if spf.DNSLookup is not _dispatch:
            _fallback_lookup = spf.DNSLookup
            spf.DNSLookup = _dispatch


def _pyspf_value(record: SpfRecord) -> Any:
    if record.rtype in ("TXT", "SPF"):
        strings = record.value
        if not isinstance(strings, tuple) or not all(isinstance(s, bytes) for s in strings):
            raise TypeError(f"{record.rtype} value must be a tuple of bytes: {strings!r}")
        # pyspf indexes the first string; a record without strings is an empty record.
        return strings or (b"",)
    if record.rtype == "MX":
        return record.value
    return str(record.value)


class _Query(spf.query):  # type: ignore[misc]
    """`spf.query` whose DNS questions go to one `SpfDns`, whatever other threads do."""

    def __init__(self, dns: SpfDns, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spf_dns = dns

    def _lookup(self, name: str, qtype: str) -> _PyspfAnswer:
        try:
            records = self._spf_dns.lookup(name, qtype)
        except DnsNotFound:
            return []  # NXDOMAIN: a void lookup (RFC 7208 §4.6.4), pyspf counts it
        except DnsError as exc:  # DnsTempError, or anything else the DNS could not answer
            # RFC 7208 §4.4: SERVFAIL or timeout: check_host() ends with temperror.
            raise spf.TempError(f"DNS {exc.reason}: {name} {qtype}") from exc
        return [((r.name, r.rtype), _pyspf_value(r)) for r in records]

    def dns(self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False) -> Any:
        token = _current_lookup.set(self._lookup)
        try:
            return super().dns(name, qtype, cnames=cnames, ignore_void=ignore_void)
        finally:
            _current_lookup.reset(token)


# -- evaluation ------------------------------------------------------------------------------


def _valid_ip(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def evaluate_spf(
    ip: str,
    helo: str,
    sender: str,
    dns: SpfDns,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    default_explanation: str | None = None,
) -> SpfResult:
    """check_host() for (ip, MAIL FROM `sender`, HELO `helo`), blocking; see `check_spf`."""
    _install_hook()
    helo = helo.strip()
    sender = sender.strip()
    if not sender:
        # RFC 7208 §2.4: with a null reverse-path the MAIL FROM identity is postmaster@HELO.
        identity: Literal["mailfrom", "helo"] = "helo"
        checked = f"postmaster@{helo}" if helo else ""
    else:
        identity, checked = "mailfrom", sender
    domain = checked.rpartition("@")[2] if "@" in checked else checked

    def outcome(code: SpfResultCode, explanation: str, mechanism: str = "") -> SpfResult:
        return SpfResult(code, explanation, domain, identity, checked, ip, helo, mechanism)

    if not _valid_ip(ip):
        return outcome("none", f"client address {ip!r} is not an IP address")
    try:
        query = _Query(
            dns, i=ip, s=sender, h=helo, strict=True, timeout=time_limit, querytime=time_limit
        )
        if default_explanation is not None:
            # RFC 7208 §6.2: the default explanation is the receiver's choice.
            query.set_default_explanation(default_explanation)
        code, _smtp_code, explanation = query.check()
        domain = str(query.o or domain)
    except Exception as exc:
        # pyspf raises only for what it does not anticipate; report it, do not crash the check.
        log.warning("SPF evaluation of %s from %s failed: %r", checked, ip, exc)
        return outcome("temperror", f"SPF evaluation failed: {exc}")
    if code not in _RESULTS:  # "ambiguous" exists only in pyspf's harsh mode (strict=2)
        code = "permerror"
    mechanism = query.mechanism if isinstance(query.mechanism, str) else ""
    return outcome(code, str(explanation or ""), mechanism)


class LoopBridge:
    """Lets blocking library code in a worker thread await coroutines on the event loop.

    All lookups of one check share one deadline; after it, or once the check is abandoned
    (its task cancelled), lookups fail at once with a temporary error.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self._deadline = deadline
        self._lock = threading.Lock()
        self._abandoned = False
        self._pending: concurrent.futures.Future[Any] | None = None

    def abandon(self) -> None:
        """Fail the lookup in flight and every later one (called from the loop's thread)."""
        with self._lock:
            self._abandoned = True
            if self._pending is not None:
                self._pending.cancel()

    def call(self, what: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `make()` on the loop and wait for it; DnsTempError past the deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DnsTempError(what, "time limit of the check exceeded")
        with self._lock:
            if self._abandoned:
                raise DnsTempError(what, "check abandoned")
            coro = make()
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            except RuntimeError as exc:  # the loop has closed
                coro.close()
                raise DnsTempError(what, "event loop closed") from exc
            self._pending = future
        try:
            return future.result(remaining)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DnsTempError(what, "time limit of the check exceeded") from exc
        except concurrent.futures.CancelledError as exc:
            raise DnsTempError(what, "lookup cancelled") from exc
        finally:
            with self._lock:
                self._pending = None


# One question and its answer: the records, or None for NXDOMAIN.
_Answer = tuple[str, str, tuple[SpfRecord, ...] | None]


class _SyncSpfDns:
    """The evaluation's DNS, on the loop through `bridge`; it notes every answer for the memo
    (`answers`, in order) and whether any question failed (`failed`)."""

    def __init__(self, dns: AsyncSpfDns, bridge: LoopBridge) -> None:
        self._dns = dns
        self._bridge = bridge
        self.answers: list[_Answer] = []
        self.failed = False

    def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
        try:
            records = self._bridge.call(f"{name} {rtype}", lambda: self._dns.lookup(name, rtype))
        except DnsNotFound:
            self.answers.append((name, rtype, None))
            raise
        except BaseException:
            self.failed = True
            raise
        self.answers.append((name, rtype, tuple(records)))
        return records


@dataclass(frozen=True, slots=True)
class _Memo:
    result: SpfResult
    answers: tuple[_Answer, ...]


_MemoKey = tuple[str, str, str, str | None]


def _uses_time_macro(answers: tuple[_Answer, ...]) -> bool:
    for _name, rtype, records in answers:
        if rtype in ("TXT", "SPF") and records:
            for record in records:
                if any(b"%{t" in s.lower() for s in record.value if isinstance(s, bytes)):
                    return True
    return False


class SpfMemo:
    """Recent SPF results with the DNS answers each came from (see the module notes); at most
    `size` of them, the least recently used go first."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._memos: OrderedDict[_MemoKey, _Memo] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._memos)

    def _put(self, key: _MemoKey, result: SpfResult, dns: _SyncSpfDns) -> None:
        answers = tuple(dns.answers)
        if dns.failed or result.result == "temperror" or _uses_time_macro(answers):
            self._memos.pop(key, None)
            return
        self._memos[key] = _Memo(result, answers)
        self._memos.move_to_end(key)
        while len(self._memos) > self._size:
            self._memos.popitem(last=False)

    async def _recall(self, key: _MemoKey, dns: AsyncSpfDns, time_limit: float) -> SpfResult | None:
        """The kept result, if every answer it came from is still the same."""
        memo = self._memos.get(key)
        if memo is None:
            return None
        try:
            async with asyncio.timeout(time_limit):
                for name, rtype, answer in memo.answers:
                    try:
                        now: tuple[SpfRecord, ...] | None = tuple(await dns.lookup(name, rtype))
                    except DnsNotFound:
                        now = None
                    if now != answer:
                        return None
        except (DnsError, TimeoutError):
            return None
        self._memos.move_to_end(key)
        self.hits += 1
        return memo.result


async def run_with_loop_dns(func: Callable[[LoopBridge], T], *, time_limit: float) -> T:
    """Run blocking `func(bridge)` in the auth worker pool; `bridge.call` awaits on this loop.

    Shared by SPF and DKIM, whose libraries are synchronous. Cancelling the caller abandons
    the worker: its lookup in flight and every later one fail at once, so the library ends
    with a temporary error and the thread is soon free again.
    """
    loop = asyncio.get_running_loop()
    bridge = LoopBridge(loop, time.monotonic() + time_limit)
    context = contextvars.copy_context()
    future = loop.run_in_executor(_EXECUTOR, context.run, func, bridge)
    try:
        return await future
    finally:
        bridge.abandon()


async def check_spf(
    ip: str,
    helo: str,
    sender: str,
    dns: AsyncSpfDns,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    default_explanation: str | None = None,
    memo: SpfMemo | None = None,
) -> SpfResult:
    """check_host() (RFC 7208 §4) for a client `ip` that said HELO `helo` and MAIL FROM
    `sender` ("" for the null reverse-path: the HELO identity is checked, RFC 7208 §2.4).

    Never raises for DNS trouble: temporary failures, and the elapsed-time limit `time_limit`
    (RFC 7208 §4.6.4), give temperror. With a `memo`, a result whose DNS answers have not
    changed since is reused (see the module notes).
    """
    key: _MemoKey = (ip, helo, sender, default_explanation)
    if memo is not None:
        kept = await memo._recall(key, dns, time_limit)
        if kept is not None:
            return kept

    def run(bridge: LoopBridge) -> tuple[SpfResult, _SyncSpfDns]:
        sync_dns = _SyncSpfDns(dns, bridge)
        result = evaluate_spf(
            ip,
            helo,
            sender,
            sync_dns,
            time_limit=time_limit,
            default_explanation=default_explanation,
        )
        return result, sync_dns

    result, used = await run_with_loop_dns(run, time_limit=time_limit)
    if memo is not None:
        memo._put(key, result, used)
    return result


# -- mailgate's DNS for SPF -----------------------------------------------------------------


class DnsPythonRecords:
    """`AsyncSpfDns` on a `DnsPythonResolver` (its name servers and cache): any record type.
    CNAMEs are followed by the resolver; records come back under the queried name. Errors are
    those of `mailgate.dns`."""

    def __init__(self, resolver: DnsPythonResolver) -> None:
        self._resolver = resolver

    async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
        rtype = rtype.upper()
        if rtype not in _RTYPES:
            raise ValueError(f"unsupported record type {rtype!r}")
        answer = await self._resolver.query(name, dns.rdatatype.from_text(rtype))
        owner = name.rstrip(".")
        out: list[SpfRecord] = []
        for rdata in answer.rrset or ():
            value: SpfValue
            if rtype in ("A", "AAAA"):
                value = str(rdata.address)
            elif rtype == "MX":
                value = (int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True))
            elif rtype in ("TXT", "SPF"):
                value = tuple(bytes(s) for s in rdata.strings)
            else:  # PTR, CNAME
                value = rdata.target.to_text(omit_final_dot=True)
            out.append(SpfRecord(owner, rtype, value))
        return out


class ResolverSpfDns:
    """mailgate's DNS for authentication: TXT, MX and PTR through `mailgate.dns.Resolver`,
    the other types (A, AAAA, SPF, CNAME) through `records` (dnspython on the same
    nameservers; `Resolver` has no single-family address lookup).

    It is an `AsyncSpfDns`, and its `txt` (the resolver's) serves DKIM and DMARC.
    """

    def __init__(self, resolver: Resolver, records: AsyncSpfDns) -> None:
        self._resolver = resolver
        self._records = records

    async def txt(self, name: str) -> list[str]:
        return await self._resolver.txt(name)

    async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
        rtype = rtype.upper()
        owner = name.rstrip(".")
        if rtype == "TXT":
            texts = await self._resolver.txt(name)
            return [SpfRecord(owner, "TXT", (t.encode("utf-8"),)) for t in texts]
        if rtype == "MX":
            try:
                hosts = await self._resolver.mx(name)
            except NullMx:
                # RFC 7505: "." is the only MX; the mx mechanism then matches nothing.
                return [SpfRecord(owner, "MX", (0, "."))]
            return [SpfRecord(owner, "MX", (h.preference, h.host)) for h in hosts]
        if rtype == "PTR":
            # pyspf asks for the reverse name; the resolver wants the address back.
            address = _address_of_reverse_name(owner)
            if address is None:
                return await self._records.lookup(name, rtype)
            return [SpfRecord(owner, "PTR", host) for host in await self._resolver.ptr(address)]
        return await self._records.lookup(name, rtype)


def _address_of_reverse_name(name: str) -> str | None:
    labels = name.lower().split(".")
    if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        except ValueError:
            return None
    if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
        nibbles = "".join(reversed(labels[:32]))
        text = ":".join(nibbles[i : i + 4] for i in range(0, 32, 4))
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    return None
