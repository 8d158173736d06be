"""The control socket: how the CLI on the same node talks to the running gateway.

A Unix socket in the data directory (mode 0600: root or the service user only) carrying one
JSON request and one JSON answer per line. It exposes the queue operations, so that they go
through the running scheduler, and `reload`, which applies a saved configuration at once
instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mailgate.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_MAX_REQUEST = 1 << 16


class ControlError(RuntimeError):
    pass


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=30)
            answer = await self._answer(line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > _MAX_REQUEST:
            return {"ok": False, "error": "request too large"}
        try:
            request = json.loads(line)
            handler = self.handlers[request["op"]]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request"}
        try:
            return {"ok": True, "result": await handler(request)}
        except (LookupError, ValueError) as exc:
            return {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
        except Exception as exc:  # an unexpected failure must not kill the control socket
            log.exception("control request %s failed", request.get("op"))
            return {"ok": False, "error": f"internal error: {exc}"}


def call(path: Path, op: str, timeout: float = 30.0, **args: Any) -> Any:
    """Send one request to a running gateway; raise ConnectionError if none is running."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "failed"))
    return answer.get("result")


def running(path: Path) -> bool:
    try:
        call(path, "ping", timeout=2)
    except (OSError, ValueError, ControlError):
        return False
    return True
