"""The relay decision for each recipient (Postfix permit_mynetworks, reject_unauth_destination).

Deny by default: a recipient is accepted only when the client is in a trusted network (any
domain), or when the recipient is in a local domain and carries no sender-specified routing.
Everything else gets `554 5.7.1 <address>: Relay access denied`, whatever the address form
(see mailgate.smtp.address for the forms that are normalised or flagged before this point).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from mailgate.types import Mailbox

if TYPE_CHECKING:
    from mailgate.config.model import RecipientVerification

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class RelayVerdict(Enum):
    TRUSTED = "trusted network"
    LOCAL = "local domain"
    DENIED = "relay access denied"


@dataclass(frozen=True, slots=True)
class RelayDecision:
    verdict: RelayVerdict
    reason: str

    @property
    def permitted(self) -> bool:
        return self.verdict is not RelayVerdict.DENIED


def client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a peer address; an IPv4-mapped IPv6 address counts as its IPv4 address."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ipv4_view(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network as the IPv4 network it is, as `client_ip` reads clients."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        host = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((host, network.prefixlen - 96))
    return network


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    """Whether two networks share an address (IPv4-mapped IPv6 counting as IPv4)."""
    a, b = ipv4_view(a), ipv4_view(b)
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.overlaps(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.overlaps(b)
    # An IPv6 network that holds the whole mapped range holds every IPv4 address.
    v6 = a if isinstance(a, ipaddress.IPv6Network) else b
    assert isinstance(v6, ipaddress.IPv6Network)
    return v6.supernet_of(_MAPPED)


class TrustedNetworks:
    """Membership test for the trusted networks (Postfix mynetworks)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        self._known: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str) or not self.networks:
            return False
        known = self._known.get(ip)
        if known is not None:
            return known
        try:
            addr = client_ip(ip)
        except ValueError:
            return False
        answer = any(addr in net for net in self.networks)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[ip] = answer
        return answer

    def __bool__(self) -> bool:
        return bool(self.networks)


class RelayPolicy:
    def __init__(self, local_domains: Iterable[str]) -> None:
        self.local_domains = frozenset(local_domains)

    def decide(self, recipient: Mailbox, *, trusted: bool) -> RelayDecision:
        if trusted:
            return RelayDecision(RelayVerdict.TRUSTED, "client in trusted networks")
        if recipient.routed:
            return RelayDecision(
                RelayVerdict.DENIED, "sender-specified routing from an untrusted client"
            )
        if recipient.literal:
            return RelayDecision(RelayVerdict.DENIED, "address literal is not a local domain")
        if recipient.domain in self.local_domains:
            return RelayDecision(RelayVerdict.LOCAL, f"local domain {recipient.domain}")
        return RelayDecision(RelayVerdict.DENIED, f"{recipient.domain} is not a local domain")

    def check_for(
        self, decision: RelayDecision, recipient: Mailbox, verification: RecipientVerification
    ) -> str | None:
        """What a permitted recipient waits for before its 250: "verify" (its next hop is
        probed: a local domain's recipient from an untrusted client, with verification on),
        "domain" (its domain must exist: a trusted client's mail for a domain outside,
        with reject_unknown_domains), or None."""
        if decision.verdict is RelayVerdict.LOCAL and verification.mode == "reject_unverified":
            return "verify"
        if (
            decision.verdict is RelayVerdict.TRUSTED
            and verification.reject_unknown_domains
            and not recipient.literal
            and recipient.domain not in self.local_domains
        ):
            return "domain"
        return None
