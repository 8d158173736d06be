"""Delivery of one job (a message and its recipients for one destination) over SMTP.

Steps, as Postfix's smtp(8): resolve the destination into hosts and addresses (MX sorted by
preference, A/AAAA when a domain has no MX, the host itself for `[host]` routes), connect to
them in order until one answers, then run the transaction and turn every reply into a
per-recipient outcome: sent, deferred (4xx, no answer) or bounced (5xx). Connections are
reused for the next job of the same destination.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mailgate.config.model import Config
from mailgate.dns import DnsNotFound, DnsTempError, NullMx, Resolver
from mailgate.queue.routing import Destination
from mailgate.smtp.client import (
    ClientTimeout,
    ConnectionFailed,
    SmtpClient,
    Transaction,
    default_status,
)
from mailgate.smtp.data import fold_long_lines, strip_forged_auth_results, tag_subject
from mailgate.smtp.params import xtext_encode
from mailgate.types import Envelope, Recipient, Reply

log = logging.getLogger("mailgate.smtp")

Status = Literal["sent", "deferred", "bounced"]
# Postfix smtp_mx_address_limit: addresses tried per delivery attempt.
MX_ADDRESS_LIMIT = 5


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient in one delivery attempt."""

    index: int
    status: Status
    dsn: str
    text: str
    remote: str | None = None
    reply: Reply | None = None
    # The next hop offers DSN, so the recipient's NOTIFY went with it: reporting success is
    # its job from here (RFC 3461 section 6.2.6); else mailgate reports "relayed" itself.
    dsn_passed: bool = False

    @property
    def diagnostic(self) -> str:
        return f"smtp; {self.reply}" if self.reply is not None else self.text


class DestinationFailure(Exception):
    """The destination could not be reached at all: every recipient gets this outcome."""

    def __init__(self, text: str, *, dsn: str, temporary: bool) -> None:
        super().__init__(text)
        self.text = text
        self.dsn = dsn
        self.temporary = temporary


def _status_for(reply: Reply) -> Status:
    if reply.code < 400:
        return "sent"
    return "deferred" if reply.code < 500 else "bounced"


