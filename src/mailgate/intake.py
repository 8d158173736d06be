"""What happens to a message once its content is received: the stage between the end of DATA
and the reply. The pipeline scans it (before the reply, so Reject is a real 5xx), the rules
decide per recipient group, and each group is queued, quarantined or deleted; the message log
records it all.

Reply rules: if any group must be tried again later (a scanner could not answer and the rule
says tempfail), the whole message gets 451 and nothing is kept: the client retries, nothing
is lost. If every group rejects, the client gets 554. Otherwise 250, and a rejecting group of
a message that other groups accepted gets a DSN, since it can no longer be refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from email.header import decode_header, make_header

from mailgate.config.protection import Action
from mailgate.config.runtime import RuntimeConfig
from mailgate.dsn import RecipientReport
from mailgate.pipeline.api import RealClient
from mailgate.pipeline.runner import Decision, GroupDecision, Pipeline
from mailgate.quarantine import Quarantine
from mailgate.queue.scheduler import Scheduler
from mailgate.queue.spool import NoStorage, new_queue_id
from mailgate.smtp import codes
from mailgate.smtp.data import header_line, header_section
from mailgate.tracking import MessageLog
from mailgate.types import Envelope, Reply

log = logging.getLogger("mailgate.cleanup")

TEMPFAIL = Reply(451, "4.7.1", "Error: the message could not be scanned; try again later")
_SHORT = {
    "infected": "virus found",
    "spam": "spam",
    "probable_spam": "probable spam",
    "phishing": "phishing link",
    "blocked_attachment": "forbidden attachment",
    "content_match": "forbidden content",
    "dmarc_reject": "DMARC policy",
    "dmarc_quarantine": "DMARC policy",
    "spf_fail": "SPF failure",
    "error": "scanner error",
}


class Intake:
    def __init__(
        self,
        scheduler: Scheduler,
        runtime: Callable[[], RuntimeConfig] | None = None,
        executor: Executor | None = None,
        pipeline: Pipeline | None = None,
        quarantine: Quarantine | None = None,
        tracking: MessageLog | None = None,
    ) -> None:
        self.scheduler = scheduler
        self._runtime = runtime
        self._executor = executor
        self.pipeline = pipeline
        self.quarantine = quarantine
        self.tracking = tracking
        self.accepted = 0

    async def accept(
        self, envelope: Envelope, content: bytes, origin: RealClient | None = None
    ) -> Reply:
        origin = origin or RealClient(envelope.client.ip, envelope.client.helo)
        decision = None
        if self.pipeline is not None and self._runtime is not None:
            config = self._runtime().config
            decision = await self.pipeline.decide(config, envelope, content, envelope.client,
                                                  origin)  # fmt: skip
        if decision is None or _plain(decision):
            reply = await self._enqueue(envelope, content, "queued")
            self._track(envelope, content, origin, decision, "queued" if reply.code == 250
                        else "refused", reply)  # fmt: skip
            return reply
        return await self._apply(envelope, content, origin, decision)

    async def _apply(self, envelope: Envelope, content: bytes, origin: RealClient,
                     decision: Decision) -> Reply:  # fmt: skip
        groups = decision.groups
        why = "; ".join(r for g in groups for r in g.reasons) or "rules"
        if any(g.action is Action.TEMPFAIL for g in groups):
            log.info("%s: tempfail: %s", envelope.qid, why)
            self._track(envelope, content, origin, decision, "tempfailed", TEMPFAIL)
            return TEMPFAIL
        if all(g.action is Action.REJECT for g in groups):
            reply = Reply(554, "5.7.1", f"Error: message rejected: {_summary(decision, groups)}")
            log.info("%s: reject: END-OF-MESSAGE: %s (%s)", envelope.qid, reply, why)
            self._track(envelope, content, origin, decision, "rejected", reply)
            return reply
        actions: list[str] = []
        queued_as: str | None = None
        loop = asyncio.get_running_loop()
        try:
            for group in groups:
                qid = envelope.qid if queued_as is None else new_queue_id()
                part = group_envelope(envelope, group, qid)
                if group.action in (Action.SKIP, Action.DELETE_ATTACHMENT):
                    body = content
                    if group.action is Action.DELETE_ATTACHMENT:
                        body = await self._without_attachments(decision, group, content)
                    await self._queue(part, body)
                    queued_as = queued_as or qid
                    actions.append("attachment removed" if body is not content else "queued")
                    if qid != envelope.qid:
                        log.info("%s: recipients of rule %s queued as %s", envelope.qid,
                                 group.rule.name, qid)  # fmt: skip
                elif group.action is Action.QUARANTINE:
                    # The original is kept (our Received header only); verdicts go beside it.
                    original = replace(part, prepend=envelope.prepend, extra=envelope.extra)
                    await loop.run_in_executor(self._executor, self._keep, original, content,
                                               decision, group)  # fmt: skip
                    actions.append("quarantined")
                elif group.action is Action.DELETE:
                    actions.append("deleted")
                    self._outcomes(part, "deleted", "message deleted by rule")
                elif group.action is Action.REJECT:
                    await self._bounce(part, content, group)
                    actions.append("rejected")
                log.info("%s: %s for %d recipient(s) by rule %s (%s)", envelope.qid,
                         group.action, len(group.indices), group.rule.name,
                         "; ".join(group.reasons) or "clean")  # fmt: skip
        except NoStorage:
            self._track(envelope, content, origin, decision, "refused", codes.NO_STORAGE)
            return codes.NO_STORAGE
        except OSError as exc:
            log.error("%s: reject: cannot store the message: %s", envelope.qid, exc)
            self._track(envelope, content, origin, decision, "refused", codes.QUEUE_WRITE_ERROR)
            return codes.QUEUE_WRITE_ERROR
        reply = codes.queued(queued_as or envelope.qid)
        self.accepted += 1
        self._track(envelope, content, origin, decision, ", ".join(sorted(set(actions))), reply)
        return reply

    async def _enqueue(self, envelope: Envelope, content: bytes, what: str) -> Reply:
        try:
            await self._queue(envelope, content)
        except NoStorage:
            log.error("%s: reject: insufficient storage for the message", envelope.qid)
            return codes.NO_STORAGE
        except OSError as exc:
            log.error("%s: reject: queue file write error: %s", envelope.qid, exc)
            return codes.QUEUE_WRITE_ERROR
        self.accepted += 1
        return codes.queued(envelope.qid)

    async def _queue(self, envelope: Envelope, content: bytes) -> None:
        """Store durably and hand to the scheduler (raises OSError), then log it."""
        await self.scheduler.enqueue(envelope, content)
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], helo=<%s> (queue active)",
            envelope.qid, envelope.sender, envelope.size, len(envelope.recipients),
            envelope.client.name, envelope.client.ip, envelope.client.helo,
        )  # fmt: skip

    async def _without_attachments(self, decision: Decision, group: GroupDecision,
                                   content: bytes) -> bytes:  # fmt: skip
        parts = set(group.remove_parts)
        if not parts and self.pipeline is not None:
            parts = await self.pipeline.locate(decision)
        if not parts:
            return content
        stripped: bytes = decision.context.message.without_parts(parts)
        return stripped

    def _keep(self, envelope: Envelope, content: bytes, decision: Decision,
              group: GroupDecision) -> None:  # fmt: skip
        assert self.quarantine is not None
        kept = self.quarantine.put(
            envelope, content, subject=_subject(content), rule=group.rule.name,
            verdicts=decision.verdicts, reason="; ".join(group.reasons),
        )  # fmt: skip
        log.info("%s: quarantined as %s", envelope.qid, kept)
        self._outcomes(envelope, "quarantined", f"quarantine id {kept}")

    async def _bounce(self, envelope: Envelope, content: bytes, group: GroupDecision) -> None:
        reason = "; ".join(group.reasons) or f"rule {group.rule.name}"
        reports = [RecipientReport(r, "failed", "5.7.1", f"X-Mailgate; message rejected: {reason}")
                   for r in envelope.recipients]  # fmt: skip
        await self.scheduler.report(envelope, content, reports)
        self._outcomes(envelope, "bounced", f"rejected by rule: {reason}")

    def _outcomes(self, envelope: Envelope, status: str, detail: str) -> None:
        """Record an end other than delivery for each recipient of this (group's) envelope."""
        if self.tracking is None:
            return
        for recipient in envelope.recipients:
            self.tracking.delivery(envelope.qid, recipient.address, status, detail=detail)

    def _track(self, envelope: Envelope, content: bytes, origin: RealClient,
               decision: Decision | None, action: str, reply: Reply) -> None:  # fmt: skip
        if self.tracking is None:
            return
        self.tracking.record(
            qid=envelope.qid, received=envelope.arrival, client_ip=envelope.client.ip,
            real_client_ip=origin.ip, real_client_source=origin.source,
            helo=envelope.client.helo[:255], sender=envelope.sender,
            recipients=[r.address for r in envelope.recipients], subject=_subject(content),
            size=envelope.size,
            rules=[g.rule.name for g in decision.groups] if decision else [],
            verdicts=decision.verdicts if decision else {}, action=action, reply=str(reply),
        )  # fmt: skip


def _plain(decision: Decision) -> bool:
    """Nothing to do beyond queueing the message as it is."""
    if len(decision.groups) != 1:
        return False
    group = decision.groups[0]
    return group.action is Action.SKIP and not group.headers and group.subject_tag is None


def group_envelope(envelope: Envelope, group: GroupDecision, qid: str) -> Envelope:
    """The envelope of one rule group's recipients, queued as `qid`, with the group's header
    fields rendered in front of the message (applied on delivery) and its subject tag."""
    headers = "".join(header_line(name, value) for name, value in group.headers)
    extra = dict(envelope.extra)
    if group.subject_tag:
        extra["subject_tag"] = group.subject_tag
    return replace(
        envelope,
        qid=qid,
        recipients=[envelope.recipients[i] for i in group.indices],
        prepend=headers + envelope.prepend,
        extra=extra,
    )


def _summary(decision: Decision, groups: list[GroupDecision]) -> str:
    findings = []
    for result in decision.results.values():
        if result.positive:
            text = _SHORT.get(str(result.verdict), str(result.verdict))
            if result.module == "antivirus" and result.detail:
                text += f" ({result.detail[:100]})"
            findings.append(text)
    if not findings:
        findings = [f"rule {g.rule.name}" for g in groups]
    return ", ".join(dict.fromkeys(findings))


def _subject(content: bytes) -> str:
    head = header_section(content)
    start = head.lower().find(b"\r\nsubject:")
    if head[:8].lower() == b"subject:":
        start = -2
    elif start < 0:
        return ""
    end = start + 10
    while True:
        nxt = head.find(b"\r\n", end)
        if nxt < 0 or head[nxt + 2 : nxt + 3] not in (b" ", b"\t"):
            break
        end = nxt + 2
    value = head[start + 10 : nxt if nxt >= 0 else len(head)].decode("utf-8", "replace")
    value = " ".join(value.split())
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (ValueError, LookupError):
            pass
    return value[:998]
