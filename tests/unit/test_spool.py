"""The durable queue on disk (mailgate.queue.spool): commit protocol, queue ids, hold/release,
recovery, delivery state, group commit of directory fsyncs, and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest

from mailgate.queue.spool import (
    MAGIC,
    NoStorage,
    Recovered,
    Spool,
    _DirSyncer,
    filesystem_type,
    new_queue_id,
    valid_queue_id,
)
from mailgate.types import ClientInfo, Envelope, Recipient

ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
CONTENT = b"Subject: test\r\nFrom: a@example.org\r\n\r\nbody \xc3\xa9\r\n.line\r\n"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def make_envelope(qid: str | None = None, **changes: object) -> Envelope:
    env = Envelope(
        qid=qid or new_queue_id(),
        sender="alice@example.org",
        recipients=[
            Recipient(
                "bob@example.com",
                "example.com",
                orcpt="rfc822;Bob@example.com",
                notify=("FAILURE",),
            ),
            Recipient("carol@exämple.com", "xn--exmple-cua.com"),
        ],
        client=ClientInfo(ip="2001:db8::1", port=40000, helo="client.example.org", tls=True),
        arrival=1_700_000_000.25,
        size=len(CONTENT),
        body="8BITMIME",
        smtputf8=True,
        ret="HDRS",
        envid="ENV-1",
        prepend="Received: from client.example.org\r\n",
        extra={"verdict": "clean"},
    )
    for key, value in changes.items():
        setattr(env, key, value)
    return env


def files(spool: Spool, where: str) -> list[str]:
    return sorted(os.listdir(spool.root / where))


# -- layout and commit -------------------------------------------------------------------------


def test_layout(spool: Spool) -> None:
    for name in ("incoming", "queue", "hold", "state"):
        assert (spool.root / name).is_dir()
        assert (spool.root / name).stat().st_mode & 0o777 == 0o700


def test_commit_then_load_round_trip(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    stored = spool.load(env.qid)
    assert stored.envelope == env
    assert stored.content == CONTENT
    assert spool.read_envelope(env.qid) == env
    assert files(spool, "incoming") == []
    assert files(spool, "queue") == [env.qid]


def test_queue_file_format(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    data = (spool.root / "queue" / env.qid).read_bytes()
    assert data.startswith(MAGIC)
    header, _, content = data[len(MAGIC) :].partition(b"\n")
    assert content == CONTENT
    fields = json.loads(header)
    assert fields == {
        "qid": env.qid,
        "sender": "alice@example.org",
        "recipients": [
            {
                "address": "bob@example.com",
                "domain": "example.com",
                "orcpt": "rfc822;Bob@example.com",
                "notify": ["FAILURE"],
            },
            {"address": "carol@exämple.com", "domain": "xn--exmple-cua.com"},
        ],
        "client": {
            "ip": "2001:db8::1",
            "port": 40000,
            "helo": "client.example.org",
            "name": "unknown",
            "proto": "SMTP",
            "tls": True,
        },
        "arrival": 1_700_000_000.25,
        "size": len(CONTENT),
        "prepend": "Received: from client.example.org\r\n",
        "body": "8BITMIME",
        "ret": "HDRS",
        "envid": "ENV-1",
        "smtputf8": True,
        "extra": {"verdict": "clean"},
    }
    # Private to mailgate; the owner's execute bit marks a complete file (as in Postfix).
    assert (spool.root / "queue" / env.qid).stat().st_mode & 0o777 == 0o700


def test_null_sender_and_empty_content(spool: Spool) -> None:
    env = make_envelope(sender="", ret=None, envid=None, extra={})
    spool.commit(env, b"")
    stored = spool.load(env.qid)
    assert stored.envelope == env
    assert stored.envelope.is_bounce
    assert stored.content == b""


def test_commit_refuses_an_existing_id(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    other = make_envelope(env.qid, sender="mallory@example.net")
    with pytest.raises(FileExistsError):
        spool.commit(other, b"Subject: other\r\n\r\n")
    stored = spool.load(env.qid)
    assert stored.envelope.sender == "alice@example.org"
    assert stored.content == CONTENT
    assert files(spool, "incoming") == []


def test_bad_queue_id_refused(spool: Spool) -> None:
    for qid in ("../etc/passwd", "short", "lowercase0000000", "AEIOU000000000", ""):
        assert not valid_queue_id(qid)
        with pytest.raises(ValueError, match="bad queue id"):
            spool.path(qid)


def test_ids_sorted(spool: Spool) -> None:
    qids = ["0000000000ZZZZ", "0000000000BBBB", "00000000009999", "0000000001BBBB"]
    for qid in qids:
        spool.commit(make_envelope(qid), CONTENT)
    (spool.root / "queue" / ".hidden").write_bytes(b"x")  # not a queue id: ignored
    assert spool.ids() == sorted(qids)
    assert spool.ids("hold") == []


# -- queue ids -------------------------------------------------------------------------------


def test_queue_id_format() -> None:
    for _ in range(100):
        qid = new_queue_id()
        assert len(qid) == 14
        assert set(qid) <= set(ALPHABET)
        assert valid_queue_id(qid)
    assert not set("AEIOUaeiou") & set(ALPHABET)


def test_queue_ids_increase_over_time() -> None:
    qids = []
    for _ in range(20):
        qids.append(new_queue_id())
        time.sleep(0.002)
    assert qids == sorted(qids)
    assert len(set(qids)) == len(qids)


def test_queue_ids_unique() -> None:
    qids = [new_queue_id() for _ in range(10_000)]
    assert len(set(qids)) == 10_000


# -- hold, release, remove, locate -------------------------------------------------------------


def test_hold_and_release(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    assert spool.locate(env.qid) == "queue"
    assert spool.hold(env.qid) is True
    assert spool.locate(env.qid) == "hold"
    assert files(spool, "queue") == []
    assert files(spool, "hold") == [env.qid]
    assert spool.ids("hold") == [env.qid]
    assert spool.load(env.qid, "hold").content == CONTENT
    assert spool.hold(env.qid) is False  # already held
    assert spool.release(env.qid) is True
    assert spool.locate(env.qid) == "queue"
    assert files(spool, "hold") == []
    assert spool.load(env.qid).envelope == env
    assert spool.release(env.qid) is False  # not held


def test_hold_unknown_message(spool: Spool) -> None:
    qid = new_queue_id()
    assert spool.hold(qid) is False
    assert spool.release(qid) is False
    assert spool.locate(qid) is None


def test_remove(spool: Spool) -> None:
    queued = make_envelope()
    held = make_envelope()
    spool.commit(queued, CONTENT)
    spool.commit(held, CONTENT)
    spool.hold(held.qid)
    spool.save_state(queued.qid, {"done": ["bob@example.com"]})
    assert spool.remove(queued.qid) is True
    assert spool.remove(held.qid) is True
    assert spool.locate(queued.qid) is None
    assert spool.locate(held.qid) is None
    assert spool.load_state(queued.qid) is None
    assert files(spool, "state") == []
    assert spool.remove(queued.qid) is False


def test_delivered_messages_are_removed_in_the_background_in_batches(spool: Spool) -> None:
    envelopes = [make_envelope() for _ in range(5)]
    for envelope in envelopes:
        spool.commit(envelope, CONTENT)
    spool.save_state(envelopes[0].qid, {"done": []})
    for envelope in envelopes[:3]:
        spool.remove_later(envelope.qid, state=envelope is envelopes[0])
    deadline = time.monotonic() + 10
    while any(spool.locate(e.qid) for e in envelopes[:3]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [spool.locate(e.qid) for e in envelopes[:3]] == [None] * 3
    assert files(spool, "state") == []
    # close() finishes removals still waiting for their batch, then the thread ends.
    for envelope in envelopes[3:]:
        spool.remove_later(envelope.qid, state=False)
    remover = spool._remover
    assert remover is not None
    spool.close()
    assert files(spool, "queue") == []
    assert not remover.is_alive()


# -- recovery --------------------------------------------------------------------------------


def test_recover_deletes_incomplete_files_in_incoming(spool: Spool) -> None:
    committed = make_envelope()
    spool.commit(committed, CONTENT)
    partial = new_queue_id()
    (spool.root / "incoming" / partial).write_bytes(MAGIC + b'{"qid"')
    (spool.root / "incoming" / "junk").write_bytes(b"")
    recovered = spool.recover()
    assert sorted(recovered.discarded) == sorted([partial, "junk"])
    assert (recovered.completed, recovered.conflicts) == ([], [])
    assert files(spool, "incoming") == []
    # Committed messages are untouched.
    assert spool.ids() == [committed.qid]
    assert spool.load(committed.qid).content == CONTENT
    assert spool.recover() == Recovered()


def commit_interrupted(spool: Spool, env: Envelope, *, before: str) -> None:
    """A commit that stops (as a crash would) just before the os call `before`."""

    class Crash(BaseException):
        pass

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Crash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, before, crash)
        patch.setattr(os, "unlink", crash)  # the crash leaves every file where it is
        with pytest.raises(Crash):
            spool.commit(env, CONTENT)


def test_recover_queues_a_complete_file_left_in_incoming(spool: Spool) -> None:
    # Stopped after the fsync: the client may have been about to hear 250. Delivered (at worst
    # a duplicate), never lost.
    env = make_envelope()
    commit_interrupted(spool, env, before="link")
    assert files(spool, "incoming") == [env.qid]
    assert files(spool, "queue") == []
    assert Spool(spool.root).recover() == Recovered(completed=[env.qid])
    assert files(spool, "incoming") == []
    assert spool.load(env.qid).envelope == env
    assert spool.load(env.qid).content == CONTENT


def test_recover_resolves_a_file_with_both_names(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    os.link(spool.path(env.qid), spool.root / "incoming" / env.qid)  # stopped before unlink
    assert spool.recover() == Recovered(completed=[env.qid])
    assert files(spool, "incoming") == []
    assert spool.ids() == [env.qid]


@pytest.mark.parametrize("before", ["writev", "fchmod"])
def test_recover_discards_a_commit_stopped_before_it_was_marked_complete(
    spool: Spool, before: str
) -> None:
    env = make_envelope()
    commit_interrupted(spool, env, before=before)
    assert Spool(spool.root).recover() == Recovered(discarded=[env.qid])
    assert files(spool, "incoming") == []
    assert spool.ids() == []


def test_recover_keeps_a_complete_file_whose_id_is_taken(spool: Spool) -> None:
    queued = make_envelope()
    spool.commit(queued, CONTENT)
    (spool.root / "incoming" / queued.qid).write_bytes(MAGIC + b"another message")
    os.chmod(spool.root / "incoming" / queued.qid, 0o700)
    assert spool.recover() == Recovered(conflicts=[queued.qid])
    assert files(spool, "incoming") == [queued.qid]
    assert spool.load(queued.qid).content == CONTENT


def test_a_second_spool_on_the_same_directory_sees_the_queue(spool: Spool) -> None:
    env = make_envelope()
    spool.commit(env, CONTENT)
    again = Spool(spool.root)
    assert again.recover() == Recovered()
    assert again.load(env.qid).envelope == env


# -- delivery state --------------------------------------------------------------------------


def test_state_round_trip(spool: Spool) -> None:
    qid = new_queue_id()
    assert spool.load_state(qid) is None
    state = {"done": ["bob@example.com"], "attempts": 3, "next": 1_700_000_300.5}
    spool.save_state(qid, state)
    assert spool.load_state(qid) == state
    spool.save_state(qid, {"attempts": 4})
    assert spool.load_state(qid) == {"attempts": 4}
    assert files(spool, "state") == [qid]  # no temporary file left behind


@pytest.mark.parametrize("data", [b"{", b"", b"\xff\xfe", b"[1, 2]", b"null", b'"text"'])
def test_corrupt_state_reads_as_none(spool: Spool, data: bytes) -> None:
    qid = new_queue_id()
    (spool.root / "state" / qid).write_bytes(data)
    assert spool.load_state(qid) is None


# -- group commit of directory fsyncs ----------------------------------------------------------


def test_concurrent_commits_lose_nothing(spool: Spool) -> None:
    per_thread = 25
    errors: list[BaseException] = []
    committed: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                env = make_envelope(extra={"thread": n, "i": i})
                content = f"Subject: {n}/{i}\r\n\r\n".encode() + os.urandom(64)
                spool.commit(env, content)
                with lock:
                    committed.append((env.qid, content))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(committed) == 16 * per_thread
    assert spool.ids() == sorted(qid for qid, _ in committed)
    for qid, content in committed:
        stored = spool.load(qid)
        assert stored.content == content
        assert stored.envelope.qid == qid
    assert files(spool, "incoming") == []


def test_dir_syncer_groups_concurrent_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer = _DirSyncer(tmp_path)
    first_started = threading.Event()
    release = threading.Event()
    calls: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            first_started.set()
            assert release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    first = threading.Thread(target=syncer.sync)
    first.start()
    assert first_started.wait(10)
    # While the first fsync runs, 15 more callers arrive.
    others = [threading.Thread(target=syncer.sync) for _ in range(15)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while syncer._requested < 16 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert syncer._requested == 16
    release.set()
    for thread in [first, *others]:
        thread.join(10)
        assert not thread.is_alive()
    # One fsync for the first caller, one for all 15 that arrived during it.
    assert len(calls) == 2


def test_dir_syncer_error_reaches_the_caller_and_later_calls_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer = _DirSyncer(tmp_path)
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, "I/O error")]

    def flaky_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="I/O error"):
        syncer.sync()
    syncer.sync()  # not stuck "running"


# -- full disk -------------------------------------------------------------------------------


def _enospc(*_args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("call", ["writev", "fchmod", "fsync", "link"])
def test_full_disk_raises_no_storage_and_leaves_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    env = make_envelope()
    monkeypatch.setattr(os, call, _enospc)
    with pytest.raises(NoStorage) as info:
        spool.commit(env, CONTENT)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert files(spool, "incoming") == []
    assert files(spool, "queue") == []
    assert spool.locate(env.qid) is None


def test_quota_exceeded_is_no_storage(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def edquot(*_args: object) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "fsync", edquot)
    with pytest.raises(NoStorage):
        spool.commit(make_envelope(), CONTENT)


def test_other_write_errors_are_not_no_storage(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(*_args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="I/O error") as info:
        spool.commit(make_envelope(), CONTENT)
    assert not isinstance(info.value, NoStorage)
    monkeypatch.undo()
    assert files(spool, "incoming") == []
    assert files(spool, "queue") == []


def test_full_disk_never_deletes_a_committed_message(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit that fails for lack of space must clean up only what it wrote itself: a
    # message already queued under the same id (acknowledged with 250) must survive.
    env = make_envelope()
    spool.commit(env, CONTENT)
    monkeypatch.setattr(os, "writev", _enospc)
    with pytest.raises(NoStorage):
        spool.commit(make_envelope(env.qid), b"Subject: other\r\n\r\n")
    monkeypatch.undo()
    assert spool.locate(env.qid) == "queue"
    assert spool.load(env.qid).content == CONTENT


def test_spool_usable_after_full_disk(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "writev", _enospc)
    with pytest.raises(NoStorage):
        spool.commit(make_envelope(), CONTENT)
    monkeypatch.undo()
    env = make_envelope()
    spool.commit(env, CONTENT)
    assert spool.load(env.qid).content == CONTENT


# -- directory fsync -------------------------------------------------------------------------

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 0:44 / /var/spool/mailgate rw,relatime shared:5 master:1 - nfs4 srv:/spool rw,vers=4.2
"""


