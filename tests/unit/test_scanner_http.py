"""The scanners' HTTP/1.1 client (`mailgate.checks.http`) against a loopback server that
answers with each framing a server may use, and with broken replies."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mailgate.checks import http

Reply = bytes | None


async def exchange(
    reply: Reply, url_path: str = "/checkv2", host: str = "127.0.0.1"
) -> tuple[tuple[int, bytes] | BaseException, bytes]:
    """POST b"message" to a server that sends `reply` (None: closes at once) and return what
    `http.post` gave (or raised) and the request the server read."""
    request = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request.extend(head)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        request.extend(await reader.readexactly(length))
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout(10):
            result: tuple[int, bytes] | BaseException = await http.post(
                f"http://{authority}{url_path}",
                b"message",
                [("Queue-Id", "4Xq7Lk2mZ"), ("Rcpt", "bob@example.org")],
                limit=100,
            )
    except Exception as exc:
        result = exc
    finally:
        server.close()
        await server.wait_closed()
    return result, bytes(request)


def run(reply: Reply, **kwargs: str) -> tuple[tuple[int, bytes] | BaseException, bytes]:
    return asyncio.run(exchange(reply, **kwargs))


def test_request_carries_the_path_headers_and_body() -> None:
    result, request = run(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", url_path="/rs/checkv2")
    assert result == (200, b"{}")
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /rs/checkv2 HTTP/1.1"
    assert lines[1].startswith(b"Host: 127.0.0.1:")
    assert b"Content-Length: 7" in lines
    assert b"Connection: close" in lines
    assert lines[-2:] == [b"Queue-Id: 4Xq7Lk2mZ", b"Rcpt: bob@example.org"]
    assert body == b"message"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", (200, b"hello")),
        (b"HTTP/1.0 500 Oops\r\n\r\nuntil the end", (500, b"until the end")),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
            (200, b"hello world"),
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", (204, b"")),
    ],
)
def test_each_framing_of_a_reply(reply: bytes, expected: tuple[int, bytes]) -> None:
    assert run(reply)[0] == expected


def test_ipv6_literal_url() -> None:
    if not socket.has_ipv6:
        pytest.fail("the machine has no IPv6 loopback")
    result, request = run(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", host="::1")
    assert result == (200, b"ok")
    assert b"Host: [::1]:" in request


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (None, http.ProtocolError, "ended before a reply"),
        (b"220 mail.example ESMTP\r\n\r\n", http.ProtocolError, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", http.ProtocolError, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.ProtocolError, "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.ProtocolError, "Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            http.ProtocolError,
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", http.ProtocolError, "3 of 9"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            http.ProtocolError,
            "bad chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
            http.ProtocolError,
            "inside a chunked body",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", http.ReplyTooLarge, ""),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101, http.ReplyTooLarge, ""),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"40\r\n"
            + b"x" * 64
            + b"\r\n"
            + b"40\r\n"
            + b"x" * 64
            + b"\r\n0\r\n\r\n",
            http.ReplyTooLarge,
            "",
        ),
    ],
)
def test_broken_or_oversized_replies_raise(reply: Reply, error: type, text: str) -> None:
    result, _ = run(reply)
    assert isinstance(result, error), result
    assert text in str(result)


def test_an_endless_header_section_is_cut_short() -> None:
    result, _ = run(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * (http.MAX_HEADER_BYTES + 10))
    assert isinstance(result, http.ProtocolError)


def test_nobody_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused

        async def body() -> None:
            with pytest.raises(http.ConnectError):
                await http.post(f"http://127.0.0.1:{port}/checkv2", b"", [], limit=10)

        asyncio.run(body())


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///checkv2", "127.0.0.1:11333"])
def test_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        asyncio.run(http.post(url, b"", [], limit=10))
