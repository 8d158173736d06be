"""Protection over the wire with a real clamd: each action for EICAR (plain and zipped), the
scanner-error action, rules splitting a message's recipients, the quarantine (list, show,
download, release, delete) and the message log."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.clamd import EICAR, ClamdInstance
from mailgate.testing.sink import Sink
from tests.conftest import INTERNAL_IP, INTERNET_IP, Gateway, wait_until

NO_AUTH = {"use_spf": False, "use_dkim": False, "use_dmarc": False}


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdInstance]:
    with ClamdInstance() as instance:
        yield instance


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


@pytest.fixture
def internet(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNET_IP)


def protected(start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink,
              clamd_endpoint: str, **extra: Any) -> Gateway:  # fmt: skip
    config: dict[str, Any] = {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "main": {
            "destination": "border_gateway",
            "relayhost": {"host": INTERNET_IP, "port": internet.port},
        },
        "protection": {
            "antivirus": {"enabled": True, "clamd": clamd_endpoint, "timeout": 5},
            "external_services": NO_AUTH,
        },
    }
    config.update(extra)
    return start_gateway(config)


def infected_message(zipped: bool = False, subject: str = "invoice") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@ext.org"
    message["To"] = "bob@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@ext.org>"
    message.set_content("Please find the invoice attached.\n")
    if zipped:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("invoice.com", EICAR)
        message.add_attachment(buffer.getvalue(), maintype="application", subtype="zip",
                               filename="invoice.zip")  # fmt: skip
    else:
        message.add_attachment(EICAR, maintype="application", subtype="octet-stream",
                               filename="invoice.com")  # fmt: skip
    return message.as_bytes()


def send(gw: Gateway, data: bytes, recipients: list[str] | None = None) -> tuple[int, bytes]:
    with gw.client() as client:
        client.ehlo("mx.ext.org")
        client.mail("alice@ext.org")
        for rcpt in recipients or ["bob@example.com"]:
            code, _ = client.rcpt(rcpt)
            assert code == 250
        return client.data(data)


def mailgate(gw: Gateway, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def rule_actions(infected: str) -> dict[str, Any]:
    return {"default_rule": {"name": "Default", "antivirus": {"infected": infected}}}


@pytest.mark.parametrize("zipped", [False, True], ids=["plain", "zipped"])
def test_reject(start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink,
                clamd: ClamdInstance, zipped: bool) -> None:  # fmt: skip
    gw = protected(start_gateway, internal, internet, clamd.endpoint, **rule_actions("reject"))
    code, text = send(gw, infected_message(zipped))
    assert code == 554
    assert text.startswith(b"5.7.1 Error: message rejected: virus found (Eicar-Test-Signature")
    mailgate(gw, "log", "search")  # the log is readable
    assert gw.queue() == []
    assert internal.messages == []
    assert internet.messages == []


@pytest.mark.parametrize("zipped", [False, True], ids=["plain", "zipped"])
def test_delete_accepts_and_drops_without_a_report(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink, clamd: ClamdInstance,
    zipped: bool,
) -> None:  # fmt: skip
    gw = protected(start_gateway, internal, internet, clamd.endpoint, **rule_actions("delete"))
    code, _ = send(gw, infected_message(zipped))
    assert code == 250
    send(gw, b"Subject: marker\r\n\r\nclean\r\n")
    (marker,) = internal.wait_for(1)
    assert marker.parsed()["Subject"] == "marker"
    assert internet.messages == []  # no DSN
    # The marker leaves the queue once mailgate has read the sink's 250; nothing else stays.
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_quarantine_keeps_the_message_until_released(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink, clamd: ClamdInstance
) -> None:
    gw = protected(start_gateway, internal, internet, clamd.endpoint, **rule_actions("quarantine"))
    code, _ = send(gw, infected_message(subject="kept invoice"))
    assert code == 250
    (kept,) = json.loads(mailgate(gw, "quarantine", "list", "--json"))
    assert kept["subject"] == "kept invoice"
    assert kept["recipients"] == ["bob@example.com"]
    assert "antivirus: infected Eicar-Test-Signature" in kept["reason"]
    shown = mailgate(gw, "quarantine", "show", kept["id"])
    assert "Subject: kept invoice" in shown
    assert "Please find the invoice attached." in shown
    raw = CliRunner().invoke(
        cli, ["--data-dir", str(gw.data_dir), "quarantine", "download", kept["id"]]
    )
    assert raw.exit_code == 0
    assert raw.stdout_bytes.startswith(b"Received: from mx.ext.org")
    assert EICAR in raw.stdout_bytes.replace(b"\r\n", b"") or b"invoice.com" in raw.stdout_bytes
    assert internal.messages == []
    assert "released, queued as" in mailgate(gw, "quarantine", "release", kept["id"])
    (released,) = internal.wait_for(1)
    assert released.parsed()["Subject"] == "kept invoice"
    assert released.data.count(b"\r\nReceived: ") + released.data.startswith(b"Received: ") == 1
    assert "the quarantine is empty" in mailgate(gw, "quarantine", "list")


def test_quarantine_delete(start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink,
                           clamd: ClamdInstance) -> None:  # fmt: skip
    gw = protected(start_gateway, internal, internet, clamd.endpoint, **rule_actions("quarantine"))
    send(gw, infected_message())
    (kept,) = json.loads(mailgate(gw, "quarantine", "list", "--json"))
    assert mailgate(gw, "quarantine", "delete", kept["id"]).strip() == f"{kept['id']}: deleted"
    assert "the quarantine is empty" in mailgate(gw, "quarantine", "list")


@pytest.mark.parametrize("zipped", [False, True], ids=["plain", "zipped"])
def test_delete_attachment_delivers_the_rest(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink, clamd: ClamdInstance,
    zipped: bool,
) -> None:  # fmt: skip
    gw = protected(start_gateway, internal, internet, clamd.endpoint,
                   **rule_actions("delete_attachment"))  # fmt: skip
    code, _ = send(gw, infected_message(zipped))
    assert code == 250
    (message,) = internal.wait_for(1)
    flat = message.data.replace(b"\r\n", b"")
    assert EICAR not in flat
    assert b"Please find the invoice attached." in message.data
    parsed = message.parsed()
    names = [part.get_filename() for part in parsed.walk() if part.get_filename()]
    assert "invoice.zip" not in names
    assert "invoice.com" not in names
    notices = [part.get_payload(decode=True) for part in parsed.walk()
               if part.get_content_type() == "text/plain" and not part.is_multipart()]  # fmt: skip
    assert any(b"mailgate removed an attachment" in (n or b"") for n in notices)


def test_clamd_unavailable_gives_the_error_action(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink
) -> None:
    gw = protected(start_gateway, internal, internet, "unix:/nonexistent/clamd.ctl")
    code, text = send(gw, b"Subject: unscanned\r\n\r\nhello\r\n")
    assert (code, text) == (451, b"4.7.1 Error: the message could not be scanned; try again later")
    assert gw.queue() == []
    gw.configure(lambda data: data["default_rule"]["antivirus"].update(error="skip"))
    code, _ = send(gw, b"Subject: unscanned\r\n\r\nhello\r\n")
    assert code == 250
    assert b"X-Mailgate-Antivirus: error" in internal.wait_for(1)[0].data


def test_rules_split_a_message_per_recipient_and_lose_no_one(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink, clamd: ClamdInstance
) -> None:
    gw = protected(start_gateway, internal, internet, clamd.endpoint, rules=[
        {"name": "labs", "recipients": ["*@labs.example.com"], "mode": "skip"},
        {"name": "sales", "recipients": ["*@sales.example.com"], "antivirus": {"infected": "quarantine"}},
    ], domains=[
        {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
        {"name": "labs.example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
        {"name": "sales.example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
    ])  # fmt: skip
    code, _ = send(
        gw, infected_message(), ["bob@example.com", "eve@labs.example.com", "sam@sales.example.com"]
    )
    assert code == 250  # the default rule rejects, but others accepted: 250 and a DSN
    (delivered,) = internal.wait_for(1)
    assert delivered.rcpt_to == ["eve@labs.example.com"]  # the lab gets its samples
    (kept,) = json.loads(mailgate(gw, "quarantine", "list", "--json"))
    assert kept["recipients"] == ["sam@sales.example.com"]
    (dsn,) = internet.wait_for(1)
    assert dsn.rcpt_to == ["alice@ext.org"]
    assert b"Final-Recipient: rfc822; bob@example.com" in dsn.data
    assert b"Status: 5.7.1" in dsn.data


def test_message_log_records_every_decision(
    start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink, clamd: ClamdInstance
) -> None:
    gw = protected(start_gateway, internal, internet, clamd.endpoint, **rule_actions("reject"))
    send(gw, infected_message(subject="bad one"))
    send(gw, b"From: alice@ext.org\r\nSubject: good one\r\n\r\nhello\r\n")
    internal.wait_for(1)

    def logged() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(mailgate(gw, "log", "search", "--json"))
        return rows if len(rows) == 2 and rows[0]["deliveries"] else []

    good, bad = wait_until(logged, what="both messages and the delivery in the log")
    assert (bad["subject"], bad["action"]) == ("bad one", "rejected")
    assert bad["verdicts"]["antivirus"].startswith("infected (Eicar-Test-Signature")
    assert bad["reply"].startswith("554 5.7.1")
    assert (good["subject"], good["action"]) == ("good one", "queued")
    assert good["verdicts"] == {"antivirus": "clean"}
    assert good["deliveries"][0]["status"] == "sent"
    assert good["client_ip"] == "127.0.0.100"
    assert good["helo"] == "mx.ext.org"
    found = json.loads(mailgate(gw, "log", "search", "--verdict", "infected", "--json"))
    assert [r["qid"] for r in found] == [bad["qid"]]
    assert "antivirus  infected" in mailgate(gw, "log", "show", bad["qid"])
    assert (
        json.loads(
            mailgate(gw, "log", "search", "--sender", "ALICE@", "--subject", "good", "--json")
        )[0]["qid"]
        == good["qid"]
    )
