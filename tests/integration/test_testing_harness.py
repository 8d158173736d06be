"""The test harness itself, over the wire: the SMTP capture sink and real Postfix instances.

Topology (distinct loopback addresses, so that every log line and every captured client address
says who spoke):

    127.0.0.100 test client (untrusted)     127.0.0.10 border gateway (Postfix)
    127.0.0.30  mailgate (here: a sink)     127.0.0.20 internal server (Postfix)
    127.0.0.50  the internet (a sink)
"""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import trustme

from mailgate.testing.postfix import (
    InternalServer,
    PostfixInstance,
    border_gateway,
    free_port,
    internal_server,
    postfix_available,
)
from mailgate.testing.sink import Sink, refuse_unknown, wait_maildir

BORDER = "127.0.0.10"
INTERNAL = "127.0.0.20"
MAILGATE = "127.0.0.30"
INTERNET = "127.0.0.50"
CLIENT = "127.0.0.100"

DOMAIN = "corp.test"
KNOWN = ["alice@corp.test", "bob@corp.test"]

MESSAGE = (
    b"From: sender@example.net\r\n"
    b"To: alice@corp.test\r\n"
    b"Subject: harness\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"last line\r\n"
)


def smtp_from(source: str, peer: tuple[str, int]) -> smtplib.SMTP:
    return smtplib.SMTP(peer[0], peer[1], source_address=(source, 0), timeout=30)


def read_reply(stream: BinaryIO) -> bytes:
    """One complete, possibly multi-line, SMTP reply."""
    lines: list[bytes] = []
    while True:
        line = stream.readline()
        assert line, f"connection closed after {lines!r}"
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def refused_rcpt(
    source: str, peer: tuple[str, int], sender: str, recipient: str
) -> tuple[int, bytes]:
    """The reply to RCPT TO:<recipient> in a fresh session from ``source``."""
    with smtp_from(source, peer) as client:
        client.ehlo("client.test")
        code, _ = client.mail(sender)
        assert code == 250
        return client.rcpt(recipient)


# The sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(INTERNET, rcpt_reply=refuse_unknown(KNOWN)) as running:
        yield running


def test_sink_captures_a_message_sent_with_smtplib(sink: Sink) -> None:
    with smtp_from(CLIENT, sink.address) as client:
        client.ehlo("client.test")
        assert client.has_extn("pipelining")
        assert client.has_extn("enhancedstatuscodes")
        assert not client.has_extn("starttls")
        refused = client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE)
    assert refused == {}

    [message] = sink.wait_for(1, timeout=5)
    assert message.client_ip == CLIENT
    assert message.helo == "client.test"
    assert message.mail_from == "sender@example.net"
    assert message.rcpt_to == ["alice@corp.test"]
    assert message.tls is False
    # smtplib dot-stuffs the two dotted lines; the sink must hand back what was meant.
    assert message.data == MESSAGE
    assert message.header("Subject") == "harness"


def test_sink_refuses_a_recipient_through_the_hook(sink: Sink) -> None:
    with smtp_from(CLIENT, sink.address) as client:
        refused = client.sendmail(
            "sender@example.net", ["nobody@corp.test", "bob@corp.test"], MESSAGE
        )
    code, text = refused["nobody@corp.test"]
    assert code == 550
    assert text == b"5.1.1 <nobody@corp.test>: Recipient address rejected: User unknown"

    [message] = sink.wait_for(1, timeout=5)
    assert message.rcpt_to == ["bob@corp.test"]
    assert sink.counters.refused_recipients == 1


def test_sink_answers_a_pipelined_session_in_order(sink: Sink) -> None:
    # RFC 2920: the whole session in one write, content and QUIT included; every reply must
    # come back, in order. The second message is empty: "." right after the DATA line.
    session = (
        b"EHLO client.test\r\n"
        b"MAIL FROM:<sender@example.net> BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@corp.test> NOTIFY=NEVER\r\n"
        b"RCPT TO:<nobody@corp.test>\r\n"
        b"RCPT TO:<bob@corp.test>\r\n"
        b"DATA\r\n"
        b"Subject: pipelined\r\n\r\n..stuffed\r\n.\r\n"
        b"MAIL FROM:<>\r\n"
        b"RCPT TO:<alice@corp.test>\r\n"
        b"DATA\r\n"
        b".\r\n"
        b"QUIT\r\n"
    )
    with (
        socket.create_connection(sink.address, timeout=10, source_address=(CLIENT, 0)) as raw,
        raw.makefile("rb") as replies,
    ):
        assert read_reply(replies).startswith(b"220 ")
        raw.sendall(session)
        codes = [read_reply(replies)[:3].decode() for _ in range(12)]
        assert replies.read() == b""  # closed after QUIT
    assert codes == [
        "250",  # EHLO
        "250",  # MAIL
        "250",  # RCPT alice
        "550",  # RCPT nobody
        "250",  # RCPT bob
        "354",
        "250",  # end of data
        "250",  # MAIL FROM:<>
        "250",  # RCPT alice
        "354",
        "250",  # end of the empty message
        "221",
    ]

    first, empty = sink.wait_for(2, timeout=5)
    assert first.rcpt_to == ["alice@corp.test", "bob@corp.test"]
    assert first.mail_options == ["BODY=8BITMIME"]
    assert first.rcpt_options == [["NOTIFY=NEVER"], []]
    assert first.data == b"Subject: pipelined\r\n\r\n.stuffed\r\n"
    assert empty.mail_from == ""
    assert empty.data == b""


