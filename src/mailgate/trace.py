"""What mailgate would do with a message, without sending it (`mailgate trace`).

Given the connecting client, the envelope sender and recipients, `trace` walks the decisions a
session would make, with the same code the SMTP server and the queue use: the MAIL FROM checks
(syntax, SMTPUTF8, size), each RCPT's relay decision (`policy.relay`, so the tricky address
forms get the very verdict they get on the wire) and the check it waits for (recipient
verification, or the domain lookup for a trusted client), the reply it gets, then for each
accepted recipient its next hop (`queue.routing`) with the addresses delivery would try
(`queue.delivery`), and the rule and scan modules that would handle it (`pipeline.rules`).

Nothing is sent: verification results come from the cache unless the caller probes (the
`Lookups` it passes decide), and no message is queued. What a trace cannot know is left out
and said so: per-client rate limits and STARTTLS belong to a live session, and scan verdicts
to a message's content. `render` gives the result as the CLI and the web page show it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mailgate.config.model import Config, RecipientVerification, split_host_port
from mailgate.config.runtime import RuntimeConfig
from mailgate.dns import Resolver
from mailgate.metrics import Counters
from mailgate.pipeline.rules import rule_for
from mailgate.pipeline.runner import enabled_modules
from mailgate.policy.relay import client_ip
from mailgate.queue.delivery import Deliverer, DestinationFailure
from mailgate.queue.routing import Destination
from mailgate.smtp import codes
from mailgate.smtp.address import AddressError, parse_path, printable, split_path
from mailgate.types import Mailbox, Reply
from mailgate.verify.cache import Entry, Freshness, freshness
from mailgate.verify.domains import DomainChecker

__all__ = [
    "NOT_CACHED",
    "LiveLookups",
    "Lookup",
    "Lookups",
    "RecipientTrace",
    "Trace",
    "TraceError",
    "cached_lookup",
    "render",
    "trace",
]


class TraceError(ValueError):
    """An argument of the trace itself is unusable (not a message the server would refuse)."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of a recipient check: status "ok", "bad", "temp", or "unknown" when it
    was not made (an address not in the verification cache, without a probe)."""

    status: str
    detail: str
    source: str = ""  # "cache", "probe", "dns"


NOT_CACHED = "not in the verification cache; a probe asks the next hop now"


def cached_lookup(entry: Entry | None, settings: RecipientVerification, now: float) -> Lookup:
    """What the verification cache says of an address, as a session would take it: an
    expired entry counts as none (the session would probe again)."""
    if entry is None:
        return Lookup("unknown", NOT_CACHED)
    if freshness(entry, now, settings) is Freshness.EXPIRED:
        return Lookup("unknown", "the cached result has expired; a probe asks the next hop now")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.updated))
    return Lookup(entry.status, entry.reply, f"cache, {when}")


class Lookups(Protocol):
    """Where a trace gets what a session would wait for."""

    async def verify(self, mailbox: Mailbox) -> Lookup: ...

    async def domain(self, domain: str) -> Lookup: ...

    async def hosts(self, destination: Destination) -> list[tuple[str, str]]: ...


@dataclass(slots=True)
class RecipientTrace:
    address: str
    reply: str
    accepted: bool | None  # None: the reply depends on a check that was not made
    relay: str = ""
    check: str | None = None  # "verify" | "domain"
    check_result: Lookup | None = None
    next_hop: str = ""
    via: str = ""
    tls: str = ""
    hosts: list[str] = field(default_factory=list)
    hop_error: str = ""
    rule: str = ""
    rule_mode: str = ""
    modules: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Trace:
    client: str
    helo: str
    trusted: bool
    upstream: bool
    sender: str
    mail_reply: str
    recipients: list[RecipientTrace]
    data_reply: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def trace(
    config: Config,
    lookups: Lookups,
    *,
    client: str,
    sender: str,
    recipients: list[str],
    helo: str = "",
    size: int | None = None,
    smtputf8: bool = False,
) -> Trace:
    """The decisions for one message from `client` (raises TraceError for a client that is
    not an IP address, or no recipient)."""
    try:
        client_ip(client)
    except ValueError as exc:
        raise TraceError(f"client: {client!r} is not an IP address") from exc
    if not recipients:
        raise TraceError("recipients: name at least one")
    runtime = RuntimeConfig(0, config)
    trusted = client in runtime.trusted
    result = Trace(
        client=client, helo=helo, trusted=trusted, upstream=client in runtime.upstream,
        sender=sender, mail_reply="", recipients=[], data_reply="",
    )  # fmt: skip
    mail_reply, mailbox = _mail(config, sender, size, smtputf8)
    result.mail_reply = str(mail_reply)
    if mail_reply.code != 250:
        result.data_reply = str(codes.NEED_RCPT)
        return result
    shown_sender = mailbox.address if mailbox is not None else ""
    accepted = 0
    for text in recipients:
        item, mailbox = await _recipient(runtime, lookups, text, trusted, smtputf8, accepted)
        if mailbox is not None:
            accepted += 1
            await _route(runtime, lookups, item, mailbox.domain)
            _rule(config, item, shown_sender, client)
        result.recipients.append(item)
    result.data_reply = _data(result.recipients)
    return result


def _mail(
    config: Config, sender: str, size: int | None, smtputf8: bool
) -> tuple[Reply, Mailbox | None]:
    """MAIL FROM's reply (cmd_mail's checks that do not depend on the session)."""
    try:
        path, rest = split_path(sender if sender else "<>")
        if rest.strip():
            raise AddressError("parameters after the address")
        mailbox = parse_path(path, allow_null=True)
    except AddressError:
        return codes.BAD_SENDER, None
    if mailbox is not None and mailbox.utf8 and not smtputf8:
        return codes.SMTPUTF8_REQUIRED, None
    if size is not None and size > config.main.message_size_limit:
        return codes.SIZE_EXCEEDS_LIMIT, None
    return codes.OK_MAIL, mailbox


async def _recipient(
    runtime: RuntimeConfig, lookups: Lookups, text: str, trusted: bool, smtputf8: bool,
    accepted: int,
) -> tuple[RecipientTrace, Mailbox | None]:  # fmt: skip
    """RCPT TO's reply (cmd_rcpt's decisions), with the check it waits for."""
    try:
        path, rest = split_path(text)
        shown = printable(path, 300)
        if rest.strip():
            raise AddressError("parameters after the address")
        mailbox = parse_path(path, allow_null=False)
    except AddressError:
        return RecipientTrace(printable(text, 300), str(codes.BAD_RECIPIENT), False), None
    assert mailbox is not None
    if mailbox.utf8 and not smtputf8:
        return RecipientTrace(shown, str(codes.SMTPUTF8_REQUIRED), False), None
    config = runtime.config
    if accepted >= config.advanced.limits.recipient_limit:
        return RecipientTrace(shown, str(codes.TOO_MANY_RECIPIENTS), False), None
    decision = runtime.relay.decide(mailbox, trusted=trusted)
    if not decision.permitted:
        refused = RecipientTrace(shown, str(codes.relay_denied(shown)), False, decision.reason)
        return refused, None
    item = RecipientTrace(mailbox.address, str(codes.OK_RCPT), True, relay=decision.reason)
    settings = config.advanced.verification
    item.check = runtime.relay.check_for(decision, mailbox, settings)
    if item.check is None:
        return item, mailbox
    found = await (
        lookups.verify(mailbox) if item.check == "verify" else lookups.domain(mailbox.domain)
    )
    item.check_result = found
    if found.status == "unknown":
        item.accepted = None
        item.reply = f"{codes.OK_RCPT} if the next hop accepts <{shown}> ({found.detail})"
        return item, mailbox
    refusal = codes.check_refusal(item.check, shown, found.status, found.detail, settings)
    if refusal is not None:
        item.accepted = False
        item.reply = str(refusal)
        return item, None
    return item, mailbox


async def _route(
    runtime: RuntimeConfig, lookups: Lookups, item: RecipientTrace, domain: str
) -> None:
    """The next hop delivery would use, and the addresses it would try in turn."""
    destination = runtime.router.next_hop(domain)
    item.next_hop, item.via, item.tls = str(destination), destination.via, destination.tls
    try:
        pairs = await lookups.hosts(destination)
    except DestinationFailure as exc:
        item.hop_error = f"{exc.dsn} {exc.text}"
        return
    item.hosts = [host if host == ip else f"{host}[{ip}]" for host, ip in pairs]
    own = _own_addresses(runtime.config)
    for _host, ip in pairs:
        if (ip, destination.port) in own:
            item.hop_error = f"5.4.6 mail for {destination.host} loops back to myself"
            return


def _rule(config: Config, item: RecipientTrace, sender: str, client: str) -> None:
    rule = rule_for(config.rules, config.default_rule, sender, item.address, client)
    item.rule, item.rule_mode = rule.name, rule.mode
    item.modules = enabled_modules(config) if rule.mode == "modules" else []


def _data(recipients: list[RecipientTrace]) -> str:
    if not any(r.accepted is not False for r in recipients):
        return str(codes.NO_VALID_RECIPIENTS)
    return str(codes.START_DATA)


def _own_addresses(config: Config) -> set[tuple[str, int]]:
    own = set()
    for text in config.main.smtp_listen:
        host, port = split_host_port(text)
        own.add((host, port))
    return own


class LiveLookups:
    """Lookups as a session and delivery make them: the domain check and the next hop's
    addresses through `resolver` (the configured DNS), and recipient verification through
    `verify`, which the caller gives (the verification cache, or a probe)."""

    def __init__(
        self,
        config: Config,
        resolver: Resolver,
        verify: Callable[[Mailbox], Awaitable[Lookup]],
    ) -> None:
        self._config = config
        self._resolver = resolver
        self._verify = verify

    async def verify(self, mailbox: Mailbox) -> Lookup:
        return await self._verify(mailbox)

    async def domain(self, domain: str) -> Lookup:
        checker = DomainChecker(lambda: self._resolver, Counters())
        status, reason = await checker.check(domain)
        return Lookup(status, reason or f"{domain} has an MX or address record", "dns")

    async def hosts(self, destination: Destination) -> list[tuple[str, str]]:
        deliverer = Deliverer(lambda: self._resolver, lambda: self._config, set)
        return await deliverer.candidates(destination)


_MODES = {
    "skip": "no scanning",
    "reject": "rejected at the end of DATA",
    "delete": "deleted: 250, never delivered",
}


def render(result: Trace) -> list[str]:
    """The trace as an administrator reads it: the SMTP dialogue, with the why under each
    reply."""
    trusted = "in trusted networks" if result.trusted else "not in trusted networks"
    upstream = ", a configured upstream gateway" if result.upstream else ""
    helo = f" (HELO {result.helo})" if result.helo else ""
    lines = [f"client {result.client}{helo}: {trusted}{upstream}"]
    lines.append(f"MAIL FROM:<{result.sender.strip('<>')}>: {result.mail_reply}")
    for item in result.recipients:
        lines.append(f"RCPT TO:<{item.address}>: {item.reply}")
        lines.extend(f"    {line}" for line in _details(item))
    lines.append(f"DATA: {result.data_reply}")
    return lines


def _details(item: RecipientTrace) -> list[str]:
    out = []
    if item.relay:
        out.append(f"relay: {item.relay}")
    if item.check is not None and item.check_result is not None:
        found = item.check_result
        what = "verification" if item.check == "verify" else "domain check"
        source = f" ({found.source})" if found.source else ""
        out.append(f"{what}: {found.status}{source}: {found.detail}")
    if item.next_hop:
        out.append(f"next hop: {item.next_hop} ({item.via}), TLS {item.tls}")
        if item.hosts:
            out.append(f"tries: {', '.join(item.hosts)}")
        if item.hop_error:
            out.append(f"delivery would fail: {item.hop_error}")
    if item.rule:
        modules = ", ".join(item.modules) if item.modules else "no module enabled"
        scan = f"scanned by {modules}" if item.rule_mode == "modules" else _MODES[item.rule_mode]
        out.append(f"rule: {item.rule} ({scan})")
    return out
