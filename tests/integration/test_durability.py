"""Durability: a message is on disk before its 250; a full disk gives 452 4.3.1 and never a 250
for a message that was not stored; kill -9 at any instant loses no acknowledged message."""

from __future__ import annotations

import hashlib
import random
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailgate.testing.gateway import GatewayProcess
from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import (
    EXTERNAL_CLIENT_IP,
    GATEWAY_IP,
    INTERNAL_IP,
    Gateway,
    free_port,
    gateway_config,
    wait_until,
)


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """The gateway's spool on a 4 MB file system of its own."""
    spool = tmp_path / "gw" / "spool"
    spool.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(spool)], check=True
    )
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=True)


def start_message(gw: Gateway, size: int) -> RawSmtp:
    c = RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP)
    c.reply()
    c.command("EHLO client.example")
    assert c.command("MAIL FROM:<alice@ext.org>").code == 250
    assert c.command("RCPT TO:<bob@example.com>").code == 250
    assert c.command("DATA").code == 354
    c.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * (size // 1000))
    return c


def start_short_of_space(
    start_gateway: Callable[..., Gateway], spool: Path
) -> tuple[Gateway, int, Path]:
    """A gateway (size limit 1 MB, retries far off) whose spool has 1.7 MB left: room for one
    900 KB message, and 1.5 x the size limit at MAIL. Its next hop's port, and the filler."""
    port = free_port(INTERNAL_IP)
    gw = start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": port}}],
        "main": {"message_size_limit": 1_000_000},
        "advanced": {"queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300}},
    })  # fmt: skip
    filler = spool / "filler"
    filler.write_bytes(b"\0" * (gw.gateway.spool.free_bytes() - 1_700_000))  # type: ignore[union-attr]
    return gw, port, filler


def test_full_disk_gives_452_and_never_a_false_250(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], small_spool: Path
) -> None:
    gw, port, filler = start_short_of_space(start_gateway, small_spool)
    # Two sessions pass the MAIL check (1.5 x the size limit is still free); one message fits.
    # The second ends its data once the first is stored: two commits writing at the same time
    # may both run out of space (each client then hears 452, which is also right).
    first, second = start_message(gw, 900_000), start_message(gw, 900_000)
    first.send(b".\r\n")
    replies = [str(first.reply())]
    second.send(b".\r\n")
    replies.append(str(second.reply()))
    first.close()
    second.close()
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    assert replies[1] == "452 4.3.1 Insufficient system storage"
    stored = replies[0].rsplit(" ", 1)[1]
    assert [i["qid"] for i in gw.queue()] == [stored]
    assert list((small_spool / "incoming").iterdir()) == []

    # New transactions are refused at MAIL while space is short.
    def refused_at_mail() -> bool:
        with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
            c.reply()
            c.command("EHLO client.example")
            return (
                str(c.command("MAIL FROM:<alice@ext.org>"))
                == "452 4.3.1 Insufficient system storage"
            )

    wait_until(refused_at_mail, what="452 at MAIL")
    # Space comes back: the stored message is delivered intact.
    filler.unlink()
    sink = start_sink(INTERNAL_IP, port)
    gw.flush()
    (message,) = sink.wait_for(1)
    assert message.data.endswith((b"z" * 998 + b"\r\n") * 900)


def test_commits_that_run_out_of_space_together_give_452_and_leave_nothing_behind(
    start_gateway: Callable[..., Gateway], small_spool: Path
) -> None:
    gw, _, _ = start_short_of_space(start_gateway, small_spool)
    sessions = [start_message(gw, 900_000) for _ in range(2)]
    for session in sessions:  # both ends of data at once: the commits may overlap
        session.send(b".\r\n")
    replies = [str(session.reply()) for session in sessions]
    for session in sessions:
        session.close()
    queued = [reply.rsplit(" ", 1)[1] for reply in replies if reply.startswith("250 ")]
    assert all(
        reply.startswith("250 2.0.0 Ok: queued as ")
        or reply == "452 4.3.1 Insufficient system storage"
        for reply in replies
    ), replies
    assert len(queued) <= 1  # both cannot fit
    assert sorted(i["qid"] for i in gw.queue()) == sorted(queued)  # no false 250
    assert list((small_spool / "incoming").iterdir()) == []  # no partial file left


class Load:
    """Clients sending numbered messages until stopped; records every 250."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.acked: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(clients)]
        self.errors = 0

    def run(self, client: int) -> None:
        rng = random.Random(client)
        count = 0
        while not self.stopping.is_set():
            try:
                with smtplib.SMTP(GATEWAY_IP, self.port, source_address=(EXTERNAL_CLIENT_IP, 0),
                                  timeout=10) as smtp:  # fmt: skip
                    for _ in range(rng.randint(1, 20)):
                        if self.stopping.is_set():
                            break
                        count += 1
                        message_id = f"<c{client}.m{count}@load.test>"
                        body = rng.randbytes(rng.randint(100, 60_000)).hex()
                        digest = hashlib.sha256(body.encode()).hexdigest()
                        lines = "\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
                        content = (f"Message-ID: {message_id}\r\nX-Digest: {digest}\r\n"
                                   f"Subject: load\r\n\r\n{lines}\r\n")  # fmt: skip
                        smtp.sendmail("load@ext.org", ["bob@example.com"], content.encode())
                        with self.lock:  # sendmail returned: the 250 arrived
                            self.acked[message_id] = digest
            except (OSError, smtplib.SMTPException):
                self.errors += 1
                time.sleep(0.05)  # the gateway is down; try again shortly

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def test_kill_minus_9_under_load_loses_no_acknowledged_message(
    tmp_path: Path, start_sink: Callable[..., Sink]
) -> None:
    sink = start_sink(INTERNAL_IP)
    port = free_port(GATEWAY_IP)
    config = gateway_config(port, {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}],
        "advanced": {"limits": {"client_connection_count_limit": 0}},
    })  # fmt: skip
    gw = GatewayProcess(tmp_path / "gw", config).start()
    rng = random.Random(2026)
    kills = 0
    try:
        with Load(port, clients=12) as load:
            for round_number in range(1, 6):
                target = 50 * round_number
                wait_until(lambda: len(load.acked) >= target, 60, "load")  # noqa: B023
                time.sleep(rng.uniform(0.05, 0.6))  # a random instant under load
                gw.kill()
                kills += 1
                gw.start()
        gw.control("queue.flush")
        expected = dict(load.acked)
        assert len(expected) > 250
        assert load.errors >= kills  # the kills did cut sessions off mid-way

        def arrived() -> bool:
            ids = {m.header("Message-ID") for m in sink.messages}
            return set(expected) <= ids

        wait_until(arrived, 120, "every acknowledged message at the sink")
    finally:
        gw.stop()
    for message in sink.messages:
        message_id = message.header("Message-ID")
        if message_id not in expected:
            continue  # sent but never acknowledged: it may or may not arrive
        body = message.data.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"").decode()
        assert hashlib.sha256(body.encode()).hexdigest() == expected[message_id], message_id
    assert kills == 5
