"""The durable queue on disk: one file per message, on disk before the client hears 250.

Layout of the spool directory (one per node, like Postfix's queue_directory):

    incoming/  files being written; at start-up, complete ones are queued, the rest removed
    queue/     committed messages, active or deferred
    hold/      messages put on hold by the administrator
    state/     per-message delivery progress (which recipients are done, retry time)

A message file is `MAGIC`, one line of JSON envelope, then the message content with CRLF line
ends. Commit protocol, as Postfix's cleanup marks a finished queue file: create incoming/<id>
(mode 0600), write it, set the owner's execute bit (mode 0700: "complete"), fsync the file (one
journal commit makes the data, the mode and the new name durable together), fsync the incoming
directory where that is needed (see below), then link it to queue/<id> (link never replaces an
existing file) and unlink the incoming name. The 250 goes out after that. The moves need no
flush of their own: after a crash, a complete file still in incoming/ is moved to queue/ at
start-up (at worst a duplicate, for a commit that ended just before its 250), and an
incomplete one, never acknowledged, is removed.

POSIX asks for an fsync of the directory too before a new file's name is durable. On ext4, XFS
and btrfs the file's fsync already covers it (the create is journaled with or before the inode),
and a directory fsync would cost one more device flush for nothing (Postfix never fsyncs its
queue directories); on any other file system the incoming directory is fsync'd as well, grouped
across concurrent commits.

The state file is written without fsync on purpose: losing it in a crash means recipients
already delivered may be delivered again (a duplicate), never that a message is lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from mailgate.types import Envelope

MAGIC = b"MAILGATE-QUEUE 1\n"
_WRITING = 0o600  # a queue file being written
_COMPLETE = 0o700  # the owner's execute bit marks a finished queue file (as in Postfix)
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: queue ids never spell words
_DIRS = ("incoming", "queue", "hold", "state")
# Seconds delivered messages wait to be unlinked together (see Spool._remove_loop). A crash
# in between delivers them again: at most this much more duplicate exposure.
REMOVAL_GATHER = 0.05


# File systems on which fsync of a newly created file also makes its name durable.
NAME_DURABLE_WITH_FILE = frozenset({"ext4", "xfs", "btrfs"})


def filesystem_type(path: Path | str, mountinfo: str | None = None) -> str | None:
    """The type of the file system that holds `path` (from /proc/self/mountinfo), if known."""
    try:
        device = os.stat(path).st_dev
        if mountinfo is None:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                mountinfo = fh.read()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mountinfo.splitlines():
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        fields = line.split()
        if len(fields) > 2 and fields[2] == wanted and " - " in line:
            after = line.split(" - ", 1)[1].split()
            return after[0] if after else None
    return None


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
class Recovered:
    """What start-up found in incoming/, by queue id."""

    completed: list[str] = field(default_factory=list)  # complete: moved to queue/
    discarded: list[str] = field(default_factory=list)  # incomplete, never acknowledged
    conflicts: list[str] = field(default_factory=list)  # complete, but the id is taken: kept


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
        self.filesystem = filesystem_type(root)
        self.directory_fsync = self.filesystem not in NAME_DURABLE_WITH_FILE
        self._incoming_syncer = _DirSyncer(root / "incoming")
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
        try:
            fd = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _WRITING)
            try:
                _write_all(fd, [MAGIC, header, b"\n", content])
                os.fchmod(fd, _COMPLETE)
                os.fsync(fd)  # not fdatasync: the mode is the mark of a complete file
            finally:
                os.close(fd)
            if self.directory_fsync:
                self._incoming_syncer.sync()
            os.link(incoming, final)
        except OSError as exc:
            _unlink_quietly(incoming)  # the client will not hear 250: never deliver it
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoStorage(exc.errno, "insufficient storage") from exc
            raise
        # Queued. If this unlink fails or a crash loses it, the file has two names, which
        # start-up resolves: an error here must not turn the 250 into a refusal (a duplicate).
        with contextlib.suppress(OSError):
            os.unlink(incoming)

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
        # Wakes for the first removal, lets more gather for REMOVAL_GATHER seconds, then takes
        # every one waiting: one wake-up (and GIL hand-off) per batch rather than per
        # delivered message. While it sleeps, a removal is only put in the queue, which wakes
        # nobody: waking a thread for each message costs more than the unlinks themselves,
        # most of all when the other CPUs are busy (the woken thread preempts the event loop).
        while True:
            batch = [self._removals.get()]
            if batch[0] is not None:
                time.sleep(REMOVAL_GATHER)
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

    def recover(self) -> Recovered:
        """Finish the commits a crash interrupted: a complete file in incoming/ goes to queue/
        (it may have been acknowledged), an incomplete one is removed (it was not)."""
        recovered = Recovered()
        for name in sorted(os.listdir(self.root / "incoming")):
            incoming = f"{self._root}/incoming/{name}"
            try:
                complete = bool(os.stat(incoming).st_mode & stat.S_IXUSR)
            except FileNotFoundError:
                continue
            if not (complete and valid_queue_id(name)):
                _unlink_quietly(incoming)
                recovered.discarded.append(name)
                continue
            final = self._file(name, "queue")
            try:
                os.link(incoming, final)
            except FileExistsError:
                if not os.path.samefile(incoming, final):  # never drop a complete message
                    recovered.conflicts.append(name)
                    continue
            self._queue_syncer.sync()
            _unlink_quietly(incoming)
            recovered.completed.append(name)
        return recovered

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
