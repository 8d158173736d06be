"""Serve the HTTP application from the gateway's own event loop (uvicorn), on the configured
addresses, over HTTPS when a certificate is configured. The gateway owns the signals: uvicorn
is not allowed to install its own handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from mailgate.config.model import Config, split_host_port

log = logging.getLogger("mailgate.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the gateway handles SIGTERM/SIGINT and stops the web server itself


class WebServer:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self, config: Config) -> None:
        if not config.main.web_listen:
            return
        sockets = []
        for address in config.main.web_listen:
            host, port = split_host_port(address)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            sockets.append(sock)
            self.addresses.append((host, port))
        web = config.advanced.web
        settings = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            ssl_certfile=web.cert_file,
            ssl_keyfile=web.key_file,
        )
        self._server = _Server(settings)
        self._task = asyncio.create_task(self._server.serve(sockets=sockets))
        scheme = "https" if web.cert_file else "http"
        for host, port in self.addresses:
            shown = f"[{host}]" if ":" in host else host
            log.info("web interface and API on %s://%s:%s/", scheme, shown, port)

    @property
    def urls(self) -> list[str]:
        return [f"{'[' + h + ']' if ':' in h else h}:{p}" for h, p in self.addresses]

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            self._task.cancel()
