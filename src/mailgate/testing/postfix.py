"""Real, isolated Postfix instances (Debian's Postfix 3.x binaries) for end-to-end tests.

Each :class:`PostfixInstance` is a complete Postfix of its own: its own ``main.cf`` and
``master.cf`` in its configuration directory, its own queue and data directories and its own log
file, listening for SMTP on one loopback address and port, and sending from that same address.
Nothing of the machine's own Postfix (``/etc/postfix/main.cf``, ``/var/spool/postfix``) is read or
touched; only the shared binaries and ``/etc/postfix/postfix-files`` (``meta_directory``) are used.

Two roles of the seed's topology come ready-made (SPEC section 1):

* :func:`border_gateway`: the edge MTA that relays mail for the organisation's domains to mailgate
  (optionally probing recipients first, Postfix ``reject_unverified_recipient``) and relays
  mailgate's outgoing mail to the internet;
* :func:`internal_server`: a mail server that knows its mailboxes, refuses unknown recipients at
  RCPT with 550 5.1.1 and delivers to Maildirs.

Requirements and security notes: ``postfix start`` must run as root (the master drops privileges
per service). Postfix daemons run as user ``postfix`` and must traverse every directory up to their
queue, so instances live under :data:`DEFAULT_BASE_DIR` (mode 0755) and never under pytest's
``tmp_path`` (mode 0700). ``maillog_file`` must start with one of ``maillog_file_prefixes``
(default ``/var``), which is another reason for ``/var/tmp``. Instances are stopped by ``stop()``,
by the context manager, and, as a safety net, by an ``atexit`` hook for every instance started by
this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from mailgate.testing import processes

__all__ = [
    "DEFAULT_BASE_DIR",
    "InternalServer",
    "ParamValue",
    "PostfixError",
    "PostfixInstance",
    "PostfixUnavailableError",
    "QueueEntry",
    "border_gateway",
    "format_param",
    "free_port",
    "inline_map",
    "internal_server",
    "postfix_available",
    "require_postfix",
]

# Not a temporary file: a fixed, world-searchable base that the postfix user can traverse.
DEFAULT_BASE_DIR = Path("/var/tmp/mailgate-tests")  # noqa: S108

COMMAND_DIRECTORY = Path("/usr/sbin")
DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
SHLIB_DIRECTORY = Path("/usr/lib/postfix")
META_DIRECTORY = Path("/etc/postfix")
POSTFIX_USER = "postfix"

ParamValue = str | int | bool | Sequence[str]
"""A main.cf value: lists are joined with ", ", booleans become yes/no."""

_START_DEADLINE = 30.0
_STOP_DEADLINE = 15.0
_COMMAND_DEADLINE = 60.0


class PostfixError(RuntimeError):
    """A Postfix command failed or an instance did not reach the expected state."""


class PostfixUnavailableError(PostfixError):
    """The Postfix binaries are not installed, or this process cannot run them (not root)."""


def postfix_available() -> bool:
    """True when the Postfix binaries this harness runs are installed."""
    return _missing_binaries() == []


def require_postfix() -> None:
    """Raise :class:`PostfixUnavailableError`, saying what is missing, unless instances can run."""
    missing = _missing_binaries()
    if missing:
        raise PostfixUnavailableError(
            "Postfix is not installed (missing: "
            + ", ".join(str(path) for path in missing)
            + "); install Debian's 'postfix' package (apt-get install postfix)"
        )
    if os.geteuid() != 0:
        raise PostfixUnavailableError("running Postfix instances needs root ('postfix start')")
    _postfix_account()


def _postfix_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(POSTFIX_USER)
    except KeyError:
        raise PostfixUnavailableError(
            f"user {POSTFIX_USER!r} does not exist: is Postfix installed?"
        ) from None


def _missing_binaries() -> list[Path]:
    needed = [
        COMMAND_DIRECTORY / "postfix",
        COMMAND_DIRECTORY / "postconf",
        COMMAND_DIRECTORY / "postqueue",
        DAEMON_DIRECTORY / "master",
        DAEMON_DIRECTORY / "smtpd",
        DAEMON_DIRECTORY / "postlogd",
        META_DIRECTORY / "postfix-files",
    ]
    return [path for path in needed if not path.exists()]


def free_port(address: str) -> int:
    """A TCP port that is free on ``address`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def format_param(value: ParamValue) -> str:
    """A Python value as a main.cf value."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return ", ".join(value)


def inline_map(entries: Mapping[str, str]) -> str:
    """An ``inline:`` lookup table (no postmap needed); keys and values must not contain
    commas, braces or whitespace."""
    for key, value in entries.items():
        if re.search(r"[\s,{}]", key + value):
            raise ValueError(f"cannot put {key!r}={value!r} in an inline: table")
    if not entries:
        return ""
    return "inline:{ " + ", ".join(f"{key}={value}" for key, value in entries.items()) + " }"


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message in a Postfix queue, from ``postqueue -j``."""

    queue_id: str
    queue_name: str  # maildrop, incoming, active, deferred, hold, corrupt
    sender: str
    recipients: list[str]
    reasons: list[str]  # delay reasons, one per recipient that has one
    arrival_time: int
    message_size: int


class PostfixInstance:
    """One isolated Postfix: configuration, queue, data and log under ``instance_dir``.

    ``params`` override the harness defaults in main.cf. The instance is configured but not
    started by the constructor; ``start()`` writes the configuration and starts the master.
    """

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        base_dir: Path | str = DEFAULT_BASE_DIR,
        params: Mapping[str, ParamValue] | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
            raise ValueError(f"instance name {name!r}: use letters, digits and dashes")
        self.name = name
        self.address = address
        self.port = port
        self.base_dir = Path(base_dir)
        # A random suffix: several runs (or a leftover from a crashed run) never share a queue.
        self.instance_dir = self.base_dir / f"{name}-{secrets.token_hex(4)}"
        self.conf_dir = self.instance_dir / "conf"
        self.queue_dir = self.instance_dir / "queue"
        self.data_dir = self.instance_dir / "data"
        self.mail_dir = self.instance_dir / "mail"
        self.maillog_path = self.instance_dir / "maillog"
        self._params: dict[str, str] = self._defaults()
        for key, value in (params or {}).items():
            self._params[key] = format_param(value)
        self._master_pid: int | None = None

    # Configuration

    def _defaults(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "command_directory": str(COMMAND_DIRECTORY),
            "daemon_directory": str(DAEMON_DIRECTORY),
            "shlib_directory": str(SHLIB_DIRECTORY),
            "meta_directory": str(META_DIRECTORY),
            "mail_owner": POSTFIX_USER,
            "setgid_group": "postdrop",
            # There is no syslog on a test machine: postlogd writes the instance's own log.
            "maillog_file": str(self.maillog_path),
            "syslog_name": f"postfix-{self.name}",
            "myhostname": f"{self.name}.test",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": f"{self.address}/32",
            # A specific 127.x address here is refused as "not a local interface"; the listener
            # is named in master.cf instead, and outgoing connections bind to the same address.
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "smtp_bind_address": self.address,
            "smtpd_peername_lookup": "no",
            # Every next hop in a test is an IP literal: no resolver is ever needed.
            "smtp_dns_support_level": "disabled",
            "smtpd_banner": "$myhostname ESMTP",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "html_directory": "no",
            # Postfix's compatibility default is defer_unauth_destination (454 4.7.1); a real
            # gateway says 554 5.7.1 "Relay access denied".
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        }

    @property
    def params(self) -> dict[str, str]:
        """The main.cf parameters this harness writes (a copy)."""
        return dict(self._params)

    @property
    def next_hop(self) -> str:
        """This instance as a Postfix next hop without MX lookup: ``[address]:port``."""
        return f"[{self.address}]:{self.port}"

    def main_cf(self) -> str:
        lines = [f"# Postfix instance {self.name!r}, written by mailgate.testing.postfix"]
        lines += [f"{key} = {value}".rstrip() for key, value in self._params.items()]
        return "\n".join(lines) + "\n"

    def master_cf(self) -> str:
        # Column 5 (chroot) is "n" everywhere: a chroot would need copies of /etc files in the
        # queue directory, which an isolated throw-away instance does not have.
        services = [
            (f"{self.address}:{self.port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("local", "unix", "-", "n", "n", "-", "-", "local"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        lines = [f"# Postfix instance {self.name!r}, written by mailgate.testing.postfix"]
        lines += ["  ".join(f"{column:<10}" for column in service).rstrip() for service in services]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """Create the directories and write main.cf and master.cf."""
        _ensure_traversable_base(self.base_dir)
        postfix = _postfix_account()
        for directory in (self.instance_dir, self.conf_dir, self.queue_dir):
            directory.mkdir(mode=0o755, exist_ok=True)
            directory.chmod(0o755)
        # The daemons write these as the postfix user; the queue's subdirectories are created
        # by "postfix start" itself (post-install create-missing).
        for directory in (self.data_dir, self.mail_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chown(directory, postfix.pw_uid, postfix.pw_gid)
        processes.write_atomically(self.conf_dir / "main.cf", self.main_cf())
        processes.write_atomically(self.conf_dir / "master.cf", self.master_cf())

    def postconf(self, name: str, expand: bool = False) -> str:
        """The value of ``name`` as this instance's Postfix sees it (``postconf -h``), with
        ``$parameter`` references expanded if ``expand`` (``postconf -x``)."""
        self.write_config()
        flags = ["-h", "-x"] if expand else ["-h"]
        return self._run(
            [str(COMMAND_DIRECTORY / "postconf"), "-c", str(self.conf_dir), *flags, name]
        )

    def set_params(self, **params: ParamValue) -> None:
        """Change main.cf parameters; a running instance is reloaded and waited for."""
        for key, value in params.items():
            self._params[key] = format_param(value)
        if self.running:
            self.reload()
        elif self.conf_dir.exists():
            self.write_config()

    # Life cycle

    @property
    def running(self) -> bool:
        """True while the master process started by ``start()`` lives."""
        return self._master_pid is not None and processes.process_alive(self._master_pid)

    def start(self, timeout: float = _START_DEADLINE) -> Self:
        """Write the configuration, start the master and return once SMTP answers 220."""
        require_postfix()
        if self.running:
            return self
        self.write_config()
        processes.started(self)
        try:
            self._postfix("start")
            self._master_pid = self._read_master_pid()
            self._wait_for_banner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = _STOP_DEADLINE) -> None:
        """Stop the master and wait until it has exited (killing it if it does not); idempotent."""
        processes.stopped(self)
        pid = self._master_pid or self._read_master_pid()
        self._master_pid = None
        if pid is None or not processes.process_alive(pid):
            return
        with contextlib.suppress(PostfixError):
            self._postfix("stop")
        if processes.wait_until(lambda: not processes.process_alive(pid), timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not processes.wait_until(lambda: not processes.process_alive(pid), timeout):
            raise PostfixError(f"{self.name}: master process {pid} survived SIGKILL")

    def remove(self) -> None:
        """Stop the instance and delete its directory (configuration, queue, log, mailboxes)."""
        self.stop()
        shutil.rmtree(self.instance_dir, ignore_errors=True)

    def reload(self, timeout: float = _START_DEADLINE) -> None:
        """Rewrite the configuration and make the master re-read it; return once it has."""
        self.write_config()
        if not self.running:
            return
        before = self._count_log(_RELOAD_LINE)
        self._postfix("reload")
        if not processes.wait_until(lambda: self._count_log(_RELOAD_LINE) > before, timeout):
            raise PostfixError(f"{self.name}: no reload logged within {timeout:g}s{self._tail()}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Queue

    def flush(self) -> None:
        """Attempt delivery of all queued mail now (``postqueue -f``)."""
        self._run([str(COMMAND_DIRECTORY / "postqueue"), "-c", str(self.conf_dir), "-f"])

    def queue(self) -> list[QueueEntry]:
        """The messages in the queue (``postqueue -j``)."""
        output = self._run([str(COMMAND_DIRECTORY / "postqueue"), "-c", str(self.conf_dir), "-j"])
        entries = []
        for line in output.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            recipients = record.get("recipients", [])
            entries.append(
                QueueEntry(
                    queue_id=str(record["queue_id"]),
                    queue_name=str(record.get("queue_name", "")),
                    sender=str(record.get("sender", "")),
                    recipients=[str(r.get("address", "")) for r in recipients],
                    reasons=[str(r["delay_reason"]) for r in recipients if "delay_reason" in r],
                    arrival_time=int(record.get("arrival_time", 0)),
                    message_size=int(record.get("message_size", 0)),
                )
            )
        return entries

    def queue_ids(self) -> list[str]:
        return [entry.queue_id for entry in self.queue()]

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Wait until the queue is empty; raise TimeoutError listing what is left."""
        if not processes.wait_until(lambda: not self.queue(), timeout):
            left = "; ".join(
                f"{entry.queue_id} ({entry.queue_name}) to {', '.join(entry.recipients)}: "
                f"{' / '.join(entry.reasons) or 'no delay reason'}"
                for entry in self.queue()
            )
            raise TimeoutError(f"{self.name}: queue not empty after {timeout:g}s: {left}")

    # Log

    def maillog(self) -> str:
        """The instance's whole log so far."""
        try:
            return self.maillog_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_position(self) -> int:
        """The current length of the log, to pass as ``start`` to :meth:`wait_log`."""
        return len(self.maillog())

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait until the log (from offset ``start``) matches ``pattern`` (multiline regex)."""
        regex = re.compile(pattern, re.MULTILINE)
        found: list[re.Match[str]] = []

        def matched() -> bool:
            match = regex.search(self.maillog(), start)
            if match is not None:
                found.append(match)
            return match is not None

        if not processes.wait_until(matched, timeout):
            raise TimeoutError(
                f"{self.name}: {pattern!r} not in the log after {timeout:g}s{self._tail()}"
            )
        return found[0]

    # Internals

    def _postfix(self, action: str) -> str:
        return self._run([str(COMMAND_DIRECTORY / "postfix"), "-c", str(self.conf_dir), action])

    def _run(self, argv: list[str]) -> str:
        try:
            completed = subprocess.run(
                argv, capture_output=True, text=True, timeout=_COMMAND_DEADLINE, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise PostfixError(f"{self.name}: {' '.join(argv)} hung") from error
        if completed.returncode != 0:
            raise PostfixError(
                f"{self.name}: {' '.join(argv)} exited with {completed.returncode}: "
                f"{(completed.stderr or completed.stdout).strip()}{self._tail()}"
            )
        return completed.stdout.strip()

    def _read_master_pid(self) -> int | None:
        for path in (self.queue_dir / "pid" / "master.pid", self.data_dir / "master.lock"):
            try:
                text = path.read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                return int(text)
        return None

    def _wait_for_banner(self, timeout: float) -> None:
        banner: list[bytes] = []

        def answers() -> bool:
            try:
                with (
                    socket.create_connection((self.address, self.port), timeout=2) as client,
                    client.makefile("rb") as replies,
                ):
                    line = replies.readline()
                    # A polite end keeps "lost connection" noise out of the instance's log.
                    client.sendall(b"QUIT\r\n")
                    replies.readline()
            except OSError:
                return False
            banner[:] = [line]
            return line.startswith(b"220")

        if not processes.wait_until(answers, timeout):
            raise PostfixError(
                f"{self.name}: no 220 greeting on {self.address}:{self.port} within {timeout:g}s"
                f" (last answer {banner!r}){self._tail()}"
            )

    def _count_log(self, regex: re.Pattern[str]) -> int:
        return len(regex.findall(self.maillog()))

    def _tail(self, lines: int = 15) -> str:
        log = self.maillog().splitlines()[-lines:]
        return (
            ("\n--- last lines of " + str(self.maillog_path) + ":\n" + "\n".join(log))
            if log
            else ""
        )

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.name} {self.address}:{self.port} {self.instance_dir}>"


_RELOAD_LINE = re.compile(r"master\[\d+\]: reload -- version", re.MULTILINE)


class InternalServer(PostfixInstance):
    """An internal mail server for one domain: virtual(8) mailboxes in Maildirs under
    ``mail_dir``; see :func:`internal_server`."""

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        domain: str,
        mailboxes: Iterable[str],
        relayhost: str,
        mynetworks: Sequence[str],
        base_dir: Path | str = DEFAULT_BASE_DIR,
        params: Mapping[str, ParamValue] | None = None,
    ) -> None:
        super().__init__(name, address, port, base_dir)
        self.domain = domain.lower()
        self.mailboxes = [self._localpart(mailbox) for mailbox in mailboxes]
        postfix = _postfix_account()
        # A trailing slash selects Maildir delivery in virtual(8).
        table = {f"{box}@{self.domain}": f"{self.domain}/{box}/" for box in self.mailboxes}
        settings: dict[str, ParamValue] = {
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_maps": inline_map(table),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_uid_maps": f"static:{postfix.pw_uid}",
            "virtual_gid_maps": f"static:{postfix.pw_gid}",
            "relayhost": relayhost,
            "mynetworks": list(mynetworks),
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        }
        settings.update(params or {})
        self.set_params(**settings)

    def _localpart(self, mailbox: str) -> str:
        localpart, at, domain = mailbox.lower().rpartition("@")
        if not at:
            localpart = domain
        elif domain != self.domain:
            raise ValueError(f"mailbox {mailbox!r} is not in {self.domain}")
        # The local part becomes a table key and a directory name.
        if not re.fullmatch(r"[a-z0-9][a-z0-9._+-]*", localpart):
            raise ValueError(f"mailbox {mailbox!r}: use a plain local part")
        return localpart

    def maildir(self, mailbox: str) -> Path:
        """The Maildir of ``mailbox`` (a local part or a full address)."""
        return self.mail_dir / self.domain / self._localpart(mailbox)

    def mailbox_messages(self, mailbox: str) -> list[bytes]:
        """The messages delivered to ``mailbox`` (Maildir ``new/`` and ``cur/``), oldest first."""
        maildir = self.maildir(mailbox)
        paths: list[Path] = []
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                paths.extend(path for path in (maildir / sub).iterdir() if path.is_file())
        # Maildir names start with the delivery time in seconds; the mtime orders within one.
        paths.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [path.read_bytes() for path in paths]

    def wait_mailbox(self, mailbox: str, count: int, timeout: float = 30.0) -> list[bytes]:
        """Wait until ``mailbox`` holds ``count`` messages; return them."""
        if not processes.wait_until(lambda: len(self.mailbox_messages(mailbox)) >= count, timeout):
            have = len(self.mailbox_messages(mailbox))
            queue = "; ".join(
                f"{entry.queue_id} to {', '.join(entry.recipients)}: {' / '.join(entry.reasons)}"
                for entry in self.queue()
            )
            raise TimeoutError(
                f"{self.name}: {mailbox}@{self.domain} holds {have} of {count} message(s) after "
                f"{timeout:g}s; queue: {queue or 'empty'}{self._tail()}"
            )
        return self.mailbox_messages(mailbox)


def border_gateway(
    address: str,
    port: int,
    relay_domains: Sequence[str],
    inbound_next_hop: str,
    outbound_relayhost: str,
    mynetworks: Sequence[str],
    verify_recipients: bool,
    *,
    name: str = "border",
    base_dir: Path | str = DEFAULT_BASE_DIR,
    params: Mapping[str, ParamValue] | None = None,
) -> PostfixInstance:
    """The seed's border gateway (configured, not started).

    Mail for ``relay_domains`` (and their subdomains) goes to ``inbound_next_hop`` (mailgate,
    ``[ip]:port``); everything else goes to ``outbound_relayhost`` (the internet), but only from
    clients in ``mynetworks``. With ``verify_recipients`` the border probes the inbound next hop
    before it accepts a recipient and answers 550 5.1.1 for one the next hop refuses.
    """
    routes: dict[str, str] = {}
    for domain in relay_domains:
        # relay_domains matches subdomains (parent_domain_matches_subdomains) but transport_maps
        # does not: without the ".domain" key, mail for a subdomain would go to the internet.
        routes[domain.lower()] = f"smtp:{inbound_next_hop}"
        routes["." + domain.lower()] = f"smtp:{inbound_next_hop}"
    restrictions = ["permit_mynetworks", "reject_unauth_destination"]
    settings: dict[str, ParamValue] = {
        "relay_domains": list(relay_domains),
        "transport_maps": inline_map(routes),
        "relayhost": outbound_relayhost,
        "mynetworks": list(mynetworks),
    }
    if verify_recipients:
        restrictions.append("reject_unverified_recipient")
        settings.update(
            {
                "unverified_recipient_reject_code": 550,
                # Empty: the verify service keeps results in memory only. Each test instance has
                # a fresh cache, and reload() (or set_params) empties it, so a test that changes
                # the mailboxes behind the border is not answered from a stale negative entry
                # (Postfix would keep it for hours).
                "address_verify_map": "",
                # The first RCPT for a new address waits one poll delay for the probe; the
                # default 3s would make every verification test three times slower.
                "address_verify_poll_delay": "1s",
            }
        )
    settings["smtpd_recipient_restrictions"] = restrictions
    settings.update(params or {})
    return PostfixInstance(name, address, port, base_dir, settings)


def internal_server(
    address: str,
    port: int,
    domain: str,
    mailboxes: Sequence[str],
    relayhost: str,
    mynetworks: Sequence[str],
    *,
    name: str = "internal",
    base_dir: Path | str = DEFAULT_BASE_DIR,
    params: Mapping[str, ParamValue] | None = None,
) -> InternalServer:
    """An internal mail server for ``domain`` (configured, not started).

    It delivers to ``mailboxes`` (local parts or addresses) in Maildirs, refuses other recipients
    of ``domain`` at RCPT with 550 5.1.1 (``smtpd_reject_unlisted_recipient``, a Postfix default),
    and relays everything else from ``mynetworks`` through ``relayhost`` (mailgate).
    """
    return InternalServer(
        name, address, port, domain, mailboxes, relayhost, mynetworks, base_dir, params
    )


def _ensure_traversable_base(base_dir: Path) -> None:
    """Create ``base_dir`` (mode 0755) and check that the postfix user can reach it."""
    if not base_dir.exists():
        base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        base_dir.chmod(0o755)
    for directory in (base_dir.resolve(), *base_dir.resolve().parents):
        if directory.stat().st_mode & 0o001 == 0:
            raise PostfixError(
                f"{directory} is not searchable by others (mode "
                f"{directory.stat().st_mode & 0o777:o}): the postfix user could not reach its "
                f"queue under {base_dir}; use a base directory such as {DEFAULT_BASE_DIR}"
            )
