"""The real client behind a border gateway: who handed the message to the border, so that SPF
and DMARC check the sender's own server instead of the border gateway (SPEC section 4.3).

Sources, in order, and only for connections from a configured upstream gateway (anyone else
could claim anything): XCLIENT (the session's client as the gateway says), XFORWARD (the
transaction's client, Postfix's smtp_send_xforward_command), else the topmost Received header
of the message, which that trusted gateway added ("from HELO (NAME [IP])", as Postfix and most
MTAs write it). The result is used for authentication checks and logs, never for the relay
decision, which rests on the actual connection.
"""

from __future__ import annotations

import ipaddress
import re

from mailgate.pipeline.api import RealClient
from mailgate.smtp.data import header_section

# "from HELO (NAME [IP])" or "from HELO ([IP])" or "from HELO (NAME [IPv6:addr])"
_RECEIVED_FROM = re.compile(
    r"^from\s+(?P<helo>\S+)\s+\((?:(?P<name>[^\s\[\]()]+)\s*)?\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f.:]+)\]",
    re.IGNORECASE,
)
_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")


def _ip(text: str | None) -> str | None:
    if not text or text.upper() in _UNAVAILABLE:
        return None
    candidate = text[5:] if text.upper().startswith("IPV6:") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _value(text: str | None) -> str:
    return "" if not text or text.upper() in _UNAVAILABLE else text


def topmost_received(content: bytes) -> str | None:
    """The first Received header of the message, unfolded."""
    lines = header_section(content).split(b"\r\n")
    for i, line in enumerate(lines):
        if line[:9].lower() == b"received:":
            parts = [line[9:]]
            for nxt in lines[i + 1 :]:
                if nxt[:1] in (b" ", b"\t"):
                    parts.append(nxt)
                else:
                    break
            return b" ".join(p.strip() for p in parts).decode("utf-8", "replace")
    return None


def from_received(content: bytes) -> RealClient | None:
    header = topmost_received(content)
    if header is None:
        return None
    match = _RECEIVED_FROM.match(header)
    if match is None:
        return None
    ip = _ip(match.group("ip"))
    if ip is None:
        return None
    return RealClient(ip, match.group("helo"), match.group("name") or "unknown", "received")


def real_client(
    *,
    connection_ip: str,
    helo: str,
    from_upstream: bool,
    xclient: dict[str, str],
    xforward: dict[str, str],
    content: bytes,
) -> RealClient:
    if from_upstream:
        for source, attrs in (("xclient", xclient), ("xforward", xforward)):
            ip = _ip(attrs.get("ADDR"))
            if ip is not None:
                return RealClient(
                    ip, _value(attrs.get("HELO")), _value(attrs.get("NAME")) or "unknown", source
                )
        found = from_received(content)
        if found is not None:
            return found
    return RealClient(connection_ip, helo, "unknown", "connection")
