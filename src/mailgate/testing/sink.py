"""SMTP capture sink (RFC 5321, RFC 2920 PIPELINING, RFC 3207 STARTTLS) for tests and benchmarks.

The sink plays "the internet", a next hop or a benchmark peer. It speaks just enough ESMTP for a
real MTA to deliver to it, records every accepted message, and can be told to misbehave: refuse
recipients, answer DATA with an error, greet with 421 or 554, or drop the connection at a chosen
stage.

It is written directly on :class:`asyncio.Protocol` rather than aiosmtpd so that a single process
absorbs thousands of messages per second: command lines are cut with ``bytes.find``, the end of
DATA is found by scanning only the bytes not yet scanned, and every reply produced by one read is
written with one ``write`` call (which is also what keeps pipelined replies in order).

Three ways to run it:

* :class:`Sink`: its own event loop in a background thread, for synchronous pytest code;
* :func:`start_sink_server`: inside an event loop that already runs (the benchmark);
* ``python -m mailgate.testing.sink --listen HOST:PORT [--maildir DIR] [--count-only]``: a
  foreground process that stops on SIGTERM or SIGINT.

Security: this is test equipment. It accepts any sender, does no relay control and keeps whole
messages in memory; never expose it to an untrusted network.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import itertools
import json
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, cast

__all__ = [
    "DEFAULT_EXTENSIONS",
    "CapturedMessage",
    "DataHook",
    "DropStage",
    "RcptHook",
    "Sink",
    "SinkBehaviour",
    "SinkCounters",
    "SinkServer",
    "accept_all",
    "main",
    "new_event_loop",
    "read_maildir",
    "refuse_unknown",
    "start_sink_server",
    "wait_maildir",
]

DropStage = Literal["greeting", "mail", "rcpt", "data"]
"""Where the sink drops the connection: right after its greeting, on MAIL or RCPT (before any
reply), or as soon as message content arrives after its 354."""

RcptHook = Callable[[str], str]
"""Maps a recipient address to the complete reply line(s) for its RCPT command."""

DataHook = Callable[["CapturedMessage"], str]
"""Maps a received message to the reply for the end of DATA; only 2xx replies store it."""

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "PIPELINING",
    "SIZE",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "DSN",
)

# RFC 5321 4.5.3.1.4 allows 512 octets per command line; extensions make lines longer in practice,
# so only a line that could never be a command is treated as abuse.
_MAX_COMMAND_LINE = 4096
_END_OF_DATA = b"\r\n.\r\n"
_DEFAULT_WAIT = 10.0
_SHUTDOWN_DEADLINE = 5.0
_MAILDIR_SUFFIX = ".msg"

# What the connection does after the replies of one read have been written.
_NEXT_READ = 0
_CLOSE = 1
_STARTTLS = 2

_R_OK = b"250 2.0.0 Ok\r\n"
_R_MAIL_OK = b"250 2.1.0 Ok\r\n"
_R_DATA_GO = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_R_BYE = b"221 2.0.0 Bye\r\n"
_R_TLS_GO = b"220 2.0.0 Ready to start TLS\r\n"
_R_NEED_HELO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
_R_NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
_R_NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
_R_NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"
_R_NO_VALID_RCPT = b"554 5.5.1 Error: no valid recipients\r\n"
_R_NO_SERVICE = b"503 5.5.1 Error: no SMTP service\r\n"
_R_UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
_R_NO_VRFY = b"502 5.5.1 VRFY command is disabled\r\n"
_R_TLS_ACTIVE = b"554 5.5.1 Error: TLS already active\r\n"
_R_BAD_SYNTAX = b"500 5.5.2 Error: bad syntax\r\n"
_R_TOO_LONG = b"500 5.5.2 Error: command line too long\r\n"
_R_HOOK_FAILED = b"451 4.3.0 Error: sink hook failed\r\n"


def accept_all(address: str) -> str:
    """Default RCPT behaviour: every recipient is accepted."""
    del address
    return "250 2.1.5 Ok"


def refuse_unknown(
    known: Iterable[str],
    reply: str = "550 5.1.1 <{address}>: Recipient address rejected: User unknown",
) -> RcptHook:
    """An RCPT hook that accepts only ``known`` addresses (case-insensitive), like a mail server
    that knows its mailboxes; ``reply`` may use ``{address}``."""
    accepted = frozenset(address.lower() for address in known)

    def hook(address: str) -> str:
        if address.lower() in accepted:
            return "250 2.1.5 Ok"
        return reply.format(address=address)

    return hook


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop when it is installed, else the standard one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is for foreign installs
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One message the sink accepted, with its envelope as the client sent it."""

    client_ip: str
    client_port: int
    helo: str
    mail_from: str
    rcpt_to: list[str]
    mail_options: list[str]
    rcpt_options: list[list[str]]  # parallel to rcpt_to
    data: bytes  # dot-unstuffed; line ends exactly as received
    tls: bool
    received_at: float

    def parsed(self) -> EmailMessage:
        """The content parsed with the modern ``email`` policy."""
        return BytesParser(policy=policy.default).parsebytes(self.data)

    def header(self, name: str) -> str | None:
        """The first header ``name`` of the content, or None."""
        value = self.parsed()[name]
        return None if value is None else str(value)

    def to_bytes(self) -> bytes:
        """Serialise for :func:`read_maildir`: one JSON envelope line, then the raw content."""
        envelope = dataclasses.asdict(self)
        del envelope["data"]
        return json.dumps(envelope, ensure_ascii=True).encode("ascii") + b"\n" + self.data

    @classmethod
    def from_bytes(cls, raw: bytes) -> CapturedMessage:
        """Inverse of :meth:`to_bytes`."""
        head, _, data = raw.partition(b"\n")
        envelope = json.loads(head)
        return cls(data=data, **envelope)


