"""Authoritative DNS server on loopback for tests and setup checks (RFC 1035, TCP per RFC 7766).

`DnsZone` holds the records (A, AAAA, MX, TXT, CNAME, PTR) and can make chosen names fail with
SERVFAIL or never answer; `DnsServer` serves a zone over UDP and TCP on one address and port from
its own thread and event loop, so synchronous code can start it beside anything else. Point
`mailgate.dns.DnsPythonResolver` at `server.address` to test MX routing, SPF, DKIM and DMARC
without the internet.

Security notes: meant for loopback. It answers anyone who can reach it and never recurses; like
any UDP DNS server on a public address it could amplify spoofed queries, so do not expose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

from dnslib import (
    AAAA,
    CLASS,
    CNAME,
    EDNS0,
    MX,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    TXT,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

from mailgate.dns import ascii_name

__all__ = ["DnsServer", "DnsZone", "QueryCounter"]

RecordValue = str | tuple[int, str]

_RTYPES = frozenset({"A", "AAAA", "MX", "TXT", "CNAME", "PTR"})
_TXT_CHUNK = 255  # RFC 1035 §3.3: a character-string holds at most 255 bytes
_MAX_CNAME_CHAIN = 8  # bounds the walk when a zone holds a CNAME loop
_UDP_PLAIN_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
_UDP_MAX = 65507  # largest UDP payload over IPv4
_EDNS_PAYLOAD = 1232
_TCP_IDLE_TIMEOUT = 10.0
_THREAD_TIMEOUT = 5.0
_BIND_ATTEMPTS = 50


def _zone_key(name: str) -> str:
    return ascii_name(name).lower()


@dataclass
class _Lookup:
    """What the zone says about one question; owner None stands for the queried name."""

    mode: str | None = None  # "servfail", "timeout" or "nxdomain"
    records: list[tuple[str | None, str, int, Any]] = field(default_factory=list)


class DnsZone:
    """A thread-safe, mutable set of records; names are case-insensitive, trailing dot optional.

    Unicode names are stored as their A-labels, and a PTR record may be added under an IP
    address, which stands for its reverse name (1.2.0.192.in-addr.arpa).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # name -> {(rtype, normalized value): (ttl, dnslib rdata)}; a dict keeps an RRset a set.
        self._names: dict[str, dict[tuple[str, object], tuple[int, Any]]] = {}
        self._modes: dict[str, str] = {}

    def add(self, name: str, rtype: str, value: RecordValue, ttl: int = 300) -> None:
        """Add a record; MX values are "10 mx.example.com" or (10, "mx.example.com")."""
        rtype = rtype.upper()
        if rtype not in _RTYPES:
            raise ValueError(f"unsupported record type {rtype!r}; use one of {sorted(_RTYPES)}")
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise ValueError(f"TTL {ttl} out of range")
        if rtype == "PTR":
            with contextlib.suppress(ValueError):
                name = ipaddress.ip_address(name).reverse_pointer
        key = _zone_key(name)
        norm, rdata = _rdata(rtype, value)
        with self._lock:
            records = self._names.setdefault(key, {})
            # RFC 1034 §3.6.2: a name with a CNAME has no other data, and only one CNAME.
            if rtype == "CNAME":
                conflict = any(existing != (rtype, norm) for existing in records)
            else:
                conflict = any(t == "CNAME" for t, _ in records)
            if conflict:
                raise ValueError(f"{name}: a CNAME cannot coexist with other records")
            records[(rtype, norm)] = (ttl, rdata)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove the name's records of `rtype`, or all about the name, failure modes included."""
        key = _zone_key(name)
        with self._lock:
            if rtype is None:
                self._names.pop(key, None)
                self._modes.pop(key, None)
                return
            records = self._names.get(key, {})
            for record in [r for r in records if r[0] == rtype.upper()]:
                del records[record]
            if not records:
                self._names.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._names.clear()
            self._modes.clear()

    def null_mx(self, name: str) -> None:
        """Publish a null MX (RFC 7505): the domain accepts no mail."""
        self.add(name, "MX", (0, "."))

    def servfail(self, name: str) -> None:
        """Answer every query for `name` with SERVFAIL until it is removed."""
        with self._lock:
            self._modes[_zone_key(name)] = "servfail"

    def timeout(self, name: str) -> None:
        """Never answer queries for `name`, so that clients time out, until it is removed."""
        with self._lock:
            self._modes[_zone_key(name)] = "timeout"

    def _exists(self, key: str) -> bool:
        # RFC 8020: a name with nothing at or below it is NXDOMAIN; an empty non-terminal
        # (_domainkey.example.com when only sel._domainkey.example.com has records) is NODATA.
        suffix = "." + key
        return key in self._names or any(name.endswith(suffix) for name in self._names)

    def _lookup(self, key: str, rtype: str) -> _Lookup:
        with self._lock:
            mode = self._modes.get(key)
            if mode is not None:
                return _Lookup(mode=mode)
            if not self._exists(key):
                return _Lookup(mode="nxdomain")
            result = _Lookup()
            owner: str | None = None
            name = key
            for _ in range(_MAX_CNAME_CHAIN):
                records = self._names.get(name, {})
                cname = [(v, e) for (t, v), e in records.items() if t == "CNAME"]
                if cname and rtype != "CNAME":
                    (target, (ttl, rdata)), *_ = cname
                    result.records.append((owner, "CNAME", ttl, rdata))
                    owner = name = str(target)
                    continue
                result.records.extend(
                    (owner, rtype, ttl, rdata)
                    for (t, _), (ttl, rdata) in records.items()
                    if t == rtype
                )
                break
            return result


