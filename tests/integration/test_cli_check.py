"""`mailgate check` over the wire (SPEC section 4.3): the seed's topology with real listeners:
a capture sink as the border gateway (relayhost), another as the internal server, and a DNS
server on loopback for the names. The configuration is stored in the node's data directory
with `mailgate config import`, as an administrator would; no gateway needs to run."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailgate.cli.main import cli
from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import BORDER_IP, GATEWAY_IP, INTERNAL_IP, free_port, merge

MAILBOXES = {"postmaster@example.com", "bob@example.com"}
TIMEOUT = "3"


def seed_config(relay_port: int, internal_port: int, nameserver: str) -> dict[str, Any]:
    """The seed's scheme, done right: every check should pass when the peers answer."""
    return {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal_port}}],
        "main": {
            "hostname": "mailgate.test",
            "destination": "border_gateway",
            "relayhost": {"host": BORDER_IP, "port": relay_port},
            "trusted_networks": [f"{INTERNAL_IP}/32"],
            "smtp_listen": [f"{GATEWAY_IP}:{free_port(GATEWAY_IP)}"],
            "web_listen": [],
        },
        "advanced": {
            "dns": {"nameservers": [nameserver]},
            "verification": {"mode": "reject_unverified"},
        },
        "protection": {
            "external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False},
            "upstream_gateways": [BORDER_IP],
        },
    }


class Node:
    """A data directory holding a configuration, and `mailgate check` run on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(
            cli,
            ["--data-dir", str(self.data_dir), *args],
            env={"MAILGATE_STORE": None, "MAILGATE_DATA_DIR": None},
            catch_exceptions=False,
        )

    def configure(self, config: dict[str, Any]) -> None:
        path = self.data_dir.parent / "config.json"
        path.write_text(json.dumps(config))
        result = self.invoke("config", "import", str(path))
        assert result.exit_code == 0, result.output

    def check(self, *args: str, code: int) -> Result:
        result = self.invoke("check", "--timeout", TIMEOUT, *args)
        assert result.exit_code == code, result.output
        return result


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


@pytest.fixture
def nameserver(dns_zone: tuple[Any, str]) -> str:
    zone, address = dns_zone
    zone.add("border.test", "A", BORDER_IP)
    return address


def lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if not line.startswith("      fix:")]


def test_seed_scheme_all_ok(node: Node, nameserver: str, start_sink: Callable[..., Sink]) -> None:
    border = start_sink(BORDER_IP)
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    node.configure(seed_config(border.port, internal.port, nameserver))
    result = node.check(code=0)
    assert lines(result) == [
        "ok    local domains: example.com",
        f"ok    relayhost [{BORDER_IP}]:{border.port}: answers (greeting and EHLO)",
        f"ok    route example.com [{INTERNAL_IP}]:{internal.port}: answers (greeting and EHLO)",
        f"ok    trusted networks: {INTERNAL_IP}/32; none contains the border gateway",
        "ok    reject actions: no rule rejects after DATA",
        f"ok    verification example.com: postmaster accepted, an unknown address refused "
        f"by [{INTERNAL_IP}]:{internal.port}",
    ], result.output
    assert "fix:" not in result.output


def test_relayhost_not_listening_fails_with_exit_status_1_and_json_agrees(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    dead_port = free_port(BORDER_IP)  # nothing listens there
    node.configure(seed_config(dead_port, internal.port, nameserver))
    result = node.check(code=1)
    relay = f"[{BORDER_IP}]:{dead_port}"
    assert (
        f"FAIL  relayhost {relay}: connect to {BORDER_IP}[{BORDER_IP}]:{dead_port}: "
        f"Connect call failed ('{BORDER_IP}', {dead_port})\n      fix: start the border gateway"
    ) in result.output
    assert "mailgate settings main --relayhost" in result.output

    as_json = json.loads(node.check("--json", code=1).output)
    text_statuses = [line.split()[0].lower() for line in lines(result)]
    assert [f["status"] for f in as_json] == text_statuses
    relay_finding = next(f for f in as_json if f["name"] == f"relayhost {relay}")
    assert relay_finding["status"] == "fail"
    assert "Connect call failed" in relay_finding["detail"]
    assert set(relay_finding) == {"name", "status", "detail", "fix"}


def test_catch_all_internal_server_warns(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    border = start_sink(BORDER_IP)
    internal = start_sink(INTERNAL_IP)  # accepts every recipient
    node.configure(seed_config(border.port, internal.port, nameserver))
    result = node.check(code=0)  # a warning is not a failure
    assert "warn  verification example.com: mailgate-check-" in result.output
    assert "the internal server accepts every address (catch-all or no recipient check)" in (
        result.output
    )
    assert "fix: make the internal server refuse unknown recipients" in result.output


def test_postmaster_refused_fails(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    border = start_sink(BORDER_IP)
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown({"bob@example.com"}))
    node.configure(seed_config(border.port, internal.port, nameserver))
    result = node.check(code=1)
    assert "FAIL  verification example.com: postmaster@example.com: bad: " in result.output
    assert "550 5.1.1 <postmaster@example.com>: Recipient address rejected" in result.output
    assert "verification would refuse (550) real recipients" in result.output


def test_relayhost_by_name_inside_the_trusted_networks_and_reject_rules(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    """The relayhost's name resolves (real DNS) to an address the trusted networks hold; the
    default rule still rejects; a local domain has no route."""
    border = start_sink(BORDER_IP)
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    config = merge(seed_config(border.port, internal.port, nameserver), {
        "main": {"relayhost": {"host": "border.test", "port": border.port},
                 "trusted_networks": ["127.0.0.0/24"]},
        "protection": {"upstream_gateways": [], "antivirus": {"enabled": True}},
    })  # fmt: skip
    config["domains"].append({"name": "sub.example.com"})
    node.configure(config)
    result = node.check(code=1)
    out = result.output
    assert f"ok    relayhost [border.test]:{border.port}: answers" in out
    assert (
        f"FAIL  trusted networks: 127.0.0.0/24 contains the border gateway {BORDER_IP} "
        f"(relayhost [border.test]:{border.port})"
    ) in out
    assert (
        f"warn  route sub.example.com: no route: its mail goes to the relayhost "
        f"[border.test]:{border.port}" in out
    )
    assert "warn  rule Default: Reject for antivirus/infected" in out
    assert "backscatter" in out


def test_silent_relayhost_is_bounded_by_the_timeout(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    """A relayhost that takes the connection and never greets: a failure after --timeout."""
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    with socket.create_server((BORDER_IP, 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        node.configure(seed_config(port, internal.port, nameserver))
        started = time.monotonic()
        result = node.invoke("check", "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert f"FAIL  relayhost [{BORDER_IP}]:{port}: " in result.output
    assert elapsed < 5, elapsed


def test_relayhost_that_is_mailgate_itself_is_a_loop(
    node: Node, nameserver: str, start_sink: Callable[..., Sink]
) -> None:
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    config = seed_config(25, internal.port, nameserver)
    own = config["main"]["smtp_listen"][0]
    host, port = own.split(":")
    config["main"]["relayhost"] = {"host": host, "port": int(port)}
    node.configure(config)
    result = node.check(code=1)
    assert f"FAIL  relayhost [{host}]:{port}: mail for {host} loops back to myself" in (
        result.output
    )
    assert "fix: the relayhost is mailgate's own listening address" in result.output
