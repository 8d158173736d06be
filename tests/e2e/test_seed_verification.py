"""The seed's scheme with recipient verification chained through the border gateway (SPEC
section 1 step 6): the Postfix border runs reject_unverified_recipient and probes mailgate;
mailgate, in "reject for unverified recipients" mode, probes the Postfix internal server. The
border therefore refuses unknown recipients at RCPT, nothing is queued and no bounce is sent."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from mailgate.testing.raw import RawSmtp
from tests.conftest import BORDER_IP, EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, wait_until
from tests.e2e.topology import Topology, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    yield from build(tmp_path_factory.mktemp("mailgate"), verify=True)


def border_rcpt(topology: Topology, recipient: str) -> tuple[int, str]:
    with RawSmtp(BORDER_IP, topology.border.port, EXTERNAL_CLIENT_IP, timeout=60) as c:
        c.reply()
        c.command("EHLO sender.example")
        c.command("MAIL FROM:<alice@ext.org>")
        reply = c.command(f"RCPT TO:<{recipient}>")
        return reply.code, reply.last


def test_existing_mailbox_is_delivered(topology: Topology) -> None:
    before = len(topology.internal.mailbox_messages("bob"))
    refused = topology.send_from_internet(
        "alice@ext.org", ["bob@example.com"], b"Subject: hi\r\n\r\nx\r\n"
    )
    assert refused == {}
    topology.internal.wait_mailbox("bob", before + 1, timeout=30)


def test_unknown_recipient_is_refused_by_the_border_and_nothing_is_queued(
    topology: Topology,
) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        topology.send_from_internet(
            "alice@ext.org", ["nobody@example.com"], b"Subject: typo\r\n\r\nx\r\n"
        )
    code, text = refused.value.recipients["nobody@example.com"]
    assert code == 550
    assert text.startswith(b"5.1.1 <nobody@example.com>: Recipient address rejected:")
    # mailgate refused the border's probe with the internal server's own answer.
    assert b"User unknown in virtual mailbox table" in text
    topology.border.wait_queue_empty(30)
    assert topology.gateway.queue() == []
    assert topology.internet.messages == []  # no bounce anywhere


def test_internal_server_down_means_4xx_everywhere_and_a_fresh_address_works_once_back(
    topology: Topology,
) -> None:
    topology.internal.stop()
    try:
        code, text = border_rcpt(topology, "dave@example.com")
        assert 400 <= code < 500, text
        with RawSmtp(GATEWAY_IP, topology.gateway.port, EXTERNAL_CLIENT_IP) as c:
            c.reply()
            c.command("EHLO border.test")
            c.command("MAIL FROM:<alice@ext.org>")
            reply = c.command("RCPT TO:<erin@example.com>")
            assert reply.code == 450
            assert reply.last.startswith(
                "4.1.1 <erin@example.com>: Recipient address rejected: unverified address:"
            )
    finally:
        topology.internal.start()
    assert topology.gateway.queue() == []
    # Back up: an address never seen before is verified and accepted, through the border.
    before = len(topology.internal.mailbox_messages("carol"))
    code, text = border_rcpt(topology, "carol@example.com")
    assert code == 250, text
    topology.send_from_internet(
        "alice@ext.org", ["carol@example.com"], b"Subject: back\r\n\r\nx\r\n"
    )
    topology.internal.wait_mailbox("carol", before + 1, timeout=30)


def test_trusted_internal_server_is_not_verified(topology: Topology) -> None:
    probes = topology.gateway.control("stats").get("verify.probes", 0)
    with RawSmtp(GATEWAY_IP, topology.gateway.port, INTERNAL_IP) as c:
        c.reply()
        c.command("EHLO internal.test")
        c.command("MAIL FROM:<bob@example.com>")
        assert str(c.command("RCPT TO:<nobody-at-all@example.com>")) == "250 2.1.5 Ok"
        c.command("RSET")
    assert topology.gateway.control("stats").get("verify.probes", 0) == probes
    wait_until(lambda: topology.gateway.queue() == [], 10, "nothing queued")
