"""The SMTP server over the wire: greeting, extensions, command sequencing and syntax replies,
PIPELINING, the Received header, SMTPUTF8 and DSN parameters (RFC 5321, 2920, 6531, 3461)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway], sink: Sink) -> Gateway:
    return start_gateway(
        {
            "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}],
            "main": {"trusted_networks": ["192.0.2.0/24"]},
        }
    )


def raw(gw: Gateway, source: str = EXTERNAL_CLIENT_IP) -> RawSmtp:
    client = RawSmtp(GATEWAY_IP, gw.port, source)
    greeting = client.reply()
    assert (greeting.code, greeting.last) == (220, "mailgate.test ESMTP mailgate")
    return client


def test_ehlo_lists_the_extensions_and_nothing_more(gw: Gateway) -> None:
    with raw(gw) as c:
        reply = c.command("EHLO client.example")
    assert reply.code == 250
    assert reply.lines == [
        "mailgate.test",
        "PIPELINING",
        "SIZE 10240000",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
    ]  # no STARTTLS without a certificate, no VRFY, ETRN or CHUNKING


def test_helo_is_accepted(gw: Gateway) -> None:
    with raw(gw) as c:
        assert str(c.command("HELO client.example")) == "250 mailgate.test"
        assert str(c.command("HELO")) == "501 Syntax: HELO hostname"
        assert str(c.command("EHLO")) == "501 Syntax: EHLO hostname"


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["RCPT TO:<bob@example.com>"], "503 5.5.1 Error: need MAIL command"),
        (["DATA"], "503 5.5.1 Error: need RCPT command"),
        (["MAIL FROM:<a@ext.org>", "MAIL FROM:<a@ext.org>"], "503 5.5.1 Error: nested MAIL command"),
        (["MAIL FROM:<a@ext.org>", "DATA"], "554 5.5.1 Error: no valid recipients"),
        (["MAIL TO:<a@ext.org>"], "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (["MAIL FROM:<a@ext.org>", "RCPT FROM:<b@example.com>"],
         "501 5.5.4 Syntax: RCPT TO:<address>"),
        (["MAIL FROM:<a@@ext.org>"], "501 5.1.7 Bad sender address syntax"),
        (["MAIL FROM:<a@ext.org"], "501 5.1.7 Bad sender address syntax"),
        (["MAIL FROM:<a@ext.org>", "RCPT TO:<>"], "501 5.1.3 Bad recipient address syntax"),
        (["MAIL FROM:<a@ext.org>", "RCPT TO:<bob@exa mple.com>"],
         "501 5.1.3 Bad recipient address syntax"),
        (["MAIL FROM:<a@ext.org> FOO=BAR"], "555 5.5.4 Unsupported option: FOO"),
        (["MAIL FROM:<a@ext.org> BODY=BINARYMIME"], "555 5.5.4 Unsupported option: BODY=BINARYMIME"),
        (["MAIL FROM:<a@ext.org> SIZE=abc"], "501 5.5.4 Bad SIZE parameter syntax"),
        (["MAIL FROM:<a@ext.org>", "RCPT TO:<bob@example.com> NOTIFY=NEVER,SUCCESS"],
         "501 5.5.4 Bad NOTIFY parameter syntax"),
        (["HELP"], "502 5.5.2 Error: command not recognized"),
        (["VRFY bob@example.com"], "502 5.5.1 VRFY command is disabled"),
        (["RSET extra"], "501 5.5.4 Syntax: command takes no arguments"),
        (["NOOP"], "250 2.0.0 Ok"),
        (["MAIL FROM:<a@ext.org>", "RSET"], "250 2.0.0 Ok"),
    ],
)  # fmt: skip
def test_command_replies(gw: Gateway, commands: list[str], expected: str) -> None:
    with raw(gw) as c:
        c.command("EHLO client.example")
        for command in commands[:-1]:
            assert c.command(command).code < 400, command
        assert str(c.command(commands[-1])) == expected


def test_quit(gw: Gateway) -> None:
    with raw(gw) as c:
        assert str(c.command("QUIT")) == "221 2.0.0 Bye"
        assert c.closed()


def test_http_request_is_refused_and_closed(gw: Gateway) -> None:
    with raw(gw) as c:
        assert (
            str(c.command("GET / HTTP/1.1")) == "221 2.7.0 Error: I can break rules, too. Goodbye."
        )
        assert c.closed()


def test_pipelined_group_gets_every_reply_in_order(gw: Gateway, sink: Sink) -> None:
    with raw(gw) as c:
        c.command("EHLO client.example")
        c.send(
            "MAIL FROM:<alice@ext.org>\r\n"
            "RCPT TO:<bob@example.com>\r\n"
            "RCPT TO:<eve@elsewhere.org>\r\n"
            "RCPT TO:<carol@EXAMPLE.COM>\r\n"
            "DATA\r\n"
        )
        replies = [str(r) for r in c.replies(5)]
        assert replies == [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "554 5.7.1 <eve@elsewhere.org>: Relay access denied",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
        ]
        # The message and the next transaction in one write, too.
        c.send(
            "Subject: pipelined\r\n\r\nbody\r\n.\r\n"
            "MAIL FROM:<>\r\nRCPT TO:<dave@example.com>\r\nDATA\r\n"
        )
        first, mail, rcpt, data = c.replies(4)
        assert re.fullmatch(r"2\.0\.0 Ok: queued as [0-9A-Z]{14}", first.last)
        assert (mail.code, rcpt.code, data.code) == (250, 250, 354)
        c.send("Subject: bounce-like\r\n\r\n.\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert str(c.reply()) == "221 2.0.0 Bye"
    messages = sink.wait_for(2)
    by_subject = {m.parsed()["Subject"]: m for m in messages}
    assert by_subject["pipelined"].rcpt_to == ["bob@example.com", "carol@EXAMPLE.COM"]
    assert by_subject["bounce-like"].mail_from == ""


def test_delivered_content_is_unchanged_but_for_a_received_header(gw: Gateway, sink: Sink) -> None:
    content = (
        b"From: Alice <alice@ext.org>\r\nTo: bob@example.com\r\nSubject: exact\r\n\r\n"
        b"line one\r\n.leading dot\r\n..two dots\r\n\r\ntrailing\r\n"
    )
    with gw.client() as client:
        client.ehlo("client.example")
        client.sendmail("alice@ext.org", ["bob@example.com"], content)
    (message,) = sink.wait_for(1)
    received, sep, rest = message.data.partition(b"\r\n\tfor <bob@example.com>; ")
    assert sep, message.data[:300]
    assert received.startswith(b"Received: from client.example (unknown [127.0.0.100])\r\n")
    assert re.search(rb"\tby mailgate\.test \(mailgate\) with ESMTP id [0-9A-Z]{14}$", received)
    date_line, _, delivered = rest.partition(b"\r\n")
    assert re.fullmatch(rb"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}", date_line)
    assert delivered == content
    assert message.client_ip == GATEWAY_IP  # delivery binds the configured source address


def test_duplicate_recipients_are_delivered_once(gw: Gateway, sink: Sink) -> None:
    with gw.client() as client:
        client.sendmail(
            "alice@ext.org",
            ["bob@example.com", "bob@example.com", "bob@EXAMPLE.com."],
            b"Subject: dup\r\n\r\nx\r\n",
        )
    (message,) = sink.wait_for(1)
    assert message.rcpt_to == ["bob@example.com"]


def test_smtputf8_address_needs_the_smtputf8_parameter(gw: Gateway, sink: Sink) -> None:
    with raw(gw) as c:
        c.command("EHLO client.example")
        assert c.command("MAIL FROM:<alice@ext.org>").code == 250
        reply = c.command("RCPT TO:<josé@example.com>")
        assert str(reply) == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        c.command("RSET")
        assert c.command("MAIL FROM:<alice@ext.org> SMTPUTF8 BODY=8BITMIME").code == 250
        assert str(c.command("RCPT TO:<josé@example.com>")) == "250 2.1.5 Ok"
        assert c.command("DATA").code == 354
        c.send("Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n.\r\n".encode())
        assert c.reply().code == 250
    (message,) = sink.wait_for(1)
    assert message.rcpt_to == ["josé@example.com"]
    assert "SMTPUTF8" in message.mail_options
    assert "BODY=8BITMIME" in message.mail_options
    assert b"d\xc3\xa9j\xc3\xa0 vu" in message.data


def test_dsn_parameters_are_passed_on(gw: Gateway, sink: Sink) -> None:
    with raw(gw) as c:
        c.command("EHLO client.example")
        assert c.command("MAIL FROM:<alice@ext.org> RET=HDRS ENVID=abc+2Bdef").code == 250
        reply = c.command(
            "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40example.com"
        )
        assert reply.code == 250
        c.command("DATA")
        c.send("Subject: dsn\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    (message,) = sink.wait_for(1)
    assert "RET=HDRS" in message.mail_options
    assert "ENVID=abc+2Bdef" in message.mail_options
    # xtext (RFC 3461) encodes only "+", "=" and characters outside "!".."~".
    assert message.rcpt_options == [["NOTIFY=FAILURE,SUCCESS", "ORCPT=rfc822;bob@example.com"]]


def test_trusted_client_relays_anywhere(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    border = start_sink("127.0.0.10")
    gw = start_gateway(
        {
            "main": {
                "trusted_networks": ["127.0.0.30/32"],
                "destination": "border_gateway",
                "relayhost": {"host": "127.0.0.10", "port": border.port},
            }
        }
    )
    with gw.client(source="127.0.0.30") as client:
        client.sendmail("bob@example.com", ["friend@elsewhere.org"], b"Subject: out\r\n\r\nx\r\n")
    (message,) = border.wait_for(1)
    assert message.rcpt_to == ["friend@elsewhere.org"]
    with gw.client() as client:  # the same from an untrusted address: refused
        client.ehlo("x")
        client.mail("bob@example.com")
        code, text = client.rcpt("friend@elsewhere.org")
    assert (code, text) == (554, b"5.7.1 <friend@elsewhere.org>: Relay access denied")
