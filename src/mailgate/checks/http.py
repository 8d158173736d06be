"""One HTTP/1.1 POST to a local scanner (Rspamd's ``/checkv2``): a request, a bounded reply.

Why not an HTTP library: a scan posts one message per request to a service on the same host,
and Rspamd closes the connection after each answer, so pooling buys nothing; what is left is
building one request and reading one reply. httpx spent about 1 ms of CPU per message on that
(measured by ``bench/protection.py``), more than the rest of the Anti-Spam module; this does it
with one protocol object on the event loop's transport: the request goes out when the
connection is made, the reply is parsed as it arrives and settles the exchange as soon as it
is complete (asyncio's streams cost a few hundred microseconds more per request).

What it speaks: ``http://`` and ``https://`` URLs (IPv4, IPv6 in brackets, names) or a Unix
socket (the URL then gives only the path and the Host header), a path
prefix in the URL, replies framed by Content-Length, by chunked transfer coding or by the end
of the connection. No redirects, no proxies (the scanner is a local service), no keep-alive.

Security notes: the reply is read up to ``limit`` bytes, its header section up to
``MAX_HEADER_BYTES``; anything that is not a well-formed HTTP/1.x reply raises
`ProtocolError`. Header values sent are the caller's, who must make each one line.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from mailgate.checks.sockets import connect_unix

if TYPE_CHECKING:
    from mailgate.pipeline.replies import Turn

__all__ = [
    "MAX_HEADER_BYTES",
    "ConnectError",
    "ProtocolError",
    "ReplyTooLarge",
    "parse_reply",
    "post",
]

MAX_HEADER_BYTES = 64 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ConnectError(OSError):
    """The connection (or the TLS handshake) could not be made."""


class ProtocolError(Exception):
    """The other side did not answer with a well-formed HTTP/1.x reply."""


class ReplyTooLarge(Exception):
    """The reply's body is longer than the limit."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    authority: str
    path: str


@lru_cache(maxsize=16)  # the scanners' URLs, parsed once rather than once per message
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, port, tls, parts.netloc.rpartition("@")[2], path)


async def post(
    url: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    *,
    limit: int,
    unix: str | None = None,
    turn: Turn | None = None,
) -> tuple[int, bytes]:
    """POST ``body`` to ``url``; the reply's status code and body (at most ``limit`` bytes).
    With ``unix``, the connection goes to that Unix socket; the URL gives the path and Host.
    With ``turn``, the request goes out at once but the reply is read only in the turn
    (`mailgate.pipeline.replies`): until then the connection is not listened to.

    Raises ConnectError, ProtocolError, ReplyTooLarge, or OSError for a connection lost
    midway; the caller bounds the time (``asyncio.timeout``).
    """
    target = _target(url)
    head = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.authority}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    # Head and body go out as two buffers (one writev): no copy of the message.
    request = (("\r\n".join(head) + "\r\n\r\n").encode("ascii"), body)
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    context = ssl.create_default_context() if target.tls else None
    try:
        if unix is not None:
            if context is not None:
                raise ConnectError("no TLS on a Unix socket")
            sock = await connect_unix(unix)
            try:
                transport, _ = await loop.create_unix_connection(
                    lambda: _Exchange(request, limit, reply), sock=sock
                )
            except BaseException:
                sock.close()
                raise
        else:
            transport, _ = await loop.create_connection(
                lambda: _Exchange(request, limit, reply),
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(str(exc) or type(exc).__name__) from exc
    try:
        if turn is None:
            return await reply
        paused = not turn.ready
        if paused:
            cast(asyncio.ReadTransport, transport).pause_reading()
        async with turn:
            if paused:
                cast(asyncio.ReadTransport, transport).resume_reading()
            return await reply
    finally:
        transport.close()


class _Exchange(asyncio.Protocol):
    """Sends the request once connected, gathers the reply and settles ``reply`` as soon as
    it is complete (by its framing), at the end of the connection, or at the first error."""

    def __init__(
        self, request: tuple[bytes, bytes], limit: int, reply: asyncio.Future[tuple[int, bytes]]
    ) -> None:
        self._request = request
        self._limit = limit
        self._reply = reply
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        # Not an isinstance check: uvloop's transports do not subclass asyncio's ABCs.
        cast(asyncio.WriteTransport, transport).writelines(self._request)

    def data_received(self, data: bytes) -> None:
        if self._reply.done():
            return
        self._buffer += data
        self._settle(at_end=False)

    def eof_received(self) -> bool:
        self._settle(at_end=True)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._reply.done():
            self._reply.set_exception(exc)
        self._settle(at_end=True)

    def _settle(self, *, at_end: bool) -> None:
        if self._reply.done():
            return
        try:
            parsed = parse_reply(self._buffer, self._limit, at_end=at_end)
        except (ProtocolError, ReplyTooLarge) as exc:
            self._reply.set_exception(exc)
        else:
            if parsed is None:
                return
            self._reply.set_result(parsed)
        if self._transport is not None:
            self._transport.close()


def parse_reply(data: bytes | bytearray, limit: int, *, at_end: bool) -> tuple[int, bytes] | None:
    """The status code and body of the HTTP/1.x reply in ``data``; None while it is incomplete
    and more may come (``at_end`` false). Raises ProtocolError or ReplyTooLarge."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
    if end < 0:
        if len(data) >= MAX_HEADER_BYTES + 4:
            raise ProtocolError(f"reply header section over {MAX_HEADER_BYTES} bytes")
        if at_end:
            raise ProtocolError(f"the connection ended before a reply ({len(data)} bytes)")
        return None
    status_line, *fields = bytes(data[:end]).decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    length: int | None = None
    chunked = False
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon:
            raise ProtocolError(f"malformed header field: {field[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ProtocolError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == "transfer-encoding":
            chunked = value.lower().endswith("chunked")
    body = bytes(data[end + 4 :])
    if chunked:
        decoded = _chunked(body, limit, at_end=at_end)
        return None if decoded is None else (int(code), decoded)
    if length is not None:
        if length > limit:
            raise ReplyTooLarge
        if len(body) >= length:
            return int(code), body[:length]
        if at_end:
            raise ProtocolError(f"body ended after {len(body)} of {length} bytes")
        return None
    if len(body) > limit:
        raise ReplyTooLarge
    return (int(code), body) if at_end else None


def _chunked(raw: bytes, limit: int, *, at_end: bool) -> bytes | None:
    body = bytearray()
    pos = 0
    while True:
        line_end = raw.find(b"\r\n", pos, pos + MAX_HEADER_BYTES)
        if line_end < 0:
            if len(raw) - pos > MAX_HEADER_BYTES:
                raise ProtocolError("chunk size line too long")
            break
        size_text = raw[pos:line_end].split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise ProtocolError(f"bad chunk size: {size_text[:40]!r}")
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            # Trailer fields, if any, up to the empty line.
            while True:
                line_end = raw.find(b"\r\n", pos)
                if line_end < 0:
                    break
                if line_end == pos:
                    return bytes(body)
                pos = line_end + 2
            break
        if len(body) + size > limit:
            raise ReplyTooLarge
        if len(raw) < pos + size + 2:
            break
        body += raw[pos : pos + size]
        if raw[pos + size : pos + size + 2] != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        pos += size + 2
    if at_end:
        raise ProtocolError("the connection ended inside a chunked body")
    return None
