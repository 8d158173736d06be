"""Anti-Virus check: streams each message to ClamAV's clamd (zINSTREAM protocol) for a verdict.

Protocol (clamd(8), "INSTREAM"): the client sends ``zINSTREAM\\0``, then the data as chunks, each
prefixed by its length as a 4-byte unsigned big-endian integer, then a zero-length chunk. clamd
answers one NUL-terminated line (the ``z`` prefix asks for NUL instead of newline):

* ``stream: OK``: nothing found;
* ``stream: NAME FOUND``: a signature matched. With ``AlertExceedsMax yes`` clamd also answers
  ``stream: Heuristics.Limits.Exceeded.<Limit> FOUND`` when MaxFileSize, MaxScanSize,
  MaxRecursion or MaxFiles stopped it from scanning everything: that is reported as infected,
  never clean, because an attacker can build archives to hit exactly those limits;
* ``... ERROR``: clamd could not scan, e.g. ``INSTREAM size limit exceeded. ERROR`` when the
  stream is longer than its StreamMaxLength (clamd then closes the connection, often while the
  client is still sending: the reply must still be read after a failed send).

Checks report, config decides (see pipeline.api): every failure (no clamd, refused, deadline,
malformed reply) is Verdict.ERROR with the reason, and the rule's error action applies. Nothing
here raises.

Settings: ``protection.antivirus.clamd`` ("unix:/path" or "host:port") and
``protection.antivirus.timeout`` (one deadline for connect, send and reply together).

Security notes: the whole raw message goes to clamd (clamd decodes MIME and archives itself). The
virus name comes from clamd's signature databases and ends up in a header: non-printable
characters are replaced and its length is capped. Client-facing replies are the pipeline's
business; the detail here is for logs and quarantine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING, Any

from mailgate.checks.sockets import connect_unix
from mailgate.pipeline.api import CheckResult, ScanContext, Verdict

if TYPE_CHECKING:
    from mailgate.pipeline.replies import Turn

__all__ = ["CHUNK_SIZE", "HEADER", "ClamavCheck", "interpret_reply", "ping"]

MODULE = "antivirus"
HEADER = "X-Mailgate-Antivirus"

# clamd accepts chunks of any size up to StreamMaxLength; 64 KiB keeps each write (and the copy
# that prefixes it with its length) small whatever the message size.
CHUNK_SIZE = 64 * 1024

# clamd's replies are one short line; anything longer is not clamd (or not sane).
_MAX_REPLY = 4096
_MAX_NAME = 200
_READ_SIZE = 4096

_STREAM_PREFIX = "stream: "
_LENGTH = struct.Struct(">I")
_END = _LENGTH.pack(0)  # the zero-length chunk that ends the stream


class _ClamdError(Exception):
    """The exchange with clamd failed; the message is the reason given in the verdict."""


class ClamavCheck:
    """The Anti-Virus module: one zINSTREAM exchange with clamd per message.

    A new connection per scan: a whole connect + PING + close round trip on the Unix socket
    takes 0.08 ms here, against 0.6 ms for clamd to spool and scan a 52 KB message with a
    one-signature database (much more with the official ones), so reuse would save little;
    and clamd's way of reusing (IDSESSION) serialises the commands of a session and keeps
    per-connection state that a pool would have to repair after every error or deadline. Each
    scan starts from a fresh, known state instead.
    """

    module = MODULE

    async def scan(self, ctx: ScanContext) -> CheckResult:
        settings = ctx.protection.antivirus
        endpoint, timeout = settings.clamd, settings.timeout
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                reply = await _instream(endpoint, ctx.content, ctx.reply_turn(MODULE, timeout))
        except TimeoutError as exc:
            if deadline.expired():
                return _error(f"clamd at {endpoint} did not answer within {timeout:g} s")
            return _error(f"clamd at {endpoint}: {_os_reason(exc)}")
        except _ClamdError as exc:
            return _error(f"clamd at {endpoint}: {exc}")
        except OSError as exc:
            return _error(f"clamd at {endpoint}: {_os_reason(exc)}")
        except Exception as exc:  # a check must not raise: the rule's error action applies
            return _error(f"clamd at {endpoint}: unexpected {type(exc).__name__}: {exc}")
        return interpret_reply(reply)

    async def locate(self, ctx: ScanContext) -> set[int]:
        """The MIME parts that carry the virus, for the "delete attachment" action: clamd
        scans the whole stream and names no part, so each part's decoded payload is scanned
        on its own. Parts that cannot be scanned are not named (the caller then keeps the
        stricter outcome)."""
        settings = ctx.protection.antivirus
        found: set[int] = set()
        try:
            async with asyncio.timeout(settings.timeout):
                for part in ctx.message.parts:
                    if not part.payload:
                        continue
                    reply = await _instream(settings.clamd, part.payload)
                    if interpret_reply(reply).verdict is Verdict.INFECTED:
                        found.add(part.index)
        except (TimeoutError, OSError, _ClamdError):
            return found
        return found


def interpret_reply(reply: str) -> CheckResult:
    """The verdict for one clamd INSTREAM reply (without its NUL)."""
    text = reply.strip()
    # Checked first: errors come with and without the "stream: " prefix.
    if text.endswith(" ERROR"):
        return _error(f"clamd: {_printable(text)}")
    if text.startswith(_STREAM_PREFIX):
        body = text[len(_STREAM_PREFIX) :]
        if body == "OK":
            return CheckResult(MODULE, Verdict.CLEAN, headers=((HEADER, "clean"),))
        if body.endswith(" FOUND"):
            name = _printable(body[: -len(" FOUND")].strip())[:_MAX_NAME]
            if name:
                return CheckResult(
                    MODULE, Verdict.INFECTED, detail=name, headers=((HEADER, f"infected ({name})"),)
                )
    return _error(f"clamd sent an unexpected reply: {_printable(text)[:_MAX_NAME]!r}")


# The deadline is a parameter on purpose: health checks poll several engines, each with its own.
async def ping(endpoint: str, timeout: float) -> bool:  # noqa: ASYNC109
    """True when clamd at ``endpoint`` answers PING with PONG within ``timeout`` seconds (for
    health checks). Never raises."""
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(endpoint)
            try:
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, b"zPING\0")
                return await _read_reply(sock) == "PONG"
            finally:
                sock.close()
    except Exception:  # unreachable, refused, timed out, malformed: all mean "not healthy"
        return False


async def _instream(endpoint: str, content: bytes, turn: Turn | None = None) -> str:
    """clamd's reply to ``content``; with ``turn``, read in that turn (pipeline.replies)."""
    sock = await _connect(endpoint)
    try:
        loop = asyncio.get_running_loop()
        try:
            # The command rides with the first chunk and the end mark with the last: one
            # write for a message of up to CHUNK_SIZE bytes.
            data = memoryview(content)
            command = b"zINSTREAM\0"
            for start in range(0, len(data), CHUNK_SIZE):
                chunk = data[start : start + CHUNK_SIZE]
                end = _END if start + CHUNK_SIZE >= len(data) else b""
                await _send(loop, sock, [command, _LENGTH.pack(len(chunk)), chunk, end])
                command = b""
            if command:  # an empty message: no chunk at all
                await loop.sock_sendall(sock, command + _END)
        except OSError as exc:
            # clamd replies and hangs up as soon as the stream exceeds StreamMaxLength, so a
            # failed send usually means its explanation is waiting to be read.
            try:
                return await _read_reply(sock)
            except (OSError, _ClamdError):
                raise _ClamdError(
                    f"connection lost while sending the message ({_os_reason(exc)})"
                ) from exc
        async with turn or contextlib.nullcontext():
            return await _read_reply(sock)
    finally:
        sock.close()


