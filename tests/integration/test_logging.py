"""Log lines as a mail administrator reads them: one per event, the queue id on every line of a
message; plain text by default, JSON on request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.testing.gateway import GatewayProcess
from mailgate.testing.sink import Sink
from tests.conftest import GATEWAY_IP, INTERNAL_IP, free_port, gateway_config, wait_until


def run_one_message(tmp_path: Path, sink: Sink, fmt: str) -> tuple[GatewayProcess, str]:
    port = free_port(GATEWAY_IP)
    config = gateway_config(port, {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": sink.port}}],
    })  # fmt: skip
    gw = GatewayProcess(tmp_path / fmt, config, log_format=fmt).start()
    import smtplib

    with smtplib.SMTP(GATEWAY_IP, port, source_address=("127.0.0.100", 0)) as client:
        client.ehlo("client.example")
        client.mail("alice@ext.org")
        client.rcpt("eve@elsewhere.org")
        client.rcpt("bob@example.com")
        client.data(b"Subject: logged\r\n\r\nx\r\n")
    sink.wait_for(1)
    wait_until(lambda: "removed" in gw.log(), what="the removal line")
    return gw, gw.log()


@pytest.fixture
def sink(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


def test_text_log_tells_the_story_of_a_message(tmp_path: Path, sink: Sink) -> None:
    gw, log = run_one_message(tmp_path, sink, "text")
    gw.stop()
    qid = re.search(r"mailgate/cleanup\[\d+\]: ([0-9A-Z]{14}): from=<alice@ext.org>", log)
    assert qid, log
    lines = [line for line in log.splitlines() if f": {qid.group(1)}: " in line]
    events = "\n".join(lines)
    assert (
        "reject: RCPT from unknown[127.0.0.100]: 554 5.7.1 <eve@elsewhere.org>: Relay access denied"
        in events
    )
    assert "(elsewhere.org is not a local domain)" in events
    assert (
        "accept: RCPT from unknown[127.0.0.100]: from=<alice@ext.org> to=<bob@example.com> (local domain example.com)"
        in events
    )
    assert "from=<alice@ext.org>, size=" in events
    assert "nrcpt=1" in events
    assert re.search(
        r"to=<bob@example\.com>, relay=127\.0\.0\.30\[127\.0\.0\.30\]:\d+, delay=[\d.]+, dsn=2\.0\.0, status=sent \(250 ",
        events,
    )
    assert events.rstrip().endswith(f"{qid.group(1)}: removed")
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} mailgate/\w+\[\d+\]: ", line), line
    assert re.search(r"connect from unknown\[127\.0\.0\.100\]", log)


def test_json_log_carries_the_queue_id_as_a_field(tmp_path: Path, sink: Sink) -> None:
    gw, log = run_one_message(tmp_path, sink, "json")
    gw.stop()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "component", "pid", "message"} <= r.keys() for r in records)
    queued = [r for r in records if r["component"] == "cleanup"]
    qid = queued[0]["qid"]
    story = [r for r in records if r.get("qid") == qid]
    components = [r["component"] for r in story]
    assert components.count("smtpd") == 2  # one reject, one accept
    assert "smtp" in components
    assert story[-1]["message"] == "removed"
    sent = next(r for r in story if r["component"] == "smtp")
    assert "status=sent" in sent["message"]