@dataclass(frozen=True, slots=True)
class SinkBehaviour:
    """How the sink answers. A session reads it once, when it starts."""

    hostname: str = "sink.test"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    rcpt_reply: RcptHook = accept_all
    data_reply: str | DataHook | None = None  # None: "250 2.0.0 Ok: queued as ..."
    greeting: str | None = None  # None: "220 <hostname> ESMTP mailgate test sink"
    drop_at: DropStage | None = None
    ssl_context: ssl.SSLContext | None = None  # STARTTLS is advertised only with a context


@dataclass(frozen=True, slots=True)
class SinkCounters:
    """A snapshot of what the sink has seen since it started or was last cleared."""

    sessions: int = 0
    tls_sessions: int = 0
    messages: int = 0  # accepted at end of DATA
    refused_messages: int = 0  # answered with a non-2xx reply at end of DATA
    recipients: int = 0  # of accepted messages
    refused_recipients: int = 0
    data_bytes: int = 0  # of accepted messages, after unstuffing


class _Store:
    """Messages and counters, shared between the loop thread and the test thread."""

    def __init__(self, keep_messages: bool, maildir: Path | None) -> None:
        self.cond = threading.Condition()
        self.keep_messages = keep_messages
        self.maildir = maildir
        self.messages: list[CapturedMessage] = []
        self.errors: list[BaseException] = []
        self._names = itertools.count(1)
        # Plain integers under the lock: a frozen snapshot per event would cost the benchmark.
        self.sessions = self.tls_sessions = self.accepted = self.refused_messages = 0
        self.recipients = self.refused_recipients = self.data_bytes = 0
        if maildir is not None:
            maildir.mkdir(parents=True, exist_ok=True)

    def count_session(self) -> None:
        with self.cond:
            self.sessions += 1

    def count_tls_session(self) -> None:
        with self.cond:
            self.tls_sessions += 1

    def count_refused_recipient(self) -> None:
        with self.cond:
            self.refused_recipients += 1

    def count_refused_message(self) -> None:
        with self.cond:
            self.refused_messages += 1

    def accept(self, message: CapturedMessage | None, recipients: int, size: int) -> None:
        if message is not None and self.maildir is not None:
            self._write(message)
        with self.cond:
            if message is not None and self.keep_messages:
                self.messages.append(message)
            self.accepted += 1
            self.recipients += recipients
            self.data_bytes += size
            self.cond.notify_all()

    def _write(self, message: CapturedMessage) -> None:
        # Another process polls this directory: it must never see a half-written file, hence
        # the dot-prefixed temporary name (readers skip it) and the atomic rename.
        assert self.maildir is not None
        name = f"{time.time_ns():020d}.{os.getpid()}.{next(self._names):09d}{_MAILDIR_SUFFIX}"
        temporary = self.maildir / f".{name}.tmp"
        temporary.write_bytes(message.to_bytes())
        os.replace(temporary, self.maildir / name)

    def record_error(self, error: BaseException) -> None:
        with self.cond:
            self.errors.append(error)

    def counters(self) -> SinkCounters:
        with self.cond:
            return SinkCounters(
                sessions=self.sessions,
                tls_sessions=self.tls_sessions,
                messages=self.accepted,
                refused_messages=self.refused_messages,
                recipients=self.recipients,
                refused_recipients=self.refused_recipients,
                data_bytes=self.data_bytes,
            )

    def clear(self) -> None:
        with self.cond:
            self.messages = []
            self.errors = []
            self.sessions = self.tls_sessions = self.accepted = self.refused_messages = 0
            self.recipients = self.refused_recipients = self.data_bytes = 0

    def snapshot(self) -> list[CapturedMessage]:
        with self.cond:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float, where: str) -> list[CapturedMessage]:
        with self.cond:
            if not self.cond.wait_for(lambda: self.accepted >= count, timeout):
                raise TimeoutError(
                    f"no {count} message(s) within {timeout:g}s: "
                    + self.describe_shortfall(count, where)
                )
            return list(self.messages)

    def describe_shortfall(self, count: int | None, where: str) -> str:
        with self.cond:
            text = (
                f"sink {where} accepted {self.accepted} message(s)"
                + ("" if count is None else f" of {count} expected")
                + f" (sessions={self.sessions}, refused recipients={self.refused_recipients}, "
                f"refused messages={self.refused_messages})"
            )
            if self.errors:
                text += f"; hook errors: {self.errors!r}"
            return text


