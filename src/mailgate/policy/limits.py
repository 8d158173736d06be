"""Per-client limits of the SMTP server (Postfix anvil): simultaneous connections, and the
rates of connections, messages and recipients per time unit. Trusted clients are exempt.

Counters live in this process (one node), like Postfix's anvil; a fixed window per client
resets every time unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.config.model import SmtpLimits
from mailgate.smtp import codes
from mailgate.types import Reply


@dataclass(slots=True)
class _Window:
    start: float
    connections: int = 0
    messages: int = 0
    recipients: int = 0


class ClientLimits:
    def __init__(self, hostname: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self._hostname = hostname
        self._clock = clock
        self._active: dict[str, int] = {}
        self._windows: dict[str, _Window] = {}

    def _window(self, ip: str, unit: float) -> _Window:
        now = self._clock()
        window = self._windows.get(ip)
        if window is None or now - window.start >= unit:
            window = _Window(start=now)
            self._windows[ip] = window
        return window

    def connect(self, ip: str, limits: SmtpLimits, *, exempt: bool) -> Reply | None:
        """Count a new connection; return the 421 to send when it is over a limit."""
        self._active[ip] = self._active.get(ip, 0) + 1
        if exempt:
            return None
        if limits.client_connection_count_limit and (
            self._active[ip] > limits.client_connection_count_limit
        ):
            return codes.too_many_connections(self._hostname(), ip)
        if limits.client_connection_rate_limit:
            window = self._window(ip, limits.client_rate_time_unit)
            window.connections += 1
            if window.connections > limits.client_connection_rate_limit:
                return codes.too_many_connections(self._hostname(), ip)
        return None

    def disconnect(self, ip: str) -> None:
        count = self._active.get(ip, 0) - 1
        if count > 0:
            self._active[ip] = count
        else:
            self._active.pop(ip, None)

    def message(self, ip: str, limits: SmtpLimits, *, exempt: bool) -> Reply | None:
        if exempt or not limits.client_message_rate_limit:
            return None
        window = self._window(ip, limits.client_rate_time_unit)
        window.messages += 1
        if window.messages > limits.client_message_rate_limit:
            return codes.too_much_mail(ip)
        return None

    def recipient(self, ip: str, limits: SmtpLimits, *, exempt: bool) -> Reply | None:
        if exempt or not limits.client_recipient_rate_limit:
            return None
        window = self._window(ip, limits.client_rate_time_unit)
        window.recipients += 1
        if window.recipients > limits.client_recipient_rate_limit:
            return codes.too_many_recipients_from(ip)
        return None

    def active(self, ip: str) -> int:
        return self._active.get(ip, 0)

    def expire(self, unit: float) -> None:
        """Forget rate windows older than the time unit (called periodically)."""
        now = self._clock()
        stale = [ip for ip, w in self._windows.items() if now - w.start >= unit]
        for ip in stale:
            del self._windows[ip]
