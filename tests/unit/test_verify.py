"""The verification cache's rules (Postfix verify(8) lifetimes, temporary failures for seconds,
no clobbering of a valid positive entry) and the Verifier with a fake prober and clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailgate.config.model import RecipientVerification, validate
from mailgate.config.runtime import RuntimeConfig
from mailgate.metrics import Counters
from mailgate.queue.routing import Destination
from mailgate.smtp.address import parse_path
from mailgate.store.db import make_engine
from mailgate.store.migrate import upgrade
from mailgate.types import Mailbox
from mailgate.verify.cache import Entry, Freshness, MemoryCache, VerifyStore, freshness, merge
from mailgate.verify.service import Verifier

DAY = 86400.0
SETTINGS = RecipientVerification()


def entry(status: str, updated: float, probed: float | None = None) -> Entry:
    return Entry("bob@example.com", status, "reply", updated, updated if probed is None else probed)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "age", "expected"), [
    ("ok", 0, Freshness.FRESH),
    ("ok", 7 * DAY - 1, Freshness.FRESH),
    ("ok", 7 * DAY, Freshness.STALE),      # refreshed after 7 days
    ("ok", 31 * DAY - 1, Freshness.STALE),
    ("ok", 31 * DAY, Freshness.EXPIRED),   # expires after 31 days
    ("bad", 3 * 3600 - 1, Freshness.FRESH),
    ("bad", 3 * 3600, Freshness.STALE),    # refreshed after 3 hours
    ("bad", 3 * DAY, Freshness.EXPIRED),   # expires after 3 days
    ("temp", 4.9, Freshness.FRESH),
    ("temp", 5, Freshness.EXPIRED),        # seconds, not hours
])  # fmt: skip
def test_postfix_lifetimes(status: str, age: float, expected: Freshness) -> None:
    now = 1_800_000_000.0
    assert freshness(entry(status, now - age), now, SETTINGS) is expected


def test_a_stale_entry_is_refreshed_at_most_once_a_minute() -> None:
    now = 1_800_000_000.0
    recently_probed = entry("ok", now - 8 * DAY, probed=now - 30)
    assert freshness(recently_probed, now, SETTINGS) is Freshness.FRESH
    assert freshness(entry("ok", now - 8 * DAY, probed=now - 61), now, SETTINGS) is Freshness.STALE


@pytest.mark.parametrize("result", ["bad", "temp"])
def test_a_failed_probe_never_clobbers_a_valid_positive_entry(result: str) -> None:
    now = 1_800_000_000.0
    good = entry("ok", now - 10 * DAY)
    merged = merge(good, good.address, result, "host said: 450", now, SETTINGS)  # type: ignore[arg-type]
    assert merged.status == "ok"
    assert merged.updated == good.updated
    assert merged.probed == now


def test_an_expired_positive_entry_is_replaced() -> None:
    now = 1_800_000_000.0
    old = entry("ok", now - 32 * DAY)
    assert merge(old, old.address, "bad", "550", now, SETTINGS).status == "bad"
    assert merge(entry("bad", now - 60), old.address, "temp", "421", now, SETTINGS).status == "temp"
    assert merge(None, old.address, "ok", "250", now, SETTINGS) == Entry(
        old.address, "ok", "250", now, now
    )


def test_memory_cache_is_bounded_lru() -> None:
    cache = MemoryCache(limit=2)
    cache.put(Entry("a@x", "ok", "", 1, 1))
    cache.put(Entry("b@x", "ok", "", 1, 1))
    assert cache.get("a@x") is not None
    cache.put(Entry("c@x", "ok", "", 1, 1))  # evicts b, the least recently used
    assert cache.get("b@x") is None
    assert cache.get("a@x") is not None
    assert len(cache) == 2


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


class FakeProber:
    def __init__(self) -> None:
        self.calls: list[tuple[Destination, list[str]]] = []
        self.answer: dict[str, tuple[str, str]] = {}
        self.release = asyncio.Event()
        self.release.set()

    async def probe(self, dest: Destination, addresses: list[str]) -> dict[str, tuple[str, str]]:
        self.calls.append((dest, list(addresses)))
        await self.release.wait()
        return {a: self.answer.get(a, ("ok", f"host said: 250 <{a}>")) for a in addresses}

    def close(self) -> None:
        pass


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def mailbox(address: str) -> Mailbox:
    parsed = parse_path(address, allow_null=False)
    assert parsed is not None
    return parsed


def make(
    tmp_path: Path, store: bool = False, **settings: object
) -> tuple[Verifier, FakeProber, Clock, Counters]:
    config = validate({
        "domains": [{"name": "example.com", "route": {"host": "127.0.0.30", "port": 25}},
                    {"name": "other.com", "route": {"host": "127.0.0.31", "port": 25}}],
        "advanced": {"verification": {"mode": "reject_unverified", **settings}},
    })  # fmt: skip
    runtime = RuntimeConfig(1, config)
    prober, clock, counters = FakeProber(), Clock(), Counters()
    verify_store = None
    if store:
        engine = make_engine(f"sqlite:///{tmp_path}/store.db")
        upgrade(engine)
        verify_store = VerifyStore(engine)
    verifier = Verifier(prober=prober, runtime=lambda: runtime, executor=ThreadPoolExecutor(2),  # type: ignore[arg-type]
                        counters=counters, store=verify_store, clock=clock)  # fmt: skip
    return verifier, prober, clock, counters


def test_one_probe_for_many_concurrent_requests_of_one_address(tmp_path: Path) -> None:
    verifier, prober, _, counters = make(tmp_path)

    async def body() -> None:
        prober.release.clear()
        tasks = [
            asyncio.create_task(verifier.verify([mailbox("bob@example.com")])) for _ in range(1000)
        ]
        await until(lambda: counters.get("verify.shared_probes") == 999)
        prober.release.set()
        results = await asyncio.gather(*tasks)
        assert all(r[0].status == "ok" for r in results)
        assert len(prober.calls) == 1
        assert counters.get("verify.shared_probes") == 999

    asyncio.run(body())


def test_a_probe_that_ends_during_a_store_read_is_not_repeated(tmp_path: Path) -> None:
    # Two RCPTs for one address both miss the memory layer and read the store; one read is
    # slow and returns the row as it was before the other's probe wrote it. The slow one must
    # take the probe's result from memory, not probe again.
    verifier, prober, _, _ = make(tmp_path, store=True)
    assert verifier.store is not None
    real_get, lock, gate, reads = verifier.store.get, threading.Lock(), threading.Event(), [0]

    def get(key: str) -> Entry | None:
        with lock:
            reads[0] += 1
            slow = reads[0] == 2
        if slow:
            assert gate.wait(10)
            return None
        return real_get(key)

    verifier.store.get = get  # type: ignore[method-assign]

    async def body() -> None:
        bob = [mailbox("bob@example.com")]
        tasks = [asyncio.create_task(verifier.verify(bob)) for _ in range(2)]
        await until(lambda: verifier.memory.get("bob@example.com") is not None)
        gate.set()
        verdicts = [result[0] for result in await asyncio.gather(*tasks)]
        assert sorted((v.status, v.cached) for v in verdicts) == [("ok", False), ("ok", True)]
        assert len(prober.calls) == 1

    asyncio.run(body())


def test_recipients_of_one_next_hop_share_one_probe_session(tmp_path: Path) -> None:
    verifier, prober, _, _ = make(tmp_path)
    prober.answer["nobody@example.com"] = ("bad", "550 5.1.1 unknown")

    async def body() -> None:
        verdicts = await verifier.verify([
            mailbox("bob@example.com"), mailbox("nobody@example.com"), mailbox("eve@other.com"),
        ])  # fmt: skip
        assert [v.status for v in verdicts] == ["ok", "bad", "ok"]
        assert sorted(len(addresses) for _, addresses in prober.calls) == [1, 2]

    asyncio.run(body())


def test_cache_hits_stale_refresh_and_temporary_failures(tmp_path: Path) -> None:
    verifier, prober, clock, counters = make(tmp_path, temporary_expire_time=2)

    async def body() -> None:
        bob = [mailbox("bob@example.com")]
        assert (await verifier.verify(bob))[0].cached is False
        assert (await verifier.verify(bob))[0].cached is True
        assert len(prober.calls) == 1
        # Eight days later: answered from the cache, refreshed in the background.
        clock.now += 8 * DAY
        prober.answer["bob@example.com"] = ("temp", "421 down")
        verdict = (await verifier.verify(bob))[0]
        assert (verdict.status, verdict.cached) == ("ok", True)
        await until(lambda: len(prober.calls) == 2)
        # The failed refresh did not clobber the positive entry.
        assert (await verifier.verify(bob))[0].status == "ok"
        # A temporary failure for a new address lasts seconds.
        carol = [mailbox("carol@example.com")]
        prober.answer["carol@example.com"] = ("temp", "connect: Connection refused")
        assert (await verifier.verify(carol))[0].status == "temp"
        prober.answer["carol@example.com"] = ("ok", "250")
        assert (await verifier.verify(carol))[0].status == "temp"  # still cached
        clock.now += 2
        assert (await verifier.verify(carol))[0].status == "ok"
        assert counters.get("verify.cache_hits.ok") >= 2

    asyncio.run(body())


def test_a_probe_past_its_deadline_is_temporary(tmp_path: Path) -> None:
    verifier, prober, _, _ = make(tmp_path, probe_timeout=0.2)

    async def body() -> None:
        prober.release.clear()
        verdict = (await verifier.verify([mailbox("slow@example.com")]))[0]
        assert verdict.status == "temp"
        assert "timed out" in verdict.reason

    asyncio.run(body())


def test_results_are_shared_through_the_store(tmp_path: Path) -> None:
    first, prober, _, _ = make(tmp_path, store=True)
    prober.answer["nobody@example.com"] = ("bad", "550 5.1.1 unknown")

    async def probe_on_first() -> None:
        await first.verify([mailbox("nobody@example.com")])
        await first.close()  # waits for the store writes queued behind the reply

    asyncio.run(probe_on_first())
    second, other_prober, _, counters = make(tmp_path, store=True)

    async def ask_second() -> None:
        verdict = (await second.verify([mailbox("nobody@example.com")]))[0]
        assert (verdict.status, verdict.cached) == ("bad", True)
        assert other_prober.calls == []
        assert counters.get("verify.cache_hits.bad") == 1

    asyncio.run(ask_second())