@functools.lru_cache(maxsize=1024)
def _format_reply(text: str) -> bytes:
    """Turn ``"550 5.1.1 text"`` (lines separated by newlines) into wire format."""
    lines = text.replace("\r", "").strip("\n").split("\n")
    last = len(lines) - 1
    wire = []
    for index, line in enumerate(lines):
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            raise ValueError(f"not an SMTP reply line: {line!r}")
        wire.append(f"{line[:3]}{'-' if index < last else ' '}{line[4:]}\r\n")
    return "".join(wire).encode("utf-8")


def _parse_path(argument: bytes, keyword: bytes) -> tuple[str, list[str]] | None:
    """Split ``FROM:<a@b> SIZE=10`` into the address and its parameters (None: bad syntax)."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    text = argument[len(keyword) :].decode("utf-8", "surrogateescape").strip()
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            return None
        return text[1:end], text[end + 1 :].split()
    # Postfix tolerates a path without angle brackets; so does the sink, to capture what a
    # sloppy client really sent.
    words = text.split()
    if not words:
        return None
    return words[0], words[1:]


class _Session(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, server: SinkServer) -> None:
        self._server = server
        self._store = server._store
        self._behaviour = server.behaviour
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._buf = bytearray()
        self._data: bytearray | None = None  # not None while receiving message content
        self._scanned = 0
        self._closed = False
        self._no_service = False
        self._tls = False
        self._helo = ""
        self._mail_from: str | None = None
        self._mail_options: list[str] = []
        self._rcpt_to: list[str] = []
        self._rcpt_options: list[list[str]] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = (str(peer[0]), int(peer[1]))
        self._server._session_started(self)
        behaviour = self._behaviour
        greeting = behaviour.greeting or f"220 {behaviour.hostname} ESMTP mailgate test sink"
        self._transport.write(_format_reply(greeting))
        # RFC 5321 3.1: after a 554 greeting the server waits for QUIT and answers 503 to the
        # rest; a 421 greeting ends the session at once.
        if greeting.startswith("421") or behaviour.drop_at == "greeting":
            self._close()
        elif greeting.startswith("554"):
            self._no_service = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None
        self._server._session_ended(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._data is not None:
            self._data += data
        else:
            self._buf += data
        out: list[bytes] = []
        after = self._process(out)
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(b"".join(out))
        if after == _CLOSE:
            self._close()
        elif after == _STARTTLS:
            self._begin_tls(transport)

    # Parsing

    def _process(self, out: list[bytes]) -> int:
        while True:
            if self._data is not None:
                if self._behaviour.drop_at == "data" and len(self._data) > 2:
                    return _CLOSE
                if not self._end_of_data(out):
                    return _NEXT_READ
                continue
            buf = self._buf
            newline = buf.find(b"\n")
            if newline < 0:
                if len(buf) > _MAX_COMMAND_LINE:
                    out.append(_R_TOO_LONG)
                    return _CLOSE
                return _NEXT_READ
            end = newline - 1 if newline and buf[newline - 1] == 0x0D else newline
            line = bytes(buf[:end])
            del buf[: newline + 1]
            after = self._command(line, out)
            if after != _NEXT_READ:
                return after

    def _end_of_data(self, out: list[bytes]) -> bool:
        data = self._data
        assert data is not None
        index = data.find(_END_OF_DATA, self._scanned)
        if index < 0:
            # The marker may be split across reads: rescan its possible prefix next time.
            self._scanned = max(0, len(data) - len(_END_OF_DATA) + 1)
            return False
        self._buf = data[index + len(_END_OF_DATA) :]
        del data[index + 2 :]
        self._data = None
        self._scanned = 0
        # The content buffer starts with a CRLF of our own (see _cmd_data), so a dot at the start
        # of the first line is unstuffed like any other (RFC 5321 4.5.2) and an empty message is
        # ".\r\n" right after it.
        content = bytes(data.replace(b"\r\n.", b"\r\n") if b"\r\n." in data else data)[2:]
        self._message(content, out)
        return True

    def _command(self, line: bytes, out: list[bytes]) -> int:
        space = line.find(b" ")
        verb = (line if space < 0 else line[:space]).upper()
        argument = b"" if space < 0 else line[space + 1 :].strip()
        if self._no_service and verb != b"QUIT":
            out.append(_R_NO_SERVICE)
            return _NEXT_READ
        handler = _COMMANDS.get(verb)
        if handler is None:
            out.append(_R_BAD_SYNTAX if not line.strip() else _R_UNKNOWN)
            return _NEXT_READ
        return handler(self, argument, out)

    # Commands

    def _cmd_ehlo(self, argument: bytes, out: list[bytes]) -> int:
        if not argument:
            out.append(b"501 5.5.4 Syntax: EHLO hostname\r\n")
            return _NEXT_READ
        self._helo = argument.decode("utf-8", "surrogateescape")
        self._reset()
        behaviour = self._behaviour
        lines = [behaviour.hostname, *behaviour.extensions]
        if behaviour.ssl_context is not None and not self._tls:
            lines.append("STARTTLS")
        out.append(_format_reply("\n".join(f"250 {line}" for line in lines)))
        return _NEXT_READ

    def _cmd_helo(self, argument: bytes, out: list[bytes]) -> int:
        if not argument:
            out.append(b"501 5.5.4 Syntax: HELO hostname\r\n")
            return _NEXT_READ
        self._helo = argument.decode("utf-8", "surrogateescape")
        self._reset()
        out.append(f"250 {self._behaviour.hostname}\r\n".encode())
        return _NEXT_READ

    def _cmd_mail(self, argument: bytes, out: list[bytes]) -> int:
        if not self._helo:
            out.append(_R_NEED_HELO)
            return _NEXT_READ
        if self._mail_from is not None:
            out.append(_R_NESTED_MAIL)
            return _NEXT_READ
        parsed = _parse_path(argument, b"FROM:")
        if parsed is None:
            out.append(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
            return _NEXT_READ
        if self._behaviour.drop_at == "mail":
            return _CLOSE
        self._mail_from, self._mail_options = parsed
        out.append(_R_MAIL_OK)
        return _NEXT_READ

    def _cmd_rcpt(self, argument: bytes, out: list[bytes]) -> int:
        if self._mail_from is None:
            out.append(_R_NEED_MAIL)
            return _NEXT_READ
        parsed = _parse_path(argument, b"TO:")
        if parsed is None:
            out.append(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
            return _NEXT_READ
        if self._behaviour.drop_at == "rcpt":
            return _CLOSE
        address, options = parsed
        try:
            reply = _format_reply(self._behaviour.rcpt_reply(address))
        except Exception as error:  # a broken test hook must show up, not kill the loop
            self._store.record_error(error)
            reply = _R_HOOK_FAILED
        if reply.startswith(b"2"):
            self._rcpt_to.append(address)
            self._rcpt_options.append(options)
        else:
            self._store.count_refused_recipient()
        out.append(reply)
        return _NEXT_READ

    def _cmd_data(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        if self._mail_from is None:
            out.append(_R_NEED_RCPT)
            return _NEXT_READ
        if not self._rcpt_to:
            out.append(_R_NO_VALID_RCPT)
            return _NEXT_READ
        out.append(_R_DATA_GO)
        self._data = bytearray(b"\r\n")
        self._data += self._buf
        self._buf = bytearray()
        self._scanned = 0
        return _NEXT_READ

    def _cmd_rset(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        self._reset()
        out.append(_R_OK)
        return _NEXT_READ

    def _cmd_noop(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        out.append(_R_OK)
        return _NEXT_READ

    def _cmd_quit(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        out.append(_R_BYE)
        return _CLOSE

    def _cmd_vrfy(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        out.append(_R_NO_VRFY)
        return _NEXT_READ

    def _cmd_starttls(self, argument: bytes, out: list[bytes]) -> int:
        del argument
        if self._behaviour.ssl_context is None:
            out.append(_R_UNKNOWN)
            return _NEXT_READ
        if self._tls:
            out.append(_R_TLS_ACTIVE)
            return _NEXT_READ
        out.append(_R_TLS_GO)
        return _STARTTLS

    # Transactions

    def _reset(self) -> None:
        self._mail_from = None
        self._mail_options = []
        self._rcpt_to = []
        self._rcpt_options = []

    def _message(self, content: bytes, out: list[bytes]) -> None:
        store = self._store
        behaviour = self._behaviour
        message: CapturedMessage | None = None
        if self._server._needs_messages or callable(behaviour.data_reply):
            message = CapturedMessage(
                client_ip=self._peer[0],
                client_port=self._peer[1],
                helo=self._helo,
                mail_from=self._mail_from or "",
                rcpt_to=self._rcpt_to,
                mail_options=self._mail_options,
                rcpt_options=self._rcpt_options,
                data=content,
                tls=self._tls,
                received_at=time.time(),
            )
        reply = self._data_reply(message)
        if reply.startswith(b"2"):
            store.accept(message, len(self._rcpt_to), len(content))
            self._server._message_accepted(message)
        else:
            store.count_refused_message()
        out.append(reply)
        self._reset()

    def _data_reply(self, message: CapturedMessage | None) -> bytes:
        override = self._behaviour.data_reply
        try:
            if override is None:
                return b"250 2.0.0 Ok: queued as %X\r\n" % self._server._next_queue_id()
            if isinstance(override, str):
                return _format_reply(override)
            assert message is not None
            return _format_reply(override(message))
        except Exception as error:  # a broken test hook must show up, not kill the loop
            self._store.record_error(error)
            return _R_HOOK_FAILED

    # Connection state

    def _begin_tls(self, transport: asyncio.Transport) -> None:
        # RFC 3207 4.2: anything the client pipelined after STARTTLS is plaintext that must not
        # be trusted (the STARTTLS command-injection attack), so it is discarded; reading pauses
        # so that the TLS ClientHello is not mistaken for a command before start_tls takes over.
        transport.pause_reading()
        self._buf = bytearray()
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._server._tasks.add(task)
        task.add_done_callback(self._server._tasks.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        context = self._behaviour.ssl_context
        assert context is not None
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(transport, self, context, server_side=True)
        except (OSError, TimeoutError, RuntimeError):  # the client failed the handshake
            transport.abort()
            return
        if secure is None or self._closed:
            transport.abort()
            return
        self._transport = secure
        self._tls = True
        # RFC 3207 4.2: the session starts over, the client must say EHLO again.
        self._helo = ""
        self._reset()
        self._store.count_tls_session()

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def abort(self) -> None:
        """Tear the connection down at once (server shutdown)."""
        if self._transport is not None:
            self._transport.abort()


_COMMANDS: dict[bytes, Callable[[_Session, bytes, list[bytes]], int]] = {
    b"EHLO": _Session._cmd_ehlo,
    b"HELO": _Session._cmd_helo,
    b"MAIL": _Session._cmd_mail,
    b"RCPT": _Session._cmd_rcpt,
    b"DATA": _Session._cmd_data,
    b"RSET": _Session._cmd_rset,
    b"NOOP": _Session._cmd_noop,
    b"QUIT": _Session._cmd_quit,
    b"VRFY": _Session._cmd_vrfy,
    b"STARTTLS": _Session._cmd_starttls,
}


class SinkServer:
    """The sink inside a running event loop; see :func:`start_sink_server`.

    Reading methods (``messages``, ``counters``, ``clear``) are safe from any thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        behaviour: SinkBehaviour,
        *,
        keep_messages: bool = True,
        maildir: Path | str | None = None,
        on_message: Callable[[CapturedMessage], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.behaviour = behaviour
        self._store = _Store(keep_messages, None if maildir is None else Path(maildir))
        self._on_message = on_message
        self._needs_messages = keep_messages or maildir is not None or on_message is not None
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue_ids = itertools.count(0x1000)
        self._arrived: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None

    async def start(self) -> None:
        """Listen; ``port`` holds the real port afterwards (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._server = await loop.create_server(
            lambda: _Session(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        for session in list(self._sessions):
            session.abort()
        assert self._idle is not None
        # Aborted transports report connection_lost on the next loop iterations; the bound only
        # matters if a transport misbehaves.
        async with asyncio.timeout(_SHUTDOWN_DEADLINE):
            await self._idle.wait()
            await server.wait_closed()
            if self._tasks:
                await asyncio.wait(self._tasks)

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def messages(self) -> list[CapturedMessage]:
        """A copy of the accepted messages, in arrival order."""
        return self._store.snapshot()

    @property
    def counters(self) -> SinkCounters:
        return self._store.counters()

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by the behaviour hooks (each answered with 451 4.3.0)."""
        with self._store.cond:
            return list(self._store.errors)

    def clear(self) -> None:
        """Forget messages, counters and hook errors."""
        self._store.clear()

    async def wait_for(self, count: int) -> list[CapturedMessage]:
        """Wait until ``count`` messages were accepted (since start or ``clear``) and return the
        messages kept. Bound it with ``asyncio.timeout``; ``describe()`` says what arrived."""
        assert self._arrived is not None, "start() the server first"
        while self._store.counters().messages < count:
            self._arrived.clear()
            await self._arrived.wait()
        return self._store.snapshot()

    def describe(self, expected: int | None = None) -> str:
        """What the sink has seen, for assertion and timeout messages."""
        return self._store.describe_shortfall(expected, f"{self.host}:{self.port}")

    def _next_queue_id(self) -> int:
        return next(self._queue_ids)

    def _message_accepted(self, message: CapturedMessage | None) -> None:
        if self._arrived is not None:
            self._arrived.set()
        if self._on_message is not None and message is not None:
            self._on_message(message)

    def _session_started(self, session: _Session) -> None:
        self._sessions.add(session)
        if self._idle is not None:
            self._idle.clear()
        self._store.count_session()

    def _session_ended(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not self._sessions and self._idle is not None:
            self._idle.set()


async def start_sink_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    rcpt_reply: RcptHook = accept_all,
    data_reply: str | DataHook | None = None,
    greeting: str | None = None,
    drop_at: DropStage | None = None,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    ssl_context: ssl.SSLContext | None = None,
    hostname: str = "sink.test",
    keep_messages: bool = True,
    maildir: Path | str | None = None,
    on_message: Callable[[CapturedMessage], None] | None = None,
) -> SinkServer:
    """Start a sink in the running event loop and return it once it listens.

    ``keep_messages=False`` keeps only counters (benchmarks); ``maildir`` also writes each
    accepted message to its own file there (see :func:`read_maildir`); ``on_message`` is called
    in the loop for every accepted message.
    """
    behaviour = SinkBehaviour(
        hostname=hostname,
        extensions=tuple(extensions),
        rcpt_reply=rcpt_reply,
        data_reply=data_reply,
        greeting=greeting,
        drop_at=drop_at,
        ssl_context=ssl_context,
    )
    server = SinkServer(
        host,
        port,
        behaviour,
        keep_messages=keep_messages,
        maildir=maildir,
        on_message=on_message,
    )
    await server.start()
    return server


class Sink:
    """A sink with its own event loop in a background thread, for synchronous test code.

    >>> with Sink("127.0.0.50") as sink:          # doctest: +SKIP
    ...     send_something_to(sink.host, sink.port)
    ...     [message] = sink.wait_for(1)
    """

    def __init__(
        self,
        host: str = "127.0.0.50",
        port: int = 0,
        *,
        rcpt_reply: RcptHook = accept_all,
        data_reply: str | DataHook | None = None,
        greeting: str | None = None,
        drop_at: DropStage | None = None,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        ssl_context: ssl.SSLContext | None = None,
        hostname: str = "sink.test",
        keep_messages: bool = True,
        maildir: Path | str | None = None,
    ) -> None:
        behaviour = SinkBehaviour(
            hostname=hostname,
            extensions=tuple(extensions),
            rcpt_reply=rcpt_reply,
            data_reply=data_reply,
            greeting=greeting,
            drop_at=drop_at,
            ssl_context=ssl_context,
        )
        self._server = SinkServer(
            host, port, behaviour, keep_messages=keep_messages, maildir=maildir
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None

    def start(self, timeout: float = _DEFAULT_WAIT) -> Self:
        """Start the loop thread; return once the sink listens."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"sink-{self._server.host}:{self._server.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"sink on {self._server.host} did not start within {timeout:g}s")
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join(timeout)
            self._thread = None
            raise error
        return self

    def stop(self, timeout: float = _DEFAULT_WAIT) -> None:
        """Close every connection and stop the thread; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if thread.is_alive() and loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"sink thread {thread.name} did not stop within {timeout:g}s")
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(self._main())
        except Exception as error:  # surfaced by start() or stop(), not lost in the thread
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._server.start()
        except Exception as error:  # surfaced by start() in the calling thread
            self._error = error
            return
        finally:
            self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self._server.aclose()

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def address(self) -> tuple[str, int]:
        return (self._server.host, self._server.port)

    @property
    def next_hop(self) -> str:
        """The sink as a Postfix next hop without MX lookup: ``[host]:port``."""
        return f"[{self._server.host}]:{self._server.port}"

    @property
    def behaviour(self) -> SinkBehaviour:
        return self._server.behaviour

    @behaviour.setter
    def behaviour(self, behaviour: SinkBehaviour) -> None:
        """Takes effect for sessions that start afterwards."""
        self._server.behaviour = behaviour

    @property
    def messages(self) -> list[CapturedMessage]:
        """A copy of the accepted messages, in arrival order."""
        return self._server.messages

    @property
    def counters(self) -> SinkCounters:
        return self._server.counters

    @property
    def sessions(self) -> int:
        return self._server.counters.sessions

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by the behaviour hooks (each answered with 451 4.3.0)."""
        return self._server.errors

    def clear(self) -> None:
        """Forget messages, counters and hook errors."""
        self._server.clear()

    def describe(self, expected: int | None = None) -> str:
        """What the sink has seen, for assertion messages."""
        return self._server.describe(expected)

    def wait_for(self, count: int, timeout: float = _DEFAULT_WAIT) -> list[CapturedMessage]:
        """Block until ``count`` messages were accepted (since start or ``clear``); return all
        messages kept; raise TimeoutError, with what the sink did see, after ``timeout``."""
        return self._server._store.wait_for(
            count, timeout, f"{self._server.host}:{self._server.port}"
        )


def read_maildir(directory: Path | str) -> list[CapturedMessage]:
    """The messages a sink wrote to ``directory``, in arrival order."""
    paths = sorted(
        entry.path
        for entry in os.scandir(directory)
        if entry.name.endswith(_MAILDIR_SUFFIX) and not entry.name.startswith(".")
    )
    return [CapturedMessage.from_bytes(Path(path).read_bytes()) for path in paths]


def wait_maildir(
    directory: Path | str, count: int, timeout: float = _DEFAULT_WAIT
) -> list[CapturedMessage]:
    """Poll ``directory`` (written by a sink in another process) until it holds ``count``
    messages; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.005
    while True:
        names = [
            name
            for name in os.listdir(directory)
            if name.endswith(_MAILDIR_SUFFIX) and not name.startswith(".")
        ]
        if len(names) >= count:
            return read_maildir(directory)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{directory}: expected {count} message(s) within {timeout:g}s, got {len(names)}"
            )
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def _listen_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(arguments: argparse.Namespace) -> int:
    host, port = arguments.listen
    context: ssl.SSLContext | None = None
    if arguments.tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(arguments.tls_cert, arguments.tls_key)

    def log_message(message: CapturedMessage) -> None:
        print(
            f"message from {message.client_ip} <{message.mail_from}> -> "
            f"{', '.join(f'<{rcpt}>' for rcpt in message.rcpt_to)} "
            f"({len(message.data)} bytes)",
            flush=True,
        )

    server = await start_sink_server(
        host,
        port,
        ssl_context=context,
        hostname=arguments.hostname,
        keep_messages=False,
        maildir=arguments.maildir,
        on_message=None if arguments.count_only else log_message,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"listening on {shown_host}:{server.port}", flush=True)
    try:
        await stopping.wait()
    finally:
        await server.aclose()
    counters = server.counters
    print(
        f"stopped: sessions={counters.sessions} messages={counters.messages} "
        f"recipients={counters.recipients} bytes={counters.data_bytes} "
        f"refused_recipients={counters.refused_recipients} "
        f"refused_messages={counters.refused_messages}",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mailgate.testing.sink``."""
    parser = argparse.ArgumentParser(
        prog="python -m mailgate.testing.sink",
        description="SMTP capture sink: accepts mail and records it, until SIGTERM or SIGINT.",
    )
    parser.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT")
    parser.add_argument(
        "--maildir", type=Path, help="write each accepted message to its own file in DIR"
    )
    parser.add_argument(
        "--count-only",
        action="store_true",
        help="only count (benchmarks): no per-message output, no files",
    )
    parser.add_argument("--hostname", default="sink.test", help="name in greeting and EHLO")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: offer STARTTLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    arguments = parser.parse_args(argv)
    if arguments.count_only and arguments.maildir is not None:
        parser.error("--count-only and --maildir exclude each other")
    if (arguments.tls_cert is None) != (arguments.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_serve(arguments))


if __name__ == "__main__":
    sys.exit(main())
