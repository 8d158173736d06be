"""Delivery status notifications (mailgate.dsn): RFC 3464 reports in an RFC 6522
multipart/report, read back with Python's email package as a recipient's MUA would.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from typing import Any

import pytest

from mailgate.dsn import BOUNCE_SIZE_LIMIT, RecipientReport, build_report, dsn_envelope
from mailgate.types import ClientInfo, Envelope, Recipient

HOST = "gw.example.com"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
QID = "0000ABCDEFGHJK"
CONTENT = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <orig@example.org>\r\n"
    b"\r\n"
    b"Body line one.\r\n"
    b"Body line two.\r\n"
)
INJECTION = "\r\nBcc: x@evil.example"


def envelope(**changes: Any) -> Envelope:
    data: dict[str, Any] = {
        "qid": QID,
        "sender": "alice@example.org",
        "recipients": [
            Recipient("bob@example.com", "example.com", orcpt="rfc822;Bob@Example.com"),
            Recipient("carol@example.com", "example.com"),
        ],
        "client": ClientInfo(ip="192.0.2.1"),
        "arrival": 1_700_000_000.0,
        "envid": "ENV-42",
        "prepend": "Received: from client.example.org by gw.example.com id QID\r\n",
    }
    data.update(changes)
    return Envelope(**data)


def failed(recipient: Recipient, **changes: Any) -> RecipientReport:
    data: dict[str, Any] = {
        "recipient": recipient,
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected",
        "remote_mta": "mail.example.com",
    }
    data.update(changes)
    return RecipientReport(**data)


def build(original: Envelope, reports: list[RecipientReport], content: bytes = CONTENT) -> bytes:
    return build_report(original=original, content=content, reports=reports, hostname=HOST, now=NOW)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def status_blocks(message: EmailMessage) -> list[Message]:
    status = parts(message)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    assert all(isinstance(block, Message) for block in blocks)
    return [block for block in blocks if isinstance(block, Message)]


# -- structure -------------------------------------------------------------------------------


def test_multipart_report_structure() -> None:
    original = envelope()
    message = parse(build(original, [failed(original.recipients[0])]))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]


def test_top_level_headers() -> None:
    original = envelope()
    message = parse(build(original, [failed(original.recipients[0])]))
    assert message["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith(f"@{HOST}>")
    assert message["Message-ID"].startswith(f"<{QID}.")


@pytest.mark.parametrize(
    ("actions", "subject"),
    [
        (["failed"], "Undelivered Mail Returned to Sender"),
        (["failed", "delayed"], "Undelivered Mail Returned to Sender"),
        (["delayed"], "Delayed Mail (still being retried)"),
        (["delayed", "delayed"], "Delayed Mail (still being retried)"),
        (["delivered"], "Successful Mail Delivery Report"),
        (["relayed"], "Successful Mail Delivery Report"),
    ],
)
def test_subject_follows_actions(actions: list[str], subject: str) -> None:
    original = envelope()
    reports = [
        failed(
            original.recipients[i],
            action=action,
            status="4.4.1" if action == "delayed" else "5.1.1",
        )
        for i, action in enumerate(actions)
    ]
    assert parse(build(original, reports))["Subject"] == subject


def test_human_readable_part() -> None:
    original = envelope()
    message = parse(build(original, [failed(original.recipients[0])]))
    text = parts(message)[0].get_content()
    assert f"This is the mail system at host {HOST}." in text
    assert (
        "<bob@example.com>: smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected" in text
    )


# -- the delivery-status fields (RFC 3464 section 2) -----------------------------------------


def test_per_message_fields() -> None:
    original = envelope()
    per_message = status_blocks(parse(build(original, [failed(original.recipients[0])])))[0]
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    arrival = email.utils.parsedate_to_datetime(per_message["Arrival-Date"])
    assert arrival.timestamp() == 1_700_000_000.0


def test_no_envelope_id_without_envid() -> None:
    original = envelope(envid=None)
    per_message = status_blocks(parse(build(original, [failed(original.recipients[0])])))[0]
    assert per_message["Original-Envelope-Id"] is None


def test_per_recipient_fields() -> None:
    original = envelope()
    bob, carol = original.recipients
    reports = [
        failed(bob),
        failed(
            carol,
            action="delayed",
            status="4.4.1",
            diagnostic="connect to mail.example.com[192.0.2.25]:25: Connection refused",
            remote_mta=None,
        ),
    ]
    blocks = status_blocks(parse(build(original, reports)))
    assert len(blocks) == 3
    first, second = blocks[1], blocks[2]
    assert list(first.items()) == [
        ("Final-Recipient", "rfc822; bob@example.com"),
        ("Original-Recipient", "rfc822;Bob@Example.com"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; mail.example.com"),
        ("Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected"),
    ]
    # No ORCPT: no Original-Recipient; no remote server: no Remote-MTA.
    assert list(second.items()) == [
        ("Final-Recipient", "rfc822; carol@example.com"),
        ("Action", "delayed"),
        ("Status", "4.4.1"),
        (
            "Diagnostic-Code",
            "X-Mailgate; connect to mail.example.com[192.0.2.25]:25: Connection refused",
        ),
    ]


# -- the returned message --------------------------------------------------------------------


def test_full_original_returned() -> None:
    original = envelope()
    returned = parts(parse(build(original, [failed(original.recipients[0])])))[2]
    assert returned.get_content_type() == "message/rfc822"
    payload = returned.get_payload()
    assert isinstance(payload, list)
    assert len(payload) == 1
    inner = payload[0]
    assert isinstance(inner, Message)
    assert inner["Subject"] == "quarterly report"
    assert inner["Received"].startswith("from client.example.org")
    assert inner.get_payload() == "Body line one.\r\nBody line two.\r\n"


def _headers_only(returned: EmailMessage) -> str:
    assert returned.get_content_type() == "text/rfc822-headers"
    text = returned.get_content()
    assert isinstance(text, str)
    assert "quarterly report" in text
    assert "Body line" not in text
    return text


def test_ret_hdrs_returns_headers_only() -> None:
    original = envelope(ret="HDRS")
    raw = build(original, [failed(original.recipients[0])])
    text = _headers_only(parts(parse(raw))[2])
    assert text.replace("\r\n", "\n") == (
        "Received: from client.example.org by gw.example.com id QID\n"
        "From: Alice <alice@example.org>\n"
        "To: bob@example.com\n"
        "Subject: quarterly report\n"
        "Message-ID: <orig@example.org>\n"
    )
    assert b"Body line" not in raw


def test_large_original_returns_headers_only() -> None:
    original = envelope(ret="FULL")
    content = CONTENT + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 50
    assert len(original.prepend) + len(content) > BOUNCE_SIZE_LIMIT
    raw = build(original, [failed(original.recipients[0])], content)
    _headers_only(parts(parse(raw))[2])
    assert b"yyyy" not in raw
    assert len(raw) < 10_000


def test_original_at_the_limit_is_returned_whole() -> None:
    original = envelope()
    padding = BOUNCE_SIZE_LIMIT - len(original.prepend) - len(CONTENT)
    content = CONTENT + b"z" * (padding - 2) + b"\r\n"
    assert len(original.prepend) + len(content) == BOUNCE_SIZE_LIMIT
    returned = parts(parse(build(original, [failed(original.recipients[0])], content)))[2]
    assert returned.get_content_type() == "message/rfc822"


# -- header injection --------------------------------------------------------------------------


def _all_header_names(message: EmailMessage) -> list[str]:
    names = list(message.keys())
    for part in parts(message):
        names += part.keys()
    for block in status_blocks(message):
        names += block.keys()
    return names


def test_hostile_values_cannot_add_headers() -> None:
    recipient = Recipient(
        f"bob@example.com{INJECTION}", "example.com", orcpt=f"rfc822;bob@example.com{INJECTION}"
    )
    original = envelope(
        sender=f"alice@example.org{INJECTION}",
        envid=f"ENV{INJECTION}",
        recipients=[recipient],
    )
    report = failed(
        recipient,
        status=f"5.1.1{INJECTION}",
        diagnostic=f"smtp; 550 5.1.1 no such user{INJECTION}",
        remote_mta=f"mail.example.com{INJECTION}",
    )
    raw = build(original, [report])
    message = parse(raw)
    names = _all_header_names(message)
    assert "Bcc" not in names
    assert message["Bcc"] is None
    assert list(message.keys()) == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    assert [p.keys() for p in parts(message)] == [
        ["Content-Description", "Content-Type"],
        ["Content-Description", "Content-Type"],
        ["Content-Description", "Content-Type", "Content-Transfer-Encoding"],
    ]
    blocks = status_blocks(message)
    assert blocks[0].keys() == [
        "Reporting-MTA",
        "X-Mailgate-Queue-ID",
        "Original-Envelope-Id",
        "X-Mailgate-Sender",
        "Arrival-Date",
    ]
    assert blocks[1].keys() == [
        "Final-Recipient",
        "Original-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
    ]
    # No line of the report starts a header of its own.
    report_text = raw.split(b"Content-Type: message/rfc822")[0]
    assert b"\r\nBcc:" not in report_text
    assert b"\nBcc:" not in report_text


@pytest.mark.parametrize("separator", ["\n", "\r", "\u2028", "\x85", "\x00"])
def test_diagnostic_is_one_line(separator: str) -> None:
    original = envelope()
    report = failed(
        original.recipients[0], diagnostic=f"smtp; 550 first{separator}Bcc: x@evil.example"
    )
    message = parse(build(original, [report]))
    assert "Bcc" not in _all_header_names(message)
    assert status_blocks(message)[1]["Diagnostic-Code"] == "smtp; 550 first Bcc: x@evil.example"


# -- the DSN's own envelope ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("alice@example.org", "example.org"),
        ("Alice@Example.ORG", "example.org"),
        ("alice@exämple.org", "xn--exmple-cua.org"),
        ('"a@b"@Example.org', "example.org"),
        ("alice@[192.0.2.1]", "[192.0.2.1]"),
        # The canonical literal form keeps its "IPv6:" tag, which routing relies on.
        ("alice@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    ],
)
def test_dsn_envelope_routes_to_sender_domain(sender: str, domain: str) -> None:
    original = envelope(sender=sender, smtputf8=not sender.isascii())
    dsn = dsn_envelope(original, "0000ZZZZZZZZZZ", 1234, 1_700_000_100.0, HOST)
    assert dsn.sender == ""
    assert dsn.is_bounce
    assert [(r.address, r.domain) for r in dsn.recipients] == [(sender, domain)]
    assert dsn.qid == "0000ZZZZZZZZZZ"
    assert dsn.size == 1234
    assert dsn.arrival == 1_700_000_100.0
    assert dsn.smtputf8 is original.smtputf8
    assert dsn.recipients[0].notify == ()


def test_dsn_envelope_received_header() -> None:
    dsn = dsn_envelope(
        envelope(), "0000ZZZZZZZZZZ", 10, 1_700_000_100.0, f"gw.example.com{INJECTION}"
    )
    assert dsn.prepend.startswith(
        "Received: by gw.example.com Bcc: x@evil.example (mailgate) id 0000ZZZZZZZZZZ; "
    )
    assert dsn.prepend.endswith("\r\n")
    assert dsn.prepend.count("\r\n") == 1
    assert "\n" not in dsn.prepend[:-2]


def test_success_notice_returns_the_headers_only_in_postfix_words() -> None:
    relayed = RecipientReport(
        Recipient("bob@example.com", "example.com", notify=("SUCCESS",)),
        "relayed",
        "2.0.0",
        "smtp; 250 2.0.0 Ok: queued as 4F3K2",
        "mx.example.com",
    )
    raw = build_report(original=envelope(), content=CONTENT, reports=[relayed], hostname=HOST,
                       now=NOW)  # fmt: skip
    dsn = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(dsn, EmailMessage)
    assert dsn["Subject"] == "Successful Mail Delivery Report"
    text, status, returned = list(dsn.iter_parts())
    assert "Your message was successfully delivered to the destination(s)" in text.get_content()
    assert "<bob@example.com>: smtp; 250 2.0.0 Ok: queued as 4F3K2" in text.get_content()
    [_, fields] = status.get_payload()
    assert (fields["Action"], fields["Status"]) == ("relayed", "2.0.0")
    assert fields["Remote-MTA"] == "dns; mx.example.com"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Description"] == "Message Headers"
    assert b"Subject: quarterly report" in raw
    assert b"Body line one." not in raw
