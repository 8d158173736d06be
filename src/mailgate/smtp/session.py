"""One SMTP server session (RFC 5321), with PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME
(RFC 6152), SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034), DSN (RFC 3461) and STARTTLS
(RFC 3207).

The session is an asyncio.Protocol: input is split into command lines as it arrives and each
command is handled at once; only steps that must wait (storing the message durably, probing a
recipient) suspend it, and buffered pipelined commands continue when they finish. Replies to
a pipelined group leave in one write.

Security notes:
- DATA ends only at <CR><LF>.<CR><LF> (SMTP smuggling); see mailgate.smtp.data.
- Input buffered before STARTTLS completes is discarded (plaintext command injection,
  CVE-2011-0411).
- Command lines are bounded (line_length_limit); message content is bounded
  (message_size_limit): beyond it, bytes are counted and dropped, not stored.
- Errors are counted: past the soft limit every reply is delayed, at the hard limit the
  session ends with 421 (Postfix smtpd_soft/hard_error_limit).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mailgate.auth.client_origin import real_client
from mailgate.pipeline.api import RealClient
from mailgate.smtp import codes
from mailgate.smtp.address import AddressError, parse_path, printable, split_path
from mailgate.smtp.data import (
    count_hops,
    find_end_of_data,
    header_section,
    normalize,
    received_header,
)
from mailgate.smtp.params import (
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
    xtext_decode,
)
from mailgate.types import ClientInfo, Envelope, Mailbox, Recipient, Reply

if TYPE_CHECKING:
    from mailgate.config.runtime import RuntimeConfig
    from mailgate.smtp.server import SmtpServer

log = logging.getLogger("mailgate.smtpd")

_COMMAND, _DATA, _CLOSED = 0, 1, 2
_T = TypeVar("_T")
# Pipelined input beyond this much (while a command waits) pauses reading from the client.
_INPUT_HIGH_WATER = 1 << 20
_FORBIDDEN = frozenset({"CONNECT", "GET", "POST", "HEAD", "PUT", "OPTIONS"})


@dataclass(slots=True)
class Transaction:
    qid: str
    runtime: RuntimeConfig
    trusted: bool
    sender: Mailbox | None
    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def sender_text(self) -> str:
        return self.sender.address if self.sender else ""


@dataclass(slots=True)
class _Rcpt:
    """One RCPT on its way: a reply already, or a recipient that may still need a check."""

    reply: Reply | None
    mailbox: Mailbox | None = None
    params: RcptParams | None = None
    shown: str = ""
    reason: str = ""
    check: str | None = None  # "verify" | "domain"


class SmtpSession(asyncio.Protocol):
    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ip = "unknown"
        self.port = 0
        self.helo = ""
        self.esmtp = False
        self.tls = False
        self.tls_info: str | None = None
        self.errors = 0
        self.last_activity = time.monotonic()
        self.txn: Transaction | None = None
        self.counts: dict[str, int] = {}
        self._buf = bytearray()
        self._mode = _COMMAND
        self._busy = False
        self._paused = False
        self._close_after_flush = False
        self._skip_line = False
        self._out: list[bytes] = []
        self._data_scan = 0
        self._data_dropped = 0
        self._counted = False
        self._tls_task: asyncio.Future[None] | None = None
        # What an upstream gateway said about the real client (XCLIENT: the session;
        # XFORWARD: the next transaction).
        self.xclient: dict[str, str] = {}
        self.xforward: dict[str, str] = {}
        self._pending: asyncio.Future[Any] | None = None

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.ip, self.port = _peer(peer)
        self.server.sessions.add(self)
        runtime = self.server.holder.current
        exempt = self.ip in runtime.trusted
        refusal = self.server.limits.connect(self.ip, runtime.config.advanced.limits, exempt=exempt)
        self._counted = True
        log.info("connect from unknown[%s]", self.ip)
        if refusal is not None:
            log.warning("reject: CONNECT from unknown[%s]: %s", self.ip, refusal)
            self._send(refusal)
            self._close_after_flush = True
            self._flush()
            return
        self._send(codes.greeting(runtime.hostname))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        stats = " ".join(f"{k}={v}" for k, v in self.counts.items())
        log.info("disconnect from unknown[%s] %s", self.ip, stats)
        self._mode = _CLOSED
        self.server.sessions.discard(self)
        if self._counted:
            self.server.limits.disconnect(self.ip)
            self._counted = False

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if self._mode == _CLOSED:
            return
        self.last_activity = time.monotonic()
        self._buf += data
        if not self._busy:
            self._process()
        elif len(self._buf) > _INPUT_HIGH_WATER and self._mode == _COMMAND and self.transport:
            self.transport.pause_reading()
            self._paused = True

    # -- input loop ----------------------------------------------------------------------

    def _process(self) -> None:
        limits = self.server.holder.current.config.advanced.limits
        while not self._busy and self._mode != _CLOSED:
            if self._mode == _DATA:
                if not self._data_step():
                    break
                continue
            newline = self._buf.find(b"\n")
            if newline < 0:
                if len(self._buf) > limits.line_length_limit:
                    # Drop the over-long line as it streams in; answer it once.
                    self._buf.clear()
                    if not self._skip_line:
                        self._skip_line = True
                        self._reply(codes.LINE_TOO_LONG)
                break
            line = bytes(self._buf[:newline])
            del self._buf[: newline + 1]
            if self._skip_line:
                self._skip_line = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limits.line_length_limit:
                self._reply(codes.LINE_TOO_LONG)
                continue
            self._command(line)
        if not self._busy:
            self._flush()
            if self._paused and self.transport is not None and self._mode != _CLOSED:
                self._paused = False
                self.transport.resume_reading()

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(Reply(500, "5.5.2", "Error: bad UTF-8 syntax"))
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        self.counts[verb.lower()] = self.counts.get(verb.lower(), 0) + 1
        handler = _HANDLERS.get(verb)
        if handler is not None:
            handler(self, arg)
        elif verb in _FORBIDDEN:
            # Postfix smtpd_forbidden_commands: an HTTP proxy or browser, not a mail client.
            log.warning("reject: %s from unknown[%s]: forbidden command", verb, self.ip)
            self._send(Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
            self._close_after_flush = True
            self._mode = _CLOSED
        else:
            self._reply(codes.UNKNOWN_COMMAND)

    # -- replies -------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.render())

    def _reply(self, reply: Reply) -> None:
        """Send a command's reply, counting errors as Postfix does."""
        if self._mode == _CLOSED:
            return  # the session ended (error limit, QUIT): nothing more is said
        self._send(reply)
        if reply.code < 400 or reply.code == 421 or reply == codes.TOO_MANY_RECIPIENTS:
            return
        self.errors += 1
        limits = self.server.holder.current.config.advanced.limits
        if self.errors >= limits.hard_error_limit:
            self._send(codes.too_many_errors(self.server.holder.current.hostname))
            log.warning("too many errors after %s from unknown[%s]", reply.code, self.ip)
            self._close_after_flush = True
            self._mode = _CLOSED
        elif self.errors > limits.soft_error_limit and limits.error_sleep_time > 0:
            self._busy = True
            asyncio.get_running_loop().call_later(limits.error_sleep_time, self._resume)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        if self._close_after_flush:
            self._mode = _CLOSED
            transport.close()

    def _resume(self) -> None:
        self._busy = False
        self._flush()
        if self._mode != _CLOSED:
            self._process()

    def _wait(self, awaitable: Awaitable[_T], done: Callable[[_T], None]) -> None:
        """Suspend the session until `awaitable` gives what the current command replies with.

        The awaitable must not raise: it turns its own failures into replies.
        """
        self._busy = True
        self._flush()
        future = asyncio.ensure_future(awaitable)
        self._pending = future

        def _finished(fut: asyncio.Future[_T]) -> None:
            self._pending = None
            self._busy = False
            if fut.cancelled():
                return
            done(fut.result())
            if not self._busy:  # unless the reply started the error delay
                self._resume()

        future.add_done_callback(_finished)

    def close(self, reply: Reply | None = None) -> None:
        """End the session (shutdown, idle timeout), after an optional last reply."""
        if self.transport is None or self.transport.is_closing():
            return
        if reply is not None:
            self._send(reply)
        self._close_after_flush = True
        self._mode = _CLOSED
        self._flush()

    @property
    def busy(self) -> bool:
        return self._busy

    # -- commands ------------------------------------------------------------------------

    def _cmd_helo(self, arg: str, *, esmtp: bool) -> None:
        name = arg.strip()
        if not name or " " in name:
            self._reply(codes.EHLO_SYNTAX if esmtp else codes.HELO_SYNTAX)
            return
        self.helo = name
        self.esmtp = esmtp
        self.txn = None
        runtime = self.server.holder.current
        if not esmtp:
            self._reply(Reply(250, None, runtime.hostname))
            return
        size = runtime.config.main.message_size_limit
        extensions = ["PIPELINING", f"SIZE {size}"]
        if not self.tls and self.server.tls_context is not None:
            extensions.append("STARTTLS")
        extensions += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        if self.ip in runtime.upstream:  # offered to the border gateway only
            extensions += ["XCLIENT NAME ADDR PROTO HELO LOGIN",
                           "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"]  # fmt: skip
        self._reply(codes.ehlo_lines(runtime.hostname, extensions))

    def cmd_helo(self, arg: str) -> None:
        self._cmd_helo(arg, esmtp=False)

    def cmd_ehlo(self, arg: str) -> None:
        self._cmd_helo(arg, esmtp=True)

    def cmd_mail(self, arg: str) -> None:
        if self.txn is not None:
            self._reply(codes.NESTED_MAIL)
            return
        runtime = self.server.holder.current
        config = runtime.config
        if config.advanced.tls.inbound_level == "encrypt" and not self.tls:
            self._reply(codes.TLS_REQUIRED)
            return
        if arg[:5].upper() != "FROM:":
            self._reply(codes.MAIL_SYNTAX)
            return
        try:
            path, param_text = split_path(arg[5:])
            sender = parse_path(path, allow_null=True)
        except AddressError:
            self._reply(codes.BAD_SENDER)
            return
        try:
            params = parse_mail_params(param_text) if param_text else MailParams()
        except ParamError as exc:
            self._reply(exc.reply)
            return
        if sender is not None and sender.utf8 and not params.smtputf8:
            self._reply(codes.SMTPUTF8_REQUIRED)
            return
        size_limit = config.main.message_size_limit
        if params.size is not None and params.size > size_limit:
            self._reply(codes.SIZE_EXCEEDS_LIMIT)
            return
        if not self.server.has_free_space(max(size_limit, params.size or 0)):
            log.warning("reject: MAIL from unknown[%s]: insufficient storage", self.ip)
            self._reply(codes.NO_STORAGE)
            return
        trusted = self.ip in runtime.trusted
        refusal = self.server.limits.message(self.ip, config.advanced.limits, exempt=trusted)
        if refusal is not None:
            self._reply(refusal)
            return
        self.txn = Transaction(
            qid=self.server.new_queue_id(),
            runtime=runtime,
            trusted=trusted,
            sender=sender,
            params=params,
        )
        self._reply(codes.OK_MAIL)

    def cmd_rcpt(self, arg: str) -> None:
        txn = self.txn
        if txn is None:
            self._reply(codes.NEED_MAIL)
            return
        # RCPTs pipelined behind this one are taken together, so that the recipients to
        # verify are probed in one session per next hop.
        arguments = [arg]
        while (more := self._take_pipelined("RCPT")) is not None:
            arguments.append(more)
        self._rcpt_batch(txn, arguments)

    def _rcpt_batch(self, txn: Transaction, arguments: list[str]) -> None:
        """Reply to the RCPTs in `arguments`, in order. The recipient limit counts the
        recipients accepted before each one, as separate commands would (Postfix's smtpd):
        a RCPT over the limit only if the recipients still being checked before it were all
        accepted waits for their checks, and is then decided with what they got."""
        accepted = len(txn.recipients)
        items: list[_Rcpt] = []
        rest: list[str] = []
        for index, text in enumerate(arguments):
            item = self._rcpt_policy(txn, text, accepted)
            if item.reply == codes.TOO_MANY_RECIPIENTS and any(i.check for i in items):
                rest = arguments[index:]
                break
            if item.reply is None:
                accepted += 1
            items.append(item)

        def _done(replies: list[Reply]) -> None:
            for reply in replies:
                self._reply(reply)
            if rest and self.txn is txn and self._mode != _CLOSED:
                self._rcpt_batch(txn, rest)

        if not any(item.check for item in items):
            _done([self._rcpt_result(txn, item, None) for item in items])
            return
        self._wait(self._rcpt_checks(txn, items), _done)

    def _take_pipelined(self, verb: str) -> str | None:
        """The next buffered command line if it is `verb` (consumed), else None."""
        if self._mode != _COMMAND or self._skip_line:
            return None
        newline = self._buf.find(b"\n")
        if newline < 0 or self._buf[: len(verb)].upper() != verb.encode():
            return None
        line = bytes(self._buf[:newline]).rstrip(b"\r")
        limits = self.server.holder.current.config.advanced.limits
        if len(line) > limits.line_length_limit or line[len(verb) : len(verb) + 1] != b" ":
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
        del self._buf[: newline + 1]
        self.counts[verb.lower()] = self.counts.get(verb.lower(), 0) + 1
        return text[len(verb) + 1 :]

    def _rcpt_policy(self, txn: Transaction, arg: str, accepted: int) -> _Rcpt:
        """Everything decided without waiting: syntax, limits, the relay decision."""
        if arg[:3].upper() != "TO:":
            return _Rcpt(codes.RCPT_SYNTAX)
        try:
            path, param_text = split_path(arg[3:])
            rcpt = parse_path(path, allow_null=False)
        except AddressError:
            return _Rcpt(codes.BAD_RECIPIENT)
        assert rcpt is not None
        if rcpt.utf8 and not txn.params.smtputf8:
            return _Rcpt(codes.SMTPUTF8_REQUIRED)
        try:
            params = parse_rcpt_params(param_text) if param_text else None
        except ParamError as exc:
            return _Rcpt(exc.reply)
        config = txn.runtime.config
        limits = config.advanced.limits
        if accepted >= limits.recipient_limit:
            return _Rcpt(codes.TOO_MANY_RECIPIENTS)
        refusal = self.server.limits.recipient(self.ip, limits, exempt=txn.trusted)
        if refusal is not None:
            return _Rcpt(refusal)
        shown = printable(path, 300)
        decision = txn.runtime.relay.decide(rcpt, trusted=txn.trusted)
        if not decision.permitted:
            reply = codes.relay_denied(shown)
            self._log_rcpt(txn, "reject", shown, decision.reason, reply)
            return _Rcpt(reply)
        check = txn.runtime.relay.check_for(decision, rcpt, config.advanced.verification)
        return _Rcpt(None, rcpt, params, shown, decision.reason, check)

    async def _rcpt_checks(self, txn: Transaction, items: list[_Rcpt]) -> list[Reply]:
        """Verify recipients and look up domains, then give every RCPT its reply, in order."""
        outcomes: dict[int, tuple[str, str]] = {}
        try:
            verifier, domains = self.server.verifier, self.server.domains
            to_verify = [
                (i, item.mailbox) for i, item in enumerate(items) if item.check == "verify"
            ]
            if to_verify:
                if verifier is None:
                    raise RuntimeError("recipient verification is not wired in")
                verdicts = await verifier.verify([m for _, m in to_verify if m is not None])
                for (i, _), verdict in zip(to_verify, verdicts, strict=True):
                    outcomes[i] = (verdict.status, verdict.reason)
            for i, item in enumerate(items):
                if item.check == "domain" and item.mailbox is not None:
                    if domains is None:
                        raise RuntimeError("domain checks are not wired in")
                    outcomes[i] = await domains.check(item.mailbox.domain)
        except Exception:
            log.exception("%s: recipient checks failed", txn.qid)
            failed = Reply(451, "4.3.0", "Error: internal error")
            return [failed if item.check else self._rcpt_result(txn, item, None) for item in items]
        return [self._rcpt_result(txn, item, outcomes.get(i)) for i, item in enumerate(items)]

    def _rcpt_result(self, txn: Transaction, item: _Rcpt, outcome: tuple[str, str] | None) -> Reply:
        if item.reply is not None:
            return item.reply
        assert item.mailbox is not None
        settings = txn.runtime.config.advanced.verification
        reason = item.reason
        if outcome is not None:
            status, detail = outcome
            reply = codes.check_refusal(item.check, item.shown, status, detail, settings)
            if reply is not None:
                self._log_rcpt(txn, "reject", item.shown, f"{item.check}: {status}", reply)
                return reply
            reason += ", verified" if item.check == "verify" else ", domain exists"
        self._log_rcpt(txn, "accept", item.shown, reason, None)
        self._add_recipient(txn, item.mailbox, item.params)
        return codes.OK_RCPT

    def _log_rcpt(self, txn: Transaction, what: str, shown: str, reason: str,
                  reply: Reply | None) -> None:  # fmt: skip
        if reply is None:
            log.info(
                "%s: accept: RCPT from unknown[%s]: from=<%s> to=<%s> (%s)",
                txn.qid, self.ip, printable(txn.sender_text), shown, reason,
            )  # fmt: skip
        else:
            log.info(
                "%s: %s: RCPT from unknown[%s]: %s; from=<%s> to=<%s> helo=<%s> (%s)",
                txn.qid, what, self.ip, reply, printable(txn.sender_text), shown,
                printable(self.helo), reason,
            )  # fmt: skip

    def _add_recipient(self, txn: Transaction, rcpt: Mailbox, params: RcptParams | None) -> None:
        address = rcpt.address
        key = address.lower() if rcpt.local.isascii() else address
        if key in txn.seen:
            return  # duplicate recipients are delivered once, as Postfix's cleanup does
        txn.seen.add(key)
        txn.recipients.append(
            Recipient(
                address=address,
                domain=rcpt.domain,
                orcpt=params.orcpt if params else None,
                notify=params.notify if params else (),
            )
        )

    def cmd_data(self, arg: str) -> None:
        if arg.strip():
            self._reply(codes.NO_ARGUMENTS)
            return
        txn = self.txn
        if txn is None:
            self._reply(codes.NEED_RCPT)
            return
        if not txn.recipients:
            self._reply(codes.NO_VALID_RECIPIENTS)
            return
        self._mode = _DATA
        # The CRLF that ended the DATA line starts the search, so an empty message works.
        self._buf[0:0] = b"\r\n"
        self._data_scan = 0
        self._data_dropped = 0
        self._reply(codes.START_DATA)

    def _data_step(self) -> bool:
        """Look for the end of DATA; return False when more input is needed."""
        buf = self._buf
        end = find_end_of_data(buf, max(0, self._data_scan - 4))
        txn = self.txn
        assert txn is not None
        limit = txn.runtime.config.main.message_size_limit
        if end < 0:
            self._data_scan = len(buf)
            if len(buf) > limit + 2:
                # Over the limit: keep counting, stop storing; keep the tail for the marker.
                self._data_dropped += len(buf) - 4
                del buf[:-4]
                self._data_scan = 4
            return False
        raw = bytes(buf[2 : end + 2])
        del buf[: end + 5]
        self._mode = _COMMAND
        if self._data_dropped or len(raw) > limit:
            self._end_transaction_with(codes.MESSAGE_TOO_BIG, "message too big")
            return True
        self._end_of_data(txn, raw)
        return True

    def _end_transaction_with(self, reply: Reply, why: str) -> None:
        txn = self.txn
        self.txn = None
        if txn is not None:
            log.info("%s: reject: DATA from unknown[%s]: %s (%s)", txn.qid, self.ip, reply, why)
        self._reply(reply)

    def _end_of_data(self, txn: Transaction, raw: bytes) -> None:
        content = normalize(raw)
        config = txn.runtime.config
        limits = config.advanced.limits
        if len(content) > config.main.message_size_limit:
            self._end_transaction_with(codes.MESSAGE_TOO_BIG, "message too big")
            return
        header = header_section(content)
        if len(header) > limits.header_size_limit:
            self._end_transaction_with(codes.HEADER_TOO_BIG, "header too big")
            return
        if count_hops(header) >= limits.hopcount_limit:
            self._end_transaction_with(codes.TOO_MANY_HOPS, "too many hops")
            return
        proto = ("UTF8SMTP" if txn.params.smtputf8 else "ESMTP") if self.esmtp else "SMTP"
        if self.tls:
            proto += "S"
        now = time.time()
        single = txn.recipients[0].address if len(txn.recipients) == 1 else None
        envelope = Envelope(
            qid=txn.qid,
            sender=txn.sender_text,
            recipients=txn.recipients,
            client=ClientInfo(self.ip, self.port, self.helo, "unknown", proto, self.tls),
            arrival=now,
            size=len(content),
            body=txn.params.body,
            smtputf8=txn.params.smtputf8,
            ret=txn.params.ret,
            envid=txn.params.envid,
            prepend=received_header(
                helo=self.helo,
                client_name="unknown",
                client_ip=self.ip,
                hostname=txn.runtime.hostname,
                proto=proto,
                qid=txn.qid,
                recipient=single,
                when=now,
                tls=self.tls_info,
            ),
        )
        self.txn = None
        origin = real_client(
            connection_ip=self.ip,
            helo=self.helo,
            from_upstream=self.ip in txn.runtime.upstream,
            xclient=self.xclient,
            xforward=self.xforward,
            content=content,
        )
        self.xforward = {}
        if origin.source != "connection":
            envelope.extra["real_client"] = {
                "ip": origin.ip, "helo": origin.helo, "name": origin.name, "source": origin.source,
            }  # fmt: skip

        def _done(reply: Reply) -> None:
            self._reply(reply)

        self._wait(self._accept(envelope, content, origin), _done)

    async def _accept(self, envelope: Envelope, content: bytes, origin: RealClient) -> Reply:
        try:
            return await self.server.intake.accept(envelope, content, origin)
        except Exception:
            log.exception("%s: internal error while accepting the message", envelope.qid)
            return Reply(451, "4.3.0", "Error: internal error")

    def _attributes(self, command: str, arg: str, names: frozenset[str]) -> dict[str, str] | None:
        """Parse XCLIENT/XFORWARD attributes; reply and return None when refused."""
        if self.ip not in self.server.holder.current.upstream:
            self._reply(Reply(550, "5.7.0", "Error: insufficient authorization"))
            return None
        if self.txn is not None:
            self._reply(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
            return None
        attrs: dict[str, str] = {}
        for token in arg.split():
            name, sep, value = token.partition("=")
            if not sep or name.upper() not in names:
                self._reply(Reply(501, "5.5.4", f"Bad {command} attribute name: {name[:40]}"))
                return None
            try:
                attrs[name.upper()] = xtext_decode(value)
            except ValueError:
                self._reply(Reply(501, "5.5.4", f"Bad {command} attribute value: {name[:40]}"))
                return None
        if not attrs:
            self._reply(Reply(501, "5.5.4", f"Syntax: {command} attribute=value..."))
            return None
        return attrs

    def cmd_xforward(self, arg: str) -> None:
        attrs = self._attributes("XFORWARD", arg, _XFORWARD_NAMES)
        if attrs is not None:
            self.xforward.update(attrs)
            self._reply(codes.OK)

    def cmd_xclient(self, arg: str) -> None:
        attrs = self._attributes("XCLIENT", arg, _XCLIENT_NAMES)
        if attrs is None:
            return
        self.xclient = attrs
        self.xforward = {}
        self.helo = ""
        self.esmtp = False
        # The session starts over as the client the gateway named (Postfix XCLIENT_README).
        self._reply(codes.greeting(self.server.holder.current.hostname))

    def cmd_rset(self, arg: str) -> None:
        if arg.strip():
            self._reply(codes.NO_ARGUMENTS)
            return
        self.txn = None
        self.xforward = {}
        self._reply(codes.OK)

    def cmd_noop(self, arg: str) -> None:
        self._reply(codes.OK)

    def cmd_quit(self, arg: str) -> None:
        self._send(codes.BYE)
        self._close_after_flush = True
        self._mode = _CLOSED

    def cmd_vrfy(self, arg: str) -> None:
        self._reply(codes.VRFY_DISABLED)

    def cmd_starttls(self, arg: str) -> None:
        if arg.strip():
            self._reply(codes.NO_ARGUMENTS)
            return
        if self.tls:
            self._reply(codes.TLS_ALREADY_ACTIVE)
            return
        context = self.server.tls_context
        if context is None:
            self._reply(codes.TLS_NOT_AVAILABLE)
            return
        self._send(codes.READY_TLS)
        # CVE-2011-0411: nothing sent before the handshake may be taken as a command after it.
        self._buf.clear()
        self._busy = True
        self._flush()
        self._tls_task = asyncio.ensure_future(self._start_tls(context))

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=60
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("TLS handshake failed with unknown[%s]: %s", self.ip, exc)
            self._mode = _CLOSED
            transport.abort()
            return
        if new_transport is None:
            self._mode = _CLOSED
            return
        self.transport = new_transport
        self.tls = True
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.tls_info = f"using {ssl_object.version()} with cipher {cipher[0]}"
        # RFC 3207 4.2: the session starts over; the client must send EHLO again.
        self.helo = ""
        self.esmtp = False
        self.txn = None
        self._buf.clear()
        self._resume()


_HANDLERS: dict[str, Callable[[SmtpSession, str], None]] = {
    "HELO": SmtpSession.cmd_helo,
    "EHLO": SmtpSession.cmd_ehlo,
    "MAIL": SmtpSession.cmd_mail,
    "RCPT": SmtpSession.cmd_rcpt,
    "DATA": SmtpSession.cmd_data,
    "RSET": SmtpSession.cmd_rset,
    "NOOP": SmtpSession.cmd_noop,
    "QUIT": SmtpSession.cmd_quit,
    "VRFY": SmtpSession.cmd_vrfy,
    "STARTTLS": SmtpSession.cmd_starttls,
    "XFORWARD": SmtpSession.cmd_xforward,
    "XCLIENT": SmtpSession.cmd_xclient,
}
_XFORWARD_NAMES = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"})
_XCLIENT_NAMES = frozenset({"NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR",
                            "DESTPORT"})  # fmt: skip


def _peer(peer: Any) -> tuple[str, int]:
    if not peer:
        return "unknown", 0
    host, port = str(peer[0]), int(peer[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port
