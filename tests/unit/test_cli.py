"""The `mailgate` command in-process (click's CliRunner), each test with its own data directory.

No gateway runs here, so there is no control socket: configuration commands still save to the
node's SQLite store ("saved: configuration revision N"), queue commands act on the spool
directly, and `status` says the gateway is not running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailgate.cli.main import cli

Run = Callable[..., Result]


def _invoke(data_dir: Path, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        cli,
        ["--data-dir", str(data_dir), *args],
        env={"MAILGATE_STORE": None, "MAILGATE_DATA_DIR": None},
        catch_exceptions=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node"


@pytest.fixture
def run(data_dir: Path) -> Run:
    """Run a command on this test's node; `code` is the exit status it must end with."""

    def _run(*args: str, code: int = 0) -> Result:
        result = _invoke(data_dir, *args)
        assert result.exit_code == code, (
            f"mailgate {' '.join(args)}: exit {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    return _run


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def _revisions(run: Run) -> int:
    return len(run("config", "history").stdout.splitlines())


# -- domain -----------------------------------------------------------------------------------


def test_domain_add_and_list(run: Run) -> None:
    result = run("domain", "add", "example.com", "--route", "127.0.0.30:2525")
    assert "saved: configuration revision" in result.stdout
    line = next(li for li in run("domain", "list").stdout.splitlines() if "example.com" in li)
    assert "[127.0.0.30]:2525" in line
    assert "local" in line

    domains = _json(run("domain", "list", "--json"))
    assert domains == [
        {
            "name": "example.com",
            "local": True,
            "route": {"host": "127.0.0.30", "port": 2525, "mx_lookup": False},
            "tls": None,
        }
    ]


def test_domain_list_empty(run: Run) -> None:
    assert "no domains" in run("domain", "list").stdout
    assert _json(run("domain", "list", "--json")) == []


def test_domain_add_bad_name_changes_nothing(run: Run) -> None:
    run("domain", "add", "example.com")
    before = _revisions(run)
    result = run("domain", "add", "bad domain", code=2)
    assert "error: domains[0].name: " in result.stderr
    assert "nothing was changed" in result.stderr
    assert "saved" not in result.stdout
    assert _revisions(run) == before
    assert [d["name"] for d in _json(run("domain", "list", "--json"))] == ["example.com"]


@pytest.mark.parametrize("port", ["0", "70000"])
def test_domain_add_bad_port(run: Run, port: str) -> None:
    run("domain", "list")  # the node's first revision (the defaults) exists
    before = _revisions(run)
    result = run(
        "domain", "add", "example.com", "--route", "127.0.0.30:2525", "--port", port, code=2
    )
    assert "error: domains[0].route.port: " in result.stderr
    assert "nothing was changed" in result.stderr
    assert _revisions(run) == before
    assert _json(run("domain", "list", "--json")) == []


def test_domain_add_port_option(run: Run) -> None:
    run("domain", "add", "example.com", "--route", "[2001:DB8::1]", "--port", "2600")
    (record,) = _json(run("domain", "list", "--json"))
    assert record["route"] == {"host": "2001:db8::1", "port": 2600, "mx_lookup": False}
    assert "[ipv6:2001:db8::1]:2600" in run("domain", "list").stdout


def test_domain_add_duplicate(run: Run) -> None:
    run("domain", "add", "example.com")
    result = run("domain", "add", "EXAMPLE.com", code=2)
    assert "already exists" in result.stderr
    assert "nothing was changed" in result.stderr
    assert len(_json(run("domain", "list", "--json"))) == 1


def test_domain_set_and_remove(run: Run) -> None:
    run("domain", "add", "example.com", "--route", "127.0.0.30:2525")

    assert (
        "saved: configuration revision" in run("domain", "set", "example.com", "--not-local").stdout
    )
    (record,) = _json(run("domain", "list", "--json"))
    assert record["local"] is False
    assert record["route"] == {"host": "127.0.0.30", "port": 2525, "mx_lookup": False}
    assert "not local" in run("domain", "list").stdout

    run("domain", "set", "example.com", "--no-route")
    (record,) = _json(run("domain", "list", "--json"))
    assert record["route"] is None
    assert record["local"] is False

    run("domain", "remove", "example.com")
    assert _json(run("domain", "list", "--json")) == []


def test_domain_remove_or_set_unknown(run: Run) -> None:
    run("domain", "add", "example.com")
    before = _revisions(run)
    result = run("domain", "remove", "nope.example", code=2)
    assert "does not exist" in result.stderr
    result = run("domain", "set", "nope.example", "--not-local", code=2)
    assert "does not exist" in result.stderr
    assert _revisions(run) == before


# -- settings ---------------------------------------------------------------------------------


def test_settings_border_gateway_needs_relayhost(run: Run) -> None:
    before = _json(run("settings", "show", "main", "--json"))
    revisions = _revisions(run)
    result = run("settings", "main", "--destination", "border_gateway", code=2)
    assert "error: main: " in result.stderr
    assert "relayhost is required" in result.stderr
    assert "nothing was changed" in result.stderr
    assert _json(run("settings", "show", "main", "--json")) == before
    assert _revisions(run) == revisions


def test_settings_main(run: Run) -> None:
    result = run(
        "settings", "main",
        "--relayhost", "gw.example.net:2525",
        "--relayhost-mx-lookup",
        "--destination", "border_gateway",
        "--trusted-network", "192.168.0.0/24",
        "--trusted-network", "2001:db8::/32",
    )  # fmt: skip
    assert "saved: configuration revision" in result.stdout
    main = _json(run("settings", "show", "main", "--json"))
    assert main["destination"] == "border_gateway"
    assert main["relayhost"] == {"host": "gw.example.net", "port": 2525, "mx_lookup": True}
    assert main["trusted_networks"] == ["192.168.0.0/24", "2001:db8::/32"]

    # Changing the relayhost's address alone keeps its MX switch.
    run("settings", "main", "--relayhost", "gw2.example.net")
    main = _json(run("settings", "show", "main", "--json"))
    assert main["relayhost"] == {"host": "gw2.example.net", "port": 25, "mx_lookup": True}

    everything = _json(run("settings", "show", "--json"))
    assert everything["main"] == main
    assert "domains" not in everything


def test_settings_main_bad_network(run: Run) -> None:
    run("settings", "main", "--trusted-network", "10.0.0.0/8")
    before = _json(run("settings", "show", "main", "--json"))
    result = run("settings", "main", "--trusted-network", "10.0.0.0/33", code=2)
    assert "error: main.trusted_networks[0]: " in result.stderr
    assert "nothing was changed" in result.stderr
    assert _json(run("settings", "show", "main", "--json")) == before


def test_settings_advanced(run: Run) -> None:
    run("settings", "advanced", "limits.recipient_limit=500", "queue.minimal_backoff_time=60")
    advanced = _json(run("settings", "show", "advanced", "--json"))
    assert advanced["limits"]["recipient_limit"] == 500
    assert advanced["queue"]["minimal_backoff_time"] == 60
    assert _json(run("settings", "show", "advanced.limits", "--json"))["recipient_limit"] == 500


def test_settings_advanced_bad_key(run: Run) -> None:
    before = _json(run("settings", "show", "--json"))
    result = run("settings", "advanced", "limits.no_such_limit=1", code=2)
    assert "advanced.limits.no_such_limit" in result.stderr
    assert "nothing was changed" in result.stderr
    result = run("settings", "advanced", "nosection.key=1", code=2)
    assert "advanced.nosection" in result.stderr
    run("settings", "advanced", "recipient_limit=1", code=2)
    run("settings", "advanced", "limits.recipient_limit", code=2)
    assert _json(run("settings", "show", "--json")) == before


def test_settings_advanced_bad_value(run: Run) -> None:
    run("settings", "advanced", "limits.recipient_limit=500")
    revisions = _revisions(run)
    result = run(
        "settings", "advanced", "queue.minimal_backoff_time=30", "limits.recipient_limit=0",
        code=2,
    )  # fmt: skip
    assert "error: advanced.limits.recipient_limit: " in result.stderr
    assert "nothing was changed" in result.stderr
    advanced = _json(run("settings", "show", "advanced", "--json"))
    assert advanced["limits"]["recipient_limit"] == 500
    assert advanced["queue"]["minimal_backoff_time"] == 300  # the valid half was not saved
    assert _revisions(run) == revisions


def test_settings_set(run: Run) -> None:
    run("settings", "set", "main", "message_size_limit=20000000")
    assert _json(run("settings", "show", "main", "--json"))["message_size_limit"] == 20_000_000
    run("settings", "set", "advanced.limits", "recipient_limit=20", "hopcount_limit=10")
    limits = _json(run("settings", "show", "advanced.limits", "--json"))
    assert (limits["recipient_limit"], limits["hopcount_limit"]) == (20, 10)
    result = run("settings", "set", "main", "message_size_limit=12", code=2)
    assert "error: main.message_size_limit: " in result.stderr
    run("settings", "set", "main", "no_such=1", code=2)
    run("settings", "set", "main", "novalue", code=2)
    assert _json(run("settings", "show", "main", "--json"))["message_size_limit"] == 20_000_000


def test_settings_show_unknown_section(run: Run) -> None:
    result = run("settings", "show", "nope", code=2)
    assert "nope: no such section" in result.stderr


# -- config -----------------------------------------------------------------------------------


def _configure(run: Run) -> None:
    run("domain", "add", "example.com", "--route", "127.0.0.30:2525")
    run("domain", "add", "other.example", "--not-local", "--tls", "encrypt")
    run(
        "settings", "main",
        "--hostname", "gw.example.com",
        "--relayhost", "[2001:db8::1]:2525",
        "--destination", "border_gateway",
        "--trusted-network", "192.168.0.0/24",
    )  # fmt: skip
    run("settings", "advanced", "limits.recipient_limit=500")


def test_config_export_import_on_fresh_node(run: Run, tmp_path: Path) -> None:
    _configure(run)
    exported = tmp_path / "mailgate.yaml"
    run("config", "export", str(exported))
    assert exported.read_text(encoding="utf-8") == run("config", "export").stdout

    fresh = tmp_path / "fresh"
    result = _invoke(fresh, "config", "import", str(exported))
    assert result.exit_code == 0, result.output
    assert "saved: configuration revision" in result.stdout
    for args in (("settings", "show", "--json"), ("domain", "list", "--json")):
        assert _json(_invoke(fresh, *args)) == _json(run(*args))
    assert _invoke(fresh, "config", "export").stdout == exported.read_text(encoding="utf-8")


def test_config_import_bad_value_changes_nothing(run: Run, tmp_path: Path) -> None:
    _configure(run)
    exported = tmp_path / "mailgate.yaml"
    run("config", "export", str(exported))
    before = run("config", "export").stdout
    revisions = _revisions(run)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        before.replace("192.168.0.0/24", "192.168.0.0/33"), encoding="utf-8"
    )  # still a valid YAML document
    result = run("config", "import", str(bad), code=2)
    assert "error: main.trusted_networks[0]: " in result.stderr
    assert "nothing was changed" in result.stderr

    bad.write_text("main: [unclosed\n", encoding="utf-8")
    assert "not valid YAML" in run("config", "import", str(bad), code=2).stderr
    result = run("config", "import", str(tmp_path / "missing.yaml"), code=2)
    assert "missing.yaml" in result.stderr

    assert run("config", "export").stdout == before
    assert _revisions(run) == revisions