async def _send(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, parts: list[bytes | memoryview]
) -> None:
    """Send ``parts`` as one stream: one sendmsg (no copy into a joined buffer) when the
    socket takes it all at once, as a local socket does a chunk; the rest otherwise."""
    try:
        sent = sock.sendmsg([part for part in parts if len(part)])
    except (BlockingIOError, InterruptedError):
        sent = 0
    rest = b"".join(parts)[sent:] if sent < sum(len(part) for part in parts) else b""
    if rest:
        await loop.sock_sendall(sock, rest)


async def _connect(endpoint: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    if endpoint.startswith("unix:"):
        return await connect_unix(endpoint[len("unix:") :])
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _ClamdError('bad address: use "unix:/path" or "host:port"')
    host = host.removeprefix("[").removesuffix("]")  # "[::1]:3310"
    infos: list[tuple[Any, ...]]
    try:  # an address needs no resolver (whose lookup would run in a worker thread)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        infos = [(family, socket.SOCK_STREAM, 0, "", (host, int(port)))]
    except ValueError:
        infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    if not infos:
        raise _ClamdError(f"{host} has no address")
    failure: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert failure is not None
    raise failure


async def _read_reply(sock: socket.socket) -> str:
    """One NUL-terminated reply; anything after the NUL is ignored."""
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    while True:
        end = buffer.find(b"\0")
        if end >= 0:
            return bytes(buffer[:end]).decode("utf-8", "replace")
        if len(buffer) > _MAX_REPLY:
            raise _ClamdError(f"reply longer than {_MAX_REPLY} bytes without its end")
        try:
            data = await loop.sock_recv(sock, _READ_SIZE)
        except ConnectionResetError:
            # clamd closes with our unread data still queued on its side, which resets the
            # connection: what arrived before the reset has been read above.
            data = b""
        if not data:
            if buffer:
                raise _ClamdError(f"connection closed in the middle of a reply: {bytes(buffer)!r}")
            raise _ClamdError("connection closed without a reply")
        buffer += data


def _error(reason: str) -> CheckResult:
    return CheckResult(MODULE, Verdict.ERROR, detail=reason, headers=((HEADER, "error"),))


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "socket not found (is clamd running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is clamd running?)"
    return exc.strerror or str(exc) or type(exc).__name__


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else "?" for char in text)
