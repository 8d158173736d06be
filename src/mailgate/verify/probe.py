"""The recipient verification probe (an SMTP callout): ask the next hop that delivery would use
whether it accepts an address, with EHLO, MAIL FROM, RCPT TO, then RSET; nothing is queued
and nothing is delivered.

Addresses for one destination go in one probe session (one MAIL, several RCPTs), and probe
connections are kept a short while for the next probe to the same destination, like the
delivery client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mailgate.config.runtime import RuntimeConfig
from mailgate.metrics import Counters
from mailgate.queue.delivery import Deliverer, DestinationFailure
from mailgate.queue.routing import Destination
from mailgate.smtp.client import SmtpClient
from mailgate.verify.cache import Status

ProbeResult = dict[str, tuple[Status, str]]


def _status(code: int) -> Status:
    if code in (250, 251):
        return "ok"
    return "bad" if code >= 500 else "temp"


class Prober:
    def __init__(
        self,
        deliverer: Deliverer,
        runtime: Callable[[], RuntimeConfig],
        counters: Counters,
    ) -> None:
        self._deliverer = deliverer
        self._runtime = runtime
        self._counters = counters
        self._idle: dict[Destination, list[SmtpClient]] = {}

    async def probe(self, dest: Destination, addresses: list[str]) -> ProbeResult:
        """The next hop's answer for each address. Never raises for network trouble."""
        runtime = self._runtime()
        sender = runtime.config.advanced.verification.sender(runtime.hostname)
        utf8 = not all(a.isascii() for a in addresses) or not sender.isascii()
        self._counters.inc("verify.probes")
        self._counters.inc("verify.probed_addresses", len(addresses))
        for attempt in range(2):
            idle = self._idle.get(dest)
            client = idle.pop() if idle else None
            reused = client is not None
            if client is None:
                try:
                    client = await self._deliverer.connect(dest)
                except DestinationFailure as failure:
                    status: Status = "temp" if failure.temporary else "bad"
                    return dict.fromkeys(addresses, (status, failure.text))
            try:
                txn = await client.probe(sender, addresses, utf8=utf8)
            except asyncio.CancelledError:
                client.close()  # the deadline passed mid-conversation: the session is unusable
                raise
            except OSError as exc:
                client.close()
                if reused and attempt == 0:
                    continue  # a cached connection the peer had closed: once more, fresh
                text = f"lost connection with {client.remote} during the probe: {exc}"
                return dict.fromkeys(addresses, ("temp", text))
            if client.is_connected:
                self._idle.setdefault(dest, []).append(client)
            if txn.mail.code != 250:
                # Our probe sender refused: that says nothing about the recipients.
                text = f"host {client.remote} refused the probe sender: {txn.mail}"
                return dict.fromkeys(addresses, ("temp", text))
            return {
                address: (
                    _status(reply.code),
                    f"host {client.remote} said: {reply} (in reply to RCPT TO command)",
                )
                for address, reply in zip(addresses, txn.recipients, strict=True)
            }
        raise AssertionError("unreachable")

    def sweep(self) -> None:
        """Close probe connections idle longer than the delivery connection cache time."""
        limit = self._runtime().config.advanced.delivery.connection_cache_time_limit
        now = time.monotonic()
        for dest, clients in list(self._idle.items()):
            keep = []
            for client in clients:
                if now - client.last_used < limit:
                    keep.append(client)
                else:
                    asyncio.ensure_future(client.quit())  # noqa: RUF006 - fire and forget
            if keep:
                self._idle[dest] = keep
            else:
                del self._idle[dest]

    def close(self) -> None:
        for clients in self._idle.values():
            for client in clients:
                client.close()
        self._idle.clear()
