"""The composition root: builds every part of the gateway from the configuration, starts it,
applies saved configuration changes while running, and stops it cleanly.

Only this module knows all the parts; each of them receives what it needs (configuration
snapshot, resolver, spool, executor) as arguments.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailgate.admin.accounts import Accounts
from mailgate.admin.service import Admin
from mailgate.auth.spf import DnsPythonRecords, ResolverSpfDns
from mailgate.config.model import DnsSettings
from mailgate.config.repository import ConfigRepository
from mailgate.config.runtime import ConfigHolder, RuntimeConfig
from mailgate.config.service import ConfigService
from mailgate.control import ControlServer
from mailgate.dns import DnsPythonResolver
from mailgate.intake import Intake
from mailgate.metrics import Counters
from mailgate.pipeline.api import Check
from mailgate.pipeline.runner import Pipeline
from mailgate.quarantine import Quarantine
from mailgate.queue.delivery import Deliverer, Outcome
from mailgate.queue.manager import QueueManager
from mailgate.queue.scheduler import Scheduler
from mailgate.queue.spool import Spool, new_queue_id
from mailgate.smtp.server import SmtpServer
from mailgate.store.db import make_engine
from mailgate.store.migrate import ensure_schema
from mailgate.tracking import MessageLog
from mailgate.types import Envelope, Recipient
from mailgate.verify.cache import VerifyStore
from mailgate.verify.domains import DomainChecker
from mailgate.verify.probe import Prober
from mailgate.verify.service import Verifier, cache_key, entry_json, parse_address

if TYPE_CHECKING:
    from mailgate.web.server import WebServer

log = logging.getLogger("mailgate.master")


def default_data_dir() -> Path:
    env = os.environ.get("MAILGATE_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/mailgate")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mailgate"


@dataclass(frozen=True)
class Paths:
    data_dir: Path

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def lock(self) -> Path:
        return self.data_dir / "mailgate.lock"

    def store_url(self, override: str | None = None) -> str:
        return (
            override or os.environ.get("MAILGATE_STORE") or f"sqlite:///{self.data_dir}/mailgate.db"
        )


def make_resolver(settings: DnsSettings) -> DnsPythonResolver:
    return DnsPythonResolver(
        list(settings.nameservers) or None,
        timeout=settings.timeout,
        cache_size=settings.cache_size,
    )


def make_auth_dns(resolver: DnsPythonResolver) -> ResolverSpfDns:
    """DNS for SPF, DKIM and DMARC: routing's resolver, name servers and cache."""
    return ResolverSpfDns(resolver, DnsPythonRecords(resolver))


def make_checks(auth_dns: Callable[[], ResolverSpfDns]) -> dict[str, Check]:
    """The scan modules, by name; each runs when Protection enables it and a rule scans.
    ``auth_dns`` gives the authentication module the current resolver."""
    from mailgate.checks.auth import AuthCheck
    from mailgate.checks.clamav import ClamavCheck
    from mailgate.checks.content import ContentCheck
    from mailgate.checks.phishing import PhishingCheck
    from mailgate.checks.rspamd import RspamdCheck

    return {
        "antivirus": ClamavCheck(),
        "antispam": RspamdCheck(),
        "content": ContentCheck(),
        "phishing": PhishingCheck(),
        "auth": AuthCheck(auth_dns),
    }


