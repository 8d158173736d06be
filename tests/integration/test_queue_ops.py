"""Queue operations from the CLI (Postfix postqueue/postsuper): list, show, hold, release,
flush and delete, through the running gateway and, with it stopped, on the spool itself."""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner

from mailgate.cli.main import cli
from mailgate.testing.sink import Sink
from tests.conftest import INTERNAL_IP, Gateway, free_port, wait_until


def mailgate(gw: Gateway, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def deferred_gateway(start_gateway: Callable[..., Gateway]) -> tuple[Gateway, int]:
    port = free_port(INTERNAL_IP)  # nothing listens there yet
    gw = start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": port}}],
        "advanced": {"queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300}},
    })  # fmt: skip
    return gw, port


def queue_one(gw: Gateway, subject: str) -> str:
    """Send one message and return its queue id once its first attempt has failed (a message
    queued earlier is not it, however far along)."""
    before = {i["qid"] for i in gw.queue()}
    with gw.client() as client:
        client.sendmail(
            "alice@ext.org", ["bob@example.com"], f"Subject: {subject}\r\n\r\nx\r\n".encode()
        )
    (qid,) = wait_until(
        lambda: [
            i["qid"]
            for i in gw.queue()
            if i["qid"] not in before and i["recipients"][0]["reason"] and i["state"] == "deferred"
        ],
        what=f"message {subject!r} deferred",
    )
    return str(qid)


def test_queue_operations_through_the_running_gateway(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    gw, port = deferred_gateway(start_gateway)
    qid = queue_one(gw, "first")
    listing = mailgate(gw, "queue", "list")
    assert qid in listing
    assert "<alice@ext.org>" in listing
    assert "[deferred]" in listing
    assert "Connection refused" in listing
    (item,) = json.loads(mailgate(gw, "queue", "list", "--json"))
    assert item["recipients"][0]["address"] == "bob@example.com"
    shown = mailgate(gw, "queue", "show", qid)
    assert "Subject: first" in shown
    assert "Received: from" in shown

    assert mailgate(gw, "queue", "hold", qid).strip() == f"{qid}: placed on hold"
    assert json.loads(mailgate(gw, "queue", "list", "--json"))[0]["state"] == "hold"
    sink = start_sink(INTERNAL_IP, port)
    mailgate(gw, "queue", "flush")  # a held message stays put
    assert json.loads(mailgate(gw, "queue", "list", "--json"))[0]["state"] == "hold"
    assert sink.messages == []
    assert mailgate(gw, "queue", "release", qid).strip() == f"{qid}: released from hold"
    (message,) = sink.wait_for(1)
    assert message.parsed()["Subject"] == "first"
    wait_until(lambda: "mail queue is empty" in mailgate(gw, "queue", "list"), what="empty queue")


def test_deleted_message_is_never_delivered(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    gw, port = deferred_gateway(start_gateway)
    doomed = queue_one(gw, "doomed")
    kept = queue_one(gw, "kept")
    assert mailgate(gw, "queue", "delete", doomed).strip() == f"{doomed}: deleted"
    sink = start_sink(INTERNAL_IP, port)
    mailgate(gw, "queue", "flush")
    (message,) = sink.wait_for(1)
    assert message.parsed()["Subject"] == "kept"
    wait_until(lambda: gw.queue() == [], what="empty queue")
    assert kept


def test_queue_operations_with_the_gateway_stopped(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    gw, port = deferred_gateway(start_gateway)
    first = queue_one(gw, "one")
    second = queue_one(gw, "two")
    gw.stop()
    listing = mailgate(gw, "queue", "list")
    assert first in listing
    assert second in listing
    mailgate(gw, "queue", "hold", first)
    mailgate(gw, "queue", "delete", second)
    assert "will be retried as soon as mailgate starts" in mailgate(gw, "queue", "flush")
    (item,) = json.loads(mailgate(gw, "queue", "list", "--json"))
    assert (item["qid"], item["state"]) == (first, "hold")
    bad = CliRunner().invoke(
        cli, ["--data-dir", str(gw.data_dir), "queue", "show", "25XK4PKXQ1J65S"]
    )
    assert bad.exit_code == 1
    assert "no such message" in bad.output
    # Started again, the gateway leaves the held message alone and delivers once released.
    sink = start_sink(INTERNAL_IP, port)
    gw.start()
    mailgate(gw, "queue", "release", first)
    (message,) = sink.wait_for(1)
    assert message.parsed()["Subject"] == "one"
