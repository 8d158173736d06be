"""ESMTP parameters of MAIL and RCPT: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531),
RET/ENVID/NOTIFY/ORCPT (RFC 3461, with its xtext encoding).

Parsing turns the text after the path into typed values or a precise reply for the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.smtp import codes
from mailgate.types import Reply

_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ParamError(Exception):
    """A parameter the client sent is malformed or unsupported; `reply` says which."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(slots=True)
class MailParams:
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


@dataclass(slots=True)
class RcptParams:
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


def _split(text: str) -> list[tuple[str, str | None]]:
    items: list[tuple[str, str | None]] = []
    for token in text.split():
        key, sep, value = token.partition("=")
        if not _KEYWORD.match(key):
            raise ParamError(codes.bad_parameter(key[:40] or "empty"))
        items.append((key.upper(), value if sep else None))
    return items


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 xtext ("+HH" escapes of UTF-8 bytes); raise ValueError on bad input."""
    if any(ch < "!" or ch > "~" or ch == "=" for ch in text):
        raise ValueError("bad xtext character")
    if "+" in _XTEXT_HEX.sub("", text):
        raise ValueError("bad xtext escape")
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += text[i].encode("ascii")
            i += 1
    return out.decode("utf-8")  # invalid UTF-8 raises UnicodeDecodeError, a ValueError


def xtext_encode(text: str) -> str:
    return "".join(
        ch if "!" <= ch <= "~" and ch not in "+=" else "".join(f"+{b:02X}" for b in ch.encode())
        for ch in text
    )


def parse_mail_params(text: str, *, smtputf8_enabled: bool = True) -> MailParams:
    params = MailParams()
    for key, value in _split(text):
        if key == "SIZE":
            if value is None or not _DIGITS.match(value):
                raise ParamError(codes.bad_parameter("SIZE"))
            params.size = int(value)
        elif key == "BODY":
            upper = (value or "").upper()
            if upper not in ("7BIT", "8BITMIME"):
                raise ParamError(codes.unsupported_option(f"BODY={(value or '')[:20]}"))
            params.body = upper
        elif key == "SMTPUTF8" and smtputf8_enabled:
            if value is not None:
                raise ParamError(codes.bad_parameter("SMTPUTF8"))
            params.smtputf8 = True
        elif key == "RET":
            upper = (value or "").upper()
            if upper not in ("FULL", "HDRS"):
                raise ParamError(codes.bad_parameter("RET"))
            params.ret = upper
        elif key == "ENVID":
            try:
                decoded = xtext_decode(value or "")
            except ValueError:
                raise ParamError(codes.bad_parameter("ENVID")) from None
            if not decoded or len(decoded) > 100:
                raise ParamError(codes.bad_parameter("ENVID"))
            params.envid = decoded
        elif key == "AUTH":
            # RFC 4954 section 5: without an authenticated session the value is ignored.
            continue
        else:
            raise ParamError(codes.unsupported_option(key[:40]))
    return params


def parse_rcpt_params(text: str) -> RcptParams:
    params = RcptParams()
    for key, value in _split(text):
        if key == "NOTIFY":
            values = tuple(v.upper() for v in (value or "").split(","))
            if values == ("NEVER",):
                params.notify = ("NEVER",)
            elif values and all(v in _NOTIFY_VALUES for v in values):
                params.notify = tuple(sorted(set(values)))
            else:
                raise ParamError(codes.bad_parameter("NOTIFY"))
        elif key == "ORCPT":
            addr_type, sep, encoded = (value or "").partition(";")
            if not sep or not addr_type or not encoded:
                raise ParamError(codes.bad_parameter("ORCPT"))
            try:
                decoded = xtext_decode(encoded)
            except ValueError:
                raise ParamError(codes.bad_parameter("ORCPT")) from None
            if len(decoded) > 500:
                raise ParamError(codes.bad_parameter("ORCPT"))
            params.orcpt = f"{addr_type.lower()};{decoded}"
        else:
            raise ParamError(codes.unsupported_option(key[:40]))
    return params
