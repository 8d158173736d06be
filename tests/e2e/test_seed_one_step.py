"""The seed's scheme set up in one step (SPEC section 4.3): mailgate starts with its defaults
between a Postfix border gateway and a Postfix internal server, `mailgate setup border-gateway`
applies the whole procedure to the running gateway, and mail then flows as the seed intends:
inbound to the internal mailbox, unknown recipients refused at the border's RCPT (verification
chained through mailgate), outbound through the border; `mailgate check` reads the result
against the live servers."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from mailgate.cli.main import cli
from tests.conftest import BORDER_IP, INTERNAL_IP
from tests.e2e.topology import Topology, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    yield from build(tmp_path_factory.mktemp("mailgate"), verify=True, configured=False)


def mailgate(topology: Topology, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--data-dir", str(topology.gateway.data_dir), *args])


@pytest.fixture(scope="module")
def set_up(topology: Topology) -> Topology:
    """The gateway, unconfigured at first, set up by one command while it runs."""
    # Before: no local domain, so mailgate refuses the border's probe ("Relay access denied")
    # and nothing gets in. (The border keeps that answer in its own verification cache: the
    # address asked here is not asked again.)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as before_setup:
        topology.send_from_internet(
            "alice@ext.org", ["carol@example.com"], b"Subject: a\r\n\r\nx\r\n"
        )
    assert b"Relay access denied" in before_setup.value.recipients["carol@example.com"][1]

    result = mailgate(
        topology, "setup", "border-gateway", "--domain", "example.com",
        "--internal", f"{INTERNAL_IP}:{topology.internal.port}",
        "--border", f"border.test:{topology.border.port}", "--border-mx-lookup",
        "--trusted-network", f"{INTERNAL_IP}/32", "--upstream", BORDER_IP,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "applied to the running gateway" in result.output
    assert "6. recipient verification: reject for unverified recipients" in result.output
    return topology


def test_mail_flows_as_the_seed_intends_after_one_step(set_up: Topology) -> None:
    topology = set_up
    # Inbound through the border to the internal mailbox.
    before = len(topology.internal.mailbox_messages("bob"))
    assert topology.send_from_internet(
        "alice@ext.org", ["bob@example.com"], b"Subject: hello\r\n\r\nin\r\n"
    ) == {}  # fmt: skip
    topology.internal.wait_mailbox("bob", before + 1, timeout=30)

    # An unknown recipient: refused by the border at RCPT, mailgate verifying for it.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        topology.send_from_internet(
            "alice@ext.org", ["nobody@example.com"], b"Subject: t\r\n\r\nx\r\n"
        )
    code, text = refused.value.recipients["nobody@example.com"]
    assert code == 550
    assert text.startswith(b"5.1.1 <nobody@example.com>: Recipient address rejected:")

    # Outbound from the inside, through mailgate and the border, to the internet.
    assert topology.send_from_inside(
        "bob@example.com", ["friend@outside.example"], b"Subject: out\r\n\r\nout\r\n"
    ) == {}  # fmt: skip
    (sent,) = topology.internet.wait_for(1, timeout=60)
    assert sent.rcpt_to == ["friend@outside.example"]


def test_the_integration_check_reads_the_live_servers(set_up: Topology) -> None:
    topology = set_up
    result = mailgate(topology, "check", "--timeout", "5")
    lines = result.output.splitlines()
    assert (
        f"ok    relayhost border.test:{topology.border.port}: answers (greeting and EHLO)" in lines
    )
    assert (f"ok    route example.com [{INTERNAL_IP}]:{topology.internal.port}: answers "
            "(greeting and EHLO)") in lines  # fmt: skip
    assert (f"ok    trusted networks: {INTERNAL_IP}/32; none contains the border gateway"
            in lines)  # fmt: skip
    # The internal Postfix has no postmaster mailbox: the check says so, and what to do.
    [postmaster] = [line for line in lines if line.startswith("FAIL  verification example.com")]
    assert "postmaster@example.com: bad" in postmaster
    assert "User unknown in virtual mailbox table" in postmaster
    assert result.exit_code == 1
