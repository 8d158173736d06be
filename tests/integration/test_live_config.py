"""A saved configuration change reaches the running gateway without a restart and without
dropping the sessions in progress; a bad change is refused and nothing changes."""

from __future__ import annotations

from collections.abc import Callable

from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import EXTERNAL_CLIENT_IP, GATEWAY_IP, INTERNAL_IP, Gateway, free_port


def test_new_local_domain_applies_to_a_session_in_progress(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    sink = start_sink(INTERNAL_IP)
    gw = start_gateway()
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as c:
        c.reply()
        c.command("EHLO client.example")
        c.command("MAIL FROM:<a@ext.org>")
        assert c.command("RCPT TO:<bob@example.com>").code == 554
        c.command("RSET")
        result = CliRunner().invoke(cli, [
            "--data-dir", str(gw.data_dir), "domain", "add", "example.com",
            "--route", f"{INTERNAL_IP}:{sink.port}",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "applied to the running gateway" in result.output
        # Same connection, next transaction: the domain is local now.
        c.command("MAIL FROM:<a@ext.org>")
        assert str(c.command("RCPT TO:<bob@example.com>")) == "250 2.1.5 Ok"
        c.command("DATA")
        c.send("Subject: live\r\n\r\nx\r\n.\r\n")
        assert c.reply().code == 250
    assert sink.wait_for(1)[0].rcpt_to == ["bob@example.com"]


def test_bad_change_is_refused_and_the_running_config_stays(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway({"main": {"trusted_networks": ["127.0.0.30/32"]}})
    before = gw.control("ping")["revision"]
    result = CliRunner().invoke(cli, [
        "--data-dir", str(gw.data_dir), "settings", "main", "--trusted-network", "10.0.0.0/33",
    ])  # fmt: skip
    assert result.exit_code == 2
    assert (
        "main.trusted_networks[0]: '10.0.0.0/33' is not an IPv4 or IPv6 address or network"
        in result.output
    )
    assert "nothing was changed" in result.output
    assert gw.control("ping")["revision"] == before


def test_listen_addresses_follow_the_configuration(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway()
    extra = free_port("127.0.0.21")
    gw.configure(lambda data: data["main"]["smtp_listen"].append(f"127.0.0.21:{extra}"))
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as old_session:
        assert old_session.reply().code == 220
        with RawSmtp("127.0.0.21", extra, EXTERNAL_CLIENT_IP) as c:
            assert str(c.reply()) == "220 mailgate.test ESMTP mailgate"
        # Dropping the first address closes the listener, not the session on it.
        gw.configure(lambda data: data["main"].update(smtp_listen=[f"127.0.0.21:{extra}"]))
        assert str(old_session.command("NOOP")) == "250 2.0.0 Ok"
