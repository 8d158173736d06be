"""Fixtures shared by the integration and end-to-end tests: a gateway on its own loopback
address, capture sinks standing in for next hops, and SMTP clients bound to chosen source
addresses (so "trusted" and "untrusted" clients are real distinctions)."""

from __future__ import annotations

import copy
import smtplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.testing.gateway import GatewayThread
from mailgate.testing.sink import Sink

# The addresses of the seed's topology (SPEC section 1).
BORDER_IP = "127.0.0.10"
GATEWAY_IP = "127.0.0.20"
INTERNAL_IP = "127.0.0.30"
INTERNET_IP = "127.0.0.50"
EXTERNAL_CLIENT_IP = "127.0.0.100"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def gateway_config(port: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A gateway on 127.0.0.20:port with short retry times; `extra` is merged in."""
    base: dict[str, Any] = {
        "main": {
            "hostname": "mailgate.test",
            "smtp_listen": [f"{GATEWAY_IP}:{port}"],
            "web_listen": [],  # tests that want it ask for it: start_gateway(web=True)
        },
        "advanced": {
            "queue": {"minimal_backoff_time": 1, "maximal_backoff_time": 2},
            "delivery": {"bind_address": GATEWAY_IP, "connect_timeout": 5},
            "limits": {"error_sleep_time": 0},
        },
        # Authentication looks names up in DNS; tests that want it switch it on with their
        # own name servers (nothing here may reach the internet's).
        "protection": {
            "external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False}
        },
    }
    return merge(base, extra or {})


class Gateway(GatewayThread):
    """A GatewayThread with the helpers tests use."""

    port: int

    def client(self, source: str = EXTERNAL_CLIENT_IP, timeout: float = 10) -> smtplib.SMTP:
        return smtplib.SMTP(GATEWAY_IP, self.port, source_address=(source, 0), timeout=timeout)

    def flush(self) -> None:
        self.control("queue.flush")

    def queue(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("queue.list")
        return result

    @property
    def web_url(self) -> str:
        """Base URL of the web interface and API (start with web=True)."""
        assert self.gateway is not None
        web = self.gateway.web
        assert web is not None, "started without web: start_gateway(web=True)"
        assert web.addresses, "the web interface listens nowhere"
        host, port = web.addresses[0]
        return f"http://{host}:{port}"

    @property
    def admin_login(self) -> tuple[str, str]:
        """The administrator created at first start, and its one-time password."""
        assert self.gateway is not None
        assert self.gateway.first_login is not None
        return self.gateway.first_login


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(extra: dict[str, Any] | None = None, name: str = "gw", web: bool = False) -> Gateway:
        port = free_port(GATEWAY_IP)
        config = gateway_config(port, extra)
        if web:  # the web interface and API on their own port of the gateway's address
            config["main"]["web_listen"] = [f"{GATEWAY_IP}:{free_port(GATEWAY_IP)}"]
        gateway = Gateway(tmp_path / name, config)
        gateway.port = port
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def start_sink() -> Iterator[Callable[..., Sink]]:
    started: list[Sink] = []

    def start(host: str = INTERNAL_IP, port: int = 0, **options: Any) -> Sink:
        sink = Sink(host=host, port=port, **options).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll `predicate` until it returns something true, or fail after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


@pytest.fixture
def dns_zone() -> Iterator[tuple[Any, str]]:
    """A DNS server on loopback; yields (zone, "ip:port" for advanced.dns.nameservers)."""
    from mailgate.testing.dns_server import DnsServer, DnsZone

    zone = DnsZone()
    with DnsServer(zone, host="127.0.0.53") as server:
        yield zone, server.address
