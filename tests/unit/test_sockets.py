"""Connecting to a scanner's Unix socket (`mailgate.checks.sockets`): at once when the
listener has room, by waiting on the loop when its backlog is full, and the errors a
missing or dead scanner gives."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mailgate.checks.sockets import connect_unix


def test_connects_and_the_socket_is_non_blocking(tmp_path: Path) -> None:
    path = str(tmp_path / "scanner.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)

        async def main() -> None:
            sock = await connect_unix(path)
            with sock:
                assert not sock.getblocking()
                peer, _ = listener.accept()
                with peer:
                    peer.sendall(b"PONG\0")
                    reply = await asyncio.get_running_loop().sock_recv(sock, 16)
                    assert reply == b"PONG\0"

        asyncio.run(asyncio.wait_for(main(), 10))


def test_a_full_backlog_is_waited_for_without_blocking_the_loop(tmp_path: Path) -> None:
    """The event loop's own sock_connect would report this connect done and leave the socket
    unconnected (Linux fails a Unix connect to a full backlog with EAGAIN, nothing pending)."""
    path = str(tmp_path / "scanner.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        waiting: list[socket.socket] = []
        try:
            # Fill the backlog: the next non-blocking connect gets EAGAIN.
            for _ in range(64):
                other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                other.setblocking(False)
                try:
                    other.connect(path)
                except BlockingIOError:
                    other.close()
                    break
                waiting.append(other)
            else:
                pytest.fail("the backlog never filled")

            async def main() -> None:
                connecting = asyncio.ensure_future(connect_unix(path))
                ticks = 0
                while ticks < 20:  # the loop keeps running while the connect waits
                    await asyncio.sleep(0)
                    ticks += 1
                assert not connecting.done()
                for _ in waiting:
                    listener.accept()[0].close()  # room in the backlog
                sock = await asyncio.wait_for(connecting, 10)
                with sock:
                    assert sock.getpeername() == path  # connected indeed, not merely "done"

            asyncio.run(main())
        finally:
            for other in waiting:
                other.close()


def test_missing_and_refusing_sockets_raise_what_connect_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(connect_unix(str(tmp_path / "absent.sock")))
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(dead))  # bound, never listening: what a crashed scanner leaves
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(connect_unix(str(dead)))
