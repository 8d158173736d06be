"""A minimal SMTP client that sends exactly the bytes it is given and reads whole replies.

smtplib normalises what it sends; protocol tests (pipelining, smuggling, over-long lines,
STARTTLS injection) need the exact bytes on the wire, and exact replies back.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class RawReply:
    code: int
    lines: list[str]

    @property
    def last(self) -> str:
        """The final line without the code, e.g. "2.1.5 Ok"."""
        return self.lines[-1]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.last}"


class RawSmtp:
    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 10):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self._buf = b""
        self.timeout = timeout

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete reply line; have {self._buf!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; have {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self, timeout: float | None = None) -> RawReply:
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            line = self._line(deadline).decode("utf-8", "replace")
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return RawReply(int(line[:3]), lines)

    def command(self, line: str) -> RawReply:
        self.send(line + "\r\n")
        return self.reply()

    def replies(self, count: int) -> list[RawReply]:
        return [self.reply() for _ in range(count)]

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionError, OSError):
                return True
            if not chunk:
                return True
            self._buf += chunk
        return False

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
