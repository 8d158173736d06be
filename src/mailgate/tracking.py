"""The message log (tracking): one record per received message (client and real client, HELO,
sender, recipients, subject, size, rules, every module's verdict, action, the reply given) and
one per delivery outcome of each recipient; searchable by these fields.

Records go into the store (shared by the nodes of a cluster) through a queue that one thread
drains in batches, one transaction each: the event loop pays a queue put per record. A crash
can lose the last fraction of a second of records, never mail.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, or_, select

from mailgate.store.schema import message_deliveries, message_log

log = logging.getLogger("mailgate.tracking")

FLUSH_INTERVAL = 0.25
BATCH = 500


@dataclass(slots=True)
class Search:
    qid: str | None = None
    sender: str | None = None  # substring, case-insensitive
    recipient: str | None = None  # substring
    subject: str | None = None  # substring
    client: str | None = None  # client or real client address
    action: str | None = None
    verdict: str | None = None  # substring of the verdicts, e.g. "infected"
    since: float | None = None
    until: float | None = None
    limit: int = 100


class MessageLog:
    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node
        self._queue: SimpleQueue[tuple[str, dict[str, Any]] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._flushed = threading.Event()
        self._wake = threading.Event()

    # -- writing ---------------------------------------------------------------------------

    def record(self, **row: Any) -> None:
        """A received message (see the message_log table for the fields)."""
        row["node"] = self.node
        for key in ("recipients", "rules", "verdicts"):
            row[key] = json.dumps(row.get(key) or ([] if key != "verdicts" else {}))
        self._put("log", row)

    def delivery(self, qid: str, recipient: str, status: str, dsn: str = "", relay: str = "",
                 detail: str = "") -> None:  # fmt: skip
        self._put("delivery", {
            "qid": qid, "time": time.time(), "recipient": recipient, "status": status,
            "dsn": dsn, "relay": relay[:255], "detail": detail[:2000],
        })  # fmt: skip

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        # The writer sleeps between batches, so a record wakes no thread (a wake-up per
        # message, and the GIL hand-offs it brings, cost more than the insert itself);
        # only a full batch calls it early.
        self._queue.put((kind, row))
        if self._queue.qsize() >= BATCH:
            self._wake.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mailgate-tracking",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _run(self) -> None:
        running = True
        while running:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            batch: list[tuple[str, dict[str, Any]]] = []
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except Empty:
                    break
                if item is None:
                    running = False
                    break
                batch.append(item)
            if batch:
                self._write(batch)
            if len(batch) >= BATCH:
                self._wake.set()  # more may be waiting
            self._flushed.set()

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        logs = [row for kind, row in batch if kind == "log"]
        deliveries = [row for kind, row in batch if kind == "delivery"]
        try:
            with self.engine.begin() as conn:
                if logs:
                    conn.execute(message_log.insert(), logs)
                if deliveries:
                    conn.execute(message_deliveries.insert(), deliveries)
        except Exception:  # the log is for administrators; mail goes on without it
            log.exception("cannot write %d message log record(s)", len(batch))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what was recorded so far is written (tests, shutdown)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        # Two writer cycles: the second began after this call, so it took every record
        # made before it.
        for _ in range(2):
            self._flushed.clear()
            self._wake.set()
            if not self._flushed.wait(max(0.0, deadline - time.monotonic())):
                return

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._wake.set()
            self._thread.join(30)
            self._thread = None

    # -- reading ---------------------------------------------------------------------------

    def search(self, query: Search) -> list[dict[str, Any]]:
        conditions: list[ColumnElement[bool]] = []
        c = message_log.c
        if query.qid:
            conditions.append(c.qid == query.qid)
        if query.sender:
            conditions.append(c.sender.ilike(f"%{_escape(query.sender)}%", escape="\\"))
        if query.recipient:
            conditions.append(c.recipients.ilike(f"%{_escape(query.recipient)}%", escape="\\"))
        if query.subject:
            conditions.append(c.subject.ilike(f"%{_escape(query.subject)}%", escape="\\"))
        if query.client:
            conditions.append(or_(c.client_ip == query.client, c.real_client_ip == query.client))
        if query.action:
            conditions.append(c.action == query.action)
        if query.verdict:
            conditions.append(c.verdicts.ilike(f"%{_escape(query.verdict)}%", escape="\\"))
        if query.since is not None:
            conditions.append(c.received >= query.since)
        if query.until is not None:
            conditions.append(c.received <= query.until)
        statement = select(message_log).order_by(c.received.desc(), c.id.desc())
        if conditions:
            statement = statement.where(and_(*conditions))
        statement = statement.limit(max(1, min(query.limit, 10_000)))
        with self.engine.connect() as conn:
            rows = [_row(dict(r)) for r in conn.execute(statement).mappings()]
            qids = [r["qid"] for r in rows]
            outcomes: dict[str, list[dict[str, Any]]] = {q: [] for q in qids}
            if qids:
                found = conn.execute(
                    select(message_deliveries)
                    .where(message_deliveries.c.qid.in_(qids))
                    .order_by(message_deliveries.c.time, message_deliveries.c.id)
                ).mappings()
                for d in found:
                    outcomes[d["qid"]].append({k: v for k, v in d.items() if k != "id"})
        for row in rows:
            row["deliveries"] = outcomes.get(row["qid"], [])
        return rows

    def show(self, qid: str) -> dict[str, Any] | None:
        found = self.search(Search(qid=qid, limit=1))
        return found[0] if found else None


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("id", None)
    for key in ("recipients", "rules", "verdicts"):
        try:
            row[key] = json.loads(row[key])
        except (TypeError, ValueError):
            pass
    return row
