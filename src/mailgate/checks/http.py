"""One HTTP/1.1 POST to a local scanner (Rspamd's ``/checkv2``): a request, a bounded reply.

Why not an HTTP library: a scan posts one message per request to a service on the same host,
and Rspamd closes the connection after each answer, so pooling buys nothing; what is left is
building one request and reading one reply. httpx spent about 1 ms of CPU per message on that
(measured by ``bench/protection.py``), more than the rest of the Anti-Spam module; this does it
in a few hundred microseconds with the event loop's own streams.

What it speaks: ``http://`` and ``https://`` URLs (IPv4, IPv6 in brackets, names), a path
prefix in the URL, replies framed by Content-Length, by chunked transfer coding or by the end
of the connection. No redirects, no proxies (the scanner is a local service), no keep-alive.

Security notes: the reply is read up to ``limit`` bytes, its header section up to
``MAX_HEADER_BYTES``; anything that is not a well-formed HTTP/1.x reply raises
`ProtocolError`. Header values sent are the caller's, who must make each one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MAX_HEADER_BYTES", "ConnectError", "ProtocolError", "ReplyTooLarge", "post"]

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


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, port, tls, parts.netloc.rpartition("@")[2], path)


async def post(
    url: str, body: bytes, headers: Sequence[tuple[str, str]], *, limit: int
) -> tuple[int, bytes]:
    """POST ``body`` to ``url``; the reply's status code and body (at most ``limit`` bytes).

    Raises ConnectError, ProtocolError, ReplyTooLarge, or OSError for a connection lost
    midway; the caller bounds the time (``asyncio.timeout``).
    """
    target = _target(url)
    context = ssl.create_default_context() if target.tls else None
    try:
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=context,
            server_hostname=target.host if context else None,
            limit=MAX_HEADER_BYTES,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(str(exc) or type(exc).__name__) from exc
    try:
        head = [
            f"POST {target.path} HTTP/1.1",
            f"Host: {target.authority}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        await writer.drain()
        return await _reply(reader, limit)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _reply(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    try:
        section = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        ended = f"the connection ended before a reply ({len(exc.partial)} bytes)"
        raise ProtocolError(ended) from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"reply header section over {MAX_HEADER_BYTES} bytes") from None
    status_line, *fields = section[:-4].decode("latin-1").split("\r\n")
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
    if chunked:
        return int(code), await _chunked(reader, limit)
    if length is not None:
        if length > limit:
            raise ReplyTooLarge
        try:
            return int(code), await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError(f"body ended after {len(exc.partial)} of {length} bytes") from None
    data = await reader.read(limit + 1)
    while data and len(data) <= limit:
        more = await reader.read(limit + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > limit:
        raise ReplyTooLarge
    return int(code), data


async def _chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    try:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise ProtocolError(f"bad chunk size: {size_text[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                # Trailer fields, if any, up to the empty line.
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            if len(body) + size > limit:
                raise ReplyTooLarge
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
    except asyncio.IncompleteReadError:
        raise ProtocolError("the connection ended inside a chunked body") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("chunk size line too long") from None
