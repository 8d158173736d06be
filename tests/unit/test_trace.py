"""`mailgate.trace`: the decisions a session and delivery would make, with the lookups faked
(the live lookups and the command are tested against a running gateway in
tests/integration/test_trace.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailgate.config.model import Config
from mailgate.queue.delivery import DestinationFailure
from mailgate.queue.routing import Destination
from mailgate.trace import Lookup, Trace, TraceError, trace
from mailgate.types import Mailbox

UNTRUSTED = "203.0.113.5"
TRUSTED = "10.1.2.3"


class FakeLookups:
    def __init__(
        self,
        verified: dict[str, Lookup] | None = None,
        domains: dict[str, Lookup] | None = None,
        hosts: dict[str, list[tuple[str, str]] | DestinationFailure] | None = None,
    ) -> None:
        self.verified = verified or {}
        self.domains = domains or {}
        self.hosts_by_name = hosts or {}
        self.asked: list[str] = []

    async def verify(self, mailbox: Mailbox) -> Lookup:
        self.asked.append(f"verify {mailbox.address}")
        return self.verified.get(mailbox.address, Lookup("unknown", "not cached"))

    async def domain(self, domain: str) -> Lookup:
        self.asked.append(f"domain {domain}")
        return self.domains.get(domain, Lookup("ok", "", "dns"))

    async def hosts(self, destination: Destination) -> list[tuple[str, str]]:
        found = self.hosts_by_name.get(destination.host, [(destination.host, "192.0.2.7")])
        if isinstance(found, DestinationFailure):
            raise found
        return found


def config(**extra: Any) -> Config:
    base: dict[str, Any] = {
        "domains": [
            {"name": "corp.example", "route": {"host": "10.0.0.30", "port": 2525}},
            {"name": "branch.example"},
        ],
        "main": {"trusted_networks": ["10.0.0.0/8"], "smtp_listen": ["10.0.0.20:25"]},
    }
    base.update(extra)
    return Config.model_validate(base)


def run(cfg: Config, lookups: FakeLookups | None = None, **kwargs: Any) -> Trace:
    kwargs.setdefault("client", UNTRUSTED)
    kwargs.setdefault("sender", "alice@example.org")
    return asyncio.run(trace(cfg, lookups or FakeLookups(), **kwargs))


def replies(result: Trace) -> list[str]:
    return [r.reply for r in result.recipients]


def test_untrusted_client_gets_local_domains_only_whatever_the_address_form() -> None:
    result = run(config(), recipients=[
        "bob@corp.example", "<bob@CORP.example.>", "eve@elsewhere.example",
        "bob%elsewhere.example@corp.example", "elsewhere.example!bob@corp.example",
        "<@corp.example:bob@elsewhere.example>", "bob@[10.0.0.30]", '"bob@x"@elsewhere.example',
    ])  # fmt: skip
    assert not result.trusted
    assert result.mail_reply == "250 2.1.0 Ok"
    assert replies(result) == [
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "554 5.7.1 <eve@elsewhere.example>: Relay access denied",
        "554 5.7.1 <bob%elsewhere.example@corp.example>: Relay access denied",
        "554 5.7.1 <elsewhere.example!bob@corp.example>: Relay access denied",
        "554 5.7.1 <@corp.example:bob@elsewhere.example>: Relay access denied",
        "554 5.7.1 <bob@[10.0.0.30]>: Relay access denied",
        '554 5.7.1 <"bob@x"@elsewhere.example>: Relay access denied',
    ]
    assert result.recipients[3].relay == "sender-specified routing from an untrusted client"
    assert [r.accepted for r in result.recipients] == [True, True] + [False] * 6
    assert result.data_reply.startswith("354 ")


def test_no_local_domain_accepts_nothing_and_data_has_no_valid_recipients() -> None:
    result = run(Config(), recipients=["bob@corp.example"])
    assert replies(result) == ["554 5.7.1 <bob@corp.example>: Relay access denied"]
    assert result.data_reply == "554 5.5.1 Error: no valid recipients"


def test_trusted_client_relays_anywhere_and_the_domain_check_decides() -> None:
    cfg = config(advanced={"verification": {"reject_unknown_domains": True}})
    lookups = FakeLookups(domains={
        "nowhere.example": Lookup("bad", "Domain not found", "dns"),
        "flaky.example": Lookup("temp", "Domain not found", "dns"),
    })  # fmt: skip
    result = run(cfg, lookups, client=TRUSTED,
                 recipients=["x@outside.example", "x@nowhere.example", "x@flaky.example",
                             "bob@corp.example"])  # fmt: skip
    assert result.trusted
    assert replies(result) == [
        "250 2.1.5 Ok",
        "550 5.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found",
        "450 4.1.2 <x@flaky.example>: Recipient address rejected: Domain not found",
        "250 2.1.5 Ok",
    ]
    # Local domains are not looked up: they are the gateway's own.
    assert lookups.asked == ["domain outside.example", "domain nowhere.example",
                             "domain flaky.example"]  # fmt: skip
    outside = result.recipients[0]
    assert (outside.next_hop, outside.via) == ("outside.example:25", "dns")


def test_verification_outcomes_give_the_servers_replies() -> None:
    cfg = config(advanced={"verification": {"mode": "reject_unverified"}})
    lookups = FakeLookups(verified={
        "bob@corp.example": Lookup("ok", "250 2.1.5 Ok", "cache"),
        "nobody@corp.example": Lookup("bad", "550 5.1.1 no such user", "cache"),
        "later@corp.example": Lookup("temp", "451 4.3.0 try later", "probe"),
    })  # fmt: skip
    result = run(cfg, lookups, recipients=["bob@corp.example", "nobody@corp.example",
                                          "later@corp.example", "new@corp.example"])  # fmt: skip
    assert replies(result) == [
        "250 2.1.5 Ok",
        "550 5.1.1 <nobody@corp.example>: Recipient address rejected: undeliverable address: "
        "550 5.1.1 no such user",
        "450 4.1.1 <later@corp.example>: Recipient address rejected: unverified address: "
        "451 4.3.0 try later",
        "250 2.1.5 Ok if the next hop accepts <new@corp.example> (not cached)",
    ]
    assert [r.accepted for r in result.recipients] == [True, False, False, None]
    assert [r.check for r in result.recipients] == ["verify"] * 4
    # Refused recipients get no next hop; accepted and undecided ones do.
    assert [bool(r.next_hop) for r in result.recipients] == [True, False, False, True]


def test_trusted_clients_are_not_verified() -> None:
    cfg = config(advanced={"verification": {"mode": "reject_unverified"}})
    lookups = FakeLookups()
    result = run(cfg, lookups, client=TRUSTED, recipients=["new@corp.example"])
    assert replies(result) == ["250 2.1.5 Ok"]
    assert lookups.asked == []


def test_next_hops_route_parent_route_relayhost_and_failures() -> None:
    cfg = config(
        domains=[
            {"name": "corp.example", "route": {"host": "10.0.0.30", "port": 2525}},
            {"name": "mx.example", "route": {"host": "mail.mx.example", "mx_lookup": True}},
            {"name": "gone.example", "route": {"host": "gone.example", "mx_lookup": True}},
            {"name": "self.example", "route": {"host": "10.0.0.20"}},
        ],
        main={"trusted_networks": ["10.0.0.0/8"], "smtp_listen": ["10.0.0.20:25"],
              "destination": "border_gateway", "relayhost": {"host": "10.0.0.10"}},
    )  # fmt: skip
    lookups = FakeLookups(hosts={
        "mail.mx.example": [("mx1.mx.example", "192.0.2.1"), ("mx2.mx.example", "192.0.2.2")],
        "gone.example": DestinationFailure(
            "Host or domain name not found", dsn="5.4.4", temporary=False),
    })  # fmt: skip
    result = run(cfg, lookups, client=TRUSTED, recipients=[
        "a@corp.example", "a@sub.corp.example", "a@mx.example", "a@gone.example",
        "a@self.example", "a@outside.example",
    ])  # fmt: skip
    hops = [(r.next_hop, r.via, r.hosts, r.hop_error) for r in result.recipients]
    assert hops == [
        ("[10.0.0.30]:2525", "route corp.example", ["10.0.0.30[192.0.2.7]"], ""),
        ("[10.0.0.30]:2525", "route corp.example", ["10.0.0.30[192.0.2.7]"], ""),
        ("mail.mx.example:25", "route mx.example",
         ["mx1.mx.example[192.0.2.1]", "mx2.mx.example[192.0.2.2]"], ""),
        ("gone.example:25", "route gone.example", [], "5.4.4 Host or domain name not found"),
        ("[10.0.0.20]:25", "route self.example", ["10.0.0.20[192.0.2.7]"], ""),
        ("[10.0.0.10]:25", "relayhost", ["10.0.0.10[192.0.2.7]"], ""),
    ]  # fmt: skip


def test_a_next_hop_that_is_the_gateway_itself_is_a_loop() -> None:
    cfg = config(domains=[{"name": "self.example", "route": {"host": "10.0.0.20"}}])
    lookups = FakeLookups(hosts={"10.0.0.20": [("10.0.0.20", "10.0.0.20")]})
    result = run(cfg, lookups, recipients=["a@self.example"])
    assert result.recipients[0].hop_error == "5.4.6 mail for 10.0.0.20 loops back to myself"


def test_rules_and_modules_per_recipient() -> None:
    cfg = config(
        rules=[
            {"name": "no scan for branch", "recipients": ["*@branch.example"], "mode": "skip"},
            {"name": "block eve", "senders": ["eve@*"], "mode": "reject"},
            {"name": "from the lab", "client_networks": ["203.0.113.0/24"],
             "recipients": ["lab@corp.example"], "mode": "delete"},
        ],
        protection={"antivirus": {"enabled": True}, "content": {"enabled": True},
                    "external_services": {"use_spf": False, "use_dkim": False,
                                          "use_dmarc": False}},
    )  # fmt: skip
    result = run(cfg, recipients=["a@corp.example", "a@branch.example", "lab@corp.example"])
    assert [(r.rule, r.rule_mode, r.modules) for r in result.recipients] == [
        ("Default", "modules", ["antivirus", "content"]),
        ("no scan for branch", "skip", []),
        ("from the lab", "delete", []),
    ]
    eve = run(cfg, sender="eve@example.org", recipients=["a@corp.example"])
    assert eve.recipients[0].rule == "block eve"


def test_mail_from_checks() -> None:
    cfg = config(main={"message_size_limit": 2000})
    assert run(cfg, sender="bad address@x", recipients=["a@corp.example"]).mail_reply == (
        "501 5.1.7 Bad sender address syntax"
    )
    assert run(cfg, sender="<>", recipients=["a@corp.example"]).mail_reply == "250 2.1.0 Ok"
    assert run(cfg, sender="", recipients=["a@corp.example"]).mail_reply == "250 2.1.0 Ok"
    big = run(cfg, size=2001, recipients=["a@corp.example"])
    assert big.mail_reply == "552 5.3.4 Message size exceeds fixed limit"
    assert big.recipients == []
    assert big.data_reply == "503 5.5.1 Error: need RCPT command"
    assert run(cfg, sender="jörg@example.org", recipients=["a@corp.example"]).mail_reply == (
        "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    )
    utf8 = run(cfg, sender="jörg@example.org", smtputf8=True, recipients=["a@corp.example"])
    assert utf8.mail_reply == "250 2.1.0 Ok"


def test_recipient_syntax_and_limit() -> None:
    cfg = config(advanced={"limits": {"recipient_limit": 2}})
    result = run(cfg, recipients=["a@corp.example", "bad address", "b@corp.example",
                                  "c@corp.example", "<>"])  # fmt: skip
    assert replies(result) == [
        "250 2.1.5 Ok",
        "501 5.1.3 Bad recipient address syntax",
        "250 2.1.5 Ok",
        "452 4.5.3 Error: too many recipients",
        "501 5.1.3 Bad recipient address syntax",
    ]


def test_bad_arguments_are_trace_errors() -> None:
    with pytest.raises(TraceError, match=r"client: 'mail\.example' is not an IP address"):
        run(config(), client="mail.example", recipients=["a@corp.example"])
    with pytest.raises(TraceError, match="recipients"):
        run(config(), recipients=[])
