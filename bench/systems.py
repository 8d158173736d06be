"""The systems under test, configured as the same relay: accept mail from the load generator's
address (trusted network / mynetworks 127.0.0.100/32) and relay everything to the sink through
the relayhost ``[127.0.0.50]:PORT``.

Both keep their defaults otherwise; in particular both make every message durable before they
answer 250 (mailgate fsyncs the queue file and its directory; Postfix's cleanup fsyncs the
queue file), both log every message to a file, and both deliver with at most 20
parallel connections to the one next hop (mailgate ``destination_concurrency_limit``, Postfix
``default_destination_concurrency_limit``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from bench.proc import pin
from mailgate.testing.gateway import GatewayProcess
from mailgate.testing.postfix import PostfixInstance, free_port

SINK_HOST = "127.0.0.50"
CLIENT_ADDRESS = "127.0.0.100"
MAILGATE_ADDRESS = "127.0.0.20"
POSTFIX_ADDRESS = "127.0.0.21"
_SUN_PATH_MAX = 107


class SystemUnderTest(Protocol):
    name: str
    address: str
    port: int

    def start(self) -> None: ...

    def roots(self) -> list[int]:
        """The processes whose trees make up the system (for memory sampling)."""
        ...

    def queue_left(self) -> int:
        """Messages still queued (after the run)."""
        ...

    def configuration(self) -> dict[str, Any]: ...

    def log_errors(self) -> int:
        """Warning and error lines in the system's log."""
        ...

    def stop(self, keep: bool) -> None:
        """Stop; delete the data unless ``keep``. Idempotent."""
        ...


class Mailgate:
    """``mailgate run`` as a child process (:class:`GatewayProcess`), logging to a file."""

    name = "mailgate"

    def __init__(self, work_dir: Path, sink_port: int, cpus: Collection[int] | None = None) -> None:
        self.address = MAILGATE_ADDRESS
        self.cpus = sorted(cpus) if cpus else None  # bound to these once started
        self.port = free_port(self.address)
        self.data_dir = work_dir / "mailgate"
        self.config: dict[str, Any] = {
            "main": {
                "hostname": "mailgate.bench",
                "smtp_listen": [f"{self.address}:{self.port}"],
                # The relay alone, as Postfix is measured: no web interface (on, it adds about
                # 18 MiB: FastAPI, uvicorn, Jinja2), the same SMTP path either way.
                "web_listen": [],
                "trusted_networks": [f"{CLIENT_ADDRESS}/32"],
                "destination": "border_gateway",
                "relayhost": {"host": SINK_HOST, "port": sink_port},
            },
            "advanced": {"delivery": {"bind_address": self.address}},
            # The same job as the Postfix relay it is compared with: no SPF/DKIM/DMARC.
            "protection": {
                "external_services": {"use_spf": False, "use_dkim": False, "use_dmarc": False}
            },
        }
        self._gateway = GatewayProcess(self.data_dir, self.config)
        self._pid: int | None = None

    def start(self) -> None:
        self._gateway.start(timeout=60)
        self._pid = self._gateway.pid
        if self.cpus:
            pin(self.roots(), self.cpus)  # its threads started later inherit the binding

    def roots(self) -> list[int]:
        return [] if self._pid is None else [self._pid]

    def queue_left(self) -> int:
        queue = self.data_dir / "spool" / "queue"
        try:
            return sum(1 for _ in queue.iterdir())
        except OSError:
            return -1

    def configuration(self) -> dict[str, Any]:
        return {
            "command": "python -m mailgate run --log-format text --log-file DATA/mailgate.log",
            "config": self.config,
            "cpus": self.cpus or "unbound",
            "notes": "every other setting at its default (see docs/configuration.md)",
        }

    def log_errors(self) -> int:
        """Warning and error lines in the log: a run with any deserves a look."""
        text = self._gateway.log()
        return sum(1 for line in text.splitlines() if "]: warning: " in line or "]: error" in line)

    def stop(self, keep: bool) -> None:
        self._gateway.stop()
        self._pid = None
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Postfix:
    """An isolated Postfix instance (:class:`PostfixInstance`) with its own queue and log."""

    name = "postfix"

    def __init__(self, work_dir: Path, sink_port: int, cpus: Collection[int] | None = None) -> None:
        self.address = POSTFIX_ADDRESS
        self.cpus = sorted(cpus) if cpus else None  # bound to these once started
        self.port = free_port(self.address)
        self.params: dict[str, str] = {
            "mynetworks": f"{CLIENT_ADDRESS}/32",
            "relayhost": f"[{SINK_HOST}]:{sink_port}",
            "smtp_bind_address": self.address,
        }
        self.instance = PostfixInstance(
            "bench-postfix", self.address, self.port, base_dir=work_dir, params=self.params
        )
        self._started = False
        # Postfix refuses (with a message only in syslog) a socket path longer than sun_path.
        longest = self.instance.queue_dir / "private" / "proxywrite"
        if len(str(longest)) > _SUN_PATH_MAX:
            raise ValueError(f"{work_dir}: too deep for Postfix's socket paths ({longest})")

    def start(self) -> None:
        self._started = True
        self.instance.start()
        if self.cpus:
            pin(self.roots(), self.cpus)  # the processes its master starts later inherit it

    def master_pid(self) -> int | None:
        try:
            text = (self.instance.queue_dir / "pid" / "master.pid").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def roots(self) -> list[int]:
        pid = self.master_pid()
        return [] if pid is None else [pid]

    def queue_left(self) -> int:
        try:
            return len(self.instance.queue())
        except Exception:  # a broken instance must not hide the measurements
            return -1

    def configuration(self) -> dict[str, Any]:
        return {
            "version": postfix_version(),
            "main.cf": self.instance.params,
            "master.cf": "harness default: one smtpd on ADDRESS:PORT, standard services, no chroot",
            "cpus": self.cpus or "unbound",
            "notes": "every other parameter at its Postfix default (default_process_limit 100, "
            "queue files fsynced, in_flow_delay 1s, default_destination_concurrency_limit 20)",
        }

    def log_errors(self) -> int:
        return postfix_log_errors(self.instance)

    def stop(self, keep: bool) -> None:
        if not self._started:
            return
        self._started = False
        stop_postfix(self.instance, keep)


def make_system(name: str, work_dir: Path, sink_port: int) -> SystemUnderTest:
    if name == "mailgate":
        return Mailgate(work_dir, sink_port)
    if name == "postfix":
        return Postfix(work_dir, sink_port)
    raise ValueError(f"unknown system {name!r}")


def postfix_version() -> str:
    try:
        completed = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def postfix_log_errors(instance: PostfixInstance) -> int:
    """Warnings, errors and fatal errors in a Postfix instance's log."""
    return sum(
        1
        for line in instance.maillog().splitlines()
        if ": warning: " in line or ": error: " in line or ": fatal: " in line
    )


def stop_postfix(instance: PostfixInstance, keep: bool) -> None:
    """Stop the instance; remove its directories too unless ``keep``."""
    if keep:
        instance.stop()
    else:
        instance.remove()
