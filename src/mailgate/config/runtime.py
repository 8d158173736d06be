"""The running configuration: a validated Config compiled into the structures the hot path
reads (local domain set, trusted networks, router), swapped as one object on every reload.

Sessions take the snapshot at the start of each transaction, so a saved change applies to the
next MAIL FROM of every open session without dropping any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config.model import Config
from mailgate.policy.relay import RelayPolicy, TrustedNetworks
from mailgate.queue.routing import Router


@dataclass(frozen=True)
class RuntimeConfig:
    revision: int
    config: Config
    relay: RelayPolicy = field(init=False)
    trusted: TrustedNetworks = field(init=False)
    upstream: TrustedNetworks = field(init=False)
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        main = self.config.main
        object.__setattr__(
            self, "relay", RelayPolicy(d.name for d in self.config.domains if d.local)
        )
        object.__setattr__(self, "trusted", TrustedNetworks(main.trusted_networks))
        upstream = TrustedNetworks(self.config.protection.upstream_gateways)
        object.__setattr__(self, "upstream", upstream)
        object.__setattr__(self, "router", Router(self.config))

    @property
    def hostname(self) -> str:
        return self.config.main.hostname


class ConfigHolder:
    """Holds the current RuntimeConfig; readers always see a whole, valid snapshot."""

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.current = runtime

    def swap(self, runtime: RuntimeConfig) -> RuntimeConfig:
        previous, self.current = self.current, runtime
        return previous
