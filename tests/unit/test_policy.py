"""Relay control and client limits (mailgate.policy.relay, mailgate.policy.limits).

Relay: Postfix permit_mynetworks + reject_unauth_destination (SPEC section 2, "Relay
decision"). Limits: Postfix anvil (connection count and rates per client), with a fake clock.
"""

from __future__ import annotations

import pytest

from mailgate.config.model import SmtpLimits
from mailgate.policy.limits import ClientLimits
from mailgate.policy.relay import (
    RelayDecision,
    RelayPolicy,
    RelayVerdict,
    TrustedNetworks,
    client_ip,
)
from mailgate.smtp import codes
from mailgate.smtp.address import parse_path
from mailgate.types import Mailbox, Reply

HOSTNAME = "gw.example.com"
CLIENT = "192.0.2.1"


def mailbox(path: str) -> Mailbox:
    result = parse_path(path, allow_null=False)
    assert result is not None
    return result


# -- trusted networks ------------------------------------------------------------------------


@pytest.fixture
def trusted() -> TrustedNetworks:
    return TrustedNetworks(["192.0.2.0/24", "10.1.2.3", "2001:db8::/32", "fe80::/10"])


@pytest.mark.parametrize(
    "ip",
    [
        "192.0.2.0",
        "192.0.2.255",
        "10.1.2.3",
        "2001:db8::1",
        "2001:DB8:ffff::1",
        # An IPv4-mapped IPv6 peer (dual-stack socket) counts as its IPv4 address.
        "::ffff:192.0.2.7",
        "::FFFF:10.1.2.3",
        "fe80::1%eth0",
    ],
)
def test_trusted(trusted: TrustedNetworks, ip: str) -> None:
    assert ip in trusted


@pytest.mark.parametrize(
    "ip",
    [
        "192.0.3.1",
        "10.1.2.4",
        "2001:db9::1",
        "::ffff:192.0.3.1",
        "::192.0.2.7",  # IPv4-compatible, not IPv4-mapped
        "127.0.0.1",
        "",
        "not-an-ip",
        "192.0.2.256",
        "192.0.2.1/24",
        "192.0.2.1 ",
    ],
)
def test_not_trusted(trusted: TrustedNetworks, ip: str) -> None:
    assert ip not in trusted


def test_non_string_is_not_trusted(trusted: TrustedNetworks) -> None:
    assert None not in trusted
    assert 3221225985 not in trusted  # 192.0.2.1 as an integer


def test_empty_list_trusts_nobody() -> None:
    nobody = TrustedNetworks([])
    assert not nobody
    for ip in ("127.0.0.1", "::1", "192.0.2.1", "::ffff:127.0.0.1"):
        assert ip not in nobody


def test_non_empty_list_is_true(trusted: TrustedNetworks) -> None:
    assert trusted


def test_client_ip() -> None:
    assert str(client_ip("::ffff:192.0.2.7")) == "192.0.2.7"
    assert str(client_ip("2001:db8::1")) == "2001:db8::1"
    assert str(client_ip("fe80::1%eth0")) == "fe80::1"
    with pytest.raises(ValueError):  # noqa: PT011 - ipaddress raises a plain ValueError
        client_ip("example.com")


# -- relay decision ---------------------------------------------------------------------------

POLICY = RelayPolicy(["example.com", "xn--exmple-cua.com"])


@pytest.mark.parametrize(
    "path",
    [
        "user@example.com",
        "user@evil.org",
        "user%evil.org@example.com",
        "@example.com:user@evil.org",
        "user@[192.0.2.1]",
        '"user@evil.org"@example.com',
    ],
)
def test_trusted_client_may_relay_anywhere(path: str) -> None:
    decision = POLICY.decide(mailbox(path), trusted=True)
    assert decision == RelayDecision(RelayVerdict.TRUSTED, "client in trusted networks")
    assert decision.permitted


@pytest.mark.parametrize(
    ("path", "domain"),
    [
        ("user@example.com", "example.com"),
        ("User@EXAMPLE.COM", "example.com"),
        ("user@Example.Com.", "example.com"),
        ("user@exämple.com", "xn--exmple-cua.com"),
        ("user@XN--EXMPLE-CUA.COM", "xn--exmple-cua.com"),
        ('"john doe"@example.com', "example.com"),
        ("first.last+tag@example.com", "example.com"),
    ],
)
def test_untrusted_client_to_local_domain(path: str, domain: str) -> None:
    decision = POLICY.decide(mailbox(path), trusted=False)
    assert decision == RelayDecision(RelayVerdict.LOCAL, f"local domain {domain}")
    assert decision.permitted


