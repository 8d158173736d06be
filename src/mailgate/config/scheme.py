"""The seed's integration in one operation (SPEC section 4.3, "one step for the seed's scheme"):
every step of section 1 applied as one validated configuration change, so the scheme is never
half set up.

1. the local domains, each routed to the internal server;
2. the border gateway as relayhost ("send via border gateway");
3. the trusted networks: the internal servers, never the border gateway;
4. SPF, DKIM and DMARC kept on (where the seed turns them off): the border gateway becomes the
   upstream gateway, whose XFORWARD, XCLIENT or Received header names the real client;
5. Reject replaced by Delete message in every rule (no backscatter through the border);
6. recipient verification: reject for unverified recipients.

Bad input is refused with the field named (`ConfigError`), and so is a scheme that would make
mailgate an open relay through the border gateway: a trusted network containing the border
gateway's address. Routes and the relayhost are taken as given; `mailgate check` tests them
against the live network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailgate.config import service as edits
from mailgate.config.model import ConfigError, split_host_port
from mailgate.policy.relay import IPNetwork, ipv4_view, overlaps

SMTP_PORT = 25


@dataclass(frozen=True)
class BorderScheme:
    """What the seed's procedure needs to know."""

    domains: Sequence[str]  # local domains (and subdomains), one record each
    internal: str  # the internal mail server: host, host:port, [IPv6]:port
    border: str  # the border gateway: host, host:port, [IPv6]:port
    border_mx_lookup: bool = False  # find the border by its name's MX record
    trusted_networks: Sequence[str] = ()  # default: the internal server's address
    upstream_gateways: Sequence[str] = ()  # default: the border gateway's address


@dataclass
class Applied:
    """What the edit did, one line per step (filled when the edit runs)."""

    steps: list[str] = field(default_factory=list)


def border_gateway_scheme(scheme: BorderScheme, applied: Applied | None = None) -> edits.Edit:
    """The edit that applies the whole scheme (see the module's notes)."""
    internal_host, internal_port = _host_port("internal", scheme.internal)
    border_host, border_port = _host_port("border", scheme.border)
    if not scheme.domains:
        raise ConfigError(["domains: name at least one local domain"])
    trusted = list(scheme.trusted_networks) or _own_network("trusted_networks", internal_host,
                                                            "the internal servers")  # fmt: skip
    upstream = list(scheme.upstream_gateways) or _own_network("upstream_gateways", border_host,
                                                              "the border gateway")  # fmt: skip
    _refuse_border_in_trusted(trusted, upstream)
    route = {"host": internal_host, "port": internal_port, "mx_lookup": False}
    relayhost = {"host": border_host, "port": border_port, "mx_lookup": scheme.border_mx_lookup}

    def edit(data: dict[str, Any]) -> None:
        steps = []
        names = []
        for name in scheme.domains:
            try:
                edits.update_domain(name, {"local": True, "route": dict(route)})(data)
            except ConfigError:
                edits.add_domain({"name": name, "local": True, "route": dict(route)})(data)
            names.append(name)
        shown_internal = _shown(internal_host, internal_port)
        steps.append(f"1. local domains {', '.join(names)}, routed to {shown_internal}")
        edits.set_values("main", {"destination": "border_gateway", "relayhost": relayhost,
                                  "trusted_networks": trusted})(data)  # fmt: skip
        shown_border = _shown(border_host, border_port, mx=scheme.border_mx_lookup)
        steps.append(f"2. border gateway {shown_border} as relayhost")
        steps.append(f"3. trusted networks {', '.join(trusted)}")
        edits.set_values("protection", {"upstream_gateways": upstream})(data)
        steps.append(
            f"4. upstream gateway {', '.join(upstream)}: SPF and DMARC stay on and check the "
            "real client it names (XFORWARD, XCLIENT or its Received header)"
        )
        counter = [0]
        edits.replace_action("reject", "delete", counter)(data)
        steps.append(f"5. Reject replaced by Delete message in every rule ({counter[0]} changed)")
        edits.set_values("advanced.verification", {"mode": "reject_unverified"})(data)
        steps.append("6. recipient verification: reject for unverified recipients")
        if applied is not None:
            applied.steps = steps

    return edit


def _host_port(name: str, text: str) -> tuple[str, int]:
    try:
        host, port = split_host_port(text, SMTP_PORT)
    except ValueError as exc:
        raise ConfigError([f"{name}: {exc}"]) from None
    if not host or not 0 < port < 65536:
        raise ConfigError([f"{name}: {text!r} is not host[:port]"])
    return host, port


def _own_network(name: str, host: str, what: str) -> list[str]:
    """`host` as a one-address network, when it is an address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError([
            f"{name}: {what} are given by name ({host}): give their addresses or networks"
        ]) from None  # fmt: skip
    return [str(ipaddress.ip_network(address))]


def _refuse_border_in_trusted(trusted: list[str], upstream: list[str]) -> None:
    """A trusted network that holds the border gateway relays the internet's mail anywhere."""
    gateways = list(zip(upstream, _networks("upstream_gateways", upstream), strict=True))
    for text, net in zip(trusted, _networks("trusted_networks", trusted), strict=True):
        if ipv4_view(net).prefixlen == 0:
            raise ConfigError([f"trusted_networks: {text} trusts every client (an open relay)"])
        for gateway_text, gateway in gateways:
            if overlaps(net, gateway):
                raise ConfigError([
                    f"trusted_networks: {text} contains the border gateway {gateway_text}: "
                    "mail from the internet arrives through it and would be relayed anywhere"
                ])  # fmt: skip


def _networks(name: str, texts: list[str]) -> list[IPNetwork]:
    try:
        return [ipaddress.ip_network(text.strip(), strict=False) for text in texts]
    except ValueError as exc:
        raise ConfigError([f"{name}: {exc}"]) from None


def _shown(host: str, port: int, *, mx: bool = False) -> str:
    """Postfix's notation: [host]:port without MX lookup, host:port with it."""
    if mx:
        return f"{host}:{port}"
    return f"[ipv6:{host}]:{port}" if ":" in host else f"[{host}]:{port}"
