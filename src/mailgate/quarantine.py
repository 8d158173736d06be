"""The quarantine (KSMG "Backup"): originals kept with their verdicts, searchable; release
(deliver to the original recipients), download, delete; retention by age and total size.

A quarantined message was acknowledged with 250, so it is stored like a queued message: file
written and fsync'd (directory too) before the index row, before the reply. The file stays on
the node that kept it; the index is in the store, shared by the nodes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, select

from mailgate.queue.spool import MAGIC, new_queue_id, valid_queue_id
from mailgate.store.schema import quarantine
from mailgate.types import Envelope


class QuarantineError(LookupError):
    pass


@dataclass(slots=True)
class Kept:
    envelope: Envelope
    content: bytes
    meta: dict[str, Any]


class Quarantine:
    def __init__(self, directory: Path, engine: Engine, node: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine = engine
        self.node = node

    def _path(self, qid: str) -> Path:
        if not valid_queue_id(qid):
            raise QuarantineError(f"{qid!r} is not a quarantine id")
        return self.directory / qid

    # -- keeping ---------------------------------------------------------------------------

    def put(self, envelope: Envelope, content: bytes, *, subject: str, rule: str,
            verdicts: dict[str, str], reason: str) -> str:  # fmt: skip
        """Keep a message durably and index it; return its quarantine id. Blocking."""
        qid = new_queue_id()
        path = self._path(qid)
        header = json.dumps(envelope.to_json(), separators=(",", ":")).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, MAGIC + header + b"\n" + envelope.prepend.encode() + content)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        try:
            with self.engine.begin() as conn:
                conn.execute(quarantine.insert().values(
                    id=qid, qid=envelope.qid, node=self.node, created=time.time(),
                    sender=envelope.sender,
                    recipients=json.dumps([r.address for r in envelope.recipients]),
                    subject=subject[:1000], size=len(content), rule=rule[:100],
                    verdicts=json.dumps(verdicts), reason=reason[:2000], path=str(path),
                ))  # fmt: skip
        except Exception:
            path.unlink(missing_ok=True)  # not indexed: the client will not hear 250 either
            raise
        return qid

    # -- reading ---------------------------------------------------------------------------

    def search(self, text: str | None = None, sender: str | None = None,
               recipient: str | None = None, since: float | None = None,
               limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        c = quarantine.c
        conditions: list[ColumnElement[bool]] = []
        if text:
            pattern = f"%{_escape(text)}%"
            conditions.append(
                c.subject.ilike(pattern, escape="\\") | c.sender.ilike(pattern, escape="\\")
                | c.recipients.ilike(pattern, escape="\\") | c.reason.ilike(pattern, escape="\\")
            )  # fmt: skip
        if sender:
            conditions.append(c.sender.ilike(f"%{_escape(sender)}%", escape="\\"))
        if recipient:
            conditions.append(c.recipients.ilike(f"%{_escape(recipient)}%", escape="\\"))
        if since is not None:
            conditions.append(c.created >= since)
        statement = select(quarantine).order_by(c.created.desc()).limit(max(1, min(limit, 10_000)))
        if conditions:
            statement = statement.where(and_(*conditions))
        with self.engine.connect() as conn:
            return [_meta(dict(r)) for r in conn.execute(statement).mappings()]

    def get(self, qid: str) -> Kept:
        path = self._path(qid)
        with self.engine.connect() as conn:
            row = conn.execute(select(quarantine).where(quarantine.c.id == qid)).mappings().first()
        if row is None:
            raise QuarantineError(f"{qid}: no such message in the quarantine")
        meta = _meta(dict(row))
        if meta["node"] != self.node:
            raise QuarantineError(f"{qid} is kept on node {meta['node']}; ask there")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"{qid}: the message file is missing on this node") from None
        end = data.index(b"\n", len(MAGIC))
        envelope = Envelope.from_json(json.loads(data[len(MAGIC) : end]))
        # The file holds the message as it would have been delivered (trace headers first).
        return Kept(envelope, data[end + 1 :], meta)

    def raw(self, qid: str) -> bytes:
        return self.get(qid).content

    # -- changes ---------------------------------------------------------------------------

    def delete(self, qid: str) -> None:
        path = self._path(qid)
        with self.engine.begin() as conn:
            gone = conn.execute(delete(quarantine).where(quarantine.c.id == qid)).rowcount
        if not gone:
            raise QuarantineError(f"{qid}: no such message in the quarantine")
        path.unlink(missing_ok=True)

    def cleanup(self, retention_days: float, max_size_mb: float, now: float | None = None) -> int:
        """Remove entries of this node past the retention age, then the oldest beyond the
        size limit. Returns how many were removed."""
        now = time.time() if now is None else now
        c = quarantine.c
        removed = 0
        with self.engine.connect() as conn:
            cutoff = now - retention_days * 86400
            old = conn.execute(
                select(c.id).where(and_(c.node == self.node, c.created < cutoff))
            ).scalars().all()  # fmt: skip
            total = conn.execute(select(func.coalesce(func.sum(c.size), 0))
                                 .where(c.node == self.node)).scalar() or 0  # fmt: skip
            by_age = conn.execute(select(c.id, c.size).where(c.node == self.node)
                                  .order_by(c.created)).all()  # fmt: skip
        doomed = list(old)
        limit = max_size_mb * 1024 * 1024
        remaining = total - sum(size for qid, size in by_age if qid in set(doomed))
        for qid, size in by_age:
            if remaining <= limit:
                break
            if qid not in doomed:
                doomed.append(qid)
                remaining -= size
        for qid in doomed:
            try:
                self.delete(qid)
                removed += 1
            except QuarantineError:
                continue
        return removed


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("recipients", "verdicts"):
        try:
            row[key] = json.loads(row[key])
        except (TypeError, ValueError):
            pass
    row.pop("path", None)
    return row