class Gateway:
    """One running mailgate node."""

    def __init__(self, data_dir: Path, store_url: str | None = None, poll_interval: float = 1.0):
        self.paths = Paths(data_dir)
        self.store_url = self.paths.store_url(store_url)
        self.poll_interval = poll_interval
        self._stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.web: WebServer | None = None

    async def start(self) -> None:
        self.paths.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_lock()
        loop = asyncio.get_running_loop()
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mailgate-io")
        self.engine = make_engine(self.store_url)
        await loop.run_in_executor(self.executor, ensure_schema, self.store_url, self.engine)
        self.config_service = ConfigService(ConfigRepository(self.engine))
        revision = await loop.run_in_executor(self.executor, self.config_service.current)
        self.holder = ConfigHolder(RuntimeConfig(revision.id, revision.config))
        self._dns_settings = revision.config.advanced.dns
        self.resolver = make_resolver(self._dns_settings)
        self.auth_dns = make_auth_dns(self.resolver)
        self.spool = Spool(self.paths.spool)
        log.info(
            "queue directory %s on %s: %s", self.paths.spool, self.spool.filesystem or "unknown",
            "directory fsync'd with each message" if self.spool.directory_fsync
            else "a queue file's fsync makes its name durable",
        )  # fmt: skip
        self.server: SmtpServer | None = None
        self.counters = Counters()
        deliverer = Deliverer(
            lambda: self.resolver,
            lambda: self.holder.current.config,
            lambda: self.server.bound_addresses() if self.server else set(),
        )
        self.scheduler = Scheduler(
            spool=self.spool,
            deliverer=deliverer,
            runtime=lambda: self.holder.current,
            executor=self.executor,
        )
        node = revision.config.main.hostname
        self.tracking = MessageLog(self.engine, node)
        self.quarantine = Quarantine(self.paths.quarantine, self.engine, node)
        self.pipeline = Pipeline(make_checks(lambda: self.auth_dns), self.counters)
        self.scheduler.on_outcome = self._track_outcome
        self.intake = Intake(
            self.scheduler,
            runtime=lambda: self.holder.current,
            executor=self.executor,
            pipeline=self.pipeline,
            quarantine=self.quarantine,
            tracking=self.tracking,
        )
        self.verifier = Verifier(
            prober=Prober(deliverer, lambda: self.holder.current, self.counters),
            runtime=lambda: self.holder.current,
            executor=self.executor,
            counters=self.counters,
            store=VerifyStore(self.engine),
        )
        self.server = SmtpServer(
            self.holder,
            self.intake,
            self.spool,
            self.verifier,
            DomainChecker(lambda: self.resolver, self.counters),
        )
        self.queue = QueueManager(self.spool, self.scheduler)
        recovered = await self.scheduler.recover()
        if recovered:
            log.info("recovered %d queued message(s)", recovered)
        self.scheduler.start()
        await self.server.start()
        self.control = ControlServer(self.paths.control_socket, self._control_handlers())
        await self.control.start()
        self.admin = Admin(self)
        self.first_login = await loop.run_in_executor(self.executor, first_administrator,
                                                      self.admin.accounts)  # fmt: skip
        await self._start_web()
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        log.info(
            "mailgate started: configuration revision %d, store %s, spool %s",
            revision.id, _safe_url(self.store_url), self.paths.spool,
        )  # fmt: skip

    async def _start_web(self) -> None:
        """The web interface and REST API, when main.web_listen has addresses. Imported only
        then: FastAPI and uvicorn cost a node without them some 9 MiB."""
        config = self.holder.current.config
        if not config.main.web_listen:
            return
        from mailgate.api.app import create_app
        from mailgate.web.server import WebServer

        self.web = WebServer(create_app(self.admin))
        await self.web.start(config)

    def _take_lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another mailgate is running with {self.paths.data_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def reload(self) -> int:
        """Apply the newest saved configuration if it differs from the running one."""
        loop = asyncio.get_running_loop()
        current_id = await loop.run_in_executor(
            self.executor, self.config_service.repository.current_id
        )
        if current_id is None or current_id == self.holder.current.revision:
            return self.holder.current.revision
        revision = await loop.run_in_executor(
            self.executor, self.config_service.repository.get, current_id
        )
        if revision is None:
            return self.holder.current.revision
        runtime = RuntimeConfig(revision.id, revision.config)
        self.holder.swap(runtime)
        if revision.config.advanced.dns != self._dns_settings:
            self._dns_settings = revision.config.advanced.dns
            self.resolver = make_resolver(self._dns_settings)
            self.auth_dns = make_auth_dns(self.resolver)
        assert self.server is not None
        try:
            await self.server.apply(runtime)
        except (OSError, ValueError) as exc:
            log.error("configuration revision %d: listeners not changed: %s", revision.id, exc)
        log.info("configuration revision %d applied (by %s)", revision.id, revision.author)
        return revision.id

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.reload()
            except Exception:  # the store may be briefly unreachable; keep serving mail
                log.exception("cannot read the configuration store")

    def _track_outcome(self, envelope: Envelope, recipient: Recipient, outcome: Outcome) -> None:
        self.tracking.delivery(envelope.qid, recipient.address, outcome.status, outcome.dsn,
                               outcome.remote or "", outcome.text)  # fmt: skip

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            await asyncio.sleep(1)
            ticks += 1
            self.verifier.prober.sweep()
            if ticks % 3600 == 1:  # hourly, and once at start
                settings = self.holder.current.config.protection.quarantine
                removed = await loop.run_in_executor(
                    self.executor, self.quarantine.cleanup, settings.retention_days,
                    settings.max_size_mb,
                )  # fmt: skip
                if removed:
                    log.info("quarantine: %d message(s) past retention removed", removed)

    def _control_handlers(self) -> dict[str, Any]:
        queue = self.queue

        async def ping(_: dict[str, Any]) -> Any:
            return {"pid": os.getpid(), "revision": self.holder.current.revision}

        async def reload(_: dict[str, Any]) -> Any:
            return {"revision": await self.reload()}

        async def queue_list(_: dict[str, Any]) -> Any:
            stored = await asyncio.get_running_loop().run_in_executor(self.executor, queue.read)
            return [item.to_json() for item in queue.items(stored)]

        async def queue_show(request: dict[str, Any]) -> Any:
            item, content = queue.show(str(request["qid"]))
            return {"item": item.to_json(), "content": content.decode("utf-8", "replace")}

        async def queue_flush(_: dict[str, Any]) -> Any:
            return queue.flush()

        def one(method: Any) -> Any:
            async def run(request: dict[str, Any]) -> Any:
                return method(str(request["qid"]))

            return run

        verifier = self.verifier
        loop = asyncio.get_running_loop()

        async def verify_show(request: dict[str, Any]) -> Any:
            address = str(request["address"])
            key = cache_key(parse_address(address))
            entry = verifier.memory.get(key) or await loop.run_in_executor(
                self.executor, VerifyStore(self.engine).get, key
            )
            return entry_json(entry) if entry else None

        async def verify_test(request: dict[str, Any]) -> Any:
            return entry_json(await verifier.verify_now(str(request["address"])))

        async def verify_flush(request: dict[str, Any]) -> Any:
            address, status = request.get("address"), request.get("status")
            return await loop.run_in_executor(self.executor, verifier.forget, address, status)

        async def stats(_: dict[str, Any]) -> Any:
            return self.counters.snapshot()

        async def quarantine_release(request: dict[str, Any]) -> Any:
            return await self.release_from_quarantine(str(request["qid"]))

        return {
            "verify.show": verify_show,
            "verify.test": verify_test,
            "verify.flush": verify_flush,
            "stats": stats,
            "quarantine.release": quarantine_release,
            "ping": ping,
            "reload": reload,
            "queue.list": queue_list,
            "queue.show": queue_show,
            "queue.flush": queue_flush,
            "queue.hold": one(queue.hold),
            "queue.release": one(queue.release),
            "queue.delete": one(queue.delete),
        }

    async def release_from_quarantine(self, kept_id: str) -> str:
        """Deliver a quarantined message to its original recipients, unscanned."""
        loop = asyncio.get_running_loop()
        kept = await loop.run_in_executor(self.executor, self.quarantine.get, kept_id)
        # The kept file holds the message as it would have gone out, trace headers included.
        envelope = replace(kept.envelope, qid=new_queue_id(), prepend="")
        await self.scheduler.enqueue(envelope, kept.content)
        await loop.run_in_executor(self.executor, self.quarantine.delete, kept_id)
        detail = f"released from quarantine as {envelope.qid}"
        for recipient in envelope.recipients:
            self.tracking.delivery(kept.envelope.qid, recipient.address, "released", detail=detail)
        log.info("%s: released from quarantine %s as %s", kept.envelope.qid, kept_id, envelope.qid)
        return f"{kept_id}: released, queued as {envelope.qid}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.web is not None:
            await self.web.stop()
        if self.server is not None:
            await self.server.stop()
        await self.control.stop()
        await self.verifier.close()
        await self.pipeline.aclose()
        await self.scheduler.stop()
        self.spool.close()
        self.tracking.close()
        self.executor.shutdown(wait=True)
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("mailgate stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()


def first_administrator(accounts: Accounts) -> tuple[str, str] | None:
    """On a store without accounts, create the administrator with a random password; return
    (name, password) to show once. There is no default password."""
    if accounts.count():
        return None
    password = secrets.token_urlsafe(15)
    accounts.create("admin", password, "administrator")
    log.warning("created the administrator account 'admin'; its password is shown once at "
                "start-up (mailgate user passwd admin changes it)")  # fmt: skip
    return "admin", password


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
