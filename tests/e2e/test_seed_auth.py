"""SPF and DMARC kept on behind the border gateway (SPEC sections 1 step 4 and 4.3): the Postfix
border forwards the real client with XFORWARD (smtp_send_xforward_command = yes), mailgate
trusts it as its upstream gateway and checks SPF and DMARC against the sender's own server,
so the seed's step 4 (switching SPF and DMARC off) is no longer needed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from mailgate.cli.main import cli
from tests.conftest import EXTERNAL_CLIENT_IP, wait_until
from tests.e2e.topology import Topology, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    for topo in build(tmp_path_factory.mktemp("mailgate"), verify=False, auth=True):
        # The real sender's domain allows the external client's address; the forged one
        # names another server and publishes a reject policy.
        topo.zone.add("genuine.example", "TXT", f"v=spf1 ip4:{EXTERNAL_CLIENT_IP} -all")
        topo.zone.add("_dmarc.genuine.example", "TXT", "v=DMARC1; p=reject")
        topo.zone.add("bank.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
        topo.zone.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")
        # Behind a border gateway, Delete message instead of Reject (seed step 5); here the
        # failing message is kept in the quarantine so the test can look at it.
        topo.gateway.configure(
            lambda data: data["default_rule"]["auth"].update(dmarc_reject="quarantine")
        )
        yield topo


def message(sender: str, subject: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@x>\r\n\r\nhello\r\n").encode()  # fmt: skip


def test_genuine_sender_passes_spf_on_the_real_client(topology: Topology) -> None:
    before = len(topology.internal.mailbox_messages("bob"))
    refused = topology.send_from_internet("alice@genuine.example", ["bob@example.com"],
                                          message("alice@genuine.example", "genuine"))  # fmt: skip
    assert refused == {}
    delivered = topology.internal.wait_mailbox("bob", before + 1, timeout=30)[-1]
    text = delivered.replace(b"\r\n", b"\n").decode()  # Maildir files have LF line ends
    header = text.split("\n\n")[0].replace("\n\t", " ")
    results = [
        line
        for line in header.split("\n")
        if line.startswith("Authentication-Results: mailgate.test")
    ]
    assert len(results) == 1
    assert f"spf=pass (mailgate: client {EXTERNAL_CLIENT_IP} from XFORWARD)" in results[0]
    assert "smtp.mailfrom=alice@genuine.example" in results[0]
    assert "dmarc=pass" in results[0]


def test_forged_sender_fails_spf_and_dmarc_on_the_real_client(topology: Topology) -> None:
    refused = topology.send_from_internet("ceo@bank.example", ["bob@example.com"],
                                          message("ceo@bank.example", "forged"))  # fmt: skip
    assert refused == {}  # accepted by the border; mailgate keeps it aside, nothing bounces

    def kept() -> list[dict[str, object]]:
        result = CliRunner().invoke(cli, ["--data-dir", str(topology.gateway.data_dir),
                                          "quarantine", "list", "--json"])  # fmt: skip
        return [k for k in json.loads(result.output) if k["subject"] == "forged"]

    (entry,) = wait_until(kept, 30, "the forged message in the quarantine")
    verdicts = entry["verdicts"]
    assert isinstance(verdicts, dict)
    assert verdicts["auth"].startswith("dmarc_reject")
    assert "spf=fail" in verdicts["auth"]
    assert f"client {EXTERNAL_CLIENT_IP} from xforward" in verdicts["auth"]
    assert topology.internet.messages == []  # no backscatter