ROUTING = "sender-specified routing from an untrusted client"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("user@evil.org", "evil.org is not a local domain"),
        ("user@EVIL.org.", "evil.org is not a local domain"),
        ("user@sub.example.com", "sub.example.com is not a local domain"),
        ("user@example.com.evil.org", "example.com.evil.org is not a local domain"),
        ("user@notexample.com", "notexample.com is not a local domain"),
        ("user@com", "com is not a local domain"),
        # Sender-specified routing through a local domain (open relay tricks).
        ("user%evil.org@example.com", ROUTING),
        ("evil.org!user@example.com", ROUTING),
        ('"user@evil.org"@example.com', ROUTING),
        ('"user%evil.org"@example.com', ROUTING),
        ("@example.com:user@example.com", ROUTING),
        ("@example.com:user@evil.org", ROUTING),
        ("@evil.org,@example.com:user@example.com", ROUTING),
        # Address literals are never local, whatever address they hold.
        ("user@[192.0.2.1]", "address literal is not a local domain"),
        ("user@[127.0.0.1]", "address literal is not a local domain"),
        ("user@[IPv6:::1]", "address literal is not a local domain"),
        ("user%x@[192.0.2.1]", ROUTING),
    ],
)
def test_untrusted_client_denied(path: str, reason: str) -> None:
    decision = POLICY.decide(mailbox(path), trusted=False)
    assert decision == RelayDecision(RelayVerdict.DENIED, reason)
    assert not decision.permitted


def test_no_local_domain_accepts_nothing_from_untrusted() -> None:
    policy = RelayPolicy([])
    assert not policy.decide(mailbox("user@example.com"), trusted=False).permitted
    assert policy.decide(mailbox("user@example.com"), trusted=True).permitted


def test_relay_denied_reply() -> None:
    assert codes.relay_denied("user@evil.org") == Reply(
        554, "5.7.1", "<user@evil.org>: Relay access denied"
    )


# -- client limits ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limits(clock: Clock) -> ClientLimits:
    return ClientLimits(lambda: HOSTNAME, clock)


def too_many_connections(ip: str) -> Reply:
    return Reply(421, "4.7.0", f"{HOSTNAME} Error: too many connections from {ip}")


def test_connection_count_limit(limits: ClientLimits) -> None:
    config = SmtpLimits(client_connection_count_limit=2)
    assert limits.connect(CLIENT, config, exempt=False) is None
    assert limits.connect(CLIENT, config, exempt=False) is None
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)
    # Another client is counted apart.
    assert limits.connect("192.0.2.2", config, exempt=False) is None
    assert limits.active(CLIENT) == 4
    assert limits.active("192.0.2.2") == 1


def test_connection_count_reply_on_the_wire(limits: ClientLimits) -> None:
    config = SmtpLimits(client_connection_count_limit=1)
    limits.connect("2001:db8::1", config, exempt=False)
    reply = limits.connect("2001:db8::1", config, exempt=False)
    assert reply is not None
    assert reply.render() == (
        b"421 4.7.0 gw.example.com Error: too many connections from 2001:db8::1\r\n"
    )


def test_disconnect_frees_a_slot(limits: ClientLimits) -> None:
    config = SmtpLimits(client_connection_count_limit=2)
    assert limits.connect(CLIENT, config, exempt=False) is None  # a
    assert limits.connect(CLIENT, config, exempt=False) is None  # b
    assert limits.connect(CLIENT, config, exempt=False) is not None  # c, refused
    limits.disconnect(CLIENT)  # c goes away
    assert limits.connect(CLIENT, config, exempt=False) is not None  # a and b still open
    limits.disconnect(CLIENT)
    limits.disconnect(CLIENT)  # a goes away
    assert limits.active(CLIENT) == 1
    assert limits.connect(CLIENT, config, exempt=False) is None
    limits.disconnect(CLIENT)
    limits.disconnect(CLIENT)
    assert limits.active(CLIENT) == 0


