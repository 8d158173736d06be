"""Delivery status notifications: RFC 3464 multipart/report messages (RFC 6522), sent with the
null sender to the original sender, as Postfix's bounce(8).

The returned original is limited to `BOUNCE_SIZE_LIMIT` bytes (Postfix bounce_size_limit):
beyond it, or with RET=HDRS, only its header section is returned, as it is in a success
notice (NOTIFY=SUCCESS, RFC 3461 section 4.3). Every value taken from
the original message or from a remote server is reduced to one printable line before it is
written into a header field, so none can add a header of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from mailgate.smtp.address import AddressError, parse_path
from mailgate.smtp.data import header_section
from mailgate.types import ClientInfo, Envelope, Recipient

BOUNCE_SIZE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class RecipientReport:
    recipient: Recipient
    action: str  # failed | delayed | delivered | relayed
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: str  # "smtp; 550 5.1.1 ..." or free text
    remote_mta: str | None = None


def _line(text: str, limit: int = 900) -> str:
    """One printable line, safe inside a header field."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:limit]


def _address(text: str) -> str:
    return _line(text, 500).replace("<", "").replace(">", "")


def build_report(
    *,
    original: Envelope,
    content: bytes,
    reports: Sequence[RecipientReport],
    hostname: str,
    now: datetime,
) -> bytes:
    """The whole DSN message (headers and body, CRLF line ends)."""
    boundary = f"{original.qid}.{secrets.token_hex(8)}/{_line(hostname, 200)}"
    failed = any(r.action == "failed" for r in reports)
    delayed = all(r.action == "delayed" for r in reports)
    if failed:
        subject = "Undelivered Mail Returned to Sender"
    elif delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    host = _line(hostname, 200)
    headers = [
        f"From: MAILER-DAEMON@{host} (Mail Delivery System)",
        f"To: <{_address(original.sender)}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{original.qid}.{secrets.token_hex(6)}@{host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]
    parts = [
        "\r\n".join(headers),
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        _human_text(original, reports, host, failed),
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        _status_fields(original, reports, host),
        f"--{boundary}",
    ]
    text = "\r\n".join(parts) + "\r\n"
    full = original.prepend.encode("utf-8") + content
    if not failed:  # RFC 3461 section 4.3: a report without a failure returns the headers
        returned_type = "text/rfc822-headers"
        returned = header_section(full)
        description = "Message Headers"
    elif original.ret == "HDRS" or len(full) > BOUNCE_SIZE_LIMIT:
        returned_type = "text/rfc822-headers"
        returned = header_section(full)
        description = "Undelivered Message Headers"
    else:
        returned_type = "message/rfc822"
        returned = full
        description = "Undelivered Message"
    tail = f"Content-Description: {description}\r\nContent-Type: {returned_type}\r\n"
    tail += "Content-Transfer-Encoding: 8bit\r\n\r\n"
    if not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    closing = f"\r\n--{boundary}--\r\n".encode()
    return text.encode("utf-8") + tail.encode("utf-8") + returned + closing


def _human_text(
    original: Envelope, reports: Sequence[RecipientReport], host: str, failed: bool
) -> str:
    lines = [f"This is the mail system at host {host}.", ""]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    elif all(r.action in ("delivered", "relayed") for r in reports):
        lines += [  # Postfix's words for a success notice
            "Your message was successfully delivered to the destination(s)",
            "listed below. If the message was delivered to mailbox you will",
            "receive no further notifications. Otherwise you may still receive",
            "notifications of mail delivery errors from other systems.",
        ]
    else:
        lines += ["This is a report about your message, which is attached below."]
    lines.append("")
    for report in reports:
        diagnostic = _line(report.diagnostic)
        lines.append(f"<{_address(report.recipient.address)}>: {diagnostic}")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(original: Envelope, reports: Sequence[RecipientReport], host: str) -> str:
    arrival = format_datetime(datetime.fromtimestamp(original.arrival).astimezone())
    fields = [f"Reporting-MTA: dns; {host}", f"X-Mailgate-Queue-ID: {original.qid}"]
    if original.envid:
        fields.append(f"Original-Envelope-Id: {_line(original.envid, 100)}")
    fields.append(f"X-Mailgate-Sender: rfc822; {_address(original.sender)}")
    fields.append(f"Arrival-Date: {arrival}")
    blocks = ["\r\n".join(fields)]
    for report in reports:
        rcpt = report.recipient
        block = [f"Final-Recipient: rfc822; {_address(rcpt.address)}"]
        if rcpt.orcpt:
            block.append(f"Original-Recipient: {_line(rcpt.orcpt, 500)}")
        block += [f"Action: {report.action}", f"Status: {_line(report.status, 20)}"]
        if report.remote_mta:
            block.append(f"Remote-MTA: dns; {_line(report.remote_mta, 200)}")
        if report.diagnostic.startswith("smtp; "):
            block.append(f"Diagnostic-Code: {_line(report.diagnostic)}")
        else:
            block.append(f"Diagnostic-Code: X-Mailgate; {_line(report.diagnostic)}")
        blocks.append("\r\n".join(block))
    return "\r\n\r\n".join(blocks) + "\r\n"


def dsn_envelope(original: Envelope, qid: str, size: int, now: float, hostname: str) -> Envelope:
    """The envelope of a DSN for `original`: null sender, to the original sender."""
    stamp = format_datetime(datetime.fromtimestamp(now).astimezone())
    return Envelope(
        qid=qid,
        sender="",
        recipients=[Recipient(address=original.sender, domain=_routing_domain(original.sender))],
        client=ClientInfo(ip="127.0.0.1", helo="", name="localhost", proto="local"),
        arrival=now,
        size=size,
        body="8BITMIME",
        smtputf8=original.smtputf8,
        prepend=f"Received: by {_line(hostname, 200)} (mailgate) id {qid}; {stamp}\r\n",
    )


def _routing_domain(sender: str) -> str:
    """The canonical domain of the sender's address (as policy and routing compare them)."""
    try:
        mailbox = parse_path(sender, allow_null=False)
    except AddressError:
        return sender.rpartition("@")[2].lower()
    assert mailbox is not None
    return mailbox.domain