def test_sink_finds_the_end_of_data_split_across_packets(sink: Sink) -> None:
    with (
        socket.create_connection(sink.address, timeout=10, source_address=(CLIENT, 0)) as raw,
        raw.makefile("rb") as replies,
    ):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        read_reply(replies)
        raw.sendall(b"HELO client.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<bob@corp.test>\r\n")
        assert [read_reply(replies)[:3] for _ in range(3)] == [b"250"] * 3
        raw.sendall(b"DATA\r\n")
        assert read_reply(replies).startswith(b"354 ")
        # However the kernel groups these writes, the marker arrives in pieces at some point.
        for piece in (b"body", b"\r", b"\n", b".", b"\r", b"\n"):
            raw.sendall(piece)
        assert read_reply(replies).startswith(b"250 2.0.0 ")
    [message] = sink.wait_for(1, timeout=5)
    assert message.data == b"body\r\n"


def test_sink_greeting_override_and_drop() -> None:
    with Sink(INTERNET, greeting="421 4.3.2 Service shutting down") as closed:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtp_from(CLIENT, closed.address)
        assert refused.value.smtp_code == 421

    with Sink(INTERNET, drop_at="mail") as dropping:
        with smtp_from(CLIENT, dropping.address) as client:
            client.ehlo("client.test")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.mail("sender@example.net")
        assert dropping.messages == []


def test_sink_data_reply_override_does_not_store() -> None:
    with Sink(INTERNET, data_reply="554 5.7.1 Rejected by policy") as rejecting:
        with (
            smtp_from(CLIENT, rejecting.address) as client,
            pytest.raises(smtplib.SMTPDataError) as error,
        ):
            client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE)
        assert error.value.smtp_code == 554
        assert error.value.smtp_error == b"5.7.1 Rejected by policy"
        assert rejecting.messages == []
        assert rejecting.counters.refused_messages == 1


def test_sink_starttls() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("sink.test", INTERNET).configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with Sink(INTERNET, ssl_context=server_context) as secure:
        with smtp_from(CLIENT, secure.address) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            client.starttls(context=client_context)
            client.ehlo("client.test")
            assert not client.has_extn("starttls")
            client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE)
        [message] = secure.wait_for(1, timeout=5)
        assert message.tls is True
        assert message.data == MESSAGE
        assert secure.counters.tls_sessions == 1


def test_sink_command_line_writes_messages_for_other_processes(tmp_path: Path) -> None:
    port = free_port(INTERNET)
    maildir = tmp_path / "captured"
    command = [
        sys.executable,
        "-m",
        "mailgate.testing.sink",
        "--listen",
        f"{INTERNET}:{port}",
        "--maildir",
        str(maildir),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == f"listening on {INTERNET}:{port}"
            with smtp_from(CLIENT, (INTERNET, port)) as client:
                client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE)
            [message] = wait_maildir(maildir, 1, timeout=10)
            assert message.rcpt_to == ["alice@corp.test"]
            assert message.data == MESSAGE
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "stopped: sessions=1 messages=1" in output


# Postfix


@pytest.fixture(scope="module")
def postfix() -> None:
    # The test command installs Postfix: its absence is a failure, never a skip.
    assert postfix_available(), "Debian's postfix package is not installed"


@pytest.fixture(scope="module")
def mailgate_sink() -> Iterator[Sink]:
    """Stands in for mailgate: knows which recipients the internal servers have."""
    with Sink(MAILGATE, rcpt_reply=refuse_unknown(KNOWN)) as running:
        yield running


