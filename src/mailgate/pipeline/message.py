"""The MIME structure of a message for the scan modules (RFC 2045-2049 MIME, RFC 2047 encoded
words, RFC 2231 parameters, RFC 2183 Content-Disposition), parsed within fixed limits.

`ParsedMessage.parse` never raises. It walks the entity tree itself, iteratively, splitting
multipart bodies at their boundary delimiter lines (RFC 2046 section 5.1.1) and stopping at
`max_parts` parts or `max_depth` levels; anything it cannot analyse completely sets
`too_complex`, and the checks then answer ERROR, never CLEAN. Each entity's header block is
split into fields by the rules of the email package's feedparser with `email.policy.compat32`
(line rules, unfolding, defects): `header_fields` applies them without building a Message,
and a test holds it to the email package's own output. compat32's rules, and a walk of our
own, because:

* compat32 keeps header values as the strings that were received. `email.policy.default` runs
  every value through `email._header_value_parser` when it is read, a recursive-descent parser
  that has raised unexpected exceptions and shown super-linear behaviour on hostile headers
  (nested comments, long runs of quoted-pairs), exactly the input a gateway must survive;
* the email package's own multipart walk recurses once per nesting level (nested generators)
  and checks every line against the boundaries of every enclosing level, so it can neither stop
  at a depth nor at a number of parts; and it gives no byte offsets, which `without_parts`
  needs to keep the rest of the message byte for byte. Hence the walk here.

Parameters (RFC 2231), encoded words (RFC 2047) and the From mailbox are decoded here too, in
one linear pass each: `email.message.Message.get_param` is quadratic in the number of ';'
inside a quoted value, `email.utils.decode_params` raises TypeError on mixed "name*" and
"name*0", and `email.utils.getaddresses` on Python 3.11.7 misreads addresses such as
"a@example.org)<b@example.org>" (CVE-2023-27043).

Lines end in LF or CRLF. A bare CR is not a line end: the content reaching the pipeline has
been normalised (mailgate.smtp.data), and inside header blocks a bare CR becomes a space so
that the email package, which would split there, sees the same lines as the walk.

Security notes: every loop is bounded by the input length or a constant below, nothing
recurses, and the total work is about `max_depth` times the size of the message (each level
scans its own body once for its delimiters).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass

__all__ = ["ParsedMessage", "Part", "decode_words"]

# Lines in one entity's header block: a real message has a few hundred at most (Received
# chains included); more is a flood meant to exhaust the parser.
MAX_HEADER_LINES = 5000
# Parameters per Content-Type or Content-Disposition, and sections of one RFC 2231 parameter.
MAX_PARAMS = 64
MAX_SECTIONS = 64
# Defects kept (each part of a broken message may add several).
MAX_DEFECTS = 200
# Base64 padding in the middle of a body starts a new segment; beyond this many segments the
# rest is decoded as one run, so a body of "A=A=A=..." costs no more than any other.
MAX_B64_SEGMENTS = 64

_TEXT_PLAIN = "text/plain"
_CONTAINERS = ("message/rfc822", "message/global")
# Charsets whose Python decoders are quadratic or not charsets at all.
_BAD_CODECS = frozenset({"punycode", "idna"})

# The email package's own test for a header line (email.feedparser.headerRE), on bytes, so that
# the walk ends a header block exactly where the email package would.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_BARE_CR = re.compile(r"\r(?!\n)")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CRLF = re.compile(r"[\r\n]")
# A quoted string (RFC 5322 section 3.2.4), its closing quote optional (then it runs to the end).
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"?', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+/[!#$%&'*+\-.^_`|~0-9a-z]+")
_SECTION = re.compile(r"([^*]+)\*(?:([0-9]{1,3})\*?)?$")
# RFC 2047 section 2: =?charset?encoding?text?= (charset may carry an RFC 2231 "*language").
_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,64})(?:\*[^?\s]{0,64})?\?([bBqQ])\?([^?\s]*)\?=")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_JUNK = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))
_WSP = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity, in walk order (depth first, the message itself first).

    Containers (multipart/*, message/rfc822) are parts too: their payload is empty and their
    size is the length of their raw body. `names` holds every file name the part carries
    (Content-Disposition filename and Content-Type name, in their RFC 2231 and plain forms):
    mail clients do not agree on which one wins, so a check must look at all of them.
    """

    index: int
    content_type: str
    filename: str | None
    is_attachment: bool
    payload: bytes
    text: str | None
    size: int
    names: tuple[str, ...] = ()
    parent: int | None = None
    depth: int = 0


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a part lies in the original content, for `without_parts`."""

    start: int  # first byte of the entity (its header block)
    body: int  # first byte of its body
    end: int  # just after its body (the CRLF before the next delimiter belongs to the delimiter)
    message: bool  # a whole message (the top level, or inside message/rfc822)
    anchor: int  # the part that stands for it in the original bytes (itself, or the encoded
    # message/rfc822 container it was decoded from)


@dataclass(frozen=True, slots=True)
class _Todo:
    buf: bytes
    start: int
    end: int
    depth: int
    parent: int | None
    message: bool
    default_type: str
    anchor: int | None  # None: `buf` is the original content
    boundaries: tuple[bytes, ...]  # of the enclosing multiparts


class _Stop(Exception):
    """A limit was reached: the walk ends and the message is too complex."""


class ParsedMessage:
    """A message's headers and MIME parts, decoded for the scan modules.

    `headers`: the top-level fields in order, names as given, values unfolded and RFC 2047
    decoded; `raw_headers`: the same as written, folded and not decoded (what the address
    parsers of `mailgate.checks.auth` read).
    `subject`: the first Subject, decoded ("" without one). `from_address` and
    `from_domain`: the first mailbox of the first From field, domain lowercase (None when
    absent or unreadable; more than one is a defect). `parts`: every entity in walk order.
    `defects`: what was wrong, for logs. `too_complex`: the walk stopped at a limit or at an
    ambiguity, so `parts` may be incomplete and no check may call the message clean.
    """

    def __init__(self, content: bytes) -> None:
        self.headers: list[tuple[str, str]] = []
        self.raw_headers: list[tuple[str, str]] = []
        self.subject = ""
        self.from_address: str | None = None
        self.from_domain: str | None = None
        self.parts: list[Part] = []
        self.defects: list[str] = []
        self.too_complex = False
        self._content = content
        self._spans: list[_Span] = []
        self._max_parts = 0

    @classmethod
    def parse(cls, content: bytes, max_parts: int, max_depth: int) -> ParsedMessage:
        """Parse `content` (never raises): at most `max_parts` parts, `max_depth` levels."""
        message = cls(bytes(content))
        try:
            message._walk(max(1, max_parts), max(0, max_depth))
        except _Stop:
            message.too_complex = True
        except Exception as exc:  # never raise: a message nobody can read is not clean either
            message.too_complex = True
            message._defect(f"parser failure: {type(exc).__name__}")
        return message

    # -- the walk ----------------------------------------------------------------------------

    def _defect(self, text: str) -> None:
        if len(self.defects) < MAX_DEFECTS:
            self.defects.append(text)

    def _stop(self, text: str) -> _Stop:
        self._defect(text)
        self.too_complex = True
        return _Stop(text)

    def _walk(self, max_parts: int, max_depth: int) -> None:
        self._max_parts = max_parts
        content = self._content
        stack = [_Todo(content, 0, len(content), 0, None, True, _TEXT_PLAIN, None, ())]
        while stack:
            if len(self.parts) >= max_parts:
                raise self._stop(f"more than {max_parts} MIME parts")
            todo = stack.pop()
            children = self._entity(todo, max_parts - len(self.parts) - len(stack))
            if children and todo.depth + 1 > max_depth:
                raise self._stop(f"MIME parts nested deeper than {max_depth} levels")
            stack.extend(reversed(children))

    def _entity(self, todo: _Todo, room: int) -> list[_Todo]:
        """Record one entity as a part; return its children (at most `room`, else stop)."""
        index = len(self.parts)
        buf, start, end = todo.buf, todo.start, todo.end
        where = "message" if index == 0 else f"part {index}"
        header_end, body = self._header_block(buf, start, end, where)
        folded = self._fields(buf[start:header_end], where)
        fields = [
            (name, _CRLF.sub(" ", _FOLD.sub("", value)).strip(" \t")) for name, value in folded
        ]
        if index == 0:
            self.raw_headers = folded
            self._top_level(fields)

        ctype_value = self._single(fields, "content-type", where)
        main, params = _params(ctype_value or "")
        if len(params) > MAX_PARAMS:
            raise self._stop(f"{where}: more than {MAX_PARAMS} Content-Type parameters")
        content_type = main.lower() if _TOKEN.fullmatch(main.lower()) else ""
        if not content_type:
            if ctype_value is not None:
                # RFC 2045 section 5.2: an invalid Content-Type means text/plain.
                self._defect(f"{where}: invalid Content-Type {_short(ctype_value)!r}")
            content_type = _TEXT_PLAIN if ctype_value is not None else todo.default_type
        cte = (self._single(fields, "content-transfer-encoding", where) or "7bit").strip().lower()
        disposition_value = self._single(fields, "content-disposition", where)
        disposition, dparams = _params(disposition_value or "")
        if len(dparams) > MAX_PARAMS:
            raise self._stop(f"{where}: more than {MAX_PARAMS} Content-Disposition parameters")
        names = _names(dparams, params)
        filename = names[0] if names else None
        is_attachment = disposition.strip().lower() == "attachment" or filename is not None

        anchor = index if todo.anchor is None else todo.anchor

        def record(payload: bytes, text: str | None, size: int) -> None:
            self._spans.append(_Span(start, body, end, todo.message, anchor))
            self.parts.append(Part(index, content_type, filename, is_attachment, payload, text,
                                   size, names, todo.parent, todo.depth))  # fmt: skip

        if content_type.startswith("multipart/"):
            if cte not in ("7bit", "8bit", "binary"):
                # RFC 2045 section 6.4: no encoding but the identity ones on a multipart; the
                # email package (and mail clients) ignore it.
                self._defect(f"{where}: {content_type} with {_short(cte)} encoding (ignored)")
            boundary = _param(params, "boundary").rstrip().encode("utf-8", "replace")
            if not boundary:
                record(buf[body:end], None, end - body)
                raise self._stop(f"{where}: {content_type} without a boundary")
            record(b"", None, end - body)
            if boundary in todo.boundaries:
                raise self._stop(f"{where}: boundary reused from an enclosing multipart")
            regions = self._split(buf, body, end, boundary, room, where)
            child_type = "message/rfc822" if content_type == "multipart/digest" else _TEXT_PLAIN
            nested = (*todo.boundaries, boundary)
            return [_Todo(buf, s, e, todo.depth + 1, index, False, child_type, todo.anchor,
                          nested) for s, e in regions]  # fmt: skip
        if content_type in _CONTAINERS:
            record(b"", None, end - body)
            if room < 1:
                raise self._stop(f"more than {self._max_parts} MIME parts")
            if cte in ("7bit", "8bit", "binary"):
                return [_Todo(buf, body, end, todo.depth + 1, index, True, _TEXT_PLAIN,
                              todo.anchor, todo.boundaries)]  # fmt: skip
            # RFC 2046 section 5.2.1 forbids it, yet some clients encode forwarded messages and
            # others decode them: the decoded message is analysed; removing any part of it
            # removes the whole container (its bytes are not in the original).
            self._defect(f"{where}: {content_type} with {_short(cte)} encoding")
            inner = self._transfer_decode(buf[body:end], cte, where)
            return [_Todo(inner, 0, len(inner), todo.depth + 1, index, True, _TEXT_PLAIN,
                          anchor, ())]  # fmt: skip
        payload = self._transfer_decode(buf[body:end], cte, where)
        text = None
        if content_type.startswith("text/"):
            text = self._text(payload, _param(params, "charset"), where)
        record(payload, text, len(payload))
        return []

    def _header_block(self, buf: bytes, start: int, end: int, where: str) -> tuple[int, int]:
        """(end of the header block, start of the body) of the entity at buf[start:end]."""
        pos, lines = start, 0
        while pos < end:
            newline = buf.find(b"\n", pos, end)
            line_end = end if newline < 0 else newline + 1
            if buf[pos] == 0x0A or (buf[pos] == 0x0D and pos + 1 < end and buf[pos + 1] == 0x0A):
                return pos, line_end  # the empty line that ends the header section
            if not _HEADER_LINE.match(buf, pos, line_end):
                # The email package's rule: a line that is no header field starts the body.
                self._defect(f"{where}: no empty line between header and body")
                return pos, pos
            lines += 1
            if lines > MAX_HEADER_LINES:
                raise self._stop(f"{where}: more than {MAX_HEADER_LINES} header lines")
            pos = line_end
        return end, end

    def _fields(self, block: bytes, where: str) -> list[tuple[str, str]]:
        """Header fields of one block: names and values as given (folded, not decoded)."""
        if not block:
            return []
        # Raw 8-bit header text is UTF-8 when it is anything (RFC 6532); invalid bytes become
        # U+FFFD, which matches nothing that matters here.
        text = block.decode("utf-8", "replace")
        if "\r" in text and _BARE_CR.search(text):
            self._defect(f"{where}: bare CR in the header")
            text = _BARE_CR.sub(" ", text)
        fields, defects = header_fields(text)
        for defect in defects:
            self._defect(f"{where}: {defect}")
        return fields

    def _single(self, fields: list[tuple[str, str]], name: str, where: str) -> str | None:
        """The first value of a MIME field; several different ones make the part ambiguous
        (clients disagree on which one counts), so the message cannot be analysed."""
        values = [v for k, v in fields if k.lower() == name]
        if not values:
            return None
        if len(values) > 1:
            if any(v != values[0] for v in values):
                raise self._stop(f"{where}: conflicting {name} fields")
            self._defect(f"{where}: repeated {name} field")
        return values[0]

    def _top_level(self, fields: list[tuple[str, str]]) -> None:
        self.headers = [(name, decode_words(value)) for name, value in fields]
        subjects = [v for n, v in self.headers if n.lower() == "subject"]
        self.subject = subjects[0] if subjects else ""
        froms = [v for n, v in fields if n.lower() == "from"]
        if len(froms) > 1:
            self._defect("several From fields (the first one counts)")
        if froms:
            address, count = _first_mailbox(froms[0])
            if address is None:
                self._defect("unparsable From field")
            else:
                self.from_address = address
                self.from_domain = address.rpartition("@")[2]
            if count > 1:
                self._defect("several mailboxes in From (the first one counts)")

    def _split(
        self, buf: bytes, start: int, end: int, boundary: bytes, room: int, where: str
    ) -> list[tuple[int, int]]:
        """The body parts of a multipart body buf[start:end] (RFC 2046 section 5.1.1).

        Parts after the close delimiter are kept too: clients that ignore it would show them.
        """
        delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)", re.M)
        regions: list[tuple[int, int]] = []
        part_start: int | None = None
        seen = closed = False
        # Regions start at the start of a line, where "^" matches too.
        for match in delimiter.finditer(buf, start, end):
            seen = True
            if part_start is not None:
                # The line end before a delimiter belongs to the delimiter.
                body_end = match.start()
                if body_end > part_start and buf[body_end - 1] == 0x0A:
                    body_end -= 1
                    if body_end > part_start and buf[body_end - 1] == 0x0D:
                        body_end -= 1
                regions.append((part_start, body_end))
                if len(regions) > room:
                    raise self._stop(f"more than {self._max_parts} MIME parts")
            if closed and match.group(1) is None:
                self._defect(f"{where}: body parts after the close delimiter")
            if match.group(1) is not None:
                closed, part_start = True, None
            else:
                part_start = match.end()
        if not seen:
            raise self._stop(f"{where}: multipart boundary never found")
        if part_start is not None:
            self._defect(f"{where}: multipart without its close delimiter")
            regions.append((part_start, end))
            if len(regions) > room:
                raise self._stop(f"more than {self._max_parts} MIME parts")
        if not regions:
            self._defect(f"{where}: multipart without body parts")
        return regions

    def _transfer_decode(self, raw: bytes, cte: str, where: str) -> bytes:
        """The body without its Content-Transfer-Encoding (RFC 2045 section 6)."""
        if cte in ("7bit", "8bit", "binary"):
            return raw
        if cte == "base64":
            data, clean = _b64decode(raw)
            if not clean:
                self._defect(f"{where}: bad base64 (padding or stray characters)")
            return data
        if cte == "quoted-printable":
            return binascii.a2b_qp(raw)
        if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
            return _uudecode(raw)
        # RFC 2045 section 6.4: an unknown encoding makes the body opaque ("treat it as
        # application/octet-stream"); the checks then look at its raw bytes.
        self._defect(f"{where}: unknown Content-Transfer-Encoding {_short(cte)!r}")
        return raw

    def _text(self, payload: bytes, charset: str, where: str) -> str:
        # RFC 2045 section 5.2: no charset means US-ASCII. UTF-8 decodes ASCII alike and reads
        # the undeclared 8-bit text that is common in practice.
        decoded = _decode_charset(payload, charset or "utf-8")
        if decoded is None:
            self._defect(f"{where}: unknown charset {_short(charset)!r}")
            return payload.decode("utf-8", "replace")
        return decoded

    # -- deleting attachments ----------------------------------------------------------------

    def without_parts(self, indexes: set[int]) -> bytes:
        """The message with the parts `indexes` replaced by a short text/plain notice that an
        attachment was removed. Everything else is kept byte for byte; the notices have CRLF
        line ends. A part inside an encoded message/rfc822 takes that whole container."""
        targets = {self._spans[i].anchor for i in indexes if 0 <= i < len(self._spans)}
        if not targets:
            return self._content
        ordered = sorted(targets, key=lambda i: (self._spans[i].start, -self._spans[i].end))
        pieces: list[bytes] = []
        pos = 0
        for i in ordered:
            span = self._spans[i]
            if span.start < pos:
                continue  # inside a part replaced already
            pieces.append(self._content[pos : span.start])
            pieces.append(self._notice(i))
            pos = span.end
        pieces.append(self._content[pos:])
        return b"".join(pieces)

    def _notice(self, index: int) -> bytes:
        span = self._spans[index]
        part = self.parts[index]
        kept = b""
        if span.message:
            # A whole message keeps its other fields (From, Subject, ...); only its MIME
            # fields are replaced.
            kept = b"".join(_fields_bytes(self._content[span.start : span.body], keep_mime=False))
        what = f'"{escape(part.filename)}"' if part.filename is not None else (
            f"a part of type {escape(part.content_type)}")  # fmt: skip
        text = f"mailgate removed an attachment from this message: {what}.\r\n"
        # Base64 keeps any name (whatever its characters) in the body, away from the header
        # and from anything that could look like a boundary delimiter ("--").
        encoded = base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n").rstrip()
        notice = (
            kept + b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: inline\r\n\r\n" + encoded
        )
        if span.end >= len(self._content):
            notice += b"\r\n"
        return notice


# -- helpers ---------------------------------------------------------------------------------


def escape(text: str, limit: int = 200) -> str:
    """`text` for a log line, a notice or a header comment: control, format (bidi) and
    line-separator characters as \\uXXXX, at most `limit` characters."""
    out = []
    for char in text[: limit + 1]:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Zl", "Zp", "Cs") or char == "\\":
            out.append(f"\\u{ord(char):04x}" if char != "\\" else "\\\\")
        else:
            out.append(char)
    shown = "".join(out)
    return shown[:limit] + "..." if len(text) > limit else shown


def _short(text: str) -> str:
    return escape(text, 60)


def _fields_bytes(block: bytes, keep_mime: bool) -> list[bytes]:
    """The raw fields of a header block (each with its continuation lines, ending in CRLF),
    without the MIME ones unless `keep_mime`."""
    fields: list[bytes] = []
    keep = False
    for line in block.splitlines(keepends=True):
        if not line.strip(b"\r\n"):
            break  # the empty line that ends the header section
        if line[:1] in (b" ", b"\t"):
            if keep and fields:
                fields[-1] += line
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = keep_mime or not (name.startswith(b"content-") or name == b"mime-version")
        if keep:
            fields.append(line)
    return [f if f.endswith(b"\n") else f + b"\r\n" for f in fields]


def _params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Split "main; a=1; b="x;y"" into ("main", [("a", "1"), ("b", "x;y")]), names lowercase.

    One pass; quoted strings with quoted-pairs (RFC 2045 section 5.1, RFC 5322 section 3.2.4).
    Stops after MAX_PARAMS + 1 parameters (the caller refuses that many).
    """
    main, sep, rest = value.partition(";")
    params: list[tuple[str, str]] = []
    if not sep:
        return main.strip(), params
    pos, n = 0, len(rest)
    # The next "=" and ";" are found again only once passed, so each search covers new text.
    equal, semi = rest.find("="), rest.find(";")
    while pos < n and len(params) <= MAX_PARAMS:
        if 0 <= equal < pos:
            equal = rest.find("=", pos)
        if 0 <= semi < pos:
            semi = rest.find(";", pos)
        if equal < 0 or (0 <= semi < equal):
            pos = n if semi < 0 else semi + 1  # "; junk;" has no value
            continue
        name = rest[pos:equal].strip().lower()
        pos = equal + 1
        while pos < n and rest[pos] in " \t":
            pos += 1
        quoted = _QUOTED.match(rest, pos)
        if quoted is not None:
            value_text = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
            pos = quoted.end()
            if 0 <= semi < pos:
                semi = rest.find(";", pos)
            pos = n if semi < 0 else semi + 1
        else:
            stop = n if semi < 0 else semi
            value_text = rest[pos:stop].strip()
            pos = stop + 1
        if name:
            params.append((name, value_text))
    return main.strip(), params


