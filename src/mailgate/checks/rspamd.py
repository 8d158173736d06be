"""Anti-Spam with Rspamd: the message is posted to a normal worker's ``/checkv2`` (Rspamd's HTTP
protocol, https://rspamd.com/doc/developers/protocol.html) and its JSON answer becomes a verdict.

The envelope travels in the protocol's request headers: ``IP`` and ``Helo`` of the real client
(the server that handed the message to the border gateway, so Rspamd judges the sender rather
than the border), ``Hostname`` when its reverse DNS name is known, ``From`` (the envelope sender,
``<>`` for a bounce), one ``Rcpt`` per recipient, ``Queue-Id`` (mailgate's, so both logs name the
same message), ``MTA-Name`` (mailgate's host name) and ``User-Agent``.

Verdicts: with ``spam_score`` and ``probable_spam_score`` configured, the score decides; otherwise
Rspamd's action does (reject = spam; add header, rewrite subject = probable spam). The check adds
``X-Spam-Score``, ``X-Spam-Status`` and ``X-Spam-Symbols``. Rspamd unreachable, too slow, or
answering anything but a well-formed result gives ``Verdict.ERROR`` with the reason: the rule's
error action applies (tempfail by default), the check never raises.

Security notes: the answer is read up to ``MAX_REPLY_BYTES``; every header value the check adds is
one line of printable ASCII, whatever Rspamd (or an impostor on its address) sends; proxy
variables of the environment are ignored, as the scanner is a local service
(`mailgate.checks.http`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from mailgate.checks import http
from mailgate.config.protection import AntispamSettings
from mailgate.dns import ascii_name
from mailgate.pipeline.api import CheckResult, ScanContext, Verdict

__all__ = ["ACTION_VERDICTS", "MAX_REPLY_BYTES", "RspamdCheck"]

MODULE = "antispam"
USER_AGENT = "mailgate"
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a reply lists symbols and their options: kilobytes, not more
DETAIL_SYMBOLS = 5  # symbols named in the detail (the highest scores)
SYMBOLS_HEADER_LIMIT = 250  # characters of X-Spam-Symbols, well within a 998-octet line
REASON_LIMIT = 200  # characters of an error text quoted from the other side

ACTION_VERDICTS: Mapping[str, Verdict] = {
    "reject": Verdict.SPAM,
    "add header": Verdict.PROBABLE_SPAM,
    "rewrite subject": Verdict.PROBABLE_SPAM,
    # Rspamd asks an MTA that greylists (or rate-limits) to defer the message. mailgate does not
    # greylist and applies its own limits at SMTP time; what is left is a judgement on content,
    # and Rspamd's thresholds put these below "add header": not spam.
    "soft reject": Verdict.CLEAN,
    "greylist": Verdict.CLEAN,
    "no action": Verdict.CLEAN,
}


class RspamdCheck:
    """The Anti-Spam module: one HTTP request to Rspamd per message (`mailgate.checks.http`)."""

    module = MODULE

    async def aclose(self) -> None:
        """Nothing to release: each scan's connection ends with its reply."""

    async def scan(self, ctx: ScanContext) -> CheckResult:
        settings = ctx.protection.antispam
        url = f"{settings.url.rstrip('/')}/checkv2"
        endpoint = f"{url} (socket {settings.socket})" if settings.socket else url
        try:
            async with asyncio.timeout(settings.timeout):
                status, body = await http.post(
                    url,
                    ctx.content,
                    request_headers(ctx),
                    limit=MAX_REPLY_BYTES,
                    unix=settings.socket,
                    turn=ctx.reply_turn(MODULE, settings.timeout),
                )
        except TimeoutError:
            return _error(f"no answer from Rspamd at {endpoint} within {settings.timeout:g}s")
        except http.ConnectError as exc:
            return _error(f"cannot connect to Rspamd at {endpoint}: {_clip(str(exc))}")
        except http.ReplyTooLarge:
            return _error(f"Rspamd at {endpoint} answered more than {MAX_REPLY_BYTES} bytes")
        except Exception as exc:  # the contract: a check reports trouble, it never raises
            return _error(f"Rspamd at {endpoint}: {type(exc).__name__}: {_clip(str(exc))}")
        return _interpret(endpoint, status, body, settings)


def request_headers(ctx: ScanContext) -> list[tuple[str, str]]:
    """The protocol headers that carry the envelope and the client (see the module notes)."""
    headers: list[tuple[str, str]] = []

    def add(name: str, value: str | None) -> None:
        clean = _header_value(value)
        if clean:
            headers.append((name, clean))

    real = ctx.real_client
    add("IP", real.ip)
    add("Helo", real.helo)
    # "unknown" is Postfix's word for "no verified reverse name". Left out, Rspamd looks the
    # address up itself (once_received: RDNS_NONE) instead of taking "unknown" for a host name.
    if real.name and real.name.lower() != "unknown":
        add("Hostname", ascii_address_part(real.name))
    sender = ctx.envelope.sender
    add("From", "<>" if sender == "" else ascii_address(sender))
    for recipient in ctx.envelope.recipients:
        add("Rcpt", ascii_address(recipient.address))
    add("Queue-Id", ctx.envelope.qid)
    add("MTA-Name", ctx.hostname)
    add("User-Agent", USER_AGENT)
    return headers