@pytest.fixture(scope="module")
def internet() -> Iterator[Sink]:
    with Sink(INTERNET) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_sinks(request: pytest.FixtureRequest) -> None:
    for name in ("mailgate_sink", "internet", "internal_relay"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()


@pytest.fixture(scope="module")
def border(postfix: None, mailgate_sink: Sink, internet: Sink) -> Iterator[PostfixInstance]:
    instance = border_gateway(
        BORDER,
        free_port(BORDER),
        relay_domains=[DOMAIN],
        inbound_next_hop=mailgate_sink.next_hop,
        outbound_relayhost=internet.next_hop,
        mynetworks=[f"{MAILGATE}/32"],
        verify_recipients=True,
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()


def border_address(border: PostfixInstance) -> tuple[str, int]:
    return (border.address, border.port)


def test_border_relays_mail_for_its_domain_to_mailgate(
    border: PostfixInstance, mailgate_sink: Sink, internet: Sink
) -> None:
    with smtp_from(CLIENT, border_address(border)) as client:
        assert client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE) == {}

    [message] = mailgate_sink.wait_for(1, timeout=30)
    assert message.client_ip == BORDER  # smtp_bind_address: the border speaks from its address
    assert message.rcpt_to == ["alice@corp.test"]
    assert message.mail_from == "sender@example.net"
    assert message.helo == "border.test"
    assert b"\r\n.a line that starts with a dot\r\n..two dots\r\n" in message.data
    border.wait_queue_empty(timeout=30)
    assert internet.messages == []


def test_border_relays_mail_from_mynetworks_to_the_internet(
    border: PostfixInstance, mailgate_sink: Sink, internet: Sink
) -> None:
    with smtp_from(MAILGATE, border_address(border)) as client:
        refused = client.sendmail("alice@corp.test", ["someone@example.net"], MESSAGE)
    assert refused == {}

    [message] = internet.wait_for(1, timeout=30)
    assert message.client_ip == BORDER
    assert message.rcpt_to == ["someone@example.net"]
    border.wait_queue_empty(timeout=30)
    assert mailgate_sink.messages == []


def test_border_refuses_relaying_for_an_untrusted_client(border: PostfixInstance) -> None:
    code, text = refused_rcpt(
        CLIENT, border_address(border), "sender@example.net", "someone@example.net"
    )
    assert code == 554
    assert text.startswith(b"5.7.1 ")
    assert b"<someone@example.net>: Relay access denied" in text


def test_border_refuses_a_recipient_that_mailgate_refuses(
    border: PostfixInstance, mailgate_sink: Sink
) -> None:
    # reject_unverified_recipient: the border probes mailgate (no DATA) and answers by the
    # result, so nothing is queued and no bounce is ever sent.
    code, text = refused_rcpt(
        CLIENT, border_address(border), "sender@example.net", "nobody@corp.test"
    )
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    assert b"<nobody@corp.test>: Recipient address rejected" in text
    assert mailgate_sink.counters.refused_recipients >= 1
    assert mailgate_sink.messages == []
    assert border.queue_ids() == []


@pytest.fixture(scope="module")
def internal_relay() -> Iterator[Sink]:
    """The internal server's relayhost: mailgate again, here only capturing."""
    with Sink(MAILGATE) as running:
        yield running


@pytest.fixture(scope="module")
def internal(postfix: None, internal_relay: Sink) -> Iterator[InternalServer]:
    instance = internal_server(
        INTERNAL,
        free_port(INTERNAL),
        domain=DOMAIN,
        mailboxes=["alice", "bob"],
        relayhost=internal_relay.next_hop,
        mynetworks=[f"{MAILGATE}/32"],
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()


def internal_address(internal: InternalServer) -> tuple[str, int]:
    return (internal.address, internal.port)


def test_internal_server_delivers_to_an_existing_mailbox(internal: InternalServer) -> None:
    with smtp_from(CLIENT, internal_address(internal)) as client:
        assert client.sendmail("sender@example.net", ["alice@corp.test"], MESSAGE) == {}

    [delivered] = internal.wait_mailbox("alice", 1, timeout=30)
    assert b"Subject: harness" in delivered
    assert b"\n.a line that starts with a dot\n" in delivered.replace(b"\r\n", b"\n")
    assert internal.mailbox_messages("bob") == []


@pytest.mark.parametrize("source", [CLIENT, MAILGATE], ids=["untrusted", "mynetworks"])
def test_internal_server_refuses_an_unknown_mailbox_at_rcpt(
    internal: InternalServer, source: str
) -> None:
    code, text = refused_rcpt(
        source, internal_address(internal), "sender@example.net", "nobody@corp.test"
    )
    assert code == 550
    assert text.startswith(b"5.1.1 ")
    assert b"<nobody@corp.test>: Recipient address rejected: User unknown" in text


def test_internal_server_relays_outgoing_mail_through_its_relayhost(
    internal: InternalServer, internal_relay: Sink
) -> None:
    with smtp_from(MAILGATE, internal_address(internal)) as client:
        assert client.sendmail("alice@corp.test", ["someone@example.net"], MESSAGE) == {}

    [message] = internal_relay.wait_for(1, timeout=30)
    assert message.client_ip == INTERNAL
    assert message.rcpt_to == ["someone@example.net"]
    internal.wait_queue_empty(timeout=30)
