"""What an administrator can do to a running node, for the REST API and the web interface:
configuration (domains, settings, rules, import/export), the queue, the verification cache,
the message log, the quarantine, accounts and tokens, the audit log, counters and the
dashboard's figures.

Every configuration change goes the one validated way (mailgate.config.service), is recorded
in the audit log with what changed, and is applied to the running gateway at once. Blocking
store calls run in the gateway's worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import case, func, select

from mailgate.admin.accounts import Account, Accounts
from mailgate.admin.audit import AuditLog, diff
from mailgate.config import service as edits
from mailgate.config.model import Config
from mailgate.config.repository import Revision
from mailgate.integration_check import Finding, run_checks
from mailgate.queue.manager import QueueError
from mailgate.store.schema import message_deliveries, message_log
from mailgate.trace import LiveLookups, Lookup, Trace, cached_lookup
from mailgate.trace import trace as run_trace
from mailgate.tracking import Search
from mailgate.types import Mailbox
from mailgate.verify.service import cache_key, entry_json, parse_address

if TYPE_CHECKING:
    from mailgate.service import Gateway

T = TypeVar("T")


class Admin:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.accounts = Accounts(gateway.engine)
        self.audit = AuditLog(gateway.engine)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.gateway.executor, fn, *args)

    # -- configuration ---------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.gateway.holder.current.config

    @property
    def revision(self) -> int:
        return self.gateway.holder.current.revision

    async def change(self, edit: edits.Edit, actor: Account, comment: str) -> Revision:
        """Validate and save a change (ConfigError names bad fields), audit it, apply it."""
        service = self.gateway.config_service
        before = self.config.model_dump(mode="json")
        revision = await self._run(lambda: service.update(edit, author=actor.username,
                                                          comment=comment))  # fmt: skip
        if revision.id != self.revision:
            changes = diff(before, revision.config.model_dump(mode="json"))
            await self._run(self.audit.record, actor.username, "config.change", comment,
                            {"revision": revision.id, "changes": changes})  # fmt: skip
            await self.gateway.reload()
        return revision

    async def export_config(self) -> str:
        return await self._run(self.gateway.config_service.export_text)

    async def import_config(self, text: str, actor: Account) -> Revision:
        service = self.gateway.config_service
        before = self.config.model_dump(mode="json")
        revision = await self._run(lambda: service.import_text(text, author=actor.username))
        changes = diff(before, revision.config.model_dump(mode="json"))
        await self._run(self.audit.record, actor.username, "config.import", "configuration",
                        {"revision": revision.id, "changes": changes})  # fmt: skip
        await self.gateway.reload()
        return revision

    async def history(self, limit: int = 50) -> list[Revision]:
        return await self._run(self.gateway.config_service.repository.history, limit)

    # -- queue -----------------------------------------------------------------------------

    async def queue_list(self) -> list[dict[str, Any]]:
        """The queue, oldest first; its files are read in a worker thread."""
        queue = self.gateway.queue
        return [item.to_json() for item in queue.items(await self._run(queue.read))]

    def queue_show(self, qid: str) -> tuple[dict[str, Any], bytes]:
        item, content = self.gateway.queue.show(qid)
        return item.to_json(), content

    async def queue_action(self, action: str, qid: str, actor: Account) -> str:
        """hold, release or delete one message (QueueError for unknown ones)."""
        if action not in ("hold", "release", "delete"):
            raise QueueError(f"unknown queue action {action!r}")
        result: str = getattr(self.gateway.queue, action)(qid)
        await self._run(
            self.audit.record, actor.username, f"queue.{action}", qid, {"result": result}
        )
        return result

    async def queue_flush(self, actor: Account) -> str:
        result = self.gateway.queue.flush()
        await self._run(
            self.audit.record, actor.username, "queue.flush", "queue", {"result": result}
        )
        return result

    # -- verification cache ----------------------------------------------------------------

    async def verify_show(self, address: str) -> dict[str, Any] | None:
        key = cache_key(parse_address(address))
        entry = self.gateway.verifier.memory.get(key)
        if entry is None and self.gateway.verifier.store is not None:
            entry = await self._run(self.gateway.verifier.store.get, key)
        return entry_json(entry) if entry else None

    async def verify_list(self, status: str | None = None, contains: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        store = self.gateway.verifier.store
        if store is None:
            return []
        return [entry_json(e) for e in await self._run(store.list, status, contains, limit)]

    async def verify_test(self, address: str, actor: Account) -> dict[str, Any]:
        entry = await self.gateway.verifier.verify_now(address)
        await self._run(
            self.audit.record, actor.username, "verify.test", address, {"status": entry.status}
        )
        return entry_json(entry)

    async def verify_flush(self, address: str | None, status: str | None, actor: Account) -> int:
        count = await self._run(self.gateway.verifier.forget, address, status)
        target = address or status or "all"
        await self._run(
            self.audit.record, actor.username, "verify.flush", target, {"removed": count}
        )
        return count

    # -- diagnostics -----------------------------------------------------------------------

    async def trace(
        self,
        *,
        client: str,
        sender: str,
        recipients: list[str],
        helo: str = "",
        size: int | None = None,
        smtputf8: bool = False,
        probe: bool = False,
        actor: Account | None = None,
    ) -> Trace:
        """What the gateway would do with a message (`mailgate trace`): recipient verification
        from the cache (memory, then the store), or by probing now with `probe` (audited as
        verify.test). Raises TraceError for an unusable client or no recipient."""
        config = self.config
        verifier = self.gateway.verifier

        async def verify(mailbox: Mailbox) -> Lookup:
            address = mailbox.address
            if probe:
                entry = await verifier.verify_now(address)
                who = actor.username if actor is not None else "-"
                await self._run(
                    self.audit.record, who, "verify.test", address, {"status": entry.status}
                )
                return Lookup(entry.status, entry.reply, "probe")
            key = cache_key(mailbox)
            cached = verifier.memory.get(key)
            if cached is None and verifier.store is not None:
                cached = await self._run(verifier.store.get, key)
            return cached_lookup(cached, config.advanced.verification, time.time())

        lookups = LiveLookups(config, self.gateway.resolver, verify)
        return await run_trace(config, lookups, client=client, sender=sender,
                               recipients=recipients, helo=helo, size=size,
                               smtputf8=smtputf8)  # fmt: skip

    async def integration_check(self, timeout: float) -> list[Finding]:  # noqa: ASYNC109 - per step
        """The integration check (`mailgate check`) against the live network, each network
        step bounded by `timeout` seconds."""
        return await run_checks(self.config, resolver=self.gateway.resolver, timeout=timeout)

    # -- message log -----------------------------------------------------------------------

    async def log_search(self, query: Search) -> list[dict[str, Any]]:
        return await self._run(self.gateway.tracking.search, query)

    async def log_show(self, qid: str) -> dict[str, Any] | None:
        return await self._run(self.gateway.tracking.show, qid)

    # -- quarantine ------------------------------------------------------------------------

    async def quarantine_search(
        self,
        text: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return await self._run(self.gateway.quarantine.search, text, sender, recipient, None, limit)

    async def quarantine_get(self, kept_id: str) -> tuple[dict[str, Any], bytes]:
        kept = await self._run(self.gateway.quarantine.get, kept_id)
        return kept.meta, kept.content

    async def quarantine_release(self, kept_id: str, actor: Account) -> str:
        result = await self.gateway.release_from_quarantine(kept_id)
        await self._run(
            self.audit.record, actor.username, "quarantine.release", kept_id, {"result": result}
        )
        return result

    async def quarantine_delete(self, kept_id: str, actor: Account) -> None:
        await self._run(self.gateway.quarantine.delete, kept_id)
        await self._run(self.audit.record, actor.username, "quarantine.delete", kept_id, {})

    # -- counters and the dashboard --------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return self.gateway.counters.snapshot()

    async def dashboard(self, hours: int = 24, bucket_minutes: int = 60) -> dict[str, Any]:
        """Series for the dashboard's charts, from the message log and the counters."""
        return await self._run(self._dashboard, hours, bucket_minutes)

    def _dashboard(self, hours: int, bucket_minutes: int) -> dict[str, Any]:
        now = time.time()
        size = bucket_minutes * 60
        start = now - hours * 3600
        first = int(start // size)
        buckets = list(range(first, int(now // size) + 1))
        c = message_log.c
        bucket = func.floor(c.received / size).label("bucket")
        with self.gateway.engine.connect() as conn:
            rows = conn.execute(
                select(bucket, c.action, func.count()).where(c.received >= start)
                .group_by(bucket, c.action)
            ).all()  # fmt: skip
            verdict_rows = conn.execute(
                select(c.verdicts, func.count()).where(c.received >= start).group_by(c.verdicts)
            ).all()  # fmt: skip
            d = message_deliveries.c
            dbucket = func.floor(d.time / size).label("bucket")
            delivered = conn.execute(
                select(dbucket, func.sum(case((d.status == "sent", 1), else_=0)))
                .where(d.time >= start).group_by(dbucket)
            ).all()  # fmt: skip
        received: dict[int, int] = {}
        actions: dict[str, int] = {}
        for b, action, count in rows:
            received[int(b)] = received.get(int(b), 0) + int(count)
            actions[str(action)] = actions.get(str(action), 0) + int(count)
        sent = {int(b): int(n or 0) for b, n in delivered}
        verdicts: dict[str, int] = {}
        for text, count in verdict_rows:
            for module, verdict in (json.loads(text) or {}).items():
                key = f"{module}: {str(verdict).split(' ', 1)[0]}"
                verdicts[key] = verdicts.get(key, 0) + int(count)
        counters = self.gateway.counters.snapshot()
        return {
            "bucket_minutes": bucket_minutes,
            "times": [b * size for b in buckets],
            "received": [received.get(b, 0) for b in buckets],
            "delivered": [sent.get(b, 0) for b in buckets],
            "actions": dict(sorted(actions.items())),
            "verdicts": dict(sorted(verdicts.items())),
            "queue_size": len(self.gateway.scheduler.entries),
            "verification": {
                k.removeprefix("verify."): v for k, v in counters.items() if k.startswith("verify.")
            },
        }
