"""Queue operations for administrators: list, show, flush, hold, release, delete (Postfix
postqueue/postsuper).

With the server running, operations go through its scheduler so that a message in delivery is
never moved under it (the CLI reaches them over the control socket). With the server stopped,
they act on the spool files directly.

Listing reads one file or two per message: the server does that part in a worker thread
(`read`) and only joins the scheduler's live state on the event loop (`items`), so a long
queue never holds up SMTP sessions.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass
from typing import Any

from mailgate.queue.scheduler import Scheduler
from mailgate.queue.spool import Spool, valid_queue_id
from mailgate.types import Envelope


@dataclass(slots=True)
class QueueItem:
    qid: str
    state: str  # active | deferred | hold
    arrival: float
    size: int
    sender: str
    recipients: list[dict[str, Any]]
    attempts: int
    next_attempt: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class QueueError(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class StoredItem:
    """What the spool's files say of one message: its envelope and its delivery state."""

    qid: str
    where: str  # queue | hold
    envelope: Envelope
    state: dict[str, Any]


class QueueManager:
    def __init__(self, spool: Spool, scheduler: Scheduler | None = None) -> None:
        self.spool = spool
        self.scheduler = scheduler

    def _check(self, qid: str) -> str:
        if not valid_queue_id(qid):
            raise QueueError(f"{qid!r} is not a queue id")
        where = self.spool.locate(qid)
        if where is None:
            raise QueueError(f"{qid}: no such message in the queue")
        return where

    def list(self) -> list[QueueItem]:
        return self.items(self.read())

    def read(self) -> builtins.list[StoredItem]:
        """Every message in the queue and on hold, as its files say. Blocking, and safe in a
        worker thread: it touches only the spool."""
        stored = []
        for where in ("queue", "hold"):
            for qid in self.spool.ids(where):
                try:
                    stored.append(self._read(qid, where))
                except (OSError, ValueError):
                    continue  # delivered or moved while listing
        return stored

    def items(self, stored: builtins.list[StoredItem]) -> builtins.list[QueueItem]:
        """The listing, oldest first, with the scheduler's live state (on the event loop)."""
        return sorted((self._item(item) for item in stored), key=lambda item: item.arrival)

    def _read(self, qid: str, where: str) -> StoredItem:
        envelope = self.spool.read_envelope(qid, where)
        return StoredItem(qid, where, envelope, self.spool.load_state(qid) or {})

    def _item(self, stored: StoredItem) -> QueueItem:
        qid, where, envelope, state_data = stored.qid, stored.where, stored.envelope, stored.state
        live = self.scheduler.describe(qid) if self.scheduler and where == "queue" else None
        status = (live or state_data).get("status") or "P" * len(envelope.recipients)
        reasons: dict[str, Any] = {}
        if live:
            reasons = live["reasons"]
        else:
            reasons = {k: v[1] for k, v in dict(state_data.get("last", {})).items()}
        names = {"P": "pending", "S": "sent", "B": "bounced"}
        recipients = [
            {
                "address": r.address,
                "status": names.get(status[i], "pending") if i < len(status) else "pending",
                "reason": reasons.get(str(i)),
            }
            for i, r in enumerate(envelope.recipients)
        ]
        if where == "hold":
            state = "hold"
        elif live:
            state = live["state"]
        else:
            state = "deferred" if state_data.get("attempts") else "active"
        attempts = int((live or state_data).get("attempts", 0) or 0)
        next_attempt = (live or state_data).get("next_attempt", state_data.get("next"))
        return QueueItem(
            qid=qid,
            state=state,
            arrival=envelope.arrival,
            size=envelope.size,
            sender=envelope.sender,
            recipients=recipients,
            attempts=attempts,
            next_attempt=float(next_attempt) if next_attempt else None,
        )

    def show(self, qid: str) -> tuple[QueueItem, bytes]:
        where = self._check(qid)
        stored = self.spool.load(qid, where)
        item = self._item(StoredItem(qid, where, stored.envelope, self.spool.load_state(qid) or {}))
        return item, stored.envelope.prepend.encode() + stored.content

    def hold(self, qid: str) -> str:
        where = self._check(qid)
        if where == "hold":
            return f"{qid}: already on hold"
        if self.scheduler is not None and self.scheduler.request_hold(qid):
            return f"{qid}: being delivered; placed on hold unless delivered now"
        self.spool.hold(qid)
        return f"{qid}: placed on hold"

    def release(self, qid: str) -> str:
        where = self._check(qid)
        if where != "hold":
            return f"{qid}: not on hold"
        self.spool.release(qid)
        if self.scheduler is not None:
            stored = self.spool.load(qid)
            self.scheduler.submit(stored.envelope, stored.content)
        return f"{qid}: released from hold"

    def delete(self, qid: str) -> str:
        self._check(qid)
        if self.scheduler is not None and self.scheduler.request_delete(qid):
            return f"{qid}: being delivered; deleted when this attempt ends"
        self.spool.remove(qid)
        return f"{qid}: deleted"

    def flush(self) -> str:
        if self.scheduler is not None:
            return f"{self.scheduler.flush()} deferred message(s) scheduled for delivery now"
        count = 0
        for qid in self.spool.ids("queue"):
            state = self.spool.load_state(qid)
            if state and state.get("next"):
                state["next"] = 0
                self.spool.save_state(qid, state)
                count += 1
        return f"{count} deferred message(s) will be retried as soon as mailgate starts"
