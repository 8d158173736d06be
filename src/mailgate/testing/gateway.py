"""Run a mailgate gateway for tests, benchmarks or trying a configuration: in a background
thread of this process (`GatewayThread`), or as a separate `mailgate run` process
(`GatewayProcess`, which can be killed like a real service).

Both write the given configuration to the store first, so the gateway starts with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from mailgate import control
from mailgate.config.model import Config, split_host_port, validate
from mailgate.config.repository import ConfigRepository, Revision
from mailgate.config.service import ConfigService
from mailgate.service import Gateway, Paths
from mailgate.store.db import make_engine
from mailgate.store.migrate import current_version, upgrade
from mailgate.store.schema import SCHEMA_HEAD


def write_config(data_dir: Path, config: Config | dict[str, Any], store_url: str | None) -> str:
    """Store `config` as the current configuration of the node in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = Paths(data_dir).store_url(store_url)
    engine = make_engine(url)
    try:
        if current_version(engine) != SCHEMA_HEAD:
            upgrade(engine)
        model = config if isinstance(config, Config) else validate(config)
        ConfigService(ConfigRepository(engine)).replace(model, author="test", comment="setup")
    finally:
        engine.dispose()
    return url


class _Node:
    def __init__(self, data_dir: Path, store_url: str | None) -> None:
        self.data_dir = data_dir
        self.paths = Paths(data_dir)
        self.store_url = self.paths.store_url(store_url)
        self._engine: Any = None

    def config_service(self) -> ConfigService:
        if self._engine is None:
            self._engine = make_engine(self.store_url)
        return ConfigService(ConfigRepository(self._engine))

    def configure(self, edit: Callable[[dict[str, Any]], None]) -> Revision:
        """Change the configuration and have the running gateway apply it now."""
        revision = self.config_service().update(edit, author="test", comment="test change")
        self.control("reload")
        return revision

    def control(self, op: str, **args: Any) -> Any:
        return control.call(self.paths.control_socket, op, **args)

    def smtp_address(self) -> tuple[str, int]:
        config = self.config_service().current().config
        return split_host_port(config.main.smtp_listen[0])

    def _dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class GatewayThread(_Node):
    """A gateway in a daemon thread with its own event loop (uvloop)."""

    def __init__(
        self,
        data_dir: Path,
        config: Config | dict[str, Any],
        store_url: str | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        super().__init__(data_dir, store_url)
        self._config = config
        self._poll = poll_interval
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: Gateway | None = None

    def start(self, timeout: float = 30.0) -> Self:
        write_config(self.data_dir, self._config, self.store_url)
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="mailgate-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("gateway did not start")
        if self._error is not None:
            raise RuntimeError("gateway failed to start") from self._error
        return self

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        gateway = Gateway(self.data_dir, self.store_url, poll_interval=self._poll)
        self.gateway = gateway
        try:
            loop.run_until_complete(gateway.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(gateway._stopping.wait())
            loop.run_until_complete(gateway.stop())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the gateway's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        if self.loop is not None and self.gateway is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.gateway.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("gateway did not stop")
        self._thread = None
        self._dispose()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess(_Node):
    """`mailgate run` as a child process, with its log in the data directory."""

    def __init__(
        self,
        data_dir: Path,
        config: Config | dict[str, Any] | None,
        store_url: str | None = None,
        log_format: str = "text",
    ) -> None:
        super().__init__(data_dir, store_url)
        self._config = config
        self.log_path = data_dir / "mailgate.log"
        self.log_format = log_format
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
        if self._config is not None:
            write_config(self.data_dir, self._config, self.store_url)
            self._config = None  # restarts keep whatever the store holds
        env = dict(os.environ, MAILGATE_DATA_DIR=str(self.data_dir), MAILGATE_STORE=self.store_url)
        argv = [sys.executable, "-m", "mailgate", "run", "--log-format", self.log_format,
                "--log-file", str(self.log_path)]  # fmt: skip
        self.process = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailgate exited with {self.process.returncode}: {self.log()}")
            if control.running(self.paths.control_socket):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"mailgate did not start: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash at whatever instant this is called."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        self._dispose()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
