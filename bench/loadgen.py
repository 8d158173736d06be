"""The benchmark's load generator (RFC 5321 client, RFC 2920 PIPELINING), a process of its own.

``python -m bench.loadgen --port P --connections C --count N --size S --tag T --out FILE``

It opens C connections from ``--source`` (127.0.0.100), says EHLO, sends a warm-up of
``--warmup`` messages, prints ``{"ready": ...}`` and waits for ``go`` on stdin. Then every
connection sends messages one after another (MAIL, RCPT and DATA in one write when the server
offers PIPELINING, then the content once 354 arrives) until N messages have been sent. Each
message carries ``Message-ID: <T.INDEX@bench.test>`` and a body of S bytes.

For every message it records the transaction latency (MAIL sent to the reply after the end of
data) and the final reply code; these, with the CPU time the generator used, go to FILE as JSON,
and ``{"done": ...}`` is printed. It is written on raw :class:`asyncio.Protocol` with uvloop, so
that one process can out-run the systems under test on a 2-core machine; the CPU share it
reports tells whether it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from bench.proc import die_with_parent, emit, new_event_loop

SENDER = "bench@bench.test"
RECIPIENT = "sink@example.net"
ID_DOMAIN = "bench.test"

_LINE = 78  # body line length before CRLF
_RECONNECTS = 5  # per connection and phase, before the connection is given up


def build_body(size: int) -> bytes:
    """``size`` bytes of plain 7-bit text in CRLF lines; no line starts with a dot."""
    lines = []
    total = 0
    number = 0
    while total < size:
        number += 1
        text = f"line {number:06d} " + "the quick brown fox jumps over the lazy dog " * 2
        line = text[:_LINE].encode("ascii") + b"\r\n"
        lines.append(line)
        total += len(line)
    body = b"".join(lines)[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return body


class Message:
    """Every message of one size: only the Message-ID differs, so the rest is built once."""

    def __init__(self, size: int) -> None:
        self._head = b"Message-ID: <"
        self._rest = (
            b"@" + ID_DOMAIN.encode() + b">\r\n"
            b"From: <" + SENDER.encode() + b">\r\n"
            b"To: <" + RECIPIENT.encode() + b">\r\n"
            b"Subject: mailgate benchmark\r\n"
            b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"\r\n" + build_body(size) + b".\r\n"
        )

    def content(self, tag: str, index: int) -> bytes:
        """The message with its end-of-data marker, ready to write after 354."""
        return b"".join((self._head, f"{tag}.{index}".encode(), self._rest))


ENVELOPE = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
_MAIL = f"MAIL FROM:<{SENDER}>\r\n".encode()
_RCPT = f"RCPT TO:<{RECIPIENT}>\r\n".encode()
_DATA = b"DATA\r\n"


class ConnectionLost(Exception):
    """The server closed the connection or a reply did not come in time."""


class SmtpClient(asyncio.Protocol):
    """One client connection: writes are the caller's, replies are parsed here and queued."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._partial: list[bytes] = []
        self._replies: deque[tuple[int, list[bytes]]] = deque()
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.transport = None
        self._wake()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        while True:
            newline = buf.find(b"\n", start)
            if newline < 0:
                break
            line = bytes(buf[start:newline])
            start = newline + 1
            self._partial.append(line)
            if line[3:4] != b"-":  # the last line of a reply
                try:
                    code = int(line[:3])
                except ValueError:
                    code = 0
                self._replies.append((code, self._partial))
                self._partial = []
        if start:
            del buf[:start]
        if len(self._replies) >= self._want:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is None:
            raise ConnectionLost("connection closed")
        self.transport.write(data)

    async def replies(self, count: int, deadline: float) -> list[tuple[int, list[bytes]]]:
        """The next ``count`` replies, in order, within ``deadline`` seconds."""
        if len(self._replies) < count:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(deadline):
                    while len(self._replies) < count:
                        if self._lost:
                            raise ConnectionLost("connection closed")
                        self._want = count
                        self._waiter = loop.create_future()
                        await self._waiter
            except TimeoutError:
                raise ConnectionLost(f"no reply within {deadline:g}s") from None
            finally:
                self._waiter = None
                self._want = 0
        return [self._replies.popleft() for _ in range(count)]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Connection:
    """A client connection that reconnects after a loss, and knows what the server offers."""

    def __init__(self, host: str, port: int, source: str, timeout: float) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout = timeout
        self.client: SmtpClient | None = None
        self.pipelining = False
        self.reconnects = 0

    async def open(self) -> SmtpClient:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            _, protocol = await loop.create_connection(
                SmtpClient, self.host, self.port, local_addr=(self.source, 0)
            )
        client: SmtpClient = protocol
        [(code, _)] = await client.replies(1, self.timeout)
        if code != 220:
            client.close()
            raise ConnectionLost(f"greeting {code}")
        client.write(b"EHLO loadgen.bench\r\n")
        [(code, lines)] = await client.replies(1, self.timeout)
        if code != 250:
            client.close()
            raise ConnectionLost(f"EHLO answered {code}")
        keywords = {line[4:].split(b" ", 1)[0].strip().upper() for line in lines[1:]}
        self.pipelining = b"PIPELINING" in keywords
        self.client = client
        return client

    async def send(self, content: bytes) -> int:
        """One transaction; the reply code that decided it (250: accepted)."""
        client = self.client
        if client is None:
            client = await self.open()
        timeout = self.timeout
        if self.pipelining:
            client.write(ENVELOPE)
            replies = await client.replies(3, timeout)
        else:
            replies = []
            for command in (_MAIL, _RCPT, _DATA):
                client.write(command)
                replies += await client.replies(1, timeout)
                if replies[-1][0] >= 400:
                    break
        codes = [code for code, _ in replies]
        if codes == [250, 250, 354]:
            client.write(content)
            [(code, _)] = await client.replies(1, timeout)
            return code
        if codes[-1] == 354:  # DATA accepted although something failed: end it empty
            client.write(b".\r\n")
            await client.replies(1, timeout)
        client.write(b"RSET\r\n")
        await client.replies(1, timeout)
        return next((code for code in codes if code >= 300 and code != 354), codes[-1])

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def quit(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.write(b"QUIT\r\n")
            await client.replies(1, 5.0)
        except ConnectionLost:
            pass
        self.drop()


Record = tuple[int, float, float, int]  # index, MAIL sent, final reply, final code


class Pacer:
    """Offered load at ``rate`` messages per second over all connections: the n-th message
    may start at ``n / rate`` seconds after the first (never earlier; a late one starts at
    once). A rate of 0 sends as fast as the server accepts."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.began: float | None = None
        self.sent = 0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.began is None:
            self.began = now
        slot = self.began + self.sent * self.interval
        self.sent += 1
        if slot > now:
            await asyncio.sleep(slot - now)


async def run_phase(
    connections: list[Connection],
    message: Message,
    tag: str,
    indices: Iterator[int],
    records: list[Record],
    errors: list[str],
    pacer: Pacer | None = None,
) -> None:
    """Every connection sends the next message of ``indices`` until there is none left (at
    the pace of ``pacer``, if given)."""

    async def worker(connection: Connection) -> None:
        for index in indices:
            if pacer is not None:
                await pacer.wait()
            content = message.content(tag, index)
            started = time.monotonic()
            try:
                code = await connection.send(content)
            except (ConnectionLost, OSError) as error:
                code = 0
                errors.append(f"{tag}.{index}: {error}")
                connection.drop()
                connection.reconnects += 1
                if connection.reconnects > _RECONNECTS:
                    records.append((index, started, time.monotonic(), code))
                    return
            records.append((index, started, time.monotonic(), code))

    await asyncio.gather(*(worker(connection) for connection in connections))


async def _main(arguments: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    message = Message(arguments.size)
    connections = [
        Connection(arguments.host, arguments.port, arguments.source, arguments.timeout)
        for _ in range(arguments.connections)
    ]
    await asyncio.gather(*(connection.open() for connection in connections))
    pipelining = all(connection.pipelining for connection in connections)
    warm_records: list[Record] = []
    warm_errors: list[str] = []
    warm_tag = f"{arguments.tag}w"
    await run_phase(
        connections,
        message,
        warm_tag,
        iter(range(arguments.first, arguments.first + arguments.warmup)),
        warm_records,
        warm_errors,
    )
    for connection in connections:
        connection.reconnects = 0
    emit(
        {
            "ready": True,
            "warmup_tag": warm_tag,
            "warmup_accepted": sum(1 for record in warm_records if record[3] == 250),
            "pipelining": pipelining,
        }
    )
    command = await loop.run_in_executor(None, sys.stdin.readline)
    if command.strip() != "go":
        return
    records: list[Record] = []
    errors: list[str] = []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    indices = iter(range(arguments.first, arguments.first + arguments.count))
    await run_phase(
        connections, message, arguments.tag, indices, records, errors, Pacer(arguments.rate)
    )
    ended = time.monotonic()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(connection.quit() for connection in connections))
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    result = {
        "tag": arguments.tag,
        "records": records,
        "errors": errors[:100],
        "error_count": len(errors),
        "began": began,
        "ended": ended,
        "cpu_seconds": cpu,
        "pipelining": pipelining,
        "message_bytes": len(message.content(arguments.tag, arguments.first)) - 3,
    }
    arguments.out.write_text(json.dumps(result))
    emit({"done": True, "records": len(records)})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.100", help="local address to bind")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first message")
    parser.add_argument("--count", type=int, required=True, help="messages to send")
    parser.add_argument("--warmup", type=int, default=0, help="messages sent before 'ready'")
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--tag", required=True, help="Message-ID prefix of this run")
    parser.add_argument("--timeout", type=float, default=120.0, help="per reply, seconds")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages per second (0: as fast as accepted)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    arguments = parser.parse_args()
    die_with_parent()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_main(arguments))


if __name__ == "__main__":
    main()
