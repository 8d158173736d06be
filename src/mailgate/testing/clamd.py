"""Private ClamAV clamd instances (Debian's clamav-daemon 1.4) with a test signature database.

A :class:`ClamdInstance` is a clamd of its own for tests and for administrators' own trials of
the Anti-Virus module: its ``clamd.conf``, Unix socket, signature database, temporary files and
log all live in one directory; nothing of the machine's clamd (``/etc/clamav``,
``/var/lib/clamav``, ``/run/clamav``) is read or touched. No signatures are downloaded: the
database is one ``.ndb`` file holding the EICAR test signature (see :data:`EICAR`) plus any
signatures the caller adds, so clamd answers PING about 20 ms after it is started (measured
here; SIGTERM stops it in about 4 ms) instead of the tens of seconds the official databases
take.

Usage::

    with ClamdInstance(tmp_dir, max_scan_size=2 * 1024 * 1024) as clamd:
        settings = AntivirusSettings(enabled=True, clamd=clamd.endpoint)

Behaviour of clamd 1.4 worth knowing (measured with this harness):

* signatures from an unsigned database are reported with ``.UNOFFICIAL`` appended to their name
  (``Eicar-Test-Signature.UNOFFICIAL``);
* with ``AlertExceedsMax yes``, exceeding MaxScanSize or MaxRecursion inside an archive is
  reported as ``Heuristics.Limits.Exceeded.MaxScanSize`` / ``...MaxRecursion`` FOUND, but one
  archive member larger than MaxFileSize is silently truncated to MaxFileSize and the rest is
  not scanned, with no alert (Cisco-Talos/clamav PR #1832): a single-member zip bomb scans
  ``OK``. Content Filtering's ``archive_expansion`` is what catches that one;
* a stream longer than StreamMaxLength gets ``INSTREAM size limit exceeded. ERROR`` and the
  connection is closed at once, usually while the client is still sending;
* ``clamd.conf`` options are checked strictly: an unknown option (Debian's own sample config
  mentions ``AllMatchScan``, which clamd 1.4 rejects) stops clamd at startup.

Security notes: clamd runs as the user who starts it (no ``User`` line unless given), so it can
read its own directory; started as root without ``user`` it scans as root, which is acceptable
for test equipment only. The directory made by this module is private (mode 0700). Instances are
stopped by ``stop()``, by the context manager and, as a safety net, by an ``atexit`` hook.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from mailgate.testing import processes

__all__ = [
    "EICAR",
    "EICAR_DETECTION",
    "EICAR_SIGNATURE",
    "ClamdError",
    "ClamdInstance",
    "clamd_available",
    "clamd_binary",
    "ndb_line",
]

# The EICAR anti-virus test file (https://www.eicar.org/download-anti-malware-testfile/): 68
# bytes every engine reports as a virus. Written in two halves so that this source file is not
# itself flagged by the anti-virus of the developers who check it out.
EICAR: bytes = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR" + rb"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

EICAR_SIGNATURE = "Eicar-Test-Signature"
"""The name of the EICAR signature in the instance's database."""

EICAR_DETECTION = EICAR_SIGNATURE + ".UNOFFICIAL"
"""What clamd reports for EICAR: it appends ".UNOFFICIAL" to names from unsigned databases."""

_START_DEADLINE = 60.0
_STOP_DEADLINE = 10.0
_PING_DEADLINE = 2.0
_POLL = 0.02
# sockaddr_un.sun_path is 108 bytes on Linux, NUL included.
_MAX_SOCKET_PATH = 107


class ClamdError(RuntimeError):
    """clamd is missing, did not start, or did not answer."""


def clamd_binary() -> Path | None:
    """The clamd executable (it lives in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def clamd_available() -> bool:
    """True when clamd is installed."""
    return clamd_binary() is not None


def ndb_line(name: str, body: bytes) -> str:
    """A ClamAV extended body signature (``.ndb``): ``Name:Target:Offset:HexSignature``, with
    Target 0 (any file type) and offset ``*`` (anywhere in the file)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"signature name {name!r}: use letters, digits, '.', '_' and '-'")
    if len(body) < 2:
        # libclamav's matcher needs at least two fixed bytes per signature.
        raise ValueError(f"signature {name!r}: give at least 2 bytes")
    return f"{name}:0:*:{body.hex()}"


