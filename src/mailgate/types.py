"""Shared vocabulary of mailgate: replies, mailboxes, envelopes. Pure data, no I/O.

Every stage of a message's path (SMTP server, policy, queue, delivery, bounces) speaks in these
types, so each can be tested alone and composed by `mailgate.service`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code (RFC 3463) and text.

    `text` may hold several lines (joined with "\\n"); `render` writes the multi-line form of
    RFC 5321 section 4.2.1 with the enhanced code repeated on every line.
    """

    code: int
    enhanced: str | None
    text: str

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def render(self) -> bytes:
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {prefix}{self.text.replace(chr(10), ' ')}"

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A parsed envelope address (RFC 5321 section 4.1.2), with what policy needs to know.

    `local` is the local part in its wire form (quoted if it was quoted); `domain` is the
    normalised routing domain: lowercase A-label without trailing dot, or an address literal
    such as "[192.0.2.1]". `display_domain` is the domain as the client wrote it (minus the
    trailing dot), used when the message is passed on. `routed` is true when the address
    carries sender-specified routing (source route, or "@", "%" or "!" in the local part);
    such addresses are never treated as local for an untrusted client.
    """

    local: str
    domain: str
    display_domain: str
    routed: bool = False
    literal: bool = False
    utf8: bool = False

    @property
    def address(self) -> str:
        return f"{self.local}@{self.display_domain}"

    def __str__(self) -> str:
        return self.address


@dataclass(slots=True)
class ClientInfo:
    """Who handed a message to mailgate."""

    ip: str
    port: int = 0
    helo: str = ""
    name: str = "unknown"
    proto: str = "SMTP"
    tls: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "helo": self.helo,
            "name": self.name,
            "proto": self.proto,
            "tls": self.tls,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientInfo:
        return cls(
            ip=str(data["ip"]),
            port=int(data.get("port", 0)),
            helo=str(data.get("helo", "")),
            name=str(data.get("name", "unknown")),
            proto=str(data.get("proto", "SMTP")),
            tls=bool(data.get("tls", False)),
        )


@dataclass(slots=True)
class Recipient:
    """One envelope recipient, with its DSN parameters (RFC 3461)."""

    address: str
    domain: str
    orcpt: str | None = None
    notify: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"address": self.address, "domain": self.domain}
        if self.orcpt:
            data["orcpt"] = self.orcpt
        if self.notify:
            data["notify"] = list(self.notify)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipient:
        return cls(
            address=str(data["address"]),
            domain=str(data["domain"]),
            orcpt=data.get("orcpt"),
            notify=tuple(data.get("notify", ())),
        )

    @property
    def wants_failure_report(self) -> bool:
        return not self.notify or "FAILURE" in self.notify

    @property
    def wants_success_report(self) -> bool:
        return "SUCCESS" in self.notify


@dataclass(slots=True)
class Envelope:
    """Everything mailgate knows about a queued message except its content."""

    qid: str
    sender: str
    recipients: list[Recipient]
    client: ClientInfo
    arrival: float
    size: int = 0
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    prepend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_bounce(self) -> bool:
        """A message with the null sender (a DSN): it never gets a DSN of its own."""
        return self.sender == ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "qid": self.qid,
            "sender": self.sender,
            "recipients": [r.to_json() for r in self.recipients],
            "client": self.client.to_json(),
            "arrival": self.arrival,
            "size": self.size,
            "prepend": self.prepend,
        }
        for key in ("body", "ret", "envid"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.smtputf8:
            data["smtputf8"] = True
        if self.extra:
            data["extra"] = self.extra
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            qid=str(data["qid"]),
            sender=str(data["sender"]),
            recipients=[Recipient.from_json(r) for r in data["recipients"]],
            client=ClientInfo.from_json(data["client"]),
            arrival=float(data["arrival"]),
            size=int(data.get("size", 0)),
            body=data.get("body"),
            smtputf8=bool(data.get("smtputf8", False)),
            ret=data.get("ret"),
            envid=data.get("envid"),
            prepend=str(data.get("prepend", "")),
            extra=dict(data.get("extra", {})),
        )
