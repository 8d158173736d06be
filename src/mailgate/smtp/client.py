"""SMTP client sessions for delivery and recipient probes (RFC 5321), with PIPELINING (RFC 2920),
STARTTLS by level (RFC 3207) and the ESMTP parameters delivery passes on.

An asyncio protocol of mailgate's own (aiosmtplib cannot pipeline: it drops a reply that
arrives while an earlier one waits to be read). With PIPELINING the envelope goes in one write,
MAIL, every RCPT and DATA, and the replies are read in order; content is dot-stuffed in one
pass (RFC 5321 4.5.2) because the spool holds CRLF-only text. TLS follows the destination's
level: none, may (opportunistic) or encrypt (mandatory), without certificate verification as
Postfix's "may" and "encrypt".

Security notes: command arguments never contain CR or LF (addresses come from mailgate's
parser; anything else is refused before it is written); replies are bounded in size.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

from mailgate.config.model import TlsLevel
from mailgate.smtp.data import stuff
from mailgate.types import Reply

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
MAX_REPLY_LENGTH = 64 * 1024


def to_reply(code: int, lines: list[str]) -> Reply:
    """A reply from its code and text lines, the enhanced status code (RFC 2034) split off.

    Lines stay separate in `text` ("\n"), as EHLO's extension list needs them.
    """
    first, _, rest = lines[0].partition(" ")
    if first[:1] in ("2", "4", "5") and _ENHANCED.match(first):
        prefix = first + " "
        text = [rest.lstrip()] + [line.removeprefix(prefix) for line in lines[1:]]
        return Reply(code, first, "\n".join(text))
    return Reply(code, None, "\n".join(lines))


def default_status(reply: Reply) -> str:
    """The RFC 3463 status for a reply: its own enhanced code, or the class default."""
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


class ClientError(OSError):
    """The session with the next hop broke (connection lost, garbled or oversized reply)."""


class ClientTimeout(ClientError):
    """The next hop did not answer in time."""


class ConnectionFailed(Exception):
    """No SMTP session could be set up with a host; `reply` is set when the host answered."""

    def __init__(self, text: str, *, status: str, reply: Reply | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.reply = reply


def _no_verify_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS_CONTEXT = _no_verify_context()


@dataclass(slots=True)
class Transaction:
    """The replies of one mail transaction."""

    mail: Reply
    recipients: list[Reply] = field(default_factory=list)
    data: Reply | None = None


class _Protocol(asyncio.Protocol):
    """Splits the byte stream into replies; one waiter at a time reads them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self.replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LENGTH:
                    self._fail(ClientError("reply line too long"))
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del self._buffer[: end + 1]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                self._fail(ClientError(f"malformed reply line: {line[:100]!r}"))
                return
            self._lines.append(line[4:])
            if sum(len(x) for x in self._lines) > MAX_REPLY_LENGTH:
                self._fail(ClientError("reply too long"))
                return
            if line[3:4] != "-":
                lines, self._lines = self._lines, []
                self.replies.append(to_reply(int(line[:3]), lines))
                self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ClientError(f"connection lost: {exc}" if exc else "connection closed"))

    def eof_received(self) -> bool | None:
        self._fail(ClientError("connection closed by the server"))
        return None

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self, within: float) -> Reply:
        """The next reply, waiting at most `within` seconds."""
        if self.replies:
            return self.replies.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.replies:
            if self.error is not None:
                raise self.error
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, self._expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.replies.popleft()

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ClientTimeout("timed out waiting for the reply"))

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing():
            raise ClientError("connection closed")
        self.transport.write(data)


def _command(*parts: str, utf8: bool = False) -> bytes:
    line = " ".join(p for p in parts if p)
    if "\r" in line or "\n" in line:
        raise ValueError("line breaks in an SMTP command")
    return line.encode("utf-8" if utf8 else "ascii") + b"\r\n"