class ClamdInstance:
    """One private clamd listening on ``socket_path`` (and optionally on ``tcp``).

    Sizes are in bytes (clamd's limits: MaxFileSize per scanned file, including each archive
    member; MaxScanSize for all data scanned in one stream; MaxRecursion for nested containers;
    StreamMaxLength for an INSTREAM stream). ``signatures`` maps extra signature names to byte
    strings to detect, ``databases`` maps extra database file names (e.g. ``"local.hdb"``) to
    their text. ``directory`` defaults to a new private temporary directory, removed on stop.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        tcp: tuple[str, int] | None = None,
        max_file_size: int = 25 * 1024 * 1024,
        max_scan_size: int = 100 * 1024 * 1024,
        max_recursion: int = 16,
        max_files: int = 10_000,
        stream_max_length: int = 25 * 1024 * 1024,
        signatures: Mapping[str, bytes] | None = None,
        databases: Mapping[str, str] | None = None,
        user: str | None = None,
        binary: Path | str | None = None,
        start_deadline: float = _START_DEADLINE,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mailgate-clamd-")).resolve()
        self.tcp = tcp
        self.limits = {
            "MaxFileSize": max_file_size,
            "MaxScanSize": max_scan_size,
            "MaxRecursion": max_recursion,
            "MaxFiles": max_files,
            "StreamMaxLength": stream_max_length,
        }
        for option, value in self.limits.items():
            if value < 1:
                raise ValueError(f"{option} must be positive (0 would mean no limit in clamd)")
        self.signatures = {EICAR_SIGNATURE: EICAR, **(signatures or {})}
        self.databases = dict(databases or {})
        for file_name in self.databases:
            if "/" in file_name or file_name.startswith("."):
                raise ValueError(f"database file name {file_name!r}: a plain file name")
        self.user = user
        self.binary = Path(binary) if binary else clamd_binary()
        self.start_deadline = start_deadline
        self.config_path = self.directory / "clamd.conf"
        self.database_dir = self.directory / "db"
        self.temporary_dir = self.directory / "tmp"
        self.log_path = self.directory / "clamd.log"
        self.output_path = self.directory / "clamd.out"
        self.socket_path = self.directory / "clamd.sock"
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"{self.socket_path}: too long for a Unix socket, use a shorter path")
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The Unix socket as AntivirusSettings.clamd wants it: ``unix:/path``."""
        return f"unix:{self.socket_path}"

    @property
    def tcp_endpoint(self) -> str:
        """``host:port`` when the instance also listens on TCP."""
        if self.tcp is None:
            raise ClamdError("this instance has no TCP listener (pass tcp=(address, port))")
        return f"{self.tcp[0]}:{self.tcp[1]}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def write_files(self) -> None:
        """Write clamd.conf and the signature database (``start`` does it too)."""
        for path in (self.directory, self.database_dir, self.temporary_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = [ndb_line(name, body) for name, body in self.signatures.items()]
        (self.database_dir / "mailgate-test.ndb").write_text("\n".join(lines) + "\n")
        for file_name, text in self.databases.items():
            (self.database_dir / file_name).write_text(text)
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        options: list[tuple[str, object]] = [
            ("Foreground", "yes"),
            ("LocalSocket", self.socket_path),
            # A leftover socket of a crashed run would otherwise stop clamd from binding.
            ("FixStaleSocket", "yes"),
            ("DatabaseDirectory", self.database_dir),
            ("TemporaryDirectory", self.temporary_dir),
            ("LogFile", self.log_path),
            ("LogTime", "yes"),
            ("ScanArchive", "yes"),
            # Without it, an archive built to exceed the limits would scan "OK" unscanned.
            ("AlertExceedsMax", "yes"),
            *self.limits.items(),
            # Nothing to re-check: the database only changes when the instance is rebuilt.
            ("SelfCheck", 0),
        ]
        if self.tcp is not None:
            options += [("TCPAddr", self.tcp[0]), ("TCPSocket", self.tcp[1])]
        if self.user is not None:
            options.append(("User", self.user))
        return "".join(f"{name} {value}\n" for name, value in options)

    def start(self) -> Self:
        """Write the files, start clamd and wait (bounded) until it answers PING."""
        if self.running:
            return self
        if self.binary is None or not self.binary.exists():
            raise ClamdError("clamd is not installed: apt-get install clamav-daemon")
        self.write_files()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        began = time.monotonic()
        with self.output_path.open("wb") as output:
            self._process = subprocess.Popen(
                [str(self.binary), "--foreground", f"--config-file={self.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the test run does not reach clamd, which
                # is stopped by stop() (or the atexit hook) instead.
                start_new_session=True,
            )
        processes.started(self)
        deadline = began + self.start_deadline
        while True:
            failure = None
            if self._process.poll() is not None:
                failure = f"clamd exited with status {self._process.returncode} at startup"
            elif self.socket_path.exists() and self.ping():
                break
            elif time.monotonic() > deadline:
                failure = f"clamd did not answer PING within {self.start_deadline:g} s"
            if failure is not None:
                # Read before stop(), which removes a directory this instance made.
                details = self._output()
                self.stop()
                raise ClamdError(f"{failure}: {details}")
            # Waiting on the process doubles as the poll interval and notices an early exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(_POLL)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, deadline: float = _STOP_DEADLINE) -> None:
        """Stop clamd (SIGTERM, then SIGKILL after ``deadline`` seconds); idempotent. The
        temporary directory is removed if this instance made it."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(deadline)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(deadline)
        self._forget()
        with contextlib.suppress(FileNotFoundError):
            # A killed clamd leaves its socket behind: clients must see "not found", not a
            # socket nobody listens on.
            self.socket_path.unlink()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _forget(self) -> None:
        processes.stopped(self)

    def ping(self, deadline: float = _PING_DEADLINE) -> bool:
        """True when clamd answers zPING with PONG on its Unix socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(deadline)
                sock.connect(str(self.socket_path))
                sock.sendall(b"zPING\0")
                reply = b""
                while not reply.endswith(b"\0") and len(reply) < 64:
                    data = sock.recv(64)
                    if not data:
                        break
                    reply += data
                return reply == b"PONG\0"
        except OSError:
            return False

    def log(self) -> str:
        """clamd's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _output(self) -> str:
        try:
            text = self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        # clamd's startup errors are a few lines; its banner of limits is long.
        # libclamav says "LibClamAV Error:", clamd "ERROR:".
        lines = [line for line in text.splitlines() if re.search(r"error|warning", line, re.I)]
        return " | ".join(lines[-5:]) or text[-500:] or "(no output)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ClamdInstance({self.endpoint!r}, pid={self.pid})"