def _param(params: list[tuple[str, str]], name: str) -> str:
    """A parameter's value, RFC 2231 forms (continuations, charset) included; "" when absent."""
    value = _rfc2231(params, name)
    if value is not None:
        return value
    for key, plain in params:
        if key == name:
            return plain
    return ""


def _rfc2231(params: list[tuple[str, str]], name: str) -> str | None:
    """RFC 2231 sections 3-4: name*=charset'lang'%xx, name*0=..., name*1*=...; None if absent."""
    sections: dict[int, tuple[str, bool]] = {}
    for key, value in params:
        match = _SECTION.match(key)
        if match is None or match.group(1) != name:
            continue
        number = int(match.group(2)) if match.group(2) is not None else 0
        if number not in sections:
            sections[number] = (value, key.endswith("*"))
    if not sections:
        return None
    charset = ""
    data = bytearray()
    for number in range(min(len(sections), MAX_SECTIONS)):
        if number not in sections:
            break  # RFC 2231 section 3: sections are numbered without gaps
        value, encoded = sections[number]
        if encoded:
            if number == 0 and value.count("'") >= 2:
                charset, _lang, value = value.split("'", 2)
            data += urllib.parse.unquote_to_bytes(value)
        else:
            data += value.encode("utf-8", "replace")
    text = _decode_charset(bytes(data), charset or "utf-8")
    return text if text is not None else bytes(data).decode("utf-8", "replace")


