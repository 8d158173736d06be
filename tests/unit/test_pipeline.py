"""Rules (which rule applies to whom), the pipeline's decisions (strictest action, errors,
deadlines, tags, headers) and the real client behind a border gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailgate.auth.client_origin import from_received, real_client
from mailgate.config.model import validate
from mailgate.config.protection import Action, Rule, strictest
from mailgate.metrics import Counters
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.pipeline.rules import group_recipients, matches, rule_for
from mailgate.pipeline.runner import Pipeline
from mailgate.types import ClientInfo, Envelope, Recipient


@pytest.mark.parametrize(("patterns", "address", "expected"), [
    (["*"], "", True),
    (["*"], "anyone@anywhere.example", True),
    (["*@example.com"], "Bob@EXAMPLE.com", True),
    (["*@example.com"], "bob@sub.example.com", False),
    (["*@*.example.com"], "bob@sub.example.com", True),
    (["bob@*"], "bob@other.org", True),
    (["bob@*"], "bobby@other.org", False),
    (["re:^(alice|bob)@"], "BOB@x.org", True),
    (["re:invoice"], "no-invoices@x.org", True),
    (["re:^$"], "", True),
    ([], "bob@example.com", False),
])  # fmt: skip
def test_patterns(patterns: list[str], address: str, expected: bool) -> None:
    assert matches(patterns, address) is expected


def test_first_enabled_matching_rule_wins_else_default() -> None:
    config = validate({"rules": [
        {"name": "off", "enabled": False, "recipients": ["*@example.com"]},
        {"name": "inbound", "recipients": ["*@example.com"]},
        {"name": "internal", "client_networks": ["10.0.0.0/8"]},
        {"name": "also inbound", "recipients": ["*@example.com"]},
    ]})  # fmt: skip
    pick = lambda rcpt, ip: rule_for(config.rules, config.default_rule, "a@b.c", rcpt, ip).name  # noqa: E731
    assert pick("bob@example.com", "192.0.2.1") == "inbound"
    assert pick("x@other.org", "10.1.2.3") == "internal"
    assert pick("x@other.org", "::ffff:10.1.2.3") == "internal"  # IPv4-mapped counts as IPv4
    assert pick("x@other.org", "192.0.2.1") == "Default"


def test_recipients_are_grouped_per_rule_in_order() -> None:
    config = validate({"rules": [{"name": "sales", "recipients": ["*@sales.example.com"]}]})
    groups = group_recipients(config.rules, config.default_rule, "a@b.c",
                              ["x@example.com", "y@sales.example.com", "z@example.com"], "192.0.2.1")  # fmt: skip
    assert [(g.rule.name, g.indices) for g in groups] == [("Default", [0, 2]), ("sales", [1])]


def test_strictest_action() -> None:
    assert strictest([Action.SKIP, Action.DELETE_ATTACHMENT, Action.REJECT]) is Action.REJECT
    assert strictest([Action.REJECT, Action.DELETE]) is Action.DELETE
    assert strictest([Action.DELETE, Action.TEMPFAIL]) is Action.TEMPFAIL
    assert strictest([Action.QUARANTINE, Action.DELETE_ATTACHMENT]) is Action.QUARANTINE
    assert strictest([]) is Action.SKIP


class FakeCheck:
    def __init__(self, module: str, verdict: Verdict, *, delay: float = 0, detail: str = "",
                 headers: tuple[tuple[str, str], ...] = (), raises: bool = False) -> None:  # fmt: skip
        self.module, self.verdict, self.delay, self.detail = module, verdict, delay, detail
        self.headers, self.raises, self.calls = headers, raises, 0

    async def scan(self, ctx: ScanContext) -> CheckResult:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raises:
            raise RuntimeError("engine exploded")
        return CheckResult(self.module, self.verdict, self.detail, self.headers)


def decide(
    checks: dict[str, Any], config_data: dict[str, Any], recipients: list[str] | None = None
) -> Any:
    config = validate(config_data)
    envelope = Envelope("QID0000000001", "alice@ext.org",
                        [Recipient(r, r.rpartition("@")[2]) for r in recipients or ["bob@example.com"]],
                        ClientInfo("192.0.2.1"), 0.0)  # fmt: skip
    pipeline = Pipeline(checks, Counters())
    return asyncio.run(pipeline.decide(config, envelope, b"Subject: x\r\n\r\nbody\r\n",
                                       envelope.client, RealClient("192.0.2.1", "mx.ext.org")))  # fmt: skip


ALL_ON = {"protection": {"antivirus": {"enabled": True}, "antispam": {"enabled": True},
                         "content": {"enabled": True}, "phishing": {"enabled": True}}}  # fmt: skip


def test_strictest_module_verdict_decides_and_headers_are_collected() -> None:
    checks = {
        "antivirus": FakeCheck(
            "antivirus", Verdict.CLEAN, headers=(("X-Mailgate-Antivirus", "clean"),)
        ),
        "antispam": FakeCheck("antispam", Verdict.SPAM, detail="score 20"),
        "content": FakeCheck("content", Verdict.CLEAN),
        "phishing": FakeCheck("phishing", Verdict.CLEAN),
        "auth": FakeCheck(
            "auth", Verdict.CLEAN, headers=(("Authentication-Results", "mailgate.test; spf=pass"),)
        ),
    }
    data = {**ALL_ON, "default_rule": {"name": "Default", "antispam": {"spam": "skip"}}}
    decision = decide(checks, data)
    (group,) = decision.groups
    assert group.action is Action.SKIP
    assert group.subject_tag == "[!!SPAM]"
    assert ("Authentication-Results", "mailgate.test; spf=pass") in group.headers
    assert ("X-Mailgate-Antivirus", "clean") in group.headers
    data["default_rule"]["antispam"]["spam"] = "quarantine"  # type: ignore[index]
    assert decide(checks, data).groups[0].action is Action.QUARANTINE


def test_scanner_error_and_deadline_give_the_error_action() -> None:
    slow = FakeCheck("antivirus", Verdict.CLEAN, delay=5)
    data = {"protection": {"antivirus": {"enabled": True}, "scan_timeout": 0.2,
                           "external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False}}}  # fmt: skip
    decision = decide({"antivirus": slow}, data)
    assert decision.results["antivirus"].verdict is Verdict.ERROR
    assert "no answer within" in decision.results["antivirus"].detail
    assert decision.groups[0].action is Action.TEMPFAIL
    broken = FakeCheck("antivirus", Verdict.CLEAN, raises=True)
    assert decide({"antivirus": broken}, data).groups[0].action is Action.TEMPFAIL
    data["default_rule"] = {"name": "Default", "antivirus": {"error": "skip"}}
    assert decide({"antivirus": broken}, data).groups[0].action is Action.SKIP


def test_modules_run_once_and_only_when_enabled_and_a_rule_scans() -> None:
    av = FakeCheck("antivirus", Verdict.INFECTED, detail="Eicar")
    spam = FakeCheck("antispam", Verdict.CLEAN)
    data = {"protection": {"antivirus": {"enabled": True}},
            "rules": [{"name": "sales", "recipients": ["*@sales.example.com"], "antivirus": {"infected": "delete"}}]}  # fmt: skip
    decision = decide(
        {"antivirus": av, "antispam": spam}, data, ["a@example.com", "b@sales.example.com"]
    )
    assert av.calls == 1
    assert spam.calls == 0  # antispam is not enabled
    assert [(g.rule.name, g.action) for g in decision.groups] == [
        ("Default", Action.REJECT),
        ("sales", Action.DELETE),
    ]
    skipping = {
        "protection": {"antivirus": {"enabled": True}},
        "default_rule": {"name": "Default", "mode": "skip"},
    }
    av.calls = 0
    assert decide({"antivirus": av}, skipping).groups[0].action is Action.SKIP
    assert av.calls == 0  # no rule scans: nothing runs


def test_rule_modes_reject_and_delete_without_scanning() -> None:
    av = FakeCheck("antivirus", Verdict.CLEAN)
    for mode, action in (("reject", Action.REJECT), ("delete", Action.DELETE)):
        data = {
            "protection": {"antivirus": {"enabled": True}},
            "default_rule": {"name": "Default", "mode": mode},
        }
        assert decide({"antivirus": av}, data).groups[0].action is action
    assert av.calls == 0


RECEIVED = (b"Received: from mx.sender.example (mail.sender.example [192.0.2.77])\r\n"
            b"\tby border.test (Postfix) with ESMTP id 4ABC\r\n\tfor <bob@example.com>; Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            b"Received: from inner (inner [10.9.9.9])\r\n\tby mx.sender.example; date\r\n"
            b"Subject: hi\r\n\r\nbody\r\n")  # fmt: skip


def test_real_client_from_the_topmost_received_header() -> None:
    assert from_received(RECEIVED) == RealClient(
        "192.0.2.77", "mx.sender.example", "mail.sender.example", "received"
    )
    ipv6 = b"Received: from h.example (unknown [IPv6:2001:db8::1])\r\n\tby b; d\r\n\r\nx\r\n"
    assert from_received(ipv6) == RealClient("2001:db8::1", "h.example", "unknown", "received")
    assert from_received(b"Received: garbage\r\n\r\nx\r\n") is None
    assert from_received(b"Received: from h ([300.1.1.1])\r\n\r\nx\r\n") is None


def test_real_client_sources_and_who_may_give_them() -> None:
    args: dict[str, Any] = {
        "connection_ip": "127.0.0.10",
        "helo": "border.test",
        "content": RECEIVED,
    }
    xforward = {"ADDR": "192.0.2.5", "HELO": "mx.fwd.example", "NAME": "[UNAVAILABLE]"}
    xclient = {"ADDR": "192.0.2.6", "HELO": "mx.cl.example"}
    # Not an upstream gateway: whatever it says, the client is the connection.
    assert (
        real_client(from_upstream=False, xclient=xclient, xforward=xforward, **args).source
        == "connection"
    )
    assert real_client(from_upstream=True, xclient=xclient, xforward=xforward, **args) == \
        RealClient("192.0.2.6", "mx.cl.example", "unknown", "xclient")  # fmt: skip
    assert real_client(from_upstream=True, xclient={}, xforward=xforward, **args) == \
        RealClient("192.0.2.5", "mx.fwd.example", "unknown", "xforward")  # fmt: skip
    assert real_client(from_upstream=True, xclient={}, xforward={}, **args).ip == "192.0.2.77"
    assert real_client(from_upstream=True, xclient={}, xforward={"ADDR": "[TEMPUNAVAIL]"},
                       **{**args, "content": b"Subject: x\r\n\r\n"}).source == "connection"  # fmt: skip


def test_rule_names_and_tags_are_single_printable_lines() -> None:
    with pytest.raises(ValueError, match="printable"):
        Rule(name="x", spam_tag="[SPAM]\r\nBcc: evil@example.org")


def test_closing_the_pipeline_closes_each_check_that_holds_something() -> None:
    closed: list[str] = []

    class Holding:
        module = "antispam"

        async def scan(self, ctx: ScanContext) -> CheckResult:
            return CheckResult(self.module, Verdict.CLEAN)

        async def aclose(self) -> None:
            closed.append(self.module)

    class Plain:
        module = "content"

        async def scan(self, ctx: ScanContext) -> CheckResult:
            return CheckResult(self.module, Verdict.CLEAN)

    pipeline = Pipeline({"antispam": Holding(), "content": Plain()}, Counters())
    asyncio.run(pipeline.aclose())
    assert closed == ["antispam"]
