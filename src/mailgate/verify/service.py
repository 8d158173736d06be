"""Recipient verification for the SMTP server, and the administration of its cache.

`Verifier.verify` answers for a list of recipients: from the cache when it can (memory, then
the shared store), else by probing their next hops, with recipients of one destination in
one probe session. Concurrent requests for the same address share one probe; stale entries
are answered from the cache and refreshed in the background; every probe has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from mailgate.config.runtime import RuntimeConfig
from mailgate.metrics import Counters
from mailgate.queue.routing import Destination
from mailgate.smtp.address import AddressError, parse_path
from mailgate.types import Mailbox
from mailgate.verify.cache import (
    Entry,
    Freshness,
    MemoryCache,
    Status,
    VerifyStore,
    freshness,
    merge,
)
from mailgate.verify.probe import Prober

log = logging.getLogger("mailgate.verify")


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    reason: str
    cached: bool


def cache_key(mailbox: Mailbox) -> str:
    """Local part as given, domain canonical: the key of the verification cache."""
    return f"{mailbox.local}@{mailbox.domain}"


class Verifier:
    def __init__(
        self,
        *,
        prober: Prober,
        runtime: Callable[[], RuntimeConfig],
        executor: Executor,
        counters: Counters,
        store: VerifyStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prober = prober
        self.store = store
        self.memory = MemoryCache()
        self.counters = counters
        self._runtime = runtime
        self._executor = executor
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[Entry]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Store writes and deletes go through one thread, in order: a flush can never be
        # overtaken by a write that was already on its way.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-verify")

    async def verify(self, mailboxes: list[Mailbox]) -> list[Verdict]:
        runtime = self._runtime()
        settings = runtime.config.advanced.verification
        loop = asyncio.get_running_loop()
        verdicts: list[Verdict | None] = [None] * len(mailboxes)
        waits: list[tuple[int, asyncio.Future[Entry]]] = []
        to_probe: dict[Destination, list[tuple[str, str]]] = {}
        for i, mailbox in enumerate(mailboxes):
            key = cache_key(mailbox)
            entry = self.memory.get(key)
            if entry is None and self.store is not None and key not in self._inflight:
                entry = await self._load(key)
                # A probe for this address may have ended while the store was read: its
                # result is in memory, and it is newer than what the store gave.
                entry = self.memory.get(key) or entry
            now = self._clock()
            state = freshness(entry, now, settings) if entry else Freshness.EXPIRED
            if entry is not None and state is not Freshness.EXPIRED:
                self.counters.inc(f"verify.cache_hits.{entry.status}")
                verdicts[i] = Verdict(entry.status, entry.reply, True)
                if state is Freshness.STALE and key not in self._inflight:
                    self.counters.inc("verify.refreshes")
                    self._start(runtime, {self._hop(runtime, mailbox): [(key, mailbox.address)]})
                continue
            self.counters.inc("verify.cache_misses")
            future = self._inflight.get(key)
            if future is None:
                future = loop.create_future()
                self._inflight[key] = future
                to_probe.setdefault(self._hop(runtime, mailbox), []).append((key, mailbox.address))
            else:
                self.counters.inc("verify.shared_probes")
            waits.append((i, future))
        self._start(runtime, to_probe)
        deadline = loop.time() + settings.probe_timeout + 1.0
        for i, future in waits:
            try:
                entry = await asyncio.wait_for(
                    asyncio.shield(future), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                verdicts[i] = Verdict("temp", "verification timed out", False)
            else:
                verdicts[i] = Verdict(entry.status, entry.reply, False)
        return [v for v in verdicts if v is not None]

    @staticmethod
    def _hop(runtime: RuntimeConfig, mailbox: Mailbox) -> Destination:
        # The same next hop real delivery would use for this recipient.
        return runtime.router.next_hop(mailbox.domain)

    async def _load(self, key: str) -> Entry | None:
        assert self.store is not None
        loop = asyncio.get_running_loop()
        try:
            entry = await loop.run_in_executor(self._executor, self.store.get, key)
        except Exception:  # the shared store may be unreachable; probing still works
            log.exception("cannot read the verification cache")
            return None
        if entry is not None and self.memory.get(key) is None:
            self.memory.put(entry)
        return entry

    def _start(
        self, runtime: RuntimeConfig, batches: dict[Destination, list[tuple[str, str]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        for dest, items in batches.items():
            for key, _ in items:
                self._inflight.setdefault(key, loop.create_future())
            task = asyncio.create_task(self._probe(runtime, dest, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(
        self, runtime: RuntimeConfig, dest: Destination, items: list[tuple[str, str]]
    ) -> None:
        settings = runtime.config.advanced.verification
        addresses = [address for _, address in items]
        try:
            result = await asyncio.wait_for(
                self.prober.probe(dest, addresses), settings.probe_timeout
            )
        except TimeoutError:
            text = f"probe of {dest} timed out after {settings.probe_timeout:g}s"
            result = dict.fromkeys(addresses, ("temp", text))
        except Exception as exc:  # a probe must always resolve its waiters
            log.exception("probe of %s failed", dest)
            result = dict.fromkeys(addresses, ("temp", f"probe failed: {exc}"))
        now = self._clock()
        for key, address in items:
            status, reply = result[address]
            entry = merge(self.memory.get(key), key, status, reply, now, settings)
            self.memory.put(entry)
            self._save(entry)
            self.counters.inc(f"verify.results.{status}")
            log.info(
                "verify: <%s>: %s via %s (%s)%s", address, status, dest, reply,
                "; kept the earlier positive result" if entry.status != status else "",
            )  # fmt: skip
            future = self._inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_result(entry)

    def _save(self, entry: Entry) -> None:
        if self.store is None:
            return
        future = self._writer.submit(self.store.put, entry)

        def _report(done: Any) -> None:
            if done.exception() is not None:
                log.error("cannot write the verification cache: %s", done.exception())

        future.add_done_callback(_report)

    async def verify_now(self, address: str) -> Entry:
        """Probe one address now, whatever the cache says, and record the result (in the
        store too, before returning)."""
        mailbox = parse_address(address)
        key = cache_key(mailbox)
        if self.memory.get(key) is None and self.store is not None:
            await self._load(key)
        runtime = self._runtime()
        future = self._inflight.get(key)
        if future is None:
            self._start(runtime, {self._hop(runtime, mailbox): [(key, mailbox.address)]})
            future = self._inflight[key]
        entry = await asyncio.shield(future)
        if self.store is not None:
            # The result's store write is queued on the one writer thread: once this no-op
            # behind it has run, a read of the shared store (any node, the API) sees it.
            await asyncio.wrap_future(self._writer.submit(lambda: None))
        return entry

    def forget(self, address: str | None = None, status: str | None = None) -> int:
        """Drop entries from the memory layer and the store (blocking for the store)."""
        if address is not None:
            self.memory.discard(cache_key(parse_address(address)))
        else:
            self.memory.clear()
        if self.store is None:
            return 0
        key = cache_key(parse_address(address)) if address is not None else None
        return self._writer.submit(self.store.delete, key, status).result()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.prober.close()
        self._writer.shutdown(wait=True)


def parse_address(address: str) -> Mailbox:
    """An address as typed by an administrator, with or without angle brackets."""
    try:
        mailbox = parse_path(address.strip("<>"), allow_null=False)
    except AddressError as exc:
        raise ValueError(f"{address!r} is not an address") from exc
    assert mailbox is not None
    return mailbox


def entry_json(entry: Entry) -> dict[str, Any]:
    return asdict(entry)


async def probe_once(config: Any, address: str, store: VerifyStore | None) -> Entry:
    """Probe one address from this process (the CLI when no gateway runs on the node)."""
    from mailgate.dns import DnsPythonResolver
    from mailgate.queue.delivery import Deliverer

    runtime = RuntimeConfig(0, config)
    dns = config.advanced.dns
    resolver = DnsPythonResolver(
        list(dns.nameservers) or None, timeout=dns.timeout, cache_size=dns.cache_size
    )
    deliverer = Deliverer(lambda: resolver, lambda: config, set)
    counters = Counters()
    with ThreadPoolExecutor(2) as executor:
        verifier = Verifier(
            prober=Prober(deliverer, lambda: runtime, counters),
            runtime=lambda: runtime,
            executor=executor,
            counters=counters,
            store=store,
        )
        try:
            return await verifier.verify_now(address)
        finally:
            await verifier.close()
