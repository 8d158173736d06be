"""The queue manager's scheduler (Postfix qmgr): which message goes where, when, and how many
at once.

A delivery pass takes a message's pending recipients, groups them by next hop (routing), and
queues one job per destination (at most `RECIPIENTS_PER_TRANSACTION` recipients each). Each
destination runs up to `destination_concurrency_limit` workers (and all destinations together
up to `total_concurrency_limit`); a worker keeps its SMTP connection for the next job of the
same destination, and an idle connection is kept `connection_cache_time_limit` seconds.

When a pass ends: bounced recipients get one DSN (RFC 3464) to the sender, unless the sender is
null; if recipients remain pending the message is retried after a backoff that doubles from
`minimal_backoff_time` up to `maximal_backoff_time`, until `maximal_queue_lifetime`, when they
bounce too. A destination that cannot be reached at all is suspended for the minimal backoff
time, so the rest of its mail waits instead of hammering it (Postfix's dead destination).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailgate.config.runtime import RuntimeConfig
from mailgate.dsn import RecipientReport, build_report, dsn_envelope
from mailgate.queue.delivery import (
    Deliverer,
    DestinationFailure,
    Outcome,
    broken_outcomes,
    delay_since,
    failure_outcomes,
)
from mailgate.queue.routing import Destination
from mailgate.queue.spool import Spool, new_queue_id
from mailgate.smtp.client import SmtpClient
from mailgate.types import Envelope, Recipient

log = logging.getLogger("mailgate.qmgr")
delivery_log = logging.getLogger("mailgate.smtp")

RECIPIENTS_PER_TRANSACTION = 50  # Postfix smtp_destination_recipient_limit
# Content of queued messages kept in memory; beyond it a message is read back from the spool
# (the page cache, usually) when its delivery starts, so a backlog costs disk, not memory.
CONTENT_MEMORY_BUDGET = 32 * 1024 * 1024
_PENDING, _SENT, _BOUNCED = "P", "S", "B"
SUCCESS_ACTIONS = frozenset({"delivered", "relayed"})


@dataclass(eq=False)
class Entry:
    """A queued message as the scheduler tracks it."""

    envelope: Envelope
    content: bytes | None
    status: list[str]
    last: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)
    attempts: int = 0
    next_attempt: float = 0.0
    outstanding: int = 0
    active: bool = False
    timer: asyncio.TimerHandle | None = None
    reports: list[RecipientReport] = field(default_factory=list)
    hold_requested: bool = False
    delete_requested: bool = False
    flush_requested: bool = False
    has_state: bool = False

    @property
    def qid(self) -> str:
        return self.envelope.qid

    def pending(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == _PENDING]

    def state(self) -> dict[str, Any]:
        return {
            "status": "".join(self.status),
            "attempts": self.attempts,
            "next": self.next_attempt,
            "last": {str(i): list(v) for i, v in self.last.items()},
        }


@dataclass(slots=True)
class Job:
    entry: Entry
    indices: list[int]
    destination: Destination


@dataclass(eq=False)
class _Dest:
    destination: Destination
    jobs: deque[Job] = field(default_factory=deque)
    active: int = 0  # workers delivering to this destination
    starting: int = 0  # of which, started and about to take a job (not yet running)
    idle: list[SmtpClient] = field(default_factory=list)
    suspended_until: float = 0.0
    suspend_reason: str = ""


class Scheduler:
    def __init__(
        self,
        *,
        spool: Spool,
        deliverer: Deliverer,
        runtime: Callable[[], RuntimeConfig],
        executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.deliverer = deliverer
        self._runtime = runtime
        self._executor = executor
        self._clock = clock
        self.entries: dict[str, Entry] = {}
        self._dests: dict[Destination, _Dest] = {}
        self._active = 0
        self._waiting: deque[_Dest] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.delivered = 0
        self.bounced = 0
        # Called with (envelope, recipient, outcome) for every delivery attempt's result.
        self.on_outcome: Callable[[Envelope, Recipient, Outcome], None] | None = None
        self._content_bytes = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for entry in self.entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for dest in self._dests.values():
            for client in dest.idle:
                client.close()
            dest.idle.clear()

    async def recover(self) -> int:
        """Load every queued message at start-up; return how many."""
        loop = asyncio.get_running_loop()
        recovered = await loop.run_in_executor(self._executor, self.spool.recover)
        for name in recovered.discarded:
            log.info("%s: discarded incomplete queue file (never acknowledged)", name)
        for name in recovered.completed:
            log.info("%s: queue file completed before a restart, queued", name)
        for name in recovered.conflicts:
            log.error("%s: complete queue file left in incoming/: the id is already queued", name)
        qids = await loop.run_in_executor(self._executor, self.spool.ids, "queue")
        now = self._clock()
        for qid in qids:
            try:
                envelope = await loop.run_in_executor(
                    self._executor, self.spool.read_envelope, qid, "queue"
                )
            except (OSError, ValueError) as exc:
                log.error("%s: unreadable queue file left in place: %s", qid, exc)
                continue
            state = self.spool.load_state(qid)
            entry = _entry_from_state(envelope, state)
            self.entries[qid] = entry
            if not entry.pending():
                self._remove(entry)
            elif entry.next_attempt > now:
                self._schedule(entry, entry.next_attempt - now)
            else:
                self._dispatch(entry)
        return len(qids)

    # -- intake --------------------------------------------------------------------------

    async def enqueue(self, envelope: Envelope, content: bytes) -> None:
        """Store a message durably, then start delivering it. Raises SpoolError/OSError."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.spool.commit, envelope, content)
        self.submit(envelope, content)

    def submit(self, envelope: Envelope, content: bytes | None) -> None:
        entry = Entry(envelope, None, [_PENDING] * len(envelope.recipients))
        self._hold_content(entry, content)
        self.entries[envelope.qid] = entry
        self._dispatch(entry)

    def _hold_content(self, entry: Entry, content: bytes | None) -> None:
        """Keep the content in memory if the budget allows it."""
        if content is not None and self._content_bytes + len(content) <= CONTENT_MEMORY_BUDGET:
            entry.content = content
            self._content_bytes += len(content)

    def _drop_content(self, entry: Entry) -> None:
        if entry.content is not None:
            self._content_bytes -= len(entry.content)
            entry.content = None

    async def _content(self, entry: Entry) -> bytes:
        """The message content: from memory, or read back from the spool."""
        if entry.content is not None:
            return entry.content
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._executor, self.spool.load, entry.qid)
        return stored.content

    # -- delivery passes -----------------------------------------------------------------

    def _dispatch(self, entry: Entry) -> None:
        entry.timer = None
        entry.active = True
        router = self._runtime().router
        groups: dict[Destination, list[int]] = {}
        for i in entry.pending():
            hop = router.next_hop(entry.envelope.recipients[i].domain)
            groups.setdefault(hop, []).append(i)
        entry.outstanding += 1  # held until every job is queued, so the pass cannot end early
        now = time.monotonic()
        for destination, indices in groups.items():
            dest = self._dests.get(destination)
            if dest is None:
                dest = self._dests[destination] = _Dest(destination)
            for start in range(0, len(indices), RECIPIENTS_PER_TRANSACTION):
                chunk = indices[start : start + RECIPIENTS_PER_TRANSACTION]
                job = Job(entry, chunk, destination)
                entry.outstanding += 1
                if dest.suspended_until > now:
                    self._job_done(job, _suspended(job, dest))
                else:
                    dest.jobs.append(job)
            self._kick(dest)
        self._release(entry)

    def _kick(self, dest: _Dest) -> None:
        delivery = self._runtime().config.advanced.delivery
        # One more worker for each job that no worker about to start will take: a worker takes
        # the jobs one after another until none is left, so more would only start and end.
        while len(dest.jobs) > dest.starting and (
            dest.active < delivery.destination_concurrency_limit
        ):
            if self._active >= delivery.total_concurrency_limit:
                if dest not in self._waiting:
                    self._waiting.append(dest)
                return
            dest.active += 1
            dest.starting += 1
            self._active += 1
            self._spawn(self._worker(dest))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self, dest: _Dest) -> None:
        client: SmtpClient | None = None
        dest.starting -= 1
        try:
            while dest.jobs:
                job = dest.jobs.popleft()
                if dest.suspended_until > time.monotonic():
                    self._job_done(job, _suspended(job, dest))
                    continue
                if job.entry.delete_requested:
                    self._job_done(job, [])
                    continue
                try:
                    outcomes, client = await self._attempt(dest, job, client)
                except Exception as exc:  # a bug must not strand the message: defer it, loudly
                    log.exception("%s: delivery attempt failed", job.entry.qid)
                    if client is not None:
                        client.close()
                        client = None
                    text = f"internal error: {type(exc).__name__}"
                    outcomes = [Outcome(i, "deferred", "4.3.0", text) for i in job.indices]
                self._job_done(job, outcomes)
        finally:
            if client is not None and client.is_connected:
                dest.idle.append(client)
            dest.active -= 1
            self._active -= 1
            while self._waiting and self._active < self._total_limit():
                self._kick(self._waiting.popleft())

    def _total_limit(self) -> int:
        return self._runtime().config.advanced.delivery.total_concurrency_limit

    async def _attempt(
        self, dest: _Dest, job: Job, client: SmtpClient | None
    ) -> tuple[list[Outcome], SmtpClient | None]:
        entry = job.entry
        try:
            content = await self._content(entry)
        except FileNotFoundError:  # removed from the spool behind the scheduler's back
            log.warning("%s: queue file vanished; forgetting the message", entry.qid)
            entry.delete_requested = True
            return [], client
        except OSError as exc:  # a read error or a damaged file: keep it, try again later
            log.error("%s: cannot read the queue file: %s", entry.qid, exc)
            text = f"cannot read the queue file: {exc}"
            return [Outcome(i, "deferred", "4.3.0", text) for i in job.indices], client
        for _ in range(2):
            reused = client is not None or bool(dest.idle)
            if client is None and dest.idle:
                client = dest.idle.pop()
            if client is None:
                try:
                    client = await self.deliverer.connect(dest.destination)
                except DestinationFailure as failure:
                    if failure.temporary:
                        self._suspend(dest, failure.text)
                    return failure_outcomes(job.indices, failure), None
            try:
                outcomes = await self.deliverer.send(client, entry.envelope, content, job.indices)
            except OSError as exc:
                client.close()
                if reused:
                    # The peer may have closed a cached connection; try once on a new one.
                    client = None
                    continue
                return broken_outcomes(job.indices, client, exc), None
            except Exception as exc:  # a bug must not strand the message: defer it, loudly
                log.exception("%s: delivery attempt failed", entry.qid)
                client.close()
                return broken_outcomes(job.indices, client, exc), None
            return outcomes, client if client.is_connected else None
        raise AssertionError("unreachable")

    def _suspend(self, dest: _Dest, reason: str) -> None:
        backoff = self._runtime().config.advanced.queue.minimal_backoff_time
        dest.suspended_until = time.monotonic() + backoff
        dest.suspend_reason = reason

    def _job_done(self, job: Job, outcomes: list[Outcome]) -> None:
        entry = job.entry
        envelope = entry.envelope
        for outcome in outcomes:
            recipient = envelope.recipients[outcome.index]
            relay = outcome.remote or str(job.destination)
            if self.on_outcome is not None:
                self.on_outcome(envelope, recipient, outcome)
            delivery_log.info(
                "%s: to=<%s>, relay=%s, delay=%.2f, dsn=%s, status=%s (%s)",
                entry.qid, recipient.address, relay, delay_since(envelope.arrival),
                outcome.dsn, outcome.status, outcome.text,
            )  # fmt: skip
            if outcome.status == "sent":
                entry.status[outcome.index] = _SENT
                self.delivered += 1
                if recipient.wants_success_report and not outcome.dsn_passed:
                    remote_host = outcome.remote.partition("[")[0] if outcome.remote else None
                    entry.reports.append(
                        RecipientReport(
                            recipient, "relayed", outcome.dsn, outcome.diagnostic, remote_host
                        )
                    )
            elif outcome.status == "bounced":
                entry.status[outcome.index] = _BOUNCED
                self.bounced += 1
                remote_host = outcome.remote.partition("[")[0] if outcome.remote else None
                entry.reports.append(
                    RecipientReport(
                        recipient, "failed", outcome.dsn, outcome.diagnostic, remote_host
                    )
                )
            else:
                remote_host = outcome.remote.partition("[")[0] if outcome.remote else None
                entry.last[outcome.index] = (outcome.dsn, outcome.diagnostic, remote_host)
        self._release(entry)

    def _release(self, entry: Entry) -> None:
        entry.outstanding -= 1
        if entry.outstanding > 0:
            return
        entry.active = False
        if (
            not entry.reports
            and not entry.delete_requested
            and not entry.hold_requested
            and not entry.pending()
        ):
            self._remove(entry)  # the common case, kept synchronous: everything was delivered
            return
        self._spawn(self._finish(entry))

    def _remove(self, entry: Entry) -> None:
        self._drop_content(entry)
        self.spool.remove_later(entry.qid, state=entry.has_state)
        self.entries.pop(entry.qid, None)
        log.info("%s: removed", entry.qid)

    async def _finish(self, entry: Entry) -> None:
        """End of a pass that left bounces to report or recipients to retry. Whatever goes
        wrong while recording it, the message stays queued and is tried again."""
        try:
            await self._record_pass(entry)
        except Exception:
            log.exception("%s: cannot record the delivery attempt; retried later", entry.qid)
            if entry.qid in self.entries and entry.timer is None and not entry.active:
                backoff = self._runtime().config.advanced.queue.minimal_backoff_time
                self._schedule(entry, 0.0 if entry.flush_requested else backoff)
                entry.flush_requested = False

    async def _record_pass(self, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        if entry.delete_requested:
            self._drop_content(entry)
            await loop.run_in_executor(self._executor, self.spool.remove, entry.qid)
            self.entries.pop(entry.qid, None)
            log.info("%s: removed by the administrator", entry.qid)
            return
        settings = self._runtime().config.advanced.queue
        now = self._clock()
        envelope = entry.envelope
        pending = entry.pending()
        lifetime = (
            settings.bounce_queue_lifetime
            if envelope.is_bounce
            else settings.maximal_queue_lifetime
        )
        if pending and now - envelope.arrival >= lifetime:
            for i in pending:
                last = entry.last.get(i, ("4.4.7", "delivery time expired", None))
                dsn, diagnostic, remote = last
                entry.status[i] = _BOUNCED
                entry.reports.append(
                    RecipientReport(
                        envelope.recipients[i],
                        "failed",
                        dsn,
                        f"{diagnostic} (message expired after {now - envelope.arrival:.0f}s)",
                        remote,
                    )
                )
                log.info("%s: to=<%s>, status=expired, returned to sender", entry.qid,
                         envelope.recipients[i].address)  # fmt: skip
            pending = []
        if entry.reports:
            reports, entry.reports = entry.reports, []
            successes = [r for r in reports if r.action in SUCCESS_ACTIONS]
            failures = [r for r in reports if r.action not in SUCCESS_ACTIONS]
            # A success notice that cannot be stored is logged and not tried again: the
            # message itself was delivered, and delivering it again would be a duplicate.
            if successes and not await self._notify_sender(entry, successes):
                log.error("%s: the delivery status notification was not sent", entry.qid)
            if failures and not await self._notify_sender(entry, failures):
                for report in failures:  # the DSN is not stored: keep trying these recipients
                    entry.status[envelope.recipients.index(report.recipient)] = _PENDING
                pending = entry.pending()
        if not pending:
            self._drop_content(entry)
            await loop.run_in_executor(self._executor, self.spool.remove, entry.qid)
            self.entries.pop(entry.qid, None)
            log.info("%s: removed", entry.qid)
            return
        entry.attempts += 1
        delay = min(
            settings.maximal_backoff_time,
            settings.minimal_backoff_time * 2 ** (entry.attempts - 1),
        )
        entry.next_attempt = now + delay
        self._drop_content(entry)  # re-read from disk at the next attempt
        try:
            await loop.run_in_executor(
                self._executor, self.spool.save_state, entry.qid, entry.state()
            )
            entry.has_state = True
        except OSError as exc:
            # The queue file is safe; only the progress record is missing (a full disk, say).
            # The state stays in memory and is written at the next pass; a restart before then
            # retries recipients already delivered (a duplicate, never a loss).
            log.error("%s: cannot save the delivery state: %s", entry.qid, exc)
        if entry.hold_requested:
            await loop.run_in_executor(self._executor, self.spool.hold, entry.qid)
            self.entries.pop(entry.qid, None)
            log.info("%s: placed on hold", entry.qid)
            return
        if entry.qid in self.entries:
            self._schedule(entry, 0.0 if entry.flush_requested else delay)
            entry.flush_requested = False

    async def _notify_sender(self, entry: Entry, reports: list[RecipientReport]) -> bool:
        """Queue one DSN for these reports (all failures, or all successes); False if it
        could not be built or stored."""
        envelope = entry.envelope
        if envelope.is_bounce:
            if reports[0].action not in SUCCESS_ACTIONS:
                log.info("%s: undeliverable bounce discarded (no DSN to the null sender)",
                         entry.qid)  # fmt: skip
            return True
        try:
            return await self.report(envelope, await self._content(entry), reports)
        except Exception:
            log.exception("%s: cannot build the delivery status notification", entry.qid)
            return False

    async def report(self, envelope: Envelope, original: bytes,
                     reports: list[RecipientReport]) -> bool:  # fmt: skip
        """Queue one DSN to the sender of `envelope` (never to the null sender, only as each
        recipient's NOTIFY asks: failures unless NEVER, successes with SUCCESS); False if it
        could not be stored."""
        if envelope.is_bounce:
            return True
        wanted = [r for r in reports if _wanted(r)]
        if not wanted:
            return True
        runtime = self._runtime()
        now = self._clock()
        qid = new_queue_id()
        content = build_report(
            original=envelope,
            content=original,
            reports=wanted,
            hostname=runtime.hostname,
            now=datetime.fromtimestamp(now).astimezone(),
        )
        dsn = dsn_envelope(envelope, qid, len(content), now, runtime.hostname)
        try:
            await self.enqueue(dsn, content)
        except OSError as exc:
            log.error("%s: cannot queue the delivery status notification: %s", envelope.qid, exc)
            return False
        what = "delivery status" if wanted[0].action in SUCCESS_ACTIONS else "non-delivery"
        log.info("%s: sender %s notification: %s", envelope.qid, what, qid)
        return True

    def _schedule(self, entry: Entry, delay: float) -> None:
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(max(0.0, delay), self._dispatch, entry)

    # -- housekeeping --------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.sweep()

    def sweep(self) -> None:
        """Close idle connections past their time; forget destinations with nothing left."""
        delivery = self._runtime().config.advanced.delivery
        now = time.monotonic()
        for key in list(self._dests):
            dest = self._dests[key]
            keep = []
            for client in dest.idle:
                idle = now - client.last_used
                age = now - client.opened
                if (
                    idle < delivery.connection_cache_time_limit
                    and age < delivery.connection_reuse_time_limit
                ):
                    keep.append(client)
                else:
                    self._spawn(client.quit())
            dest.idle = keep
            if not dest.jobs and not dest.active and not dest.idle and dest.suspended_until < now:
                del self._dests[key]

    # -- administration ------------------------------------------------------------------

    def flush(self) -> int:
        """Retry every deferred message now (and lift destination suspensions)."""
        for dest in self._dests.values():
            dest.suspended_until = 0.0
        count = 0
        for entry in list(self.entries.values()):
            if entry.timer is not None:
                entry.timer.cancel()
                self._dispatch(entry)
                count += 1
            elif not entry.active:  # its last attempt is being recorded: retried right after
                entry.flush_requested = True
                count += 1
        return count

    def request_hold(self, qid: str) -> bool:
        """Mark a message for hold; True if the scheduler had it."""
        entry = self.entries.get(qid)
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
            self.entries.pop(qid, None)
            return False  # not in flight: the caller moves the file itself
        entry.hold_requested = True
        return True

    def forget(self, qid: str) -> None:
        entry = self.entries.pop(qid, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def request_delete(self, qid: str) -> bool:
        entry = self.entries.get(qid)
        if entry is None:
            return False
        if entry.timer is not None:
            self.forget(qid)
            return False
        entry.delete_requested = True
        return True

    def describe(self, qid: str) -> dict[str, Any] | None:
        entry = self.entries.get(qid)
        if entry is None:
            return None
        return {
            # As in Postfix: deferred once waiting for its next attempt; active from the moment
            # a pass picks it up until that pass's outcome is recorded and the retry is set.
            "state": "deferred" if entry.timer is not None else "active",
            "attempts": entry.attempts,
            "next_attempt": entry.next_attempt or None,
            "status": "".join(entry.status),
            "reasons": {str(i): v[1] for i, v in entry.last.items()},
        }


def _suspended(job: Job, dest: _Dest) -> list[Outcome]:
    text = f"delivery temporarily suspended: {dest.suspend_reason}"
    return [Outcome(i, "deferred", "4.4.1", text) for i in job.indices]


def _entry_from_state(envelope: Envelope, state: dict[str, Any] | None) -> Entry:
    count = len(envelope.recipients)
    entry = Entry(envelope, None, [_PENDING] * count)
    if not state:
        return entry
    status = str(state.get("status", ""))
    if len(status) == count and set(status) <= {_PENDING, _SENT, _BOUNCED}:
        entry.status = list(status)
    entry.attempts = int(state.get("attempts", 0))
    entry.next_attempt = float(state.get("next", 0.0))
    for key, value in dict(state.get("last", {})).items():
        if str(key).isdigit() and isinstance(value, list) and len(value) == 3:
            entry.last[int(key)] = (str(value[0]), str(value[1]), value[2])
    entry.has_state = True
    return entry


def _wanted(report: RecipientReport) -> bool:
    """Whether the recipient's NOTIFY asks for this report (RFC 3461 section 4.1)."""
    if report.action in SUCCESS_ACTIONS:
        return report.recipient.wants_success_report
    return report.recipient.wants_failure_report
