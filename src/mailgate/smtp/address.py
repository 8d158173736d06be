"""Envelope address parsing: RFC 5321 section 4.1.2 paths, with RFC 6531 (SMTPUTF8) mailboxes.

Security note: the relay decision trusts what this module says about an address. Everything
that could make a remote address look local is resolved here, once: source routes
(`<@a,@b:user@c>`) are removed and flagged, routing operators in the local part (`%`, `!`,
and a quoted `@`) are flagged, the domain is lowercased, stripped of its trailing dot and
converted to its A-label (so `EXAMPLE.com.` and `exämple.com` compare as their canonical forms),
and address literals (`[192.0.2.1]`) are marked as such. Anything that is not well-formed is
refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress

import idna

from mailgate.types import Mailbox

# RFC 5322 atext, less nothing: "%" and "!" are legal atext, which is exactly why they are
# flagged as routing operators below.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_ROUTING_OPERATORS = ("@", "%", "!")
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_PATH_LENGTH = 1024


class AddressError(ValueError):
    """The text is not a well-formed envelope address."""


def split_path(argument: str) -> tuple[str, str]:
    """Split the argument of MAIL FROM: / RCPT TO: into (path, parameters).

    The path is returned without its angle brackets. Like Postfix (with
    smtpd_strict_rfc821_envelope = no) a bare address without brackets is accepted too.
    A ">" inside a quoted local part does not end the path.
    """
    text = argument.lstrip(" ")
    if not text.startswith("<"):
        path, _, params = text.partition(" ")
        if not path:
            raise AddressError("empty path")
        return path, params.strip(" ")
    in_quotes = False
    escaped = False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ">" and not in_quotes:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise AddressError("garbage after path")
            return text[1:i], rest.strip(" ")
    raise AddressError("unterminated path")


def parse_path(path: str, *, allow_null: bool) -> Mailbox | None:
    """Parse the inside of `<...>`; return None for the null path `<>` when allowed."""
    if path == "":
        if allow_null:
            return None
        raise AddressError("null path not allowed here")
    if len(path) > MAX_PATH_LENGTH:
        raise AddressError("path too long")
    routed = False
    if path.startswith("@"):
        route, sep, path = path.partition(":")
        if not sep or not path:
            raise AddressError("bad source route")
        for hop in route.split(","):
            if not hop.startswith("@") or len(hop) < 2:
                raise AddressError("bad source route")
            parse_domain(hop[1:])
        routed = True
    local, domain_text = _split_mailbox(path)
    local_routed, local_utf8 = _check_local_part(local)
    if domain_text.startswith("["):
        domain = _parse_literal(domain_text)
        return Mailbox(
            local=local,
            domain=domain,
            display_domain=domain,
            routed=routed or local_routed,
            literal=True,
            utf8=local_utf8,
        )
    display = domain_text[:-1] if domain_text.endswith(".") else domain_text
    domain = parse_domain(domain_text)
    return Mailbox(
        local=local,
        domain=domain,
        display_domain=display,
        routed=routed or local_routed,
        literal=False,
        utf8=local_utf8 or not display.isascii(),
    )


def parse_domain(text: str) -> str:
    """Return the canonical form of a domain name: lowercase A-label, no trailing dot."""
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > MAX_DOMAIN_LENGTH * 4:
        raise AddressError("bad domain")
    if text.isascii():
        ascii_domain = text.lower()
        labels = ascii_domain.split(".")
        for label in labels:
            if not label or len(label) > MAX_LABEL_LENGTH:
                raise AddressError("bad domain label")
            if not _LDH.issuperset(label) or label[0] == "-" or label[-1] == "-":
                raise AddressError("bad domain label")
        if any(label.startswith("xn--") for label in labels):
            # A client-supplied A-label must decode, or two spellings of one name could differ.
            try:
                idna.decode(ascii_domain)
            except idna.IDNAError as exc:
                raise AddressError(f"bad domain: {exc}") from exc
    else:
        try:
            ascii_domain = idna.encode(text, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError) as exc:
            raise AddressError(f"bad domain: {exc}") from exc
    if len(ascii_domain) > MAX_DOMAIN_LENGTH:
        raise AddressError("domain too long")
    return ascii_domain


def _split_mailbox(path: str) -> tuple[str, str]:
    """Split `local@domain` at the "@" that ends the local part (quotes respected)."""
    if path.startswith('"'):
        end = _end_of_quoted(path)
        if end + 1 >= len(path) or path[end + 1] != "@":
            raise AddressError("missing @ after quoted local part")
        return path[: end + 1], path[end + 2 :]
    local, sep, domain = path.partition("@")
    if not sep:
        raise AddressError("missing @domain")
    if not local or not domain:
        raise AddressError("empty local part or domain")
    if "@" in domain:
        raise AddressError("more than one @")
    return local, domain


def _end_of_quoted(text: str) -> int:
    """Index of the closing quote of the quoted string that starts text."""
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise AddressError("bad quoted pair")
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    raise AddressError("unterminated quoted string")


def _check_local_part(local: str) -> tuple[bool, bool]:
    """Validate a local part; return (has routing operators, has non-ASCII)."""
    utf8 = not local.isascii()
    if local.startswith('"'):
        content = []
        i = 1
        last = len(local) - 1
        while i < last:
            ch = local[i]
            if ch == "\\":
                nxt = local[i + 1]
                if not (" " <= nxt <= "~" or (not nxt.isascii() and nxt.isprintable())):
                    raise AddressError("bad quoted pair")
                content.append(nxt)
                i += 2
                continue
            if not (" " <= ch <= "~" or (not ch.isascii() and ch.isprintable())):
                raise AddressError("control character in quoted local part")
            content.append(ch)
            i += 1
        unquoted = "".join(content)
        return any(op in unquoted for op in _ROUTING_OPERATORS), utf8
    for ch in local:
        if ch == "." or ch in _ATEXT:
            continue
        if not ch.isascii() and ch.isprintable():
            continue
        raise AddressError("bad character in local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("bad dots in local part")
    return any(op in local for op in _ROUTING_OPERATORS), utf8


def _parse_literal(text: str) -> str:
    """Parse an address literal; return it in canonical form, e.g. "[192.0.2.1]"."""
    if not text.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        except ValueError as exc:
            raise AddressError("bad IPv6 address literal") from exc
    try:
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError as exc:
        raise AddressError("bad address literal") from exc


def literal_address(domain: str) -> str | None:
    """The IP address inside a canonical address literal, or None for a domain name."""
    if not domain.startswith("["):
        return None
    inner = domain[1:-1]
    return inner[5:] if inner.startswith("IPv6:") else inner


def printable(text: str, limit: int = 200) -> str:
    """Make client-supplied text safe to echo in a reply or a log line."""
    head = text[:limit]
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else "?" for ch in head)
    return head + ("..." if len(text) > limit else "")