def test_config_history(run: Run) -> None:
    run("domain", "add", "example.com")
    run("domain", "set", "example.com", "--not-local")
    lines = run("config", "history").stdout.splitlines()
    # Newest first: the two CLI changes, then the defaults saved on first use.
    assert len(lines) == 3
    assert [int(line.split()[0]) for line in lines] == [3, 2, 1]
    assert "cli" in lines[0]
    assert "change domain example.com" in lines[0]
    assert "add domain example.com" in lines[1]
    assert "mailgate" in lines[2]
    assert "initial configuration" in lines[2]
    assert len(run("config", "history", "--limit", "1").stdout.splitlines()) == 1


def test_config_reference(run: Run) -> None:
    text = run("config", "reference").stdout
    assert text.lstrip().startswith("#")
    assert "`main.trusted_networks`" in text
    assert "| setting | default | meaning |" in text


# -- queue and status -------------------------------------------------------------------------


def test_queue_list_empty(run: Run) -> None:
    assert "mail queue is empty" in run("queue", "list").stdout
    assert _json(run("queue", "list", "--json")) == []


def test_queue_hold_unknown(data_dir: Path) -> None:
    for qid in ("NOPE", "0123456789ABCD"):
        result = _invoke(data_dir, "queue", "hold", qid)
        assert result.exit_code != 0
        assert result.stderr.startswith("error: ")
        assert qid in result.stderr