class Deliverer:
    """Runs delivery attempts; the scheduler owns queues, concurrency and connection reuse."""

    def __init__(
        self,
        resolver: Callable[[], Resolver],
        config: Callable[[], Config],
        own_addresses: Callable[[], set[tuple[str, int]]],
    ) -> None:
        self._resolver = resolver
        self._config = config
        self._own_addresses = own_addresses

    async def candidates(self, dest: Destination) -> list[tuple[str, str]]:
        """(host name, IP address) pairs to try, in order."""
        resolver = self._resolver()
        try:
            ipaddress.ip_address(dest.host)
        except ValueError:
            pass
        else:
            return [(dest.host, dest.host)]
        try:
            hosts = [dest.host]
            if dest.mx:
                mx = await resolver.mx(dest.host)
                if mx:
                    hosts = [m.host for m in mx]
            pairs: list[tuple[str, str]] = []
            for host in hosts:
                try:
                    pairs.extend((host, ip) for ip in await resolver.addresses(host))
                except DnsNotFound:
                    if len(hosts) == 1:
                        raise
                if len(pairs) >= MX_ADDRESS_LIMIT:
                    break
        except NullMx as exc:
            raise DestinationFailure(
                f"Domain {dest.host} does not accept mail (nullMX)", dsn="5.1.10", temporary=False
            ) from exc
        except DnsNotFound as exc:
            raise DestinationFailure(
                f"Host or domain name not found. Name service error for name={exc.name}: "
                f"{exc.reason}",
                dsn="5.4.4",
                temporary=False,
            ) from exc
        except DnsTempError as exc:
            raise DestinationFailure(
                f"Host or domain name not found. Name service error for name={exc.name}: "
                f"{exc.reason}",
                dsn="4.4.3",
                temporary=True,
            ) from exc
        if not pairs:
            raise DestinationFailure(
                f"Host or domain name not found: no address for {dest.host}",
                dsn="5.4.4",
                temporary=False,
            )
        return pairs[:MX_ADDRESS_LIMIT]

    async def connect(self, dest: Destination) -> SmtpClient:
        """Open a session with the first host of the destination that answers."""
        config = self._config()
        delivery = config.advanced.delivery
        own = self._own_addresses()
        last: ConnectionFailed | None = None
        for host, ip in await self.candidates(dest):
            if (ip, dest.port) in own:
                raise DestinationFailure(
                    f"mail for {dest.host} loops back to myself", dsn="5.4.6", temporary=False
                )
            source = delivery.bind_address6 if ":" in ip else delivery.bind_address
            try:
                return await SmtpClient.connect(
                    host=host,
                    ip=ip,
                    port=dest.port,
                    helo=config.main.hostname,
                    tls=dest.tls,
                    connect_timeout=delivery.connect_timeout,
                    command_timeout=delivery.command_timeout,
                    source_address=source,
                )
            except ConnectionFailed as exc:
                log.info("connect to %s[%s]:%s failed: %s", host, ip, dest.port, exc.text)
                last = exc
        assert last is not None
        raise DestinationFailure(last.text, dsn=last.status, temporary=True)

    async def send(
        self,
        client: SmtpClient,
        envelope: Envelope,
        content: bytes,
        indices: list[int],
    ) -> list[Outcome]:
        """One mail transaction for `indices`; raises on a broken connection."""
        remote = client.remote
        precheck = self._precheck(client, envelope)
        if precheck is not None:
            return [Outcome(i, "bounced", precheck[0], precheck[1], remote) for i in indices]
        config = self._config()
        tag = envelope.extra.get("subject_tag")
        if tag:  # the stored message stays as received; the tag is applied on the way out
            content = tag_subject(content, str(tag))
        content = strip_forged_auth_results(content, config.main.hostname)
        data = fold_long_lines(
            envelope.prepend.encode("utf-8") + content, config.advanced.delivery.line_length_limit
        )
        dsn_ok = client.supports("dsn")
        mail_options = []
        if client.supports("size"):
            mail_options.append(f"SIZE={len(data)}")
        if envelope.body == "8BITMIME" and client.supports("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        if envelope.smtputf8 and client.supports("smtputf8"):
            mail_options.append("SMTPUTF8")
        if dsn_ok:
            if envelope.ret:
                mail_options.append(f"RET={envelope.ret}")
            if envelope.envid:
                mail_options.append(f"ENVID={xtext_encode(envelope.envid)}")
        recipients = [
            (envelope.recipients[i].address, _rcpt_options(envelope.recipients[i], dsn_ok))
            for i in indices
        ]
        txn: Transaction = await client.transaction(
            envelope.sender,
            mail_options,
            recipients,
            data,
            utf8=envelope.smtputf8,
            data_timeout=config.advanced.delivery.data_timeout,
        )
        if txn.mail.code != 250:
            return [_from_reply(i, txn.mail, remote) for i in indices]
        outcomes = []
        for i, reply in zip(indices, txn.recipients, strict=True):
            if reply.code not in (250, 251):
                outcomes.append(_from_reply(i, reply, remote))
            elif txn.data is None:
                outcomes.append(Outcome(i, "deferred", "4.0.0", "no DATA reply", remote))
            else:
                outcomes.append(_from_reply(i, txn.data, remote, dsn_passed=dsn_ok))
        return outcomes

    @staticmethod
    def _precheck(client: SmtpClient, envelope: Envelope) -> tuple[str, str] | None:
        if envelope.smtputf8 and not client.supports("smtputf8"):
            return "5.6.7", f"SMTPUTF8 is required, but was not offered by host {client.remote}"
        limit = client.size_limit()
        size = envelope.size + len(envelope.prepend)
        if limit is not None and size > limit:
            return "5.3.4", f"message size {size} exceeds size limit {limit} of server"
        return None


def _rcpt_options(recipient: Recipient, dsn_ok: bool) -> list[str]:
    if not dsn_ok:
        return []
    options = []
    if recipient.notify:
        options.append("NOTIFY=" + ",".join(recipient.notify))
    if recipient.orcpt:
        addr_type, _, addr = recipient.orcpt.partition(";")
        options.append(f"ORCPT={addr_type};{xtext_encode(addr)}")
    return options


def _from_reply(index: int, reply: Reply, remote: str, *, dsn_passed: bool = False) -> Outcome:
    return Outcome(index, _status_for(reply), default_status(reply), str(reply), remote, reply,
                   dsn_passed)  # fmt: skip


def failure_outcomes(indices: list[int], failure: DestinationFailure) -> list[Outcome]:
    status: Status = "deferred" if failure.temporary else "bounced"
    return [Outcome(i, status, failure.dsn, failure.text) for i in indices]


def broken_outcomes(indices: list[int], client: SmtpClient, exc: BaseException) -> list[Outcome]:
    """A connection broke during a transaction: nothing is known to be delivered."""
    if isinstance(exc, ClientTimeout):
        text = f"conversation with {client.remote} timed out"
    else:
        text = f"lost connection with {client.remote}: {exc or type(exc).__name__}"
    return [Outcome(i, "deferred", "4.4.2", text, client.remote) for i in indices]


def delay_since(arrival: float) -> float:
    return max(0.0, time.time() - arrival)