def _rdata(rtype: str, value: RecordValue) -> tuple[object, Any]:
    """Validate a record value; return its normalized form (for duplicates) and dnslib rdata."""
    if rtype == "MX":
        if isinstance(value, str):
            pref_text, _, host = value.strip().partition(" ")
            try:
                preference = int(pref_text)
            except ValueError:
                raise ValueError(f"MX value {value!r}: expected 'PREFERENCE HOST'") from None
        else:
            preference, host = value
        if not 0 <= preference <= 0xFFFF:
            raise ValueError(f"MX preference {preference} out of range")
        target = "." if host.strip() == "." else _zone_key(host)
        return (preference, target), MX(target, preference)
    if not isinstance(value, str):
        raise ValueError(f"{rtype} value must be a string, not {value!r}")
    if rtype in ("A", "AAAA"):
        version = 4 if rtype == "A" else 6
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise ValueError(f"{rtype} value {value!r} is not an IPv{version} address")
        return str(address), (A if version == 4 else AAAA)(str(address))
    if rtype == "TXT":
        data = value.encode("utf-8")
        chunks = [data[i : i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]
        return value, TXT(chunks)
    target = _zone_key(value)
    return target, (CNAME if rtype == "CNAME" else PTR)(target)


class QueryCounter:
    """Thread-safe count of queries received, keyed by (name, type): `queries["a.example", "MX"]`.

    Names are compared case-insensitively and without trailing dot; over UDP and TCP alike.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    @staticmethod
    def _key(name: str, rtype: str) -> tuple[str, str]:
        return name.lower().removesuffix("."), rtype.upper()

    def add(self, name: str, rtype: str) -> None:
        with self._lock:
            self._counts[self._key(name, rtype)] += 1

    def __getitem__(self, key: tuple[str, str]) -> int:
        with self._lock:
            return self._counts[self._key(*key)]

    def total(self) -> int:
        with self._lock:
            return self._counts.total()

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: CPython's selector UDP transport does not subclass the ABC.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self._server._respond(data, tcp=False)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


class _TcpProtocol(asyncio.Protocol):
    """One TCP connection: 2-byte length-prefixed messages (RFC 1035 §4.2.2)."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        # RFC 7766 §6.2.1: a connection may carry many queries, several in one segment. Each
        # pass consumes a whole message, so the loop ends when the buffer holds no complete one.
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                break
            message = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            reply = self._server._respond(message, tcp=True)
            if reply is not None and self._transport is not None:
                self._transport.write(len(reply).to_bytes(2, "big") + reply)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle_timer(self) -> None:
        # RFC 7766 §6.2.3: servers close idle connections; an unanswered client must not pin one.
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(_TCP_IDLE_TIMEOUT, self.close)


class DnsServer:
    """Serve a `DnsZone` over UDP and TCP on `host`:`port` (0: a port free for both protocols).

    `host` is an IP address literal. `queries` counts the queries received, answered or not.
    """

    def __init__(self, zone: DnsZone, host: str = "127.0.0.53", port: int = 0) -> None:
        self.zone = zone
        self.host = str(ipaddress.ip_address(host))
        self.queries = QueryCounter()
        self._requested_port = port
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._connections: set[_TcpProtocol] = set()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("DnsServer is not started")
        return self._port

    @property
    def address(self) -> str:
        """ "host:port" ("[host]:port" for IPv6), as `mailgate.dns.parse_nameserver` reads it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Bind both sockets and return once the server answers; binding errors raise here."""
        if self._thread is not None:
            raise RuntimeError("DnsServer is already started")
        udp, tcp = self._bind()
        self._port = udp.getsockname()[1]
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run,
            args=(udp, tcp, ready),
            name=f"mailgate-dns-{self.host}:{self._port}",
            daemon=True,  # a test that forgets stop() must not keep the interpreter alive
        )
        self._thread.start()
        if not ready.wait(_THREAD_TIMEOUT) or self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise RuntimeError(f"DNS server on {self.address} did not start") from error

    def stop(self) -> None:
        """Close the sockets and open connections and join the thread; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(_THREAD_TIMEOUT)
        self._port = 0
        if thread.is_alive():
            raise RuntimeError("DNS server thread did not stop")

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # With port 0 the kernel picks a free UDP port, which TCP may not have free: retry.
        attempts = _BIND_ATTEMPTS if self._requested_port == 0 else 1
        for attempt in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                # Lets a restarted server take its port back while old connections linger.
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue
            return udp, tcp
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _run(self, udp: socket.socket, tcp: socket.socket, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(udp, tcp, ready))
        except BaseException as exc:
            self._startup_error = exc
        finally:
            udp.close()
            tcp.close()
            self._loop = self._stopping = None
            ready.set()

    async def _serve(self, udp: socket.socket, tcp: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        udp_transport: asyncio.DatagramTransport | None = None
        tcp_server: asyncio.Server | None = None
        try:
            udp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp
            )
            tcp_server = await loop.create_server(lambda: _TcpProtocol(self), sock=tcp)
            self._loop, self._stopping = loop, stopping
            ready.set()
            await stopping.wait()
        finally:
            # Connections being accepted must be set up before the server closes: Python 3.11
            # fails an assertion and leaks their socket otherwise. No await separates the last
            # check from close(), so no accept can slip in between.
            deadline = loop.time() + _THREAD_TIMEOUT / 2
            while pending := asyncio.all_tasks() - {asyncio.current_task()}:
                if loop.time() >= deadline:
                    break
                await asyncio.wait(pending, timeout=deadline - loop.time())
            if tcp_server is not None:
                tcp_server.close()
            if udp_transport is not None:
                udp_transport.close()
            # Server.close() leaves accepted connections open (until Python 3.13): end them.
            for connection in list(self._connections):
                connection.close()
            await asyncio.sleep(0)  # let the transports' close callbacks run
            # A connection still here has replies its client never read: drop them.
            for connection in list(self._connections):
                connection.abort()
            if tcp_server is not None:
                await tcp_server.wait_closed()
            await asyncio.sleep(0)

    def _respond(self, data: bytes, *, tcp: bool) -> bytes | None:
        """Build the wire reply to one query, or None to stay silent."""
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        if request.header.qr:
            return None  # never answer an answer: two servers could bounce packets forever
        header = DNSHeader(
            id=request.header.id, qr=1, aa=1, rd=request.header.rd, opcode=request.header.opcode
        )
        reply = DNSRecord(header, questions=request.questions[:1])
        opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        if opt is not None:
            # RFC 6891 §6.1.1: answer an EDNS query with an OPT record of our own.
            reply.add_ar(EDNS0(udp_len=_EDNS_PAYLOAD))
        limit = 0xFFFF if tcp else min(max(_UDP_PLAIN_LIMIT, opt.rclass if opt else 0), _UDP_MAX)

        if request.header.opcode != OPCODE.QUERY:
            reply.header.rcode = RCODE.NOTIMP
            return bytes(reply.pack())
        if len(request.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        question = request.q
        if question.qclass != CLASS.IN:
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())

        # Wire labels may hold any byte; undecodable ones simply match no zone name.
        labels: tuple[bytes, ...] = question.qname.label
        name = b".".join(labels).decode("ascii", errors="replace").lower()
        rtype = str(QTYPE[question.qtype])
        self.queries.add(name, rtype)

        lookup = self.zone._lookup(name, rtype)
        if lookup.mode == "timeout":
            return None
        if lookup.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif lookup.mode == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
        for owner, record_type, ttl, rdata in lookup.records:
            # The queried name keeps the client's letter case (some clients randomize it).
            rname = question.qname if owner is None else DNSLabel(owner)
            reply.add_answer(RR(rname, getattr(QTYPE, record_type), rdata=rdata, ttl=ttl))

        wire = bytes(reply.pack())
        if len(wire) <= limit:
            return wire
        # RFC 2181 §9: set TC and send what fits; the question stays so the client (dnspython
        # checks it) recognizes the answer and retries over TCP.
        header.tc = 1
        truncated = DNSRecord(header, questions=request.questions[:1])
        if opt is not None:
            truncated.add_ar(EDNS0(udp_len=_EDNS_PAYLOAD))
        return bytes(truncated.pack())
