"""What a scan module is: the shared vocabulary of the pipeline (no I/O here).

"Checks report; config decides": a check returns a verdict (and details) and never decides
what happens to the message; the rule that applies maps each module's verdict to an action.
A check must not raise for trouble with its engine or the message: it returns Verdict.ERROR
with the reason, and the rule's error action applies (tempfail by default).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from mailgate.pipeline.replies import ReplyOrder, Turn, Turns
from mailgate.types import ClientInfo, Envelope

if TYPE_CHECKING:
    from mailgate.config.protection import Protection
    from mailgate.pipeline.message import ParsedMessage


class Verdict(StrEnum):
    CLEAN = "clean"
    INFECTED = "infected"  # antivirus
    SPAM = "spam"  # antispam
    PROBABLE_SPAM = "probable_spam"
    PHISHING = "phishing"  # phishing
    BLOCKED_ATTACHMENT = "blocked_attachment"  # content
    CONTENT_MATCH = "content_match"
    DMARC_REJECT = "dmarc_reject"  # auth
    DMARC_QUARANTINE = "dmarc_quarantine"
    SPF_FAIL = "spf_fail"
    ERROR = "error"  # any module: engine unavailable, timed out, bad answer, unreadable message


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one module found in one message."""

    module: str  # antivirus | antispam | phishing | content | auth
    verdict: Verdict
    detail: str = ""  # virus name, score and symbols, matched pattern, reason of an error
    headers: tuple[
        tuple[str, str], ...
    ] = ()  # headers the module adds, e.g. Authentication-Results
    parts: tuple[int, ...] = ()  # MIME parts that triggered it (for delete_attachment)
    score: float | None = None

    @property
    def positive(self) -> bool:
        return self.verdict not in (Verdict.CLEAN, Verdict.ERROR)


@dataclass(frozen=True, slots=True)
class RealClient:
    """The client that handed the message to the border gateway (or the connection itself)."""

    ip: str
    helo: str
    name: str = "unknown"
    source: str = "connection"  # connection | xforward | xclient | received


@dataclass
class ScanContext:
    """Everything a check may look at. The content is the message as received (CRLF lines),
    without mailgate's own Received header."""

    envelope: Envelope
    content: bytes
    client: ClientInfo
    real_client: RealClient
    hostname: str
    protection: Protection
    _parse_limits: tuple[int, int] = field(default=(1000, 30))
    turns: Turns | None = field(default=None, repr=False, compare=False)
    _parsed: ParsedMessage | None = field(default=None, init=False, repr=False, compare=False)
    _parse_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def message(self) -> ParsedMessage:
        """The MIME structure, parsed once for every check (bounded: see pipeline.message),
        by whichever check asks first, on the loop or in a worker thread. The lock is this
        message's own (functools.cached_property's, in Python 3.11, is one for all
        instances: a big message parsed in a thread would hold up small ones on the loop)."""
        parsed = self._parsed
        if parsed is None:
            with self._parse_lock:
                parsed = self._parsed
                if parsed is None:
                    from mailgate.pipeline.message import ParsedMessage

                    parsed = self._parsed = ParsedMessage.parse(
                        self.content,
                        max_parts=self._parse_limits[0],
                        max_depth=self._parse_limits[1],
                    )
        return parsed

    def parsed(self) -> ParsedMessage | None:
        """The parsed message if a check has parsed it already, without parsing it here."""
        return self._parsed

    def reply_turn(self, module: str, timeout: float) -> Turn:
        """When `module`, whose check has `timeout` seconds, may listen for its engine's
        answer (`async with`): see pipeline.replies."""
        turns = self.turns if self.turns is not None else _NO_TURNS
        return turns.turn(module, timeout)

    def small(self, limit: int) -> bool:
        """Whether the message is at most `limit` bytes: in-process checks inspect such a
        message on the event loop, where a worker thread's hand-offs would cost more than
        the inspection itself (a fraction of a millisecond)."""
        return len(self.content) <= limit


_NO_TURNS = Turns(ReplyOrder(()), [])  # a context outside the pipeline: every turn is now


class Check(Protocol):
    """A scan module. `scan` must return (never raise) within its own deadline; the pipeline
    also enforces one."""

    module: str

    async def scan(self, ctx: ScanContext) -> CheckResult: ...