def _names(dparams: list[tuple[str, str]], cparams: list[tuple[str, str]]) -> tuple[str, ...]:
    """Every file name of a part, the one clients usually show first (RFC 2183 filename, then
    the older Content-Type name; RFC 2231 forms before plain ones)."""
    found: list[str] = []
    for params, key in ((dparams, "filename"), (cparams, "name")):
        candidates = [_rfc2231(params, key)]
        candidates += [value for k, value in params if k == key]
        for raw in candidates:
            if raw is None or not raw.strip():
                continue
            # RFC 2047 words inside a parameter are not allowed (RFC 2047 section 5), but are
            # what most clients send and show.
            name = unicodedata.normalize("NFC", decode_words(raw))
            if name not in found:
                found.append(name)
    return tuple(found)


def header_fields(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The fields of a header block whose every line is a header line (`_HEADER_LINE`) and
    that has no bare CR, and the names of its defects: what the email package's feedparser
    gives with `email.policy.compat32` (`raw_items()` and `defects`), line rule for line rule,
    without building a Message (which took 40% of the parse of a plain message, 47 of
    123 us). A test checks the two against each other on generated blocks.

    Values keep their folding (continuation lines joined with their line ends), lose the
    white space after the colon and the final line end. A continuation line before any field
    is dropped (FirstHeaderLineIsContinuationDefect); a "From " line (an mbox envelope line)
    is dropped first (the Unix From), last (the email package takes it for the start of the
    body) or anywhere else (MisplacedEnvelopeHeaderDefect); a line starting with ":" is
    dropped (InvalidHeaderDefect).
    """
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    fields: list[tuple[str, str]] = []
    defects: list[str] = []
    current: list[str] = []

    def flush() -> None:
        name, value = current[0].split(":", 1)
        value = value.lstrip(" \t") + "".join(current[1:])
        fields.append((name, value.rstrip("\r\n")))

    for number, line in enumerate(lines):
        if line[0] in " \t":
            if current:
                current.append(line)
            else:
                defects.append("FirstHeaderLineIsContinuationDefect")
            continue
        if current:
            flush()
            current = []
        if line.startswith("From "):
            if number == len(lines) - 1 and number > 0:
                break
            if number > 0:
                defects.append("MisplacedEnvelopeHeaderDefect")
            continue
        if line[0] == ":":
            defects.append("InvalidHeaderDefect")
            continue
        current = [line]
    if current:
        flush()
    return fields, defects


def _decode_charset(data: bytes, charset: str) -> str | None:
    """`data` decoded as `charset` with replacement characters; None for unknown charsets."""
    try:
        if codecs.lookup(charset.strip()).name in _BAD_CODECS:
            return None
        return data.decode(charset.strip(), "replace")
    except (LookupError, ValueError, TypeError):
        return None


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words in `value`: white space between adjacent words is dropped
    (RFC 2047 section 6.2), adjacent words in one charset are joined before decoding (a
    character may be split between them), unknown charsets give replacement characters."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending_charset: str | None = None
    pending = bytearray()

    def flush() -> None:
        if pending_charset is not None:
            text = _decode_charset(bytes(pending), pending_charset)
            out.append(text if text is not None else bytes(pending).decode("utf-8", "replace"))
            pending.clear()

    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if gap and (pending_charset is None or gap.strip(" \t")):
            flush()
            pending_charset = None
            out.append(gap)
        charset = match.group(1).lower()
        raw = match.group(3).encode("utf-8", "replace")
        if match.group(2) in "bB":
            data, _clean = _b64decode(raw)
        else:
            data = binascii.a2b_qp(raw, header=True)
        if charset != pending_charset:
            flush()
            pending_charset = charset
        pending += data
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _b64decode(raw: bytes) -> tuple[bytes, bool]:
    """Base64 as mail clients read it: stray characters ignored, missing padding supplied,
    data after padding decoded too. Returns (data, whether the input was well-formed)."""
    data = raw.translate(None, _B64_JUNK)
    clean = len(data) == len(raw) - sum(raw.count(c) for c in _WSP)
    unpadded = data.rstrip(b"=")
    clean = clean and b"=" not in unpadded and len(data) % 4 == 0 and len(data) - len(unpadded) < 3
    pieces = re.split(rb"=+", data, maxsplit=MAX_B64_SEGMENTS)
    pieces[-1] = pieces[-1].replace(b"=", b"")
    segments = [p for p in pieces if p]
    out = []
    for segment in segments:
        extra = len(segment) % 4
        if extra == 1:
            segment = segment[:-1]  # six bits cannot make a byte
        elif extra:
            segment += b"=" * (4 - extra)
        out.append(binascii.a2b_base64(segment))
    return b"".join(out), clean


def _uudecode(raw: bytes) -> bytes:
    """The body of an x-uuencode part (lines between "begin" and "end"), tolerantly."""
    out = []
    inside = False
    for line in raw.splitlines():
        if not inside:
            inside = line.startswith(b"begin")
            continue
        stripped = line.strip()
        if stripped == b"end":
            break
        if not stripped:
            continue
        try:
            out.append(binascii.a2b_uu(stripped))
        except binascii.Error:
            # As the email package does: some encoders pad lines with garbage.
            count = (((stripped[0] - 32) & 63) * 4 + 5) // 3
            try:
                out.append(binascii.a2b_uu(stripped[:count]))
            except binascii.Error:
                continue
    return b"".join(out)


@functools.lru_cache(maxsize=1024)  # a pure function; the same From comes back all day
def _first_mailbox(value: str) -> tuple[str | None, int]:
    """The first mailbox of a From field (RFC 5322 section 3.4) as "local@domain" with the
    domain lowercase, or None if it cannot be read; and how many mailboxes there are.

    Comments are dropped and quoted strings kept, in one pass; anything unbalanced makes the
    field unreadable rather than guessed at (a guess is what spoofing relies on).
    """
    clean: list[str] = []
    depth = 0
    quoted = False
    chars = iter(value)
    for char in chars:
        if char == "\\" and (quoted or depth):
            escaped = next(chars, "")
            if quoted:
                clean.append(char + escaped)
            continue
        if depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                clean.append(" ")
            continue
        if char == '"':
            quoted = not quoted
        elif char == "(" and not quoted:
            depth = 1
            continue
        elif char == ")" and not quoted:
            return None, 0
        clean.append(char)
    if depth or quoted:
        return None, 0
    text = "".join(clean)

    # Split at commas outside quotes and angle brackets; a group ("name: a, b;") is unwrapped.
    mailboxes: list[str] = []
    current: list[str] = []
    quoted = False
    angle = False
    for char in text:
        if char == '"' and not angle:
            quoted = not quoted
        elif not quoted:
            if char == "<":
                if angle:
                    return None, 0
                angle = True
            elif char == ">":
                angle = False
            elif char in ",;" and not angle:
                mailboxes.append("".join(current))
                current = []
                continue
            elif char == ":" and not angle:
                current = []  # a group's display name
                continue
        current.append(char)
    mailboxes.append("".join(current))
    mailboxes = [m.strip() for m in mailboxes if m.strip()]
    if not mailboxes:
        return None, 0
    first = mailboxes[0]
    if "<" in first or ">" in first:
        match = re.fullmatch(r'((?:"(?:[^"\\]|\\.)*"|[^"<>])*)<([^<>]*)>\s*', first)
        if match is None:
            return None, len(mailboxes)
        spec = match.group(2).strip()
        spec = spec.rpartition(":")[2] if spec.startswith("@") else spec  # obs-route
    else:
        spec = first
    local, at, domain = spec.rpartition("@")
    local, domain = local.strip(), domain.strip().rstrip(".").lower()
    if not at or not local or not domain or re.search(r'[\s()<>,;:\\"@]', domain):
        return None, len(mailboxes)
    if domain.startswith("[") != domain.endswith("]"):
        return None, len(mailboxes)
    if not local.startswith('"') and re.search(r'[\s()<>,;:\\"\[\]]', local):
        return None, len(mailboxes)
    return f"{local}@{domain}", len(mailboxes)