def test_filesystem_type_by_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = os.stat

    def stat_on(device: int) -> object:
        def fake(path: object, *args: object, **kwargs: object) -> os.stat_result:
            values = list(real_stat(tmp_path))
            values[2] = device  # st_dev
            return os.stat_result(values)

        return fake

    monkeypatch.setattr(os, "stat", stat_on(os.makedev(254, 0)))
    assert filesystem_type(tmp_path, MOUNTINFO) == "ext4"
    monkeypatch.setattr(os, "stat", stat_on(os.makedev(0, 44)))
    assert filesystem_type(tmp_path, MOUNTINFO) == "nfs4"
    monkeypatch.setattr(os, "stat", stat_on(os.makedev(8, 1)))
    assert filesystem_type(tmp_path, MOUNTINFO) is None
    monkeypatch.undo()
    assert filesystem_type(tmp_path / "missing", MOUNTINFO) is None


def test_this_machine_s_filesystem_is_found(tmp_path: Path) -> None:
    # Whatever holds the test's directory is listed in /proc/self/mountinfo.
    assert filesystem_type(tmp_path) is not None


@pytest.mark.parametrize(
    ("filesystem", "directory_fsyncs"),
    [("ext4", 0), ("xfs", 0), ("btrfs", 0), ("nfs4", 1), (None, 1)],
)
def test_incoming_directory_is_fsynced_unless_the_file_system_covers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filesystem: str | None, directory_fsyncs: int
) -> None:
    monkeypatch.setattr("mailgate.queue.spool.filesystem_type", lambda _path: filesystem)
    spool = Spool(tmp_path / "spool")
    assert spool.directory_fsync is (directory_fsyncs == 1)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    env = make_envelope()
    spool.commit(env, CONTENT)
    # The file itself always; its directory only where the file's fsync does not cover it.
    assert len(synced) == 1 + directory_fsyncs
    assert spool.load(env.qid).content == CONTENT


def test_a_failed_unlink_after_the_link_does_not_refuse_a_queued_message(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(*_args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    env = make_envelope()
    monkeypatch.setattr(os, "unlink", eio)
    spool.commit(env, CONTENT)  # no exception: the message is queued, the client hears 250
    monkeypatch.undo()
    assert spool.load(env.qid).content == CONTENT
    assert files(spool, "incoming") == [env.qid]
    assert spool.recover() == Recovered(completed=[env.qid])
    assert files(spool, "incoming") == []
    assert spool.ids() == [env.qid]