def test_status_when_not_running(run: Run, data_dir: Path) -> None:
    result = run("status", code=3)
    assert "not running" in result.stdout
    assert str(data_dir) in result.stdout


def test_setup_border_gateway_applies_the_seed_in_one_revision(run: Run) -> None:
    run("domain", "list")  # the store, with its initial revision
    before = _revisions(run)
    out = run("setup", "border-gateway", "--domain", "example.com", "--domain",
              "sub.example.com", "--internal", "10.0.0.30", "--border", "192.0.2.10").stdout  # fmt: skip
    assert out.splitlines()[1:] == [
        "1. local domains example.com, sub.example.com, routed to [10.0.0.30]:25",
        "2. border gateway [192.0.2.10]:25 as relayhost",
        "3. trusted networks 10.0.0.30/32",
        "4. upstream gateway 192.0.2.10/32: SPF and DMARC stay on and check the real client it "
        "names (XFORWARD, XCLIENT or its Received header)",
        "5. Reject replaced by Delete message in every rule (6 changed)",
        "6. recipient verification: reject for unverified recipients",
        "test it against the live network: mailgate check",
    ]
    assert _revisions(run) == before + 1
    shown = _json(run("settings", "show", "main", "--json"))
    assert shown["destination"] == "border_gateway"
    assert shown["trusted_networks"] == ["10.0.0.30/32"]


def test_setup_border_gateway_refuses_an_open_relay_and_saves_nothing(run: Run) -> None:
    run("domain", "list")
    before = _revisions(run)
    result = run("setup", "border-gateway", "--domain", "example.com", "--internal",
                 "10.0.0.30", "--border", "10.0.0.1", "--trusted-network", "10.0.0.0/8",
                 code=2)  # fmt: skip
    assert result.stderr.splitlines() == [
        "error: trusted_networks: 10.0.0.0/8 contains the border gateway 10.0.0.1/32: mail from "
        "the internet arrives through it and would be relayed anywhere",
        "nothing was changed",
    ]
    assert _revisions(run) == before
