"""Real, isolated, offline Rspamd instances (Debian's rspamd 3.x) that answer the HTTP protocol
(``POST /checkv2``, ``GET /ping``) for tests and for administrators checking a setup.

Each :class:`RspamdInstance` runs ``rspamd --no-fork`` with a top-level ``rspamd.conf`` of its own
that includes the stock rules, scores and actions (``$CONFDIR/common.conf``, i.e. ``/etc/rspamd``)
but makes its own directory ``$LOCAL_CONFDIR`` (``local.d/``, ``override.d/``), ``$DBDIR`` and
``$LOGDIR``, and defines a single normal worker on the given loopback address and port. Nothing of
the machine's own Rspamd (``/etc/rspamd/local.d``, ``/var/lib/rspamd``) is read or written.

Offline by construction, so a scan gives the same answer with or without the internet:

* the modules that ask the internet are disabled in ``local.d/<module>.conf``: DNS lists (rbl,
  surbl, emails, asn), fuzzy storage (fuzzy_check), the authentication modules (spf, dkim, dmarc,
  arc: mailgate's own auth module does these), hfilter (HELO and host name lookups), and those fed
  by maps fetched from maps.rspamd.com (multimap, whitelist, phishing); rspamd_update stays off;
* mime_types and mid read only the map files shipped in ``/etc/rspamd/maps.d``;
* every DNS lookup that remains (the PTR lookup once_received makes when no ``Hostname`` is sent)
  goes to ``nameserver``: a test DNS server (:class:`mailgate.testing.dns_server.DnsServer`) or,
  by default, a closed port on loopback, so it fails after ``dns_timeout`` and leaves nothing;
* Redis is not configured, so Bayes, neural, reputation, ratelimit and greylist stay inactive.

Startup takes about two seconds: the stock ``url_tld`` list (public suffixes, ~9,600) takes ten
seconds or more to compile into a Hyperscan database with a cold cache (and every instance's cache
is cold), so the instance gets the top-level domains of that list only (~1,500). URLs are still
found; only the registered domain of a name under a multi-label suffix (``co.uk``) is one label
shorter.

``enable_test_patterns`` (on by default) makes Rspamd answer the GTUBE variants beside the
standard one (which always yields ``reject``): :data:`GTUBE_ADD_HEADER` and
:data:`GTUBE_REWRITE_SUBJECT`. Stock action thresholds: reject 15, add header 6, greylist 4.

Requirements and security notes: as root the daemon drops to the ``_rspamd`` account (``-u``/
``-g``), which must reach the instance directory, so instances live under
:data:`DEFAULT_BASE_DIR` (mode 0755) and never under pytest's ``tmp_path`` (mode 0700). The worker
answers anyone who can reach its address: bind it to loopback. Instances are stopped by ``stop()``,
by the context manager and, as a safety net, by an ``atexit`` hook for every instance started by
this process.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from mailgate.testing import processes

__all__ = [
    "DEFAULT_BASE_DIR",
    "GTUBE",
    "GTUBE_ADD_HEADER",
    "GTUBE_REWRITE_SUBJECT",
    "OFFLINE_DISABLED_MODULES",
    "RSPAMD_BINARY",
    "RspamdError",
    "RspamdInstance",
    "RspamdUnavailableError",
    "require_rspamd",
    "rspamd_available",
]

# Not a temporary file: a fixed, world-searchable base that the _rspamd account can traverse.
DEFAULT_BASE_DIR = Path("/var/tmp/mailgate-tests")  # noqa: S108

RSPAMD_BINARY = Path("/usr/bin/rspamd")
STOCK_CONFDIR = Path("/etc/rspamd")
STOCK_TLD_FILE = Path("/usr/share/rspamd/effective_tld_names.dat")
RSPAMD_USERS = ("_rspamd", "rspamd")  # Debian's account, then upstream packages'

# The generic test for unsolicited bulk email: Rspamd answers "reject" whatever the thresholds.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# Rspamd's own variants, recognised with enable_test_patterns only.
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_REWRITE_SUBJECT = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

OFFLINE_DISABLED_MODULES = (
    "arc",
    "asn",
    "dkim",
    "dmarc",
    "emails",
    "fuzzy_check",
    "hfilter",
    "multimap",
    "phishing",
    "rbl",
    "rspamd_update",
    "spf",
    "surbl",
    "whitelist",
)
"""Modules disabled because they would ask the internet (DNS lists, fuzzy storage, remote maps)."""

# Nothing listens on port 1 of loopback (tcpmux): a lookup sent there never leaves the machine.
_DEAD_NAMESERVER = "127.0.0.1:1"

_START_DEADLINE = 30.0
_STOP_DEADLINE = 20.0  # the main process gives its workers up to 16 s to finish their tasks
_KILL_DEADLINE = 5.0
_PING_TIMEOUT = 2.0


class RspamdError(RuntimeError):
    """Rspamd failed to start or stop, or answered something unexpected."""


class RspamdUnavailableError(RspamdError):
    """The rspamd binary or its stock configuration is not installed."""


def rspamd_available() -> bool:
    """True when the rspamd binary and its stock configuration are installed."""
    return not _missing_files()


def require_rspamd() -> None:
    """Raise :class:`RspamdUnavailableError`, saying what is missing, unless instances can run."""
    missing = _missing_files()
    if missing:
        raise RspamdUnavailableError(
            "Rspamd is not installed (missing: "
            + ", ".join(str(path) for path in missing)
            + "); install Debian's 'rspamd' package (apt-get install rspamd)"
        )


def _missing_files() -> list[Path]:
    needed = [RSPAMD_BINARY, STOCK_CONFDIR / "common.conf", STOCK_CONFDIR / "options.inc"]
    return [path for path in needed if not path.exists()]


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


class RspamdInstance:
    """One isolated, offline Rspamd: configuration, database and log under ``instance_dir``.

    ``port`` 0 picks a free one. ``actions`` overrides action thresholds (``{"reject": 20,
    "add_header": 5}``); ``files`` adds or replaces configuration files by their path relative to
    ``$LOCAL_CONFDIR`` (``{"local.d/groups.conf": "..."}``, ``{"override.d/actions.conf": ...}``).
    ``nameserver`` ("host:port") receives the DNS lookups that remain (see the module notes).
    ``user`` is the account the daemon runs as when started by root (default ``_rspamd``).
    """

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "rspamd",
        base_dir: Path | str = DEFAULT_BASE_DIR,
        actions: Mapping[str, float] | None = None,
        files: Mapping[str, str] | None = None,
        nameserver: str | None = None,
        dns_timeout: float = 0.5,
        enable_test_patterns: bool = True,
        user: str | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
            raise ValueError(f"instance name {name!r}: use letters, digits and dashes")
        for key in actions or {}:
            if not re.fullmatch(r"[a-z_]+", key):
                raise ValueError(f"action {key!r}: use reject, add_header, greylist, ...")
        self.name = name
        self.address = address
        self.port = port or _free_port(address)
        self.base_dir = Path(base_dir)
        # A random suffix: several runs (or a leftover from a crashed run) never share a database.
        self.instance_dir = self.base_dir / f"{name}-{secrets.token_hex(4)}"
        self.db_dir = self.instance_dir / "db"
        self.log_dir = self.instance_dir / "log"
        self.config_path = self.instance_dir / "rspamd.conf"
        self.log_path = self.log_dir / "rspamd.log"
        self.stderr_path = self.instance_dir / "rspamd.stderr"
        # The normal worker listens here too (AntispamSettings.socket).
        self.socket_path = self.instance_dir / "normal.sock"
        self.pid_path = self.instance_dir / "rspamd.pid"
        self.tld_path = self.instance_dir / "tld.dat"
        self.actions = dict(actions or {})
        self.files = dict(files or {})
        self.nameserver = nameserver or _DEAD_NAMESERVER
        self.dns_timeout = dns_timeout
        self.enable_test_patterns = enable_test_patterns
        self.user = user
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The normal worker, as ``AntispamSettings.url`` takes it."""
        return f"http://{self.address}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The main process while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # Configuration

    def rspamd_conf(self) -> str:
        """The top-level configuration: the stock one (/etc/rspamd/rspamd.conf) with this
        instance's worker, log and options, and without the controller, proxy and fuzzy workers."""
        return f"""\
# Rspamd instance {self.name!r}, written by mailgate.testing.rspamd.
# Stock modules, rules, scores and actions; $LOCAL_CONFDIR, $DBDIR and $LOGDIR are this
# instance's (set with --var on the command line).
.include "$CONFDIR/common.conf"

options {{
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}}

logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    .include "$CONFDIR/logging.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/logging.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/logging.inc"
}}

# The normal worker serves /checkv2 and /ping; without a controller it also runs the
# controller's periodic jobs (maps, statistics).
worker "normal" {{
    bind_socket = "{self.address}:{self.port}";
    bind_socket = "{self.socket_path} mode=0666";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/worker-normal.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/worker-normal.inc"
}}
"""

    def config_files(self) -> dict[str, str]:
        """The files written under ``$LOCAL_CONFDIR``, by relative path (``files`` included)."""
        header = f"# Rspamd instance {self.name!r}, written by mailgate.testing.rspamd.\n"
        files: dict[str, str] = {}
        for module in OFFLINE_DISABLED_MODULES:
            files[f"local.d/{module}.conf"] = (
                header + "# Offline: asks the internet.\nenabled = false;\n"
            )
        # The stock lists name https://maps.rspamd.com first and the shipped file as a fallback.
        files["override.d/mime_types.conf"] = (
            header + 'file = "${CONFDIR}/maps.d/mime_types.inc";\n'
        )
        files["override.d/mid.conf"] = header + 'source { url = "${CONFDIR}/maps.d/mid.inc"; }\n'
        files["override.d/options.inc"] = header + "\n".join(
            [
                "dns {",
                f'    nameserver = ["{self.nameserver}"];',
                f"    timeout = {self.dns_timeout:g}s;",
                "    retransmits = 1;",
                "}",
                f'url_tld = "{self.tld_path}";',
                f"enable_test_patterns = {'true' if self.enable_test_patterns else 'false'};",
                "",
            ]
        )
        if self.actions:
            files["local.d/actions.conf"] = header + "".join(
                f"{action} = {score:g};\n" for action, score in self.actions.items()
            )
        files.update(self.files)
        return files

    def write_config(self) -> None:
        """Create the directories and write the configuration."""
        _ensure_traversable_base(self.base_dir)
        for directory in (self.instance_dir, self.instance_dir / "local.d",
                          self.instance_dir / "override.d"):  # fmt: skip
            directory.mkdir(mode=0o755, exist_ok=True)
            directory.chmod(0o755)
        account = self._account()
        for directory in (self.db_dir, self.log_dir):
            directory.mkdir(mode=0o750, exist_ok=True)
            if account is not None:
                os.chown(directory, account[0], account[1])
        processes.write_atomically(self.config_path, self.rspamd_conf())
        processes.write_atomically(self.tld_path, _top_level_domains(STOCK_TLD_FILE))
        for relative, text in self.config_files().items():
            path = (self.instance_dir / relative).resolve()
            if not path.is_relative_to(self.instance_dir.resolve()):
                raise ValueError(f"{relative!r} is outside the instance directory")
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            processes.write_atomically(path, text)

    def command(self) -> list[str]:
        """The command line that runs this instance in the foreground."""
        argv = [str(RSPAMD_BINARY), "--no-fork", "-c", str(self.config_path)]
        account = self._account()
        if account is not None:
            argv += ["-u", account[2], "-g", account[3]]
        for var, value in (("LOCAL_CONFDIR", self.instance_dir), ("DBDIR", self.db_dir),
                           ("RUNDIR", self.db_dir), ("LOGDIR", self.log_dir)):  # fmt: skip
            argv += ["--var", f"{var}={value}"]
        return argv

    def _account(self) -> tuple[int, int, str, str] | None:
        """(uid, gid, user, group) the daemon switches to, or None when not started by root."""
        if os.geteuid() != 0:
            return None
        names = (self.user,) if self.user else RSPAMD_USERS
        for user in names:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                continue
            return entry.pw_uid, entry.pw_gid, user, grp.getgrgid(entry.pw_gid).gr_name
        # Rspamd refuses to run its workers as root (unless told it is insecure): say so now.
        raise RspamdUnavailableError(f"no account {' or '.join(names)} to run Rspamd as")

    # Life cycle

    def start(self, timeout: float = _START_DEADLINE) -> Self:
        """Write the configuration, start Rspamd and return once ``GET /ping`` answers pong."""
        require_rspamd()
        if self.running:
            return self
        self.write_config()
        processes.started(self)
        try:
            with self.stderr_path.open("ab") as stderr:
                self._process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C meant for the test run is not also Rspamd's;
                    # stop() ends it in order.
                    start_new_session=True,
                )
            # In the foreground Rspamd writes no pid file: this one is for administrators.
            processes.write_atomically(self.pid_path, f"{self._process.pid}\n")
            self._wait_for_pong(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = _STOP_DEADLINE) -> None:
        """Stop Rspamd (SIGTERM, then SIGKILL to it and its workers) and wait; idempotent."""
        processes.stopped(self)
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # Taken now: if the main process has to be killed, its workers are orphans to end.
            workers = _children(process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in [process.pid, *workers]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait(_KILL_DEADLINE)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def remove(self) -> None:
        """Stop the instance and delete its directory (logs included)."""
        self.stop()
        shutil.rmtree(self.instance_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The directory stays when something failed: its log says why.
        if exc_type is None:
            self.remove()
        else:
            self.stop()

    # Use

    def ping(self) -> bool:
        """True if the normal worker answers ``GET /ping`` with pong."""
        try:
            with httpx.Client(trust_env=False, timeout=_PING_TIMEOUT) as client:
                response = client.get(f"{self.url}/ping")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text.strip() == "pong"

    def checkv2(
        self, content: bytes, headers: Iterable[tuple[str, str]] = (), timeout: float = 10.0
    ) -> dict[str, Any]:
        """Scan ``content`` (``POST /checkv2`` with the given protocol headers); the JSON reply."""
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            response = client.post(f"{self.url}/checkv2", content=content, headers=list(headers))
        response.raise_for_status()
        reply: dict[str, Any] = json.loads(response.content)
        return reply

    def log(self) -> str:
        """The instance's whole log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def _wait_for_pong(self, timeout: float) -> None:
        process = self._process

        def ready() -> bool:
            if process is None or process.poll() is not None:
                raise RspamdError(
                    f"{self.name}: rspamd exited with {process.returncode if process else '?'}"
                    f" during startup{self._tail()}"
                )
            return self.ping()

        if not processes.wait_until(ready, timeout):
            raise RspamdError(
                f"{self.name}: no pong from {self.url}/ping within {timeout:g}s{self._tail()}"
            )

    def _tail(self, lines: int = 15) -> str:
        parts = []
        for path, text in ((self.stderr_path, processes.read_text(self.stderr_path)),
                           (self.log_path, self.log())):  # fmt: skip
            last = text.splitlines()[-lines:]
            if last:
                parts.append(f"\n--- last lines of {path}:\n" + "\n".join(last))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"<RspamdInstance {self.name} {self.url} {self.instance_dir}>"


def _top_level_domains(source: Path) -> str:
    """The top-level entries of a public suffix list, plus the names reserved for tests
    (RFC 2606, RFC 6761), one a line."""
    names: set[str] = {"example", "invalid", "localhost", "test"}
    with contextlib.suppress(FileNotFoundError):
        for line in source.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = line.strip()
            if entry and not entry.startswith("//") and re.fullmatch(r"[a-z0-9-]+", entry):
                names.add(entry)
    return "".join(f"{name}\n" for name in sorted(names))


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (its workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _ensure_traversable_base(base_dir: Path) -> None:
    """Create ``base_dir`` (mode 0755) and check that another account can reach it."""
    if not base_dir.exists():
        base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        base_dir.chmod(0o755)
    if os.geteuid() != 0:
        return  # the daemon runs as this very user
    for directory in (base_dir.resolve(), *base_dir.resolve().parents):
        if directory.stat().st_mode & 0o001 == 0:
            raise RspamdError(
                f"{directory} is not searchable by others (mode "
                f"{directory.stat().st_mode & 0o777:o}): Rspamd's account could not read its "
                f"configuration under {base_dir}; use a base directory such as {DEFAULT_BASE_DIR}"
            )
