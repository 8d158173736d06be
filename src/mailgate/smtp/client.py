"""SMTP client connection for delivery (and, later, recipient probes), on aiosmtplib.

aiosmtplib carries the protocol (replies, dot-stuffing, STARTTLS); this module decides
everything policy-related itself: TLS by level (none / may / encrypt, RFC 3207, without
certificate verification as Postfix's "may" and "encrypt"), addresses sent exactly as they
were received (aiosmtplib's own MAIL/RCPT helpers would re-parse them), and every reply turned
into a mailgate Reply with its enhanced status code.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from mailgate.config.model import TlsLevel
from mailgate.types import Reply

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


def to_reply(code: int, message: str) -> Reply:
    """Turn a server's reply into a Reply, splitting off its enhanced status code."""
    text = " ".join(line.strip() for line in message.splitlines()) if "\n" in message else message
    first, _, rest = text.partition(" ")
    if first[:1] in ("2", "4", "5") and _ENHANCED.match(first + " "):
        return Reply(code, first, rest.lstrip())
    return Reply(code, None, text)


def _response(response: SMTPResponse) -> Reply:
    return to_reply(response.code, response.message)


def default_status(reply: Reply) -> str:
    """The RFC 3463 status for a reply: its own enhanced code, or the class default."""
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


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


class SmtpClient:
    """One open SMTP session with a next-hop host."""

    def __init__(self, smtp: aiosmtplib.SMTP, host: str, ip: str, port: int) -> None:
        self._smtp = smtp
        self.host = host
        self.ip = ip
        self.port = port
        self.opened = time.monotonic()
        self.last_used = self.opened
        self.tls = False

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
        smtp = aiosmtplib.SMTP(
            hostname=ip,
            port=port,
            local_hostname=helo,
            source_address=(source_address, 0) if source_address else None,
            timeout=command_timeout,
            use_tls=False,
            start_tls=False,
            validate_certs=False,
        )
        where = f"{host}[{ip}]:{port}"
        try:
            await smtp.connect(timeout=connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            reply = to_reply(exc.code, exc.message)
            raise ConnectionFailed(
                f"host {where} refused to talk to me: {reply}",
                status=default_status(reply),
                reply=reply,
            ) from None
        except aiosmtplib.SMTPConnectTimeoutError:
            raise ConnectionFailed(
                f"connect to {where}: Connection timed out", status="4.4.1"
            ) from None
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ConnectionFailed(f"connect to {where}: {reason}", status="4.4.1") from None
        client = cls(smtp, host, ip, port)
        try:
            await client._hello(helo)
            if tls != TlsLevel.NONE and smtp.supports_extension("starttls"):
                await smtp.starttls(tls_context=_TLS_CONTEXT, server_hostname=host)
                client.tls = True
                await client._hello(helo)
            elif tls == TlsLevel.ENCRYPT:
                raise ConnectionFailed(
                    f"TLS is required, but was not offered by host {where}", status="4.7.4"
                )
        except ConnectionFailed:
            client.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            reply = to_reply(exc.code, exc.message)
            raise ConnectionFailed(
                f"host {where} said: {reply}", status=default_status(reply), reply=reply
            ) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            client.close()
            raise ConnectionFailed(
                f"lost connection with {where} while setting up the session: {exc}",
                status="4.4.2",
            ) from None
        return client

    async def _hello(self, helo: str) -> None:
        try:
            await self._smtp.ehlo(hostname=helo)
        except aiosmtplib.SMTPHeloError:
            await self._smtp.helo(hostname=helo)

    def supports(self, extension: str) -> bool:
        return self._smtp.supports_extension(extension)

    def size_limit(self) -> int | None:
        value = self._smtp.esmtp_extensions.get("size", "")
        return int(value) if value and value.isdigit() and int(value) > 0 else None

    @property
    def is_connected(self) -> bool:
        return self._smtp.is_connected

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
        """Run MAIL, RCPT for each recipient, and DATA when any recipient was accepted.

        Raises aiosmtplib.SMTPException or OSError when the connection breaks.
        """
        result = await self._envelope(sender, mail_options, recipients, utf8)
        if result.mail.code != 250 or not any(r.code in (250, 251) for r in result.recipients):
            await self.reset()
            return result
        result.data = await self._data(data, data_timeout)
        self.last_used = time.monotonic()
        return result

    async def _data(self, content: bytes, reply_timeout: float) -> Reply:
        """DATA with content that is already CRLF-only (the spool guarantees it).

        aiosmtplib's data() would re-normalise line ends and dot-stuff with two regular
        expression passes over the whole message; one bytes.replace does the stuffing here
        (RFC 5321 4.5.2), and the protocol's own write/read_response carry it.
        """
        start = _response(await self._smtp.execute_command(b"DATA"))
        if start.code != 354:
            return start
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the content")
        stuffed = content.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        # Nothing awaits between the write and read_response(), which marks the reply as
        # expected, so the reply cannot arrive unclaimed.
        protocol.write(stuffed + b".\r\n")
        try:
            return _response(await protocol.read_response(timeout=reply_timeout))
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise

    async def probe(self, sender: str, addresses: list[str], *, utf8: bool) -> Transaction:
        """What delivery would hear for these addresses, without sending anything: MAIL, one
        RCPT each, then RSET (a recipient verification callout)."""
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
    ) -> Transaction:
        encoding = "utf-8" if utf8 else "ascii"
        self.last_used = time.monotonic()
        mail = _response(
            await self._smtp.execute_command(
                b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *_ascii(mail_options)
            )
        )
        result = Transaction(mail)
        if mail.code != 250:
            return result
        for address, options in recipients:
            reply = _response(
                await self._smtp.execute_command(
                    b"RCPT", b"TO:<" + address.encode(encoding) + b">", *_ascii(options)
                )
            )
            result.recipients.append(reply)
        return result

    async def reset(self) -> None:
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.close()

    async def quit(self) -> None:
        try:
            if self._smtp.is_connected:
                await self._smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._smtp.close()


def _ascii(options: list[str]) -> list[bytes]:
    return [option.encode("ascii") for option in options]
