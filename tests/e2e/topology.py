"""The seed's topology with real servers, for the end-to-end tests: a Postfix border gateway,
mailgate, a Postfix internal mail server, "the internet" as a capture sink, a DNS server, each
on its own loopback address.

    internet (127.0.0.100) -> border 127.0.0.10 -> mailgate 127.0.0.20 -> internal 127.0.0.30
    internet sink 127.0.0.50 <- border <- mailgate <- internal (its users on 127.0.0.31)
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.testing.dns_server import DnsServer, DnsZone
from mailgate.testing.postfix import (
    InternalServer,
    PostfixInstance,
    border_gateway,
    internal_server,
)
from mailgate.testing.sink import Sink
from tests.conftest import (
    BORDER_IP,
    EXTERNAL_CLIENT_IP,
    GATEWAY_IP,
    INTERNAL_IP,
    INTERNET_IP,
    Gateway,
    free_port,
    gateway_config,
)

INTERNAL_USER_IP = "127.0.0.31"
PARTNER_IP = "127.0.0.60"


@dataclass
class Topology:
    border: PostfixInstance
    gateway: Gateway
    internal: InternalServer
    internet: Sink
    partner: Sink
    zone: DnsZone

    def send_from_internet(self, sender: str, recipients: list[str], body: bytes) -> dict[str, Any]:
        with smtplib.SMTP(BORDER_IP, self.border.port, source_address=(EXTERNAL_CLIENT_IP, 0),
                          timeout=30) as client:  # fmt: skip
            client.ehlo("sender.example")
            return client.sendmail(sender, recipients, body)

    def send_from_inside(self, sender: str, recipients: list[str], body: bytes) -> dict[str, Any]:
        with smtplib.SMTP(INTERNAL_IP, self.internal.port, source_address=(INTERNAL_USER_IP, 0),
                          timeout=30) as client:  # fmt: skip
            client.ehlo("workstation.example.com")
            return client.sendmail(sender, recipients, body)


def build(
    data_dir: Path, *, verify: bool, auth: bool = False, configured: bool = True
) -> Iterator[Topology]:
    """Start the whole topology; with `verify`, the border and mailgate verify recipients;
    with `auth`, the border forwards the real client (XFORWARD) and mailgate, trusting it as
    its upstream gateway, checks SPF, DKIM and DMARC on that client. Without `configured`,
    mailgate starts with its defaults (listening and DNS only), for a test to set it up."""
    zone = DnsZone()
    dns = DnsServer(zone, host="127.0.0.53")
    dns.start()
    internet = Sink(host=INTERNET_IP).start()
    partner = Sink(host=PARTNER_IP).start()
    gw_port = free_port(GATEWAY_IP)
    border = border_gateway(
        BORDER_IP, free_port(BORDER_IP), ["example.com"], f"[{GATEWAY_IP}]:{gw_port}",
        f"[{INTERNET_IP}]:{internet.port}", [f"{GATEWAY_IP}/32"], verify_recipients=verify,
        params={"smtp_send_xforward_command": "yes"} if auth else None,
    )  # fmt: skip
    internal = internal_server(
        INTERNAL_IP, free_port(INTERNAL_IP), "example.com", ["bob", "carol"],
        f"[{GATEWAY_IP}]:{gw_port}", [f"{INTERNAL_IP}/31"],
    )  # fmt: skip
    # mailgate as the seed configures it: a local domain routed to the internal server, the
    # border gateway as relayhost (found by its MX record), the internal server trusted.
    zone.add("border.test", "MX", "10 smtp.border.test")
    zone.add("smtp.border.test", "A", BORDER_IP)
    config = gateway_config(gw_port, {
        "domains": [
            {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
            {"name": "partner.test", "local": False, "route": {"host": PARTNER_IP, "port": partner.port}},
        ],
        "main": {
            "destination": "border_gateway",
            "relayhost": {"host": "border.test", "port": border.port, "mx_lookup": True},
            "trusted_networks": [f"{INTERNAL_IP}/32"],
        },
        "advanced": {
            "dns": {"nameservers": [dns.address], "timeout": 2},
            "queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300},
            "verification": {"mode": "reject_unverified" if verify else "off"},
        },
        "protection": {
            "upstream_gateways": [f"{BORDER_IP}/32"] if auth else [],
            "external_services": {"use_spf": auth, "use_dkim": auth, "use_dmarc": auth},
        },
    })  # fmt: skip
    if not configured:
        config = gateway_config(gw_port, {"advanced": config["advanced"]})
        config["advanced"]["verification"] = {"mode": "off"}
    gateway = Gateway(data_dir, config)
    gateway.port = gw_port
    started: list[Any] = []
    try:
        for part in (border, internal, gateway):
            part.start()
            started.append(part)
        yield Topology(border, gateway, internal, internet, partner, zone)
    finally:
        for part in reversed(started):
            part.stop()
        for instance in (border, internal):
            instance.remove()
        internet.stop()
        partner.stop()
        dns.stop()
