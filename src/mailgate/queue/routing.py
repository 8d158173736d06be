"""Next hop for a recipient domain, as Postfix's trivial-rewrite + transport decide it.

Order (SPEC section 2): the nearest domain record (the domain itself, then each parent
domain) with its route; then the relayhost when the message destination is the border
gateway; then DNS: the domain's MX hosts, falling back to its A/AAAA. A route written `[host]`
(mx_lookup off) connects to the host's addresses without MX lookup. Address literals
(`user@[192.0.2.1]`) go straight to that address.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config.model import Config, Domain, TlsLevel
from mailgate.smtp.address import literal_address

SMTP_PORT = 25


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a group of recipients goes; also the key of concurrency and connection reuse."""

    host: str
    port: int
    mx: bool
    tls: TlsLevel
    via: str

    def __str__(self) -> str:
        if self.mx:
            return f"{self.host}:{self.port}"
        if ":" in self.host:
            return f"[ipv6:{self.host}]:{self.port}"
        return f"[{self.host}]:{self.port}"


class Router:
    def __init__(self, config: Config) -> None:
        self._records = {d.name: d for d in config.domains}
        main = config.main
        self._relayhost = main.relayhost if main.destination == "border_gateway" else None
        self._default_tls = config.advanced.tls.outbound_level

    def nearest_record(self, domain: str) -> Domain | None:
        name = domain
        while True:
            record = self._records.get(name)
            if record is not None:
                return record
            _, dot, name = name.partition(".")
            if not dot or not name:
                return None

    def next_hop(self, domain: str) -> Destination:
        literal = literal_address(domain)
        if literal is not None:
            return Destination(literal, SMTP_PORT, False, self._default_tls, "address literal")
        record = self.nearest_record(domain)
        tls = record.tls if record is not None and record.tls is not None else self._default_tls
        if record is not None and record.route is not None:
            route = record.route
            return Destination(route.host, route.port, route.mx_lookup, tls, f"route {record.name}")
        if self._relayhost is not None:
            relay = self._relayhost
            return Destination(relay.host, relay.port, relay.mx_lookup, tls, "relayhost")
        return Destination(domain, SMTP_PORT, True, tls, "dns")
