"""The message log and the quarantine index on both backends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailgate.quarantine import Quarantine, QuarantineError
from mailgate.tracking import MessageLog, Search
from mailgate.types import ClientInfo, Envelope, Recipient


def record(
    log: MessageLog, qid: str, sender: str, subject: str, when: float, **extra: object
) -> None:
    row: dict[str, object] = {
        "qid": qid, "received": when, "client_ip": "127.0.0.10", "real_client_ip": "192.0.2.5",
        "real_client_source": "xforward", "helo": "border.test", "sender": sender,
        "recipients": ["bob@example.com", "carol@example.com"], "subject": subject, "size": 123,
        "rules": ["Default"], "verdicts": {"antivirus": "clean"}, "action": "queued",
        "reply": "250 2.0.0 Ok: queued as " + qid,
    }  # fmt: skip
    row.update(extra)
    log.record(**row)


def test_message_log_records_searches_and_joins_deliveries(migrated: Engine) -> None:
    log = MessageLog(migrated, "node1")
    record(log, "QIDB000000000A", "alice@ext.org", "Quarterly report", 1000.0)
    record(log, "QIDB000000000B", "mallory@evil.example", "You won 100%!", 2000.0,
           action="rejected", verdicts={"antivirus": "infected (Eicar)"})  # fmt: skip
    log.delivery(
        "QIDB000000000A", "bob@example.com", "sent", "2.0.0", "internal[10.0.0.3]:25", "250 ok"
    )
    log.delivery("QIDB000000000A", "carol@example.com", "deferred", "4.4.1", "", "connect: refused")
    log.close()
    everything = log.search(Search())
    assert [r["qid"] for r in everything] == ["QIDB000000000B", "QIDB000000000A"]  # newest first
    first = log.show("QIDB000000000A")
    assert first is not None
    assert first["recipients"] == ["bob@example.com", "carol@example.com"]
    assert first["verdicts"] == {"antivirus": "clean"}
    assert [(d["recipient"], d["status"]) for d in first["deliveries"]] == [
        ("bob@example.com", "sent"),
        ("carol@example.com", "deferred"),
    ]
    assert first["real_client_ip"] == "192.0.2.5"
    by = lambda **kw: [r["qid"] for r in log.search(Search(**kw))]  # noqa: E731
    assert by(sender="MALLORY") == ["QIDB000000000B"]
    assert by(recipient="carol@") == ["QIDB000000000B", "QIDB000000000A"]
    assert by(subject="100%") == ["QIDB000000000B"]  # % is literal, not a wildcard
    assert by(subject="_") == []
    assert by(verdict="infected") == ["QIDB000000000B"]
    assert by(action="rejected") == ["QIDB000000000B"]
    assert by(client="192.0.2.5") == ["QIDB000000000B", "QIDB000000000A"]
    assert by(since=1500.0) == ["QIDB000000000B"]
    assert by(until=1500.0) == ["QIDB000000000A"]
    assert by(limit=1) == ["QIDB000000000B"]


def envelope(qid: str) -> Envelope:
    return Envelope(qid, "alice@ext.org", [Recipient("bob@example.com", "example.com")],
                    ClientInfo("192.0.2.1"), 1000.0, prepend="Received: from x\r\n")  # fmt: skip


def test_quarantine_keeps_indexes_releases_and_deletes(migrated: Engine, tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "quarantine", migrated, "node1")
    kept = q.put(envelope("QIDB000000000C"), b"Subject: bad\r\n\r\nvirus\r\n", subject="bad",
                 rule="Default", verdicts={"antivirus": "infected (Eicar)"}, reason="antivirus: infected")  # fmt: skip
    (row,) = q.search()
    assert (row["id"], row["qid"], row["subject"], row["recipients"]) == (
        kept,
        "QIDB000000000C",
        "bad",
        ["bob@example.com"],
    )
    assert q.search(text="INFECTED")[0]["id"] == kept
    assert q.search(sender="nobody") == []
    got = q.get(kept)
    assert got.content == b"Received: from x\r\nSubject: bad\r\n\r\nvirus\r\n"
    assert got.envelope.qid == "QIDB000000000C"
    other_node = Quarantine(tmp_path / "other", migrated, "node2")
    with pytest.raises(QuarantineError, match="kept on node node1"):
        other_node.get(kept)
    q.delete(kept)
    assert q.search() == []
    assert not (tmp_path / "quarantine" / kept).exists()
    with pytest.raises(QuarantineError, match="no such message"):
        q.delete(kept)


def test_quarantine_retention_by_age_and_size(migrated: Engine, tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "quarantine", migrated, "node1")
    ids = [q.put(envelope("QIDB000000000D"), b"x" * 600_000, subject=f"m{n}", rule="Default",
                 verdicts={}, reason="") for n in range(3)]  # fmt: skip
    now = time.time()
    assert q.cleanup(retention_days=30, max_size_mb=100, now=now) == 0
    assert q.cleanup(retention_days=30, max_size_mb=1.0, now=now) == 2  # the oldest go first
    assert [r["id"] for r in q.search()] == [ids[2]]
    assert q.cleanup(retention_days=1, max_size_mb=100, now=now + 2 * 86400) == 1
    assert q.search() == []