def test_disconnect_never_goes_negative(limits: ClientLimits) -> None:
    config = SmtpLimits(client_connection_count_limit=1)
    limits.disconnect(CLIENT)
    limits.disconnect(CLIENT)
    assert limits.active(CLIENT) == 0
    assert limits.connect(CLIENT, config, exempt=False) is None
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)


def test_exempt_client_never_refused(limits: ClientLimits) -> None:
    config = SmtpLimits(
        client_connection_count_limit=1,
        client_connection_rate_limit=1,
        client_message_rate_limit=1,
        client_recipient_rate_limit=1,
    )
    for _ in range(5):
        assert limits.connect(CLIENT, config, exempt=True) is None
        assert limits.message(CLIENT, config, exempt=True) is None
        assert limits.recipient(CLIENT, config, exempt=True) is None
    assert limits.active(CLIENT) == 5


def test_zero_means_no_limit(limits: ClientLimits) -> None:
    config = SmtpLimits(client_connection_count_limit=0)
    for _ in range(200):
        assert limits.connect(CLIENT, config, exempt=False) is None
        assert limits.message(CLIENT, config, exempt=False) is None
        assert limits.recipient(CLIENT, config, exempt=False) is None


def test_connection_rate_window(limits: ClientLimits, clock: Clock) -> None:
    config = SmtpLimits(client_connection_rate_limit=2, client_rate_time_unit=60)
    for _ in range(2):
        assert limits.connect(CLIENT, config, exempt=False) is None
        limits.disconnect(CLIENT)
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)
    limits.disconnect(CLIENT)
    clock.now += 59.9
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)
    limits.disconnect(CLIENT)
    clock.now += 0.1  # the time unit has passed: a new window
    assert limits.connect(CLIENT, config, exempt=False) is None
    limits.disconnect(CLIENT)
    assert limits.connect(CLIENT, config, exempt=False) is None
    limits.disconnect(CLIENT)
    assert limits.connect(CLIENT, config, exempt=False) == too_many_connections(CLIENT)


def test_message_rate_window(limits: ClientLimits, clock: Clock) -> None:
    config = SmtpLimits(client_message_rate_limit=2, client_rate_time_unit=30)
    refusal = Reply(450, "4.7.1", f"Error: too much mail from {CLIENT}")
    assert limits.message(CLIENT, config, exempt=False) is None
    assert limits.message(CLIENT, config, exempt=False) is None
    assert limits.message(CLIENT, config, exempt=False) == refusal
    assert limits.message("192.0.2.2", config, exempt=False) is None
    clock.now += 29
    assert limits.message(CLIENT, config, exempt=False) == refusal
    clock.now += 1
    assert limits.message(CLIENT, config, exempt=False) is None


def test_recipient_rate_window(limits: ClientLimits, clock: Clock) -> None:
    config = SmtpLimits(client_recipient_rate_limit=3, client_rate_time_unit=60)
    refusal = Reply(450, "4.7.1", f"Error: too many recipients from {CLIENT}")
    for _ in range(3):
        assert limits.recipient(CLIENT, config, exempt=False) is None
    assert limits.recipient(CLIENT, config, exempt=False) == refusal
    assert refusal.is_temporary
    clock.now += 60
    for _ in range(3):
        assert limits.recipient(CLIENT, config, exempt=False) is None
    assert limits.recipient(CLIENT, config, exempt=False) == refusal


def test_expire_forgets_only_old_windows(limits: ClientLimits, clock: Clock) -> None:
    config = SmtpLimits(client_message_rate_limit=1, client_rate_time_unit=60)
    limits.message("192.0.2.1", config, exempt=False)
    clock.now += 30
    limits.message("192.0.2.2", config, exempt=False)
    clock.now += 30  # the first window is now one unit old, the second half a unit
    limits.expire(60)
    # The rate windows are private; expire() exists to keep that table from growing forever.
    assert set(limits._windows) == {"192.0.2.2"}
    assert limits.message("192.0.2.2", config, exempt=False) == Reply(
        450, "4.7.1", "Error: too much mail from 192.0.2.2"
    )
    assert limits.message("192.0.2.1", config, exempt=False) is None
    clock.now += 60
    limits.expire(60)
    assert limits._windows == {}