def ascii_address(address: str) -> str | None:
    """``address`` as Rspamd 3 can read it in a request header, or None.

    Rspamd marks a task BROKEN_HEADERS (8 points) when an envelope address is not ASCII, and
    ignores the address. An internationalised domain becomes its A-labels; a UTF-8 local part
    (SMTPUTF8) has no ASCII form, so the address is left out rather than scored as broken.
    """
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    ascii_domain = ascii_address_part(domain)
    return f"{local}@{ascii_domain}" if ascii_domain else None


def ascii_address_part(domain: str) -> str | None:
    """A host or domain name in ASCII (A-labels), or None if it is not a valid name."""
    if domain.isascii():
        return domain
    try:
        return ascii_name(domain)
    except ValueError:
        return None


def _interpret(endpoint: str, status: int, body: bytes, settings: AntispamSettings) -> CheckResult:
    if status != 200:
        return _error(f"Rspamd at {endpoint} answered HTTP {status}{_error_text(body)}")
    try:
        reply = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return _error(f"Rspamd at {endpoint} answered something other than JSON")
    if not isinstance(reply, dict):
        return _error(f"Rspamd at {endpoint} answered JSON without a result object")
    if "error" in reply and "action" not in reply:
        return _error(f"Rspamd at {endpoint} reports an error: {_clip(str(reply['error']))}")
    action = reply.get("action")
    score = _number(reply.get("score"))
    if not isinstance(action, str):
        return _error(f"Rspamd's answer has no action ({endpoint})")
    if score is None:
        return _error(f"Rspamd's answer has no valid score ({endpoint})")
    required = _number(reply.get("required_score"))
    symbols = _symbols(reply.get("symbols"))

    if settings.spam_score is not None and settings.probable_spam_score is not None:
        if score >= settings.spam_score:
            verdict = Verdict.SPAM
        elif score >= settings.probable_spam_score:
            verdict = Verdict.PROBABLE_SPAM
        else:
            verdict = Verdict.CLEAN
        required = settings.spam_score
    else:
        mapped = ACTION_VERDICTS.get(action)
        if mapped is None:
            return _error(f"Rspamd's answer has an unknown action {_clip(action)!r} ({endpoint})")
        verdict = mapped

    ranked = sorted(symbols.items(), key=lambda item: (-item[1], item[0]))
    required_text = f"{required:.2f}" if required is not None else "?"
    detail = _printable(
        f"score {score:.2f}/required {required_text}, action {action}, symbols "
        + (",".join(name for name, _ in ranked[:DETAIL_SYMBOLS]) or "none")
    )
    # Rspamd's own milter_headers says "Yes" for every action that marks a message as spam.
    status_text = "Yes" if verdict in (Verdict.SPAM, Verdict.PROBABLE_SPAM) else "No"
    headers = (
        ("X-Spam-Score", f"{score:.2f}"),
        ("X-Spam-Status", _printable(
            f"{status_text}, score={score:.2f} required={required_text} action={action}")),
        ("X-Spam-Symbols", _symbols_header(ranked)),
    )  # fmt: skip
    return CheckResult(MODULE, verdict, detail, headers=headers, score=score)


def _symbols(value: Any) -> dict[str, float]:
    """Symbol name → score, from the reply's "symbols" object (malformed entries skipped)."""
    if not isinstance(value, dict):
        return {}
    found: dict[str, float] = {}
    for name, entry in value.items():  # JSON object keys are strings
        score = _number(entry.get("score")) if type(entry) is dict else None
        found[_printable(name)] = score if score is not None else 0.0
    return found


def _symbols_header(ranked: list[tuple[str, float]]) -> str:
    parts: list[str] = []
    length = 0
    for name, score in ranked:
        part = f"{name}({score:.2f})"
        if length + len(part) + 2 > SYMBOLS_HEADER_LIMIT - len(", ..."):
            parts.append("...")
            break
        parts.append(part)
        length += len(part) + 2
    return ", ".join(parts) or "none"


def _number(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else. Exact types: JSON gives no
    subclasses, and bool (JSON's true) is a subclass of int but no score."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        try:
            return float(value)
        except OverflowError:  # more digits than a float holds
            return None
    return None


def _error_text(body: bytes) -> str:
    """Rspamd's reason for an HTTP error ({"error": "..."}), if there is one."""
    try:
        reply = json.loads(body)
    except ValueError:
        return ""
    if isinstance(reply, dict) and "error" in reply:
        return f": {_clip(str(reply['error']))}"
    return ""


def _printable(text: str) -> str:
    """One line of printable ASCII: header values and log details come from the other side."""
    if text.isascii() and text.isprintable():
        return text.strip()
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text).strip()


def _header_value(value: str | None) -> str | None:
    if value is None:
        return None
    # A request header is one line: a CR or LF would start another header (or the body).
    clean = (value if value.isprintable() else "".join(c for c in value if c.isprintable())).strip()
    return clean if clean.isascii() else None


def _clip(text: str) -> str:
    text = _printable(text)
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


def _error(reason: str) -> CheckResult:
    return CheckResult(MODULE, Verdict.ERROR, _printable(reason))
