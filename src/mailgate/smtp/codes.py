"""Named SMTP replies (RFC 5321 section 4.2, enhanced codes per RFC 3463), worded as Postfix does.

Administrators grep logs and write tests against these exact texts, so every reply mailgate
sends is named here once. Functions build the replies that carry a variable part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailgate.types import Reply

if TYPE_CHECKING:
    from mailgate.config.model import RecipientVerification

OK = Reply(250, "2.0.0", "Ok")
OK_MAIL = Reply(250, "2.1.0", "Ok")
OK_RCPT = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")

# Syntax and sequence errors (RFC 5321 section 4.2.2: 500, 501, 502, 503, 555).
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
UNKNOWN_COMMAND = Reply(502, "5.5.2", "Error: command not recognized")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
HELO_SYNTAX = Reply(501, None, "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, None, "Syntax: EHLO hostname")
NO_ARGUMENTS = Reply(501, "5.5.4", "Syntax: command takes no arguments")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")

# Limits (Postfix smtpd and cleanup wording).
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
SIZE_EXCEEDS_LIMIT = Reply(552, "5.3.4", "Message size exceeds fixed limit")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Error: message header size exceeds limit")
TOO_MANY_HOPS = Reply(554, "5.4.0", "Error: too many hops")
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
QUEUE_WRITE_ERROR = Reply(451, "4.3.0", "Error: queue file write error")

# TLS (RFC 3207).
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to local problem")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")


def greeting(hostname: str) -> Reply:
    return Reply(220, None, f"{hostname} ESMTP mailgate")


def queued(qid: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {qid}")


def relay_denied(address: str) -> Reply:
    return Reply(554, "5.7.1", f"<{address}>: Relay access denied")


def check_refusal(
    check: str | None, address: str, status: str, detail: str, settings: RecipientVerification
) -> Reply | None:
    """The RCPT refusal when a recipient check failed (Postfix's wording), or None when it
    passed. `check` is "verify" (the next hop was probed) or "domain" (the domain looked up)."""
    if status == "ok":
        return None
    who = f"<{address}>: Recipient address rejected"
    if check == "domain":
        if status == "temp":
            return Reply(450, "4.1.2", f"{who}: {detail}")
        code = settings.unknown_domain_reject_code
        return Reply(code, "5.1.2" if code >= 500 else "4.1.2", f"{who}: {detail}")
    suffix = f": {detail}" if settings.show_reason and detail else ""
    if status == "temp":
        return Reply(450, "4.1.1", f"{who}: unverified address{suffix}")
    code = settings.reject_code
    return Reply(code, "5.1.1" if code >= 500 else "4.1.1", f"{who}: undeliverable address{suffix}")


def unsupported_option(name: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {name}")


def bad_parameter(name: str) -> Reply:
    return Reply(501, "5.5.4", f"Bad {name} parameter syntax")


def too_many_errors(hostname: str) -> Reply:
    return Reply(421, "4.7.0", f"{hostname} Error: too many errors")


def timeout_exceeded(hostname: str) -> Reply:
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def too_many_connections(hostname: str, ip: str) -> Reply:
    return Reply(421, "4.7.0", f"{hostname} Error: too many connections from {ip}")


def too_much_mail(ip: str) -> Reply:
    return Reply(450, "4.7.1", f"Error: too much mail from {ip}")


def too_many_recipients_from(ip: str) -> Reply:
    return Reply(450, "4.7.1", f"Error: too many recipients from {ip}")


def shutting_down(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} Service shutting down, closing transmission channel")


def ehlo_lines(hostname: str, extensions: list[str]) -> Reply:
    return Reply(250, None, "\n".join([hostname, *extensions]))
