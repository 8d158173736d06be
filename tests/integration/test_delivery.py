"""Delivery: routing (domain route, parent-domain route, relayhost, MX with A/AAAA fallback,
through a real DNS server on loopback), per-recipient outcomes, retries with backoff, DSNs to
the sender (RFC 3464) and never to the null sender, connection reuse."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import INTERNAL_IP, INTERNET_IP, Gateway, free_port, wait_until

TRUSTED_IP = "127.0.0.30"


def dsn_parts(message_bytes: bytes) -> tuple[EmailMessage, list[dict[str, str]], EmailMessage]:
    """Top-level DSN, its per-recipient status fields, and the returned part."""
    dsn = email.message_from_bytes(message_bytes, policy=email.policy.default)
    assert isinstance(dsn, EmailMessage)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = list(dsn.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    status_text = parts[1].get_payload()
    blocks = status_text if isinstance(status_text, list) else []
    recipients = [dict(block.items()) for block in blocks[1:]]
    return dsn, recipients, parts[2]


@pytest.fixture
def internet(start_sink: Callable[..., Sink]) -> Sink:
    """Where mail for outside domains goes (the border gateway / the internet)."""
    return start_sink(INTERNET_IP)


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(
        INTERNAL_IP, rcpt_reply=refuse_unknown({"bob@example.com", "carol@example.com"})
    )


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway], internal: Sink, internet: Sink) -> Gateway:
    return start_gateway(seed_config(internal, internet))


def seed_config(internal: Sink, internet: Sink, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}}],
        "main": {
            "trusted_networks": [f"{TRUSTED_IP}/32"],
            "destination": "border_gateway",
            "relayhost": {"host": INTERNET_IP, "port": internet.port},
        },
    }
    for key, value in extra.items():
        config[key] = value
    return config


def send(gw: Gateway, sender: str, recipients: list[str], body: bytes, source: str = "127.0.0.100",
         **options: Any) -> None:  # fmt: skip
    with gw.client(source=source) as client:
        refused = client.sendmail(sender, recipients, body, **options)
    assert refused == {}


def test_domain_route_wins_over_the_relayhost(gw: Gateway, internal: Sink, internet: Sink) -> None:
    send(gw, "bob@example.com", ["carol@example.com", "friend@other.org"],
         b"Subject: both\r\n\r\nx\r\n", source=TRUSTED_IP)  # fmt: skip
    (inside,) = internal.wait_for(1)
    (outside,) = internet.wait_for(1)
    assert inside.rcpt_to == ["carol@example.com"]
    assert outside.rcpt_to == ["friend@other.org"]


def test_parent_domain_route_and_a_subdomain_record_of_its_own(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], internet: Sink
) -> None:
    internal = start_sink(INTERNAL_IP)
    config = seed_config(internal, internet)
    config["domains"].append({"name": "own.example.com", "local": True})
    gw = start_gateway(config)
    send(gw, "a@example.com", ["x@deep.sub.example.com", "y@own.example.com"],
         b"Subject: sub\r\n\r\nx\r\n", source=TRUSTED_IP)  # fmt: skip
    assert internal.wait_for(1)[0].rcpt_to == ["x@deep.sub.example.com"]
    assert internet.wait_for(1)[0].rcpt_to == ["y@own.example.com"]


def test_mx_routing_with_preference_and_a_fallback(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
) -> None:  # fmt: skip
    zone, nameserver = dns_zone
    zone.add("mx.test", "MX", "10 mx1.mx.test")  # nothing listens there: try the next
    zone.add("mx.test", "MX", "20 mx2.mx.test")
    zone.add("mx1.mx.test", "A", "127.0.0.61")
    zone.add("mx2.mx.test", "A", "127.0.0.62")
    zone.add("a-only.test", "A", "127.0.0.63")
    second = start_sink("127.0.0.62", 25)
    fallback = start_sink("127.0.0.63", 25)
    gw = start_gateway({
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"dns": {"nameservers": [nameserver], "timeout": 2}},
    })  # fmt: skip
    send(gw, "a@example.com", ["u@mx.test", "v@a-only.test"], b"Subject: mx\r\n\r\nx\r\n",
         source=TRUSTED_IP)  # fmt: skip
    assert second.wait_for(1)[0].rcpt_to == ["u@mx.test"]
    assert fallback.wait_for(1)[0].rcpt_to == ["v@a-only.test"]
    assert zone is not None


@pytest.mark.parametrize(("setup", "status", "text"), [
    ("null_mx", "5.1.10", "does not accept mail (nullMX)"),
    ("nxdomain", "5.4.4", "Host or domain name not found"),
])  # fmt: skip
def test_undeliverable_domains_bounce(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str], setup: str, status: str, text: str,
) -> None:  # fmt: skip
    zone, nameserver = dns_zone
    if setup == "null_mx":
        zone.null_mx("nomail.test")
    zone.add("sender.test", "MX", "10 mx.sender.test")
    zone.add("mx.sender.test", "A", "127.0.0.64")
    senders_mx = start_sink("127.0.0.64", 25)
    gw = start_gateway({
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"dns": {"nameservers": [nameserver], "timeout": 2}},
    })  # fmt: skip
    send(gw, "alice@sender.test", ["x@nomail.test"], b"Subject: nomail\r\n\r\nx\r\n",
         source=TRUSTED_IP)  # fmt: skip
    (bounce,) = senders_mx.wait_for(1)
    assert bounce.mail_from == ""
    assert bounce.rcpt_to == ["alice@sender.test"]
    _, (fields,), _ = dsn_parts(bounce.data)
    assert fields["Status"] == status
    assert text in fields["Diagnostic-Code"]
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_dns_failure_defers(
    start_gateway: Callable[..., Gateway], dns_zone: tuple[Any, str]
) -> None:
    zone, nameserver = dns_zone
    zone.servfail("broken.test")
    gw = start_gateway({
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
        "advanced": {"dns": {"nameservers": [nameserver], "timeout": 2},
                     "queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300}},
    })  # fmt: skip
    send(gw, "a@example.com", ["x@broken.test"], b"Subject: s\r\n\r\nx\r\n", source=TRUSTED_IP)
    # Deferred once the attempt's outcome is recorded and the next attempt is set.
    (item,) = wait_until(lambda: [i for i in gw.queue() if i["state"] == "deferred"])
    assert "Name service error for name=broken.test" in item["recipients"][0]["reason"]


def test_refused_recipient_gets_a_dsn_and_the_others_are_delivered(
    gw: Gateway, internal: Sink, internet: Sink
) -> None:
    send(gw, "alice@ext.org", ["bob@example.com", "nobody@example.com"],
         b"Subject: hello\r\nMessage-ID: <m1@ext.org>\r\n\r\nbody\r\n")  # fmt: skip
    (delivered,) = internal.wait_for(1)
    assert delivered.rcpt_to == ["bob@example.com"]
    (bounce,) = internet.wait_for(1)
    assert (bounce.mail_from, bounce.rcpt_to) == ("", ["alice@ext.org"])
    dsn, (fields,), returned = dsn_parts(bounce.data)
    assert b"\r\nFrom: MAILER-DAEMON@mailgate.test (Mail Delivery System)\r\n" in bounce.data
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert fields["Final-Recipient"] == "rfc822; nobody@example.com"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    assert fields["Remote-MTA"] == f"dns; {INTERNAL_IP}"
    assert fields["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    )
    assert returned.get_content_type() == "message/rfc822"
    original = returned.get_payload()[0]
    assert original["Message-ID"] == "<m1@ext.org>"
    assert original["Received"].startswith("from ")
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_dsn_returns_headers_only_with_ret_hdrs(gw: Gateway, internet: Sink) -> None:
    send(gw, "alice@ext.org", ["nobody@example.com"], b"Subject: h\r\n\r\nsecret body\r\n",
         mail_options=["RET=HDRS"])  # fmt: skip
    (bounce,) = internet.wait_for(1)
    _, _, returned = dsn_parts(bounce.data)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in bounce.data


def test_no_dsn_to_the_null_sender_nor_with_notify_never(
    gw: Gateway, internal: Sink, internet: Sink
) -> None:
    send(gw, "", ["nobody@example.com"], b"Subject: a bounce\r\n\r\nx\r\n")
    send(gw, "alice@ext.org", ["nobody@example.com"], b"Subject: never\r\n\r\nx\r\n",
         rcpt_options=["NOTIFY=NEVER"])  # fmt: skip
    send(gw, "alice@ext.org", ["bob@example.com"], b"Subject: marker\r\n\r\nx\r\n")
    internal.wait_for(1)
    wait_until(lambda: gw.queue() == [], what="the queue to empty")
    assert internet.messages == []


def test_temporary_refusal_is_retried_until_accepted(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], internet: Sink
) -> None:
    attempts: list[str] = []

    def busy_twice(address: str) -> str:
        attempts.append(address)
        return "451 4.3.0 Try again later" if len(attempts) <= 2 else "250 2.1.5 Ok"

    internal = start_sink(INTERNAL_IP, rcpt_reply=busy_twice)
    gw = start_gateway(seed_config(internal, internet))
    send(gw, "alice@ext.org", ["bob@example.com"], b"Subject: retry\r\n\r\nx\r\n")
    (message,) = internal.wait_for(1, timeout=20)
    assert len(attempts) == 3
    assert message.rcpt_to == ["bob@example.com"]
    assert internet.messages == []


def test_next_hop_down_then_back(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], internet: Sink
) -> None:
    port = free_port(INTERNAL_IP)
    gw = start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": port}}],
        "advanced": {"queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300}},
    })  # fmt: skip
    send(gw, "alice@ext.org", ["bob@example.com"], b"Subject: later\r\n\r\nx\r\n")
    # Deferred once the attempt's outcome is recorded and the next attempt is set.
    (item,) = wait_until(lambda: [i for i in gw.queue() if i["state"] == "deferred"])
    assert "Connection refused" in item["recipients"][0]["reason"]
    internal = start_sink(INTERNAL_IP, port)
    gw.flush()
    (message,) = internal.wait_for(1)
    assert message.parsed()["Subject"] == "later"
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_expired_message_is_returned_to_the_sender(
    start_gateway: Callable[..., Gateway], internet: Sink
) -> None:
    gw = start_gateway({
        "domains": [{"name": "example.com", "route": {"host": INTERNAL_IP, "port": free_port(INTERNAL_IP)}}],
        "main": {"destination": "border_gateway", "relayhost": {"host": INTERNET_IP, "port": internet.port}},
        "advanced": {"queue": {"minimal_backoff_time": 0.5, "maximal_backoff_time": 0.5,
                               "maximal_queue_lifetime": 2}},
    })  # fmt: skip
    send(gw, "alice@ext.org", ["bob@example.com"], b"Subject: expiring\r\n\r\nx\r\n")
    (bounce,) = internet.wait_for(1, timeout=20)
    _, (fields,), _ = dsn_parts(bounce.data)
    assert fields["Action"] == "failed"
    assert fields["Status"] == "4.4.1"
    assert "message expired" in fields["Diagnostic-Code"]
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_connection_is_reused_for_the_next_messages(gw: Gateway, internal: Sink) -> None:
    for n in range(5):
        send(gw, "alice@ext.org", ["bob@example.com"], f"Subject: {n}\r\n\r\nx\r\n".encode())
        internal.wait_for(n + 1)
    assert internal.counters.sessions == 1


def test_many_recipients_go_in_transactions_of_fifty(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], internet: Sink
) -> None:
    internal = start_sink(INTERNAL_IP)
    gw = start_gateway(seed_config(internal, internet))
    recipients = [f"user{n}@example.com" for n in range(120)]
    send(gw, "alice@ext.org", recipients, b"Subject: many\r\n\r\nx\r\n")
    messages = internal.wait_for(3)
    assert sorted(len(m.rcpt_to) for m in messages) == [20, 50, 50]
    assert sorted(r for m in messages for r in m.rcpt_to) == sorted(recipients)


def test_route_to_itself_bounces_as_a_loop(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], internet: Sink
) -> None:
    gw = start_gateway(seed_config(start_sink(INTERNAL_IP), internet))
    gw.configure(lambda data: data["domains"].append(
        {"name": "loop.test", "route": {"host": "127.0.0.20", "port": gw.port}}))  # fmt: skip
    send(gw, "alice@ext.org", ["x@loop.test"], b"Subject: loop\r\n\r\nx\r\n", source=TRUSTED_IP)
    (bounce,) = internet.wait_for(1)
    _, (fields,), _ = dsn_parts(bounce.data)
    assert fields["Status"] == "5.4.6"
    assert "loops back to myself" in fields["Diagnostic-Code"]


def test_ipv6_route_and_address_literals(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    v6 = start_sink("::1")
    literal = start_sink("127.0.0.65", 25)
    gw = start_gateway({
        "domains": [{"name": "v6.test", "local": False, "route": {"host": "[IPv6:::1]", "port": v6.port}}],
        "main": {"trusted_networks": [f"{TRUSTED_IP}/32"]},
    })  # fmt: skip
    assert gw.config_service().current().config.domains[0].route.host == "::1"  # type: ignore[union-attr]
    send(gw, "a@example.com", ["x@v6.test", "y@[127.0.0.65]"], b"Subject: v6\r\n\r\nx\r\n",
         source=TRUSTED_IP)  # fmt: skip
    assert v6.wait_for(1)[0].rcpt_to == ["x@v6.test"]
    assert literal.wait_for(1)[0].rcpt_to == ["y@[127.0.0.65]"]


def test_a_connection_cancelled_while_waiting_for_the_greeting_is_closed() -> None:
    """A caller's deadline that cuts the session set-up short (the integration check's, a
    shutdown) closes the connection instead of leaving it open to the garbage collector."""
    import asyncio

    from mailgate.config.model import TlsLevel
    from mailgate.smtp.client import SmtpClient

    async def scenario() -> bytes:
        hung_up = asyncio.get_running_loop().create_future()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hung_up.set_result(await reader.read())  # b"" once the client closes
            writer.close()

        server = await asyncio.start_server(silent, INTERNAL_IP, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await SmtpClient.connect(host="silent", ip=INTERNAL_IP, port=port,
                                             helo="mailgate.test", tls=TlsLevel.NONE,
                                             connect_timeout=5, command_timeout=30)  # fmt: skip
            return await asyncio.wait_for(hung_up, 5)

    assert asyncio.run(scenario()) == b""


NO_DSN = ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")


def test_notify_success_to_a_next_hop_without_dsn_gets_a_relayed_notice(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink]
) -> None:
    """RFC 3461 section 6.2.6, as Postfix: the next hop cannot carry NOTIFY=SUCCESS on, so
    mailgate reports "relayed" to the sender itself; a recipient without it gets nothing."""
    internal = start_sink(INTERNAL_IP)
    internet = start_sink(INTERNET_IP, extensions=NO_DSN)
    gw = start_gateway(seed_config(internal, internet))
    with gw.client(source=TRUSTED_IP) as client:
        client.ehlo()
        client.mail("bob@example.com")
        assert client.rcpt("friend@other.org", ["NOTIFY=SUCCESS,FAILURE"])[0] == 250
        assert client.rcpt("quiet@other.org")[0] == 250
        assert client.data(b"Subject: tell me\r\nMessage-ID: <s1@example.com>\r\n\r\nbody\r\n")[
            0
        ] == 250  # fmt: skip
    (delivered,) = internet.wait_for(1)
    assert delivered.rcpt_options == [[], []]  # nothing to pass on to a server without DSN
    (notice,) = internal.wait_for(1)
    assert (notice.mail_from, notice.rcpt_to) == ("", ["bob@example.com"])
    dsn, recipients, returned = dsn_parts(notice.data)
    assert dsn["Subject"] == "Successful Mail Delivery Report"
    assert [(f["Final-Recipient"], f["Action"], f["Status"]) for f in recipients] == [
        ("rfc822; friend@other.org", "relayed", "2.0.0")
    ]
    assert recipients[0]["Remote-MTA"] == f"dns; {INTERNET_IP}"
    assert returned.get_content_type() == "text/rfc822-headers"
    wait_until(lambda: gw.queue() == [], what="the queue to empty")


def test_notify_success_to_a_next_hop_with_dsn_is_passed_on(
    gw: Gateway, internal: Sink, internet: Sink
) -> None:
    """The next hop offers DSN: NOTIFY and ORCPT go with the recipient, and reporting success
    is the next hop's job (mailgate sends no notice of its own)."""
    send(gw, "bob@example.com", ["friend@other.org"], b"Subject: pass it on\r\n\r\nbody\r\n",
         source=TRUSTED_IP, rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Friend@Other.org"])  # fmt: skip
    (delivered,) = internet.wait_for(1)
    assert delivered.rcpt_options == [["NOTIFY=SUCCESS", "ORCPT=rfc822;Friend@Other.org"]]
    wait_until(lambda: gw.queue() == [], what="the queue to empty")
    assert internal.messages == []
