"""Golden SMTP transcripts (tests/golden/*.smtp), in the manner of Postfix's smtpd_check
tables: each file sets a configuration, then lists commands and the exact replies expected."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailgate.testing.raw import RawSmtp
from mailgate.testing.sink import Sink
from tests.conftest import GATEWAY_IP, INTERNAL_IP, Gateway

GOLDEN = Path(__file__).parent.parent / "golden"


@dataclass
class Session:
    client: str
    smtputf8: bool
    steps: list[tuple[str, str, int]] = field(default_factory=list)  # command, reply, line


def parse(path: Path) -> tuple[str, list[Session]]:
    config = ""
    sessions: list[Session] = []
    command: tuple[str, int] | None = None
    for number, raw_line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw_line.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@config "):
            config = line[len("@config ") :]
        elif line.startswith("@client "):
            words = line.split()
            sessions.append(Session(words[1], "SMTPUTF8" in words[2:]))
        elif line.startswith("> "):
            command = (line[2:], number)
        elif line.startswith("< "):
            assert command is not None, f"{path.name}:{number}: reply without command"
            assert sessions, f"{path.name}:{number}: reply before @client"
            sessions[-1].steps.append((command[0], line[2:], command[1]))
            command = None
        else:
            raise AssertionError(f"{path.name}:{number}: cannot read {line!r}")
    return config, sessions


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.smtp")), ids=lambda p: p.stem)
def test_golden_transcript(
    path: Path, start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    config_text, sessions = parse(path)
    sink = start_sink(INTERNAL_IP)
    gw = start_gateway(json.loads(config_text.replace("{sink}", str(sink.port))))
    failures = []
    for session in sessions:
        with RawSmtp(GATEWAY_IP, gw.port, session.client) as client:
            assert client.reply().code == 220
            assert client.command("EHLO client.example").code == 250
            mail = "MAIL FROM:<sender@ext.org>" + (" SMTPUTF8" if session.smtputf8 else "")
            assert client.command(mail).code == 250
            for command, expected, number in session.steps:
                got = str(client.command(command))
                if got != expected:
                    failures.append(
                        f"{path.name}:{number}: {command}\n  want {expected}\n  got  {got}"
                    )
    assert not failures, "\n".join(failures)
