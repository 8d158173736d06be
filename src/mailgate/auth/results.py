"""The Authentication-Results header field value (RFC 8601) for SPF, DKIM and DMARC results.

Example (one line)::

    mailgate.example.net; spf=pass (mailgate: client 192.0.2.1 from XFORWARD)
    smtp.mailfrom=alice@example.com; dkim=pass header.d=example.com header.s=sel;
    dmarc=pass (p=reject dis=none) header.from=example.com

The comment after spf= says which client address SPF checked and where mailgate learned it
(the connection itself, XFORWARD or XCLIENT from the border gateway, or the Received header
the border added: SPEC 4.3).

Security notes: every value taken from the mail or its DNS (envelope sender, HELO, client
address, d=, s=, From domain, failure reasons) is reduced to one line of printable ASCII
(line breaks and control characters become spaces, other characters "?"), cut to a bounded
length, and written as an RFC 2045 token when it is one, or else as a quoted-string with
quoted-pairs (RFC 8601 §2.2); comment text gets its parentheses and backslashes escaped. So
no value can end the header, start another, or break the field's syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailgate.auth.dkim import DkimSignatureResult
from mailgate.auth.dmarc import DmarcResult
from mailgate.auth.spf import SpfResult
from mailgate.dns import ascii_name

__all__ = ["HEADER", "authentication_results", "comment", "one_line", "value"]

HEADER = "Authentication-Results"

_MAX_VALUE = 255  # a domain name is at most 253 characters; an address is rarely longer
_MAX_REASON = 120
# RFC 2045 §5.1 token: any printable ASCII except SPACE and tspecials ()<>@,;:\"/[]?=
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 5322 §3.2.3 dot-atom, for the local part of an address written bare.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_SPACES = re.compile(r" {2,}")

_SOURCES = {
    "connection": "connection",
    "xforward": "XFORWARD",
    "xclient": "XCLIENT",
    "received": "Received header",
}


def one_line(text: str, limit: int = _MAX_VALUE) -> str:
    """`text` as one line of printable ASCII, at most `limit` characters."""
    if text.isascii() and text.isprintable():  # the usual case: nothing to replace
        return _SPACES.sub(" ", text).strip()[:limit].rstrip()
    chars = []
    for char in text:
        if " " <= char <= "~":
            chars.append(char)
        elif char.isascii() or not char.isprintable():
            chars.append(" ")  # CR, LF, TAB and other controls; Unicode separators
        else:
            chars.append("?")
    line = _SPACES.sub(" ", "".join(chars)).strip()
    return line[:limit].rstrip()


def value(text: str, limit: int = _MAX_VALUE) -> str:
    """An RFC 2045 `value` (RFC 8601 §2.2): a token, or a quoted-string."""
    line = one_line(text, limit)
    if _TOKEN.fullmatch(line):
        return line
    return '"' + line.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str, limit: int = _MAX_VALUE) -> str:
    """An RFC 5322 comment: parentheses and backslashes become quoted-pairs."""
    line = one_line(text, limit)
    escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})"


def _domain(name: str) -> str:
    try:
        return ascii_name(name).lower()
    except ValueError:
        return name


def _pvalue_address(address: str) -> str:
    """RFC 8601 §2.2 pvalue: `local-part "@" domain-name` when both are plain, else a value."""
    local, at, domain = address.rpartition("@")
    if not at:
        return value(address)
    local, domain = one_line(local), one_line(_domain(domain))
    text = f"{local}@{domain}"
    if _DOT_ATOM.fullmatch(local) and _TOKEN.fullmatch(domain) and len(text) <= _MAX_VALUE:
        return text
    return value(text)


def _pvalue_domain(name: str) -> str:
    return value(_domain(name))


def _spf(result: SpfResult, client_ip: str, client_source: str) -> str:
    source = _SOURCES.get(client_source, client_source) or "connection"
    parts = [f"spf={result.result}"]
    parts.append(comment(f"mailgate: client {client_ip or result.ip} from {source}"))
    if result.identity == "helo":
        # RFC 8601 §2.7.2: with the null sender, the HELO identity is what SPF checked.
        parts.append(f"smtp.helo={_pvalue_domain(result.helo)}")
    else:
        parts.append(f"smtp.mailfrom={_pvalue_address(result.sender)}")
    return " ".join(parts)


def _dkim(result: DkimSignatureResult) -> str:
    parts = [f"dkim={result.result}"]
    if result.result != "pass" and result.reason:
        parts.append(f"reason={value(result.reason, _MAX_REASON)}")
    if result.domain:
        parts.append(f"header.d={_pvalue_domain(result.domain)}")
    if result.selector:
        parts.append(f"header.s={value(result.selector)}")
    return " ".join(parts)


def _dmarc(result: DmarcResult) -> str:
    parts = [f"dmarc={result.result}"]
    if result.published_policy is not None:
        parts.append(comment(f"p={result.published_policy} dis={result.policy}"))
    if result.from_domain:
        parts.append(f"header.from={_pvalue_domain(result.from_domain)}")
    return " ".join(parts)


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: Sequence[DkimSignatureResult] | None = None,
    dmarc: DmarcResult | Sequence[DmarcResult] | None = None,
    client_ip: str = "",
    client_source: str = "",
) -> str:
    """The header field value (without "Authentication-Results:"), on one line.

    A method given as None was not evaluated and is left out; `dkim=()` (no signature) gives
    dkim=none. `dmarc` may hold one result per RFC5322.From domain (normally one). With
    nothing evaluated the value is RFC 8601's "authserv-id; none".
    """
    resinfo: list[str] = []
    if spf is not None:
        resinfo.append(_spf(spf, client_ip, client_source))
    if dkim is not None:
        # RFC 8601 §2.7.1: one dkim= per signature; none when the message has no signature.
        resinfo.extend([_dkim(r) for r in dkim] or ["dkim=none"])
    if isinstance(dmarc, DmarcResult):
        dmarc = [dmarc]
    resinfo.extend(_dmarc(r) for r in dmarc or ())
    head = value(_domain(authserv_id) or "localhost")
    return "; ".join([head, *(resinfo or ["none"])])
