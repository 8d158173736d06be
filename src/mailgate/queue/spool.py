"""The durable queue on disk: one file per message, on disk before the client hears 250.

Layout of the spool directory (one per node, like Postfix's queue_directory):

    incoming/  files being written; never acknowledged, removed at start-up
    queue/     committed messages, active or deferred
    hold/      messages put on hold by the administrator
    state/     per-message delivery progress (which recipients are done, retry time)

A message file is `MAGIC`, one line of JSON envelope, then the message content with CRLF line
ends. Commit protocol: write incoming/<id>, fdatasync it, link it to queue/<id> (link never
replaces an existing file), unlink the incoming name, fsync the queue directory. Only then is
250 sent. Directory fsyncs of concurrent commits are grouped into one.

The state file is written without fsync on purpose: losing it in a crash means recipients
already delivered may be delivered again (a duplicate), never that a message is lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from mailgate.types import Envelope

MAGIC = b"MAILGATE-QUEUE 1\n"
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: queue ids never spell words
_DIRS = ("incoming", "queue", "hold", "state")


class SpoolError(OSError):
    """The message could not be stored."""


class NoStorage(SpoolError):
    """The spool's file system is full (452 4.3.1)."""


def new_queue_id() -> str:
    """A 14-character id, sortable by arrival time (microseconds) with a random tail.

    The tail need not be unpredictable: commit() never overwrites an existing file.
    """
    value = (time.time_ns() // 1000) * 29791 + random.getrandbits(15) % 29791  # 31**3
    out = []
    for _ in range(14):
        value, digit = divmod(value, 31)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def valid_queue_id(qid: str) -> bool:
    return 8 <= len(qid) <= 32 and all(ch in _ALPHABET for ch in qid)


class _DirSyncer:
    """Group commit for fsync of one directory: callers that arrive while an fsync runs are
    all covered by the next one, so N concurrent commits cost far fewer than N fsyncs."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                target = self._requested
                self._cond.release()
                try:
                    fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, target)


@dataclass(slots=True)
class StoredMessage:
    envelope: Envelope
    content: bytes


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)
        for name in _DIRS:
            (root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._queue_syncer = _DirSyncer(root / "queue")
        self._hold_syncer = _DirSyncer(root / "hold")
        self._removals: SimpleQueue[tuple[str, bool] | None] = SimpleQueue()
        self._remover: threading.Thread | None = None

    # -- paths ---------------------------------------------------------------------------

    def _file(self, qid: str, where: str) -> str:
        """The path as a string: the commit and removal hot paths skip pathlib."""
        if not valid_queue_id(qid):
            raise ValueError(f"bad queue id {qid!r}")
        return f"{self._root}/{where}/{qid}"

    def path(self, qid: str, where: str = "queue") -> Path:
        if not valid_queue_id(qid):
            raise ValueError(f"bad queue id {qid!r}")
        return self.root / where / qid

    # -- commit --------------------------------------------------------------------------

    def commit(self, envelope: Envelope, content: bytes) -> None:
        """Store a message durably. Blocking: call it from a worker thread."""
        header = json.dumps(envelope.to_json(), separators=(",", ":")).encode()
        incoming = self._file(envelope.qid, "incoming")
        final = self._file(envelope.qid, "queue")
        linked = False
        try:
            fd = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, [MAGIC, header, b"\n", content])
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.link(incoming, final)
            linked = True
            os.unlink(incoming)
            self._queue_syncer.sync()
        except OSError as exc:
            _unlink_quietly(incoming)
            if linked:  # ours, but the client will not hear 250: do not deliver it
                _unlink_quietly(final)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoStorage(exc.errno, "insufficient storage") from exc
            raise

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    # -- reading -------------------------------------------------------------------------

    def load(self, qid: str, where: str = "queue") -> StoredMessage:
        data = self.path(qid, where).read_bytes()
        return _parse(qid, data)

    def read_envelope(self, qid: str, where: str = "queue") -> Envelope:
        with self.path(qid, where).open("rb") as fh:
            magic = fh.readline()
            if magic != MAGIC:
                raise SpoolError(errno.EINVAL, f"{qid}: not a queue file")
            return Envelope.from_json(json.loads(fh.readline()))

    def ids(self, where: str = "queue") -> list[str]:
        directory = self.root / where
        return sorted(name for name in os.listdir(directory) if valid_queue_id(name))

    def locate(self, qid: str) -> str | None:
        """Which directory holds the message ("queue" or "hold"), if any."""
        for where in ("queue", "hold"):
            if self.path(qid, where).exists():
                return where
        return None

    # -- changes -------------------------------------------------------------------------

    def remove_later(self, qid: str, *, state: bool) -> None:
        """Delete a delivered message from a background thread, in batches.

        A crash before the unlink only means the message is delivered again (a duplicate).
        """
        self._removals.put((qid, state))
        if self._remover is None:
            self._remover = threading.Thread(target=self._remove_loop, name="mailgate-unlink",
                                             daemon=True)  # fmt: skip
            self._remover.start()

    def _remove_loop(self) -> None:
        # Wakes for the first removal and takes every other one waiting: under load, one
        # wake-up (and GIL hand-off) per batch rather than per delivered message.
        while True:
            batch = [self._removals.get()]
            with contextlib.suppress(Empty):
                while True:
                    batch.append(self._removals.get_nowait())
            for item in batch:
                if item is not None:
                    qid, state = item
                    self.remove(qid, state=state, held=False)
            if None in batch:
                return

    def close(self) -> None:
        """Finish pending removals."""
        if self._remover is not None:
            self._removals.put(None)
            self._remover.join(30)
            self._remover = None

    def remove(self, qid: str, *, state: bool = True, held: bool = True) -> bool:
        """Delete a message (and its state file); the scheduler's hot path names what exists."""
        removed = False
        for where in ("queue", "hold") if held else ("queue",):
            try:
                os.unlink(self._file(qid, where))
                removed = True
            except FileNotFoundError:
                pass
        if state:
            _unlink_quietly(self._file(qid, "state"))
        return removed

    def hold(self, qid: str) -> bool:
        return self._move(qid, "queue", "hold")

    def release(self, qid: str) -> bool:
        return self._move(qid, "hold", "queue")

    def _move(self, qid: str, source: str, target: str) -> bool:
        try:
            os.link(self.path(qid, source), self.path(qid, target))
        except FileNotFoundError:
            return False
        except FileExistsError:
            pass
        # Sync the target before dropping the source name: at every instant one name exists.
        (self._hold_syncer if target == "hold" else self._queue_syncer).sync()
        os.unlink(self.path(qid, source))
        (self._queue_syncer if target == "hold" else self._hold_syncer).sync()
        return True

    def recover(self) -> list[str]:
        """Remove partial files of interrupted commits; return their ids (never acknowledged)."""
        dropped = []
        incoming = self.root / "incoming"
        for name in os.listdir(incoming):
            _unlink_quietly(incoming / name)
            dropped.append(name)
        return dropped

    # -- delivery state ------------------------------------------------------------------

    def save_state(self, qid: str, state: dict[str, Any]) -> None:
        path = self.path(qid, "state")
        tmp = path.with_name(f".{qid}.tmp")
        try:
            tmp.write_text(json.dumps(state, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:
            _unlink_quietly(tmp)
            raise

    def load_state(self, qid: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(qid, "state").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _parse(qid: str, data: bytes) -> StoredMessage:
    if not data.startswith(MAGIC):
        raise SpoolError(errno.EINVAL, f"{qid}: not a queue file")
    end = data.index(b"\n", len(MAGIC))
    envelope = Envelope.from_json(json.loads(data[len(MAGIC) : end]))
    return StoredMessage(envelope, data[end + 1 :])


def _write_all(fd: int, parts: list[bytes]) -> None:
    pending = [memoryview(p) for p in parts if p]
    while pending:
        written = os.writev(fd, pending)
        while written and pending:
            if written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            else:
                pending[0] = pending[0][written:]
                written = 0


def _unlink_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
