"""The scheduler with a fake deliverer: backoff, concurrency limits, dead destinations, queue
lifetime, DSNs, recovery from the spool, hold and delete during delivery."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mailgate.config.model import validate
from mailgate.config.runtime import RuntimeConfig
from mailgate.queue.delivery import DestinationFailure, Outcome
from mailgate.queue.routing import Destination
from mailgate.queue.scheduler import Scheduler
from mailgate.queue.spool import Spool, new_queue_id
from mailgate.types import ClientInfo, Envelope, Recipient


class FakeClient:
    is_connected = True

    def __init__(self, dest: Destination) -> None:
        self.remote = f"{dest.host}[{dest.host}]:{dest.port}"

    def close(self) -> None:
        self.is_connected = False

    async def quit(self) -> None:
        self.close()


class FakeDeliverer:
    """Answers from a per-domain script; records concurrency."""

    def __init__(self) -> None:
        self.replies: dict[str, str] = {}  # domain -> "sent" | "deferred" | "bounced" | "down"
        self.active = 0
        self.peak: dict[str, int] = {}
        self.per_dest: dict[str, int] = {}
        self.connects = 0
        self.sends: list[tuple[str, list[int]]] = []
        self.gate: asyncio.Event | None = None

    async def connect(self, dest: Destination) -> FakeClient:
        self.connects += 1
        if self.replies.get(dest.host) == "down":
            raise DestinationFailure(
                f"connect to {dest.host}: Connection refused", dsn="4.4.1", temporary=True
            )
        return FakeClient(dest)

    async def send(
        self, client: FakeClient, envelope: Envelope, content: bytes, indices: list[int]
    ) -> list[Outcome]:
        domain = envelope.recipients[indices[0]].domain
        self.per_dest[domain] = self.per_dest.get(domain, 0) + 1
        self.peak[domain] = max(self.peak.get(domain, 0), self.per_dest[domain])
        self.active += 1
        self.peak["*"] = max(self.peak.get("*", 0), self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            self.sends.append((envelope.qid, indices))
            kind = self.replies.get(domain, "sent")
            status = {"sent": "2.0.0", "deferred": "4.2.0", "bounced": "5.1.1"}[kind]
            return [Outcome(i, kind, status, f"{kind} by fake", client.remote) for i in indices]  # type: ignore[arg-type]
        finally:
            self.active -= 1
            self.per_dest[domain] -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    tmp_path: Path, advanced: dict[str, Any] | None = None
) -> tuple[Scheduler, FakeDeliverer, Clock, Spool]:
    config = validate({
        "domains": [{"name": d, "route": {"host": d, "port": 25}} for d in ("a.test", "b.test", "ext.test")],
        "main": {"hostname": "mailgate.test"},
        "advanced": advanced or {},
    })  # fmt: skip
    runtime = RuntimeConfig(1, config)
    spool = Spool(tmp_path / "spool")
    deliverer = FakeDeliverer()
    clock = Clock()
    scheduler = Scheduler(spool=spool, deliverer=deliverer, runtime=lambda: runtime,  # type: ignore[arg-type]
                          executor=ThreadPoolExecutor(4), clock=clock)  # fmt: skip
    return scheduler, deliverer, clock, spool


def envelope(
    recipients: list[str], sender: str = "alice@ext.test", arrival: float = 1_800_000_000.0
) -> Envelope:
    return Envelope(
        qid=new_queue_id(), sender=sender,
        recipients=[Recipient(r, r.rpartition("@")[2]) for r in recipients],
        client=ClientInfo("127.0.0.100"), arrival=arrival,
    )  # fmt: skip


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


HOUR_BACKOFF = {"queue": {"minimal_backoff_time": 3600, "maximal_backoff_time": 3600}}


def is_deferred(scheduler: Scheduler, qid: str) -> bool:
    """Waiting for its retry timer (its attempt is recorded)."""
    found = scheduler.describe(qid)
    return found is not None and found["state"] == "deferred"


def test_delivered_message_is_removed(tmp_path: Path) -> None:
    scheduler, deliverer, _, spool = make(tmp_path)

    async def body() -> None:
        env = envelope(["x@a.test", "y@b.test"])
        await scheduler.enqueue(env, b"Subject: s\r\n\r\nx\r\n")
        await until(lambda: not scheduler.entries)
        await until(lambda: spool.ids() == [])  # the remover thread deletes its files
        assert sorted(i for _, idx in deliverer.sends for i in idx) == [0, 1]
        await scheduler.stop()

    run(body)


def test_backoff_doubles_up_to_the_maximum(tmp_path: Path) -> None:
    scheduler, deliverer, clock, spool = make(
        tmp_path, {"queue": {"minimal_backoff_time": 100, "maximal_backoff_time": 350}}
    )
    deliverer.replies["a.test"] = "deferred"

    async def body() -> None:
        env = envelope(["x@a.test"])
        await scheduler.enqueue(env, b"m\r\n")
        expected = [100, 200, 350, 350]
        for attempt, delay in enumerate(expected, 1):
            await until(
                lambda a=attempt: (
                    (e := scheduler.entries.get(env.qid)) is not None
                    and e.attempts == a
                    and e.timer is not None  # the state is saved before the timer is set
                )
            )
            entry = scheduler.entries[env.qid]
            assert entry.next_attempt - clock.now == pytest.approx(delay)
            state = spool.load_state(env.qid)
            assert state is not None
            assert state["attempts"] == attempt
            scheduler.flush()  # retry now instead of waiting
        await scheduler.stop()

    run(body)


def test_queue_lifetime_bounces_with_a_dsn(tmp_path: Path) -> None:
    scheduler, deliverer, clock, _spool = make(
        tmp_path, {"queue": {"maximal_queue_lifetime": 1000}}
    )
    deliverer.replies["a.test"] = "deferred"

    async def body() -> None:
        env = envelope(["x@a.test"], arrival=clock.now - 2000)
        await scheduler.enqueue(env, b"Subject: old\r\n\r\nx\r\n")
        await until(lambda: len(deliverer.sends) >= 2)  # the message, then its DSN
        await until(lambda: env.qid not in scheduler.entries)
        dsn_qid, _ = deliverer.sends[-1]
        assert dsn_qid != env.qid
        await until(lambda: not scheduler.entries)
        await scheduler.stop()

    run(body)


def test_no_dsn_for_a_bounce_of_a_bounce(tmp_path: Path) -> None:
    scheduler, deliverer, _, _ = make(tmp_path)
    deliverer.replies["a.test"] = "bounced"

    async def body() -> None:
        await scheduler.enqueue(envelope(["x@a.test"], sender=""), b"m\r\n")
        await until(lambda: not scheduler.entries)
        assert len(deliverer.sends) == 1
        await scheduler.stop()

    run(body)


def test_dsn_goes_to_the_sender_for_bounced_recipients_only(tmp_path: Path) -> None:
    scheduler, deliverer, _, _spool = make(tmp_path)
    deliverer.replies["a.test"] = "bounced"
    captured: list[Envelope] = []
    original_submit = scheduler.submit

    def spy(env: Envelope, content: bytes | None) -> None:
        captured.append(env)
        original_submit(env, content)

    scheduler.submit = spy  # type: ignore[method-assign]

    async def body() -> None:
        await scheduler.enqueue(
            envelope(["x@a.test", "y@b.test"], sender="alice@ext.test"), b"m\r\n"
        )
        await until(lambda: len(captured) == 2 and not scheduler.entries)
        dsn = captured[1]
        assert dsn.sender == ""
        assert [r.address for r in dsn.recipients] == ["alice@ext.test"]
        await scheduler.stop()

    run(body)


def test_destination_concurrency_and_total_limits(tmp_path: Path) -> None:
    scheduler, deliverer, _, _ = make(
        tmp_path, {"delivery": {"destination_concurrency_limit": 3, "total_concurrency_limit": 4}}
    )
    deliverer.gate = asyncio.Event()

    async def body() -> None:
        for n in range(10):
            await scheduler.enqueue(envelope([f"u{n}@a.test"]), b"m\r\n")
            await scheduler.enqueue(envelope([f"u{n}@b.test"]), b"m\r\n")
        await until(lambda: deliverer.active == 4)
        assert deliverer.gate is not None
        deliverer.gate.set()
        await until(lambda: not scheduler.entries)
        assert deliverer.peak["a.test"] <= 3
        assert deliverer.peak["b.test"] <= 3
        assert deliverer.peak["*"] == 4
        assert len(deliverer.sends) == 20
        await scheduler.stop()

    run(body)


def test_a_worker_starts_for_each_job_not_for_each_free_slot(tmp_path: Path) -> None:
    scheduler, deliverer, _, _ = make(tmp_path, {"delivery": {"destination_concurrency_limit": 5}})
    deliverer.gate = asyncio.Event()

    async def body() -> None:
        # Workers start as tasks, which run at the loop's next turn: after enqueue returns,
        # the scheduler's tasks are the workers it just started.
        await scheduler.enqueue(envelope(["x@a.test"]), b"m\r\n")
        assert len(scheduler._tasks) == 1  # one job, one worker (not one per free slot)
        await until(lambda: deliverer.active == 1)
        # A job for a destination whose worker is busy gets a worker of its own...
        await scheduler.enqueue(envelope(["y@a.test"]), b"m\r\n")
        assert len(scheduler._tasks) == 2
        # ...and so does each of several jobs queued at once (three domains, three jobs).
        await scheduler.enqueue(envelope(["z@a.test", "z@b.test", "z@ext.test"]), b"m\r\n")
        assert len(scheduler._tasks) == 5
        await until(lambda: deliverer.active == 5)
        assert deliverer.gate is not None
        deliverer.gate.set()
        await until(lambda: not scheduler.entries)
        assert len(deliverer.sends) == 5
        await until(lambda: not scheduler._tasks)  # every worker ended with its queue empty
        await scheduler.stop()

    run(body)


def test_dead_destination_is_suspended_and_flush_lifts_it(tmp_path: Path) -> None:
    scheduler, deliverer, _, _ = make(tmp_path, HOUR_BACKOFF)
    deliverer.replies["a.test"] = "down"

    async def body() -> None:
        await scheduler.enqueue(envelope(["x@a.test"]), b"m\r\n")
        await until(
            lambda: all(e.attempts == 1 for e in scheduler.entries.values()) and scheduler.entries
        )
        connects = deliverer.connects
        # More mail for the dead destination waits without new connection attempts.
        await scheduler.enqueue(envelope(["y@a.test"]), b"m\r\n")
        await until(
            lambda: (
                len(scheduler.entries) == 2
                and all(e.attempts == 1 for e in scheduler.entries.values())
            )
        )
        assert deliverer.connects == connects
        reasons = [e.last[0][1] for e in scheduler.entries.values()]
        assert any(
            r.startswith("delivery temporarily suspended: connect to a.test") for r in reasons
        )
        # Other destinations are not affected.
        await scheduler.enqueue(envelope(["z@b.test"]), b"m\r\n")
        await until(lambda: len(scheduler.entries) == 2)
        deliverer.replies["a.test"] = "sent"
        assert scheduler.flush() == 2
        await until(lambda: not scheduler.entries)
        await scheduler.stop()

    run(body)


def test_flush_while_an_attempt_is_being_recorded_retries_right_after(tmp_path: Path) -> None:
    # Between the end of a failed attempt and its retry timer, the scheduler writes the state
    # file; a flush in that window must not be lost (nor wait for the backoff).
    scheduler, deliverer, _, spool = make(tmp_path, HOUR_BACKOFF)
    deliverer.replies["a.test"] = "deferred"
    writing, release = threading.Event(), threading.Event()
    save_state = spool.save_state

    def slow_save_state(qid: str, state: dict[str, Any]) -> None:
        writing.set()
        assert release.wait(10)
        save_state(qid, state)

    spool.save_state = slow_save_state  # type: ignore[method-assign]

    async def body() -> None:
        env = envelope(["x@a.test"])
        await scheduler.enqueue(env, b"m\r\n")
        await until(writing.is_set)
        entry = scheduler.entries[env.qid]
        assert (entry.active, entry.timer) == (False, None)
        assert scheduler.describe(env.qid)["state"] == "active"  # type: ignore[index]
        deliverer.replies["a.test"] = "sent"
        assert scheduler.flush() == 1
        release.set()
        await until(lambda: not scheduler.entries)
        assert len(deliverer.sends) == 2
        await scheduler.stop()

    run(body)


def test_state_that_cannot_be_saved_keeps_the_message_queued(tmp_path: Path) -> None:
    # A full disk while the attempt is recorded: the message keeps its retry timer, a flush
    # retries it, and the state is written once space is back.
    scheduler, deliverer, _, spool = make(tmp_path, HOUR_BACKOFF)
    deliverer.replies["a.test"] = "deferred"
    save_state = spool.save_state
    full = threading.Event()
    full.set()

    def save_state_on_a_full_disk(qid: str, state: dict[str, Any]) -> None:
        if full.is_set():
            raise OSError(28, "No space left on device")
        save_state(qid, state)

    spool.save_state = save_state_on_a_full_disk  # type: ignore[method-assign]

    async def body() -> None:
        env = envelope(["x@a.test"])
        await scheduler.enqueue(env, b"m\r\n")
        await until(lambda: is_deferred(scheduler, env.qid))
        assert scheduler.entries[env.qid].attempts == 1
        assert spool.load_state(env.qid) is None
        full.clear()
        assert scheduler.flush() == 1
        await until(
            lambda: scheduler.entries[env.qid].attempts == 2 and is_deferred(scheduler, env.qid)
        )
        assert spool.load_state(env.qid)["attempts"] == 2  # type: ignore[index]
        deliverer.replies["a.test"] = "sent"
        assert scheduler.flush() == 1
        await until(lambda: not scheduler.entries)
        assert len(deliverer.sends) == 3
        await scheduler.stop()

    run(body)


def test_a_failure_while_recording_an_attempt_never_strands_the_message(tmp_path: Path) -> None:
    scheduler, deliverer, _, _ = make(tmp_path, HOUR_BACKOFF)
    deliverer.replies["a.test"] = "bounced"
    calls = 0

    async def broken_report(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug while building the DSN")

    scheduler.report = broken_report  # type: ignore[method-assign]

    async def body() -> None:
        env = envelope(["x@a.test"])
        await scheduler.enqueue(env, b"m\r\n")
        await until(lambda: calls == 1)
        await until(lambda: is_deferred(scheduler, env.qid))
        assert scheduler.flush() == 1
        await until(lambda: calls == 2)
        await scheduler.stop()

    run(body)


def test_a_queue_file_that_cannot_be_read_is_deferred_not_forgotten(tmp_path: Path) -> None:
    scheduler, deliverer, _, spool = make(tmp_path, HOUR_BACKOFF)
    damaged = envelope(["x@a.test"])
    broken = envelope(["y@b.test"])
    for env in (damaged, broken):
        spool.commit(env, b"m\r\n")
    load = spool.load
    failures = {damaged.qid: OSError(5, "Input/output error"), broken.qid: KeyError("sender")}

    def failing_load(qid: str, where: str = "queue") -> Any:
        if qid in failures:
            raise failures[qid]
        return load(qid, where)

    spool.load = failing_load  # type: ignore[method-assign]

    async def body() -> None:
        assert await scheduler.recover() == 2  # content is read back from the spool
        await until(
            lambda: is_deferred(scheduler, damaged.qid) and is_deferred(scheduler, broken.qid)
        )
        assert deliverer.sends == []
        last = scheduler.entries[damaged.qid].last[0]
        assert last[:2] == ("4.3.0", "cannot read the queue file: [Errno 5] Input/output error")
        assert scheduler.entries[broken.qid].last[0][:2] == ("4.3.0", "internal error: KeyError")
        failures.clear()
        assert scheduler.flush() == 2
        await until(lambda: not scheduler.entries)
        assert sorted(qid for qid, _ in deliverer.sends) == sorted([damaged.qid, broken.qid])
        await scheduler.stop()

    run(body)


def test_recovery_resumes_from_the_spool_and_skips_done_recipients(tmp_path: Path) -> None:
    scheduler, deliverer, clock, spool = make(tmp_path)
    done = envelope(["x@a.test", "y@b.test"])
    later = envelope(["z@a.test"])
    spool.commit(done, b"m\r\n")
    spool.save_state(done.qid, {"status": "SP", "attempts": 1, "next": 0, "last": {}})
    spool.commit(later, b"m\r\n")
    spool.save_state(
        later.qid, {"status": "P", "attempts": 2, "next": clock.now + 3600, "last": {}}
    )
    (tmp_path / "spool" / "incoming" / "PARTIAL1234567").write_bytes(b"never acknowledged")

    async def body() -> None:
        assert await scheduler.recover() == 2
        await until(lambda: done.qid not in scheduler.entries)
        assert deliverer.sends == [(done.qid, [1])]  # only the recipient still pending
        assert scheduler.entries[later.qid].timer is not None  # waits for its retry time
        assert list((tmp_path / "spool" / "incoming").iterdir()) == []
        await scheduler.stop()

    run(body)


def test_hold_and_delete_during_delivery(tmp_path: Path) -> None:
    scheduler, deliverer, _, spool = make(tmp_path)
    deliverer.replies["a.test"] = "deferred"
    deliverer.gate = asyncio.Event()

    async def body() -> None:
        held, deleted = envelope(["x@a.test"]), envelope(["y@a.test"])
        await scheduler.enqueue(held, b"m\r\n")
        await scheduler.enqueue(deleted, b"m\r\n")
        await until(lambda: deliverer.active == 2)
        assert scheduler.request_hold(held.qid) is True
        assert scheduler.request_delete(deleted.qid) is True
        assert deliverer.gate is not None
        deliverer.gate.set()
        await until(lambda: not scheduler.entries)
        assert spool.locate(held.qid) == "hold"
        assert spool.locate(deleted.qid) is None
        await scheduler.stop()

    run(body)