class SmtpClient:
    """One open SMTP session with a next-hop host."""

    def __init__(self, protocol: _Protocol, host: str, ip: str, port: int,
                 command_timeout: float) -> None:  # fmt: skip
        self._protocol = protocol
        self.host = host
        self.ip = ip
        self.port = port
        self.command_timeout = command_timeout
        self.opened = time.monotonic()
        self.last_used = self.opened
        self.tls = False
        self.extensions: dict[str, str] = {}

    @property
    def remote(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

    @classmethod
    async def connect(
        cls,
        *,
        host: str,
        ip: str,
        port: int,
        helo: str,
        tls: TlsLevel,
        connect_timeout: float,
        command_timeout: float,
        source_address: str | None = None,
    ) -> SmtpClient:
        loop = asyncio.get_running_loop()
        where = f"{host}[{ip}]:{port}"
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    _Protocol,
                    ip,
                    port,
                    local_addr=(source_address, 0) if source_address else None,
                ),
                connect_timeout,
            )
        except TimeoutError:
            raise ConnectionFailed(
                f"connect to {where}: Connection timed out", status="4.4.1"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectionFailed(f"connect to {where}: {reason}", status="4.4.1") from None
        client = cls(protocol, host, ip, port, command_timeout)
        try:
            greeting = await protocol.reply(command_timeout)
            if greeting.code != 220:
                raise ConnectionFailed(
                    f"host {where} refused to talk to me: {greeting}",
                    status=default_status(greeting),
                    reply=greeting,
                )
            await client._hello(helo)
            if tls != TlsLevel.NONE and client.supports("starttls"):
                await client._starttls(helo)
            elif tls == TlsLevel.ENCRYPT:
                raise ConnectionFailed(
                    f"TLS is required, but was not offered by host {where}", status="4.7.4"
                )
        except ConnectionFailed:
            client.close()
            raise
        except (OSError, ssl.SSLError) as exc:
            client.close()
            raise ConnectionFailed(
                f"lost connection with {where} while setting up the session: {exc}",
                status="4.4.2",
            ) from None
        except BaseException:  # cancelled by a caller's deadline: the connection goes too
            client.close()
            raise
        return client

    async def _hello(self, helo: str) -> None:
        reply = await self._ask(_command("EHLO", helo))
        if reply.code == 250:
            self.extensions = _extensions(reply.text)
            return
        reply = await self._ask(_command("HELO", helo))
        if reply.code != 250:
            raise ConnectionFailed(
                f"host {self.remote} refused to talk to me: {reply}",
                status=default_status(reply),
                reply=reply,
            )
        self.extensions = {}

    async def _starttls(self, helo: str) -> None:
        reply = await self._ask(b"STARTTLS\r\n")
        if reply.code != 220:
            raise ConnectionFailed(
                f"host {self.remote} refused STARTTLS: {reply}", status="4.7.4", reply=reply
            )
        loop = asyncio.get_running_loop()
        transport = self._protocol.transport
        assert transport is not None
        new_transport = await asyncio.wait_for(
            loop.start_tls(transport, self._protocol, _TLS_CONTEXT, server_hostname=self.host),
            self.command_timeout,
        )
        if new_transport is None:
            raise ClientError("TLS handshake failed")
        self._protocol.transport = new_transport
        self.tls = True
        # RFC 3207 4.2: forget what was learnt before TLS; ask again.
        await self._hello(helo)

    async def _ask(self, command: bytes, within: float | None = None) -> Reply:
        self._protocol.write(command)
        return await self._protocol.reply(within or self.command_timeout)

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    def size_limit(self) -> int | None:
        value = self.extensions.get("size", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def is_connected(self) -> bool:
        transport = self._protocol.transport
        return self._protocol.error is None and transport is not None and not transport.is_closing()

    async def transaction(
        self,
        sender: str,
        mail_options: list[str],
        recipients: list[tuple[str, list[str]]],
        data: bytes,
        *,
        utf8: bool,
        data_timeout: float,
    ) -> Transaction:
        """MAIL, RCPT for each recipient, DATA and the content when any was accepted.

        Raises ClientError (an OSError) when the session breaks.
        """
        self.last_used = time.monotonic()
        result = await self._envelope(sender, mail_options, recipients, utf8, with_data=True)
        accepted = result.mail.code == 250 and any(r.code in (250, 251) for r in result.recipients)
        if result.data is not None and result.data.code == 354:
            if not accepted:
                # RFC 2920 3.1: a server that still said 354 gets an empty message, then RSET.
                await self._ask(b".\r\n", data_timeout)
                await self.reset()
                result.data = None
                return result
        elif not accepted:
            result.data = None
            await self.reset()
            return result
        if result.data is None:
            result.data = await self._ask(b"DATA\r\n")
        if result.data.code == 354:
            result.data = await self._ask(stuff(data) + b".\r\n", data_timeout)
        self.last_used = time.monotonic()
        return result

    async def probe(self, sender: str, addresses: list[str], *, utf8: bool) -> Transaction:
        """What delivery would hear for these addresses, without sending anything: MAIL, one
        RCPT each, then RSET (a recipient verification callout)."""
        self.last_used = time.monotonic()
        options = ["SMTPUTF8"] if utf8 and self.supports("smtputf8") else []
        result = await self._envelope(sender, options, [(a, []) for a in addresses], utf8)
        await self.reset()
        return result

    async def _envelope(
        self,
        sender: str,
        mail_options: list[str],
        recipients: list[tuple[str, list[str]]],
        utf8: bool,
        with_data: bool = False,
    ) -> Transaction:
        mail = _command(f"MAIL FROM:<{sender}>", *mail_options, utf8=utf8)
        rcpts = [
            _command(f"RCPT TO:<{address}>", *options, utf8=utf8) for address, options in recipients
        ]
        protocol = self._protocol
        timeout = self.command_timeout
        if self.supports("pipelining"):
            # RFC 2920: the whole envelope in one write, replies read in order.
            protocol.write(mail + b"".join(rcpts) + (b"DATA\r\n" if with_data else b""))
            result = Transaction(await protocol.reply(timeout))
            for _ in rcpts:
                result.recipients.append(await protocol.reply(timeout))
            if with_data:
                result.data = await protocol.reply(timeout)
            return result
        result = Transaction(await self._ask(mail))
        if result.mail.code != 250:
            return result
        for command in rcpts:
            result.recipients.append(await self._ask(command))
        return result

    async def reset(self) -> None:
        try:
            await self._ask(b"RSET\r\n")
        except OSError:
            self.close()

    async def quit(self) -> None:
        try:
            if self.is_connected:
                await self._ask(b"QUIT\r\n", 5)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()


def _extensions(text: str) -> dict[str, str]:
    """EHLO keywords (lowercase) and their parameters; the first line is the server's name."""
    out: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            out[keyword.lower()] = params
    return out
