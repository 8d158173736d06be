"""The SMTP listeners: accept connections, run a session each, and keep them within limits.

Listening addresses, TLS certificate and limits follow the running configuration: on reload,
new addresses are opened and removed ones closed, while sessions in progress continue.
An idle-session sweeper ends sessions silent for longer than session_timeout (421 4.4.2).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from mailgate.config.model import TlsLevel, split_host_port
from mailgate.config.runtime import ConfigHolder, RuntimeConfig
from mailgate.intake import Intake
from mailgate.policy.limits import ClientLimits
from mailgate.queue.spool import Spool, new_queue_id
from mailgate.smtp import codes
from mailgate.smtp.session import SmtpSession
from mailgate.verify.domains import DomainChecker
from mailgate.verify.service import Verifier

log = logging.getLogger("mailgate.smtpd")


class SmtpServer:
    def __init__(
        self,
        holder: ConfigHolder,
        intake: Intake,
        spool: Spool,
        verifier: Verifier | None = None,
        domains: DomainChecker | None = None,
    ) -> None:
        self.holder = holder
        self.intake = intake
        self.spool = spool
        self.verifier = verifier
        self.domains = domains
        self.limits = ClientLimits(lambda: holder.current.hostname)
        self.sessions: set[SmtpSession] = set()
        self.tls_context: ssl.SSLContext | None = None
        self._tls_files: tuple[str | None, str | None, str] | None = None
        self._servers: dict[str, asyncio.Server] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._free_checked = 0.0
        self._free_bytes = 0
        self.new_queue_id = new_queue_id

    async def start(self) -> None:
        await self.apply(self.holder.current)
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def apply(self, runtime: RuntimeConfig) -> None:
        """Bring listeners and TLS in line with a (new) configuration."""
        self._load_tls(runtime)
        wanted = list(runtime.config.main.smtp_listen)
        for address in list(self._servers):
            if address not in wanted:
                server = self._servers.pop(address)
                server.close()
                log.info("stopped listening on %s", address)
        loop = asyncio.get_running_loop()
        for address in wanted:
            if address in self._servers:
                continue
            host, port = split_host_port(address)
            server = await loop.create_server(
                lambda: SmtpSession(self), host, port, reuse_address=True, backlog=1024
            )
            self._servers[address] = server
            log.info("listening for SMTP on %s", address)

    def _load_tls(self, runtime: RuntimeConfig) -> None:
        tls = runtime.config.advanced.tls
        key = (tls.cert_file, tls.key_file, tls.inbound_level.value)
        if key == self._tls_files:
            return
        if tls.inbound_level == TlsLevel.NONE or tls.cert_file is None or tls.key_file is None:
            self.tls_context = None
        else:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            self.tls_context = context
        self._tls_files = key

    def bound_addresses(self) -> set[tuple[str, int]]:
        out = set()
        for server in self._servers.values():
            for sock in server.sockets:
                name = sock.getsockname()
                out.add((str(name[0]), int(name[1])))
        return out

    def has_free_space(self, message_size: int) -> bool:
        """Postfix's rule: refuse MAIL when free space is under 1.5 x the size limit."""
        now = time.monotonic()
        if now - self._free_checked > 1.0:
            try:
                self._free_bytes = self.spool.free_bytes()
            except OSError:
                self._free_bytes = 0
            self._free_checked = now
        return self._free_bytes >= message_size * 3 // 2

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.sweep()

    def sweep(self) -> None:
        runtime = self.holder.current
        limits = runtime.config.advanced.limits
        now = time.monotonic()
        for session in list(self.sessions):
            if not session.busy and now - session.last_activity > limits.session_timeout:
                log.info("timeout after inactivity from unknown[%s]", session.ip)
                session.close(codes.timeout_exceeded(runtime.hostname))
        self.limits.expire(limits.client_rate_time_unit)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening; end idle sessions at once and busy ones when their step is done."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        hostname = self.holder.current.hostname
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions):
                if not session.busy:
                    session.close(codes.shutting_down(hostname))
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
