"""The seed's integration for real (SPEC section 1, steps 1-3), recipient verification off:
Postfix border gateway, mailgate, Postfix internal server (see tests/e2e/topology.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgate.testing.raw import RawSmtp
from tests.conftest import BORDER_IP, EXTERNAL_CLIENT_IP, GATEWAY_IP, wait_until
from tests.e2e.topology import Topology, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    yield from build(tmp_path_factory.mktemp("mailgate"), verify=False)


@pytest.fixture(autouse=True)
def _clean(topology: Topology) -> None:
    topology.internet.clear()
    topology.partner.clear()


def test_inbound_mail_reaches_the_internal_mailbox(topology: Topology) -> None:
    before = len(topology.internal.mailbox_messages("bob"))
    refused = topology.send_from_internet(
        "alice@ext.org",
        ["bob@example.com"],
        b"Subject: inbound\r\nMessage-ID: <in1@ext.org>\r\n\r\nhi\r\n",
    )
    assert refused == {}
    message = topology.internal.wait_mailbox("bob", before + 1, timeout=30)[-1]
    assert b"Message-ID: <in1@ext.org>" in message
    # The message went through all three: the border, mailgate, then the internal server.
    hops = [
        line for line in message.split(b"\r\n\r\n")[0].splitlines() if line.startswith(b"Received:")
    ]
    assert len(hops) == 3
    assert b"by mailgate.test (mailgate)" in message
    assert b"from border.test (unknown [127.0.0.10])" in message


def test_outbound_mail_goes_through_mailgate_to_the_border(topology: Topology) -> None:
    refused = topology.send_from_inside(
        "bob@example.com", ["friend@elsewhere.org"], b"Subject: outbound\r\n\r\nbye\r\n"
    )
    assert refused == {}
    (message,) = topology.internet.wait_for(1, timeout=30)
    assert message.rcpt_to == ["friend@elsewhere.org"]
    assert message.client_ip == BORDER_IP
    assert b"by mailgate.test (mailgate)" in message.data
    # mailgate found the border gateway by the MX record of its name.
    assert b"from mailgate.test (unknown [127.0.0.20])" in message.data


def test_untrusted_client_cannot_relay_through_mailgate(topology: Topology) -> None:
    with RawSmtp(GATEWAY_IP, topology.gateway.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO spammer.example")
        c.command("MAIL FROM:<spam@ext.org>")
        assert str(c.command("RCPT TO:<victim@elsewhere.org>")) == (
            "554 5.7.1 <victim@elsewhere.org>: Relay access denied"
        )
        # Nor through the border, which only relays its local domain.
    with RawSmtp(BORDER_IP, topology.border.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO spammer.example")
        c.command("MAIL FROM:<spam@ext.org>")
        assert c.command("RCPT TO:<victim@elsewhere.org>").code == 554


def test_domain_route_wins_over_the_relayhost(topology: Topology) -> None:
    topology.send_from_inside(
        "bob@example.com", ["ceo@partner.test"], b"Subject: partner\r\n\r\nx\r\n"
    )
    (message,) = topology.partner.wait_for(1, timeout=30)
    assert message.rcpt_to == ["ceo@partner.test"]
    assert topology.internet.messages == []


def test_nonexistent_recipient_gets_a_dsn_back_to_the_sender(topology: Topology) -> None:
    refused = topology.send_from_internet(
        "alice@ext.org", ["nobody@example.com"], b"Subject: typo\r\n\r\nwho?\r\n"
    )
    assert refused == {}  # without recipient verification, accepted then bounced
    (dsn,) = topology.internet.wait_for(1, timeout=30)
    assert (dsn.mail_from, dsn.rcpt_to) == ("", ["alice@ext.org"])
    text = dsn.data.decode("utf-8", "replace")
    assert "Final-Recipient: rfc822; nobody@example.com" in text
    assert "Status: 5.1.1" in text
    assert "User unknown in virtual mailbox table" in text
    assert "Subject: typo" in text


def test_internal_server_down_mail_waits_and_is_delivered_when_it_is_back(
    topology: Topology,
) -> None:
    before = len(topology.internal.mailbox_messages("carol"))
    topology.internal.stop()
    try:
        topology.send_from_internet(
            "alice@ext.org", ["carol@example.com"], b"Subject: patience\r\n\r\nx\r\n"
        )
        (item,) = wait_until(
            lambda: [i for i in topology.gateway.queue() if i["recipients"][0]["reason"]], 30,
            "the message deferred at mailgate",
        )  # fmt: skip
        assert "Connection refused" in item["recipients"][0]["reason"]
    finally:
        topology.internal.start()
    topology.gateway.flush()
    message = topology.internal.wait_mailbox("carol", before + 1, timeout=30)[-1]
    assert b"Subject: patience" in message
    wait_until(lambda: topology.gateway.queue() == [], 30, "the queue to empty")
