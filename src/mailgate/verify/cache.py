"""What is known about an address, for how long, and when to ask again: the rules of Postfix's
verify(8) cache, with one change (temporary failures are kept for seconds, not hours).

- An accepted address (ok) is good for `positive_expire_time` and probed again in the
  background once older than `positive_refresh_time`; a refused one (bad) likewise with the
  negative times; a temporary failure (temp) for `temporary_expire_time` only.
- verify.c: "don't allow a failed probe to clobber an OK address before it expires": a bad or
  temporary result leaves a still-valid ok entry as it is (only the probe time moves), so a
  known-good address stays accepted while the next hop is briefly down.

The cache lives in the store (shared by the nodes of a cluster) with an in-memory layer in
front, so a warm RCPT costs a dictionary lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from sqlalchemy import Engine, delete, func, select, update

from mailgate.config.model import RecipientVerification
from mailgate.store.schema import verify_cache

Status = Literal["ok", "bad", "temp"]
# A stale entry is refreshed at most this often, whatever the outcome of the last refresh.
REFRESH_RETRY = 60.0


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    status: Status
    reply: str
    updated: float
    probed: float


class Freshness(Enum):
    FRESH = "fresh"
    STALE = "stale"  # still usable; probe again in the background
    EXPIRED = "expired"


def freshness(entry: Entry, now: float, settings: RecipientVerification) -> Freshness:
    if entry.status == "ok":
        expire, refresh = settings.positive_expire_time, settings.positive_refresh_time
    elif entry.status == "bad":
        expire, refresh = settings.negative_expire_time, settings.negative_refresh_time
    else:
        expire = refresh = settings.temporary_expire_time
    age = now - entry.updated
    if age >= expire:
        return Freshness.EXPIRED
    if age >= refresh and now - entry.probed >= min(REFRESH_RETRY, refresh):
        return Freshness.STALE
    return Freshness.FRESH


def merge(
    existing: Entry | None,
    address: str,
    status: Status,
    reply: str,
    now: float,
    settings: RecipientVerification,
) -> Entry:
    """The entry after a probe result."""
    if (
        existing is not None
        and existing.status == "ok"
        and status != "ok"
        and now - existing.updated < settings.positive_expire_time
    ):
        return replace(existing, probed=now)
    return Entry(address, status, reply, now, now)


class MemoryCache:
    """A bounded LRU of entries in front of the store."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def get(self, address: str) -> Entry | None:
        entry = self._entries.get(address)
        if entry is not None:
            self._entries.move_to_end(address)
        return entry

    def put(self, entry: Entry) -> None:
        self._entries[entry.address] = entry
        self._entries.move_to_end(entry.address)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def discard(self, address: str) -> None:
        self._entries.pop(address, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class VerifyStore:
    """The shared cache table (blocking calls: run them in a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, address: str) -> Entry | None:
        query = select(verify_cache).where(verify_cache.c.address == address)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _entry(row) if row else None

    def put(self, entry: Entry) -> None:
        values = {
            "status": entry.status,
            "reply": entry.reply[:2000],
            "updated": entry.updated,
            "probed": entry.probed,
        }
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(verify_cache).where(verify_cache.c.address == entry.address).values(values)
            ).rowcount
            if not changed:
                conn.execute(verify_cache.insert().values(address=entry.address, **values))

    def delete(self, address: str | None = None, status: str | None = None) -> int:
        statement = delete(verify_cache)
        if address is not None:
            statement = statement.where(verify_cache.c.address == address)
        if status is not None:
            statement = statement.where(verify_cache.c.status == status)
        with self.engine.begin() as conn:
            return int(conn.execute(statement).rowcount or 0)

    def list(self, status: str | None = None, contains: str | None = None,
             limit: int = 100) -> list[Entry]:  # fmt: skip
        query = select(verify_cache).order_by(verify_cache.c.updated.desc()).limit(limit)
        if status is not None:
            query = query.where(verify_cache.c.status == status)
        if contains:
            query = query.where(verify_cache.c.address.contains(contains.lower()))
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query).mappings()]

    def count(self) -> dict[str, int]:
        query = select(verify_cache.c.status, func.count()).group_by(verify_cache.c.status)
        with self.engine.connect() as conn:
            return {str(status): int(n) for status, n in conn.execute(query)}


def _entry(row: object) -> Entry:
    data = dict(row)  # type: ignore[call-overload]
    status = str(data["status"])
    return Entry(
        address=str(data["address"]),
        status=status if status in ("ok", "bad", "temp") else "temp",  # type: ignore[arg-type]
        reply=str(data["reply"]),
        updated=float(data["updated"]),
        probed=float(data["probed"]),
    )
