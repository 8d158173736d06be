"""Content Filtering: attachments by name, true type (magic bytes), size and archive contents,
and header and body patterns, on the MIME structure of pipeline.message (RFC 2045-2049, RFC 2183
file names).

What is looked at, for every part that has a file name, is an attachment or is not text:

* its names (all of them, see message.Part.names) against `blocked_names` (fnmatch masks,
  case-insensitive, or "re:REGEX"), NFC-normalised, without bidirectional controls (RIGHT-TO-LEFT
  OVERRIDE makes "invoice\\u202efdp.exe" show as "invoiceexe.pdf"; it must match "*.exe"),
  without the trailing dots and spaces Windows drops, and cut at a control character where
  some clients cut. A name with bidirectional controls is blocked by itself;
* its true type, from its own bytes whatever its name and Content-Type say: executable (PE,
  ELF, Mach-O), script (shebang, WSH, PowerShell, HTA markers), office_macro (OLE2, or OOXML /
  ODF with macro storage), archive, pdf, image; against `blocked_types`;
* its decoded size against `max_attachment_size`;
* zip archives, opened from memory up to `archive_depth` levels: at most `archive_members`
  members each, names against the masks, contents against the types. The central directory
  is counted before zipfile reads it, and members are inflated here in 64 KiB steps (zipfile
  would inflate a bzip2 member in one unbounded step) with their declared and actual sizes
  summed per message against `archive_expansion`: a zip bomb is stopped after at most that
  many bytes, usually before any, as bombs declare their sizes. An attachment is level 1;
  a zip deeper than `archive_depth` is an error; `archive_depth` 0 leaves archives closed
  (their names and types are still checked, an OOXML document told from its first member).

Then `max_message_size`, `header_patterns` ("Name: value" lines, values decoded) and
`body_patterns` (text parts). The verdict: ERROR when something could not be analysed (a
message too complex to parse, archive limits, corrupt or unsupported archives), even if a
blocked attachment was found too (deleting it would pass the rest unanalysed); otherwise
BLOCKED_ATTACHMENT with the parts, then CONTENT_MATCH, then CLEAN. Encrypted zip members
cannot be read: blocked when "archive" is a blocked type, otherwise noted in the detail.

Not opened: rar, 7z, gzip and other archives (typed as "archive" only), zip members packed
with methods other than stored, deflate and bzip2 (an error).

Security notes: names and patterns reach the detail and the X-Mailgate-Content header escaped
(no control, bidi or line-break characters; the header is ASCII) and capped in length. The work
runs in a thread so that the pipeline's deadline can answer for it.
"""

from __future__ import annotations

import asyncio
import bz2
import fnmatch
import io
import re
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from functools import lru_cache

import filetype  # type: ignore[import-untyped]

from mailgate.config.protection import ContentSettings
from mailgate.pipeline.api import CheckResult, ScanContext, Verdict
from mailgate.pipeline.message import Part, escape

__all__ = ["HEADER", "ContentCheck", "true_types"]

MODULE = "content"
HEADER = "X-Mailgate-Content"

# Magic bytes are near the start; 64 KiB also covers an ISO 9660 volume descriptor (32 KiB).
_SNIFF = 64 * 1024
_CHUNK = 64 * 1024
_MAX_DETAIL = 1000
_MAX_HEADER = 160
# Names are matched on at most this many characters from each end: masks are about prefixes
# and extensions, and a megabyte-long name must not cost megabytes per mask.
_NAME_ENDS = 1024
_MAX_REASONS = 100

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_MACHO = (b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe",
          b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")  # fmt: skip
_ARCHIVES = frozenset({"zip", "tar", "rar", "gz", "bz2", "7z", "xz", "cab", "Z", "lz", "lzo",
                       "lz4", "zst", "ar", "deb", "rpm", "br", "crx", "epub"})  # fmt: skip
_DOCUMENTS = frozenset({"docx", "xlsx", "pptx", "odt", "ods", "odp"})
# Kept simple: markers that ordinary documents do not contain.
_SCRIPT = re.compile(
    rb"<\s*hta:application|wscript\.(?:shell|createobject|echo|sleep|scriptfullname)"
    rb"|createobject\s*\(\s*[\"'](?:wscript|scripting|shell|adodb|msxml2|winhttp)"
    rb"|new\s+activexobject\s*\(|invoke-expression|\biex\s*[($]|-encodedcommand\b"
    rb"|new-object\s+(?:system\.)?net\.webclient|downloadstring\s*\(|frombase64string\s*\(",
    re.IGNORECASE,
)
# Up to this size, and without an archive to open, a message is inspected on the event loop
# (names, true types and patterns: well under a millisecond); otherwise in a thread.
INLINE_BYTES = 128 * 1024
_EOCD = b"PK\x05\x06"
_LOCAL_HEADER = b"PK\x03\x04"
_CENTRAL_HEADER = b"PK\x01\x02"


class ContentCheck:
    """The Content Filtering module."""

    module = MODULE

    async def scan(self, ctx: ScanContext) -> CheckResult:
        try:
            # Inline unless an archive is to be opened: expanding one may take long.
            if ctx.small(INLINE_BYTES) and not any(_is_zip(p.payload) for p in ctx.message.parts):
                return self.inspect(ctx)
            return await asyncio.to_thread(self.inspect, ctx)
        except Exception as exc:  # a check must not raise: the rule's error action applies
            return _result(Verdict.ERROR, f"unexpected {type(exc).__name__}: {exc}")

    def inspect(self, ctx: ScanContext) -> CheckResult:
        """The verdict, computed synchronously (`scan` runs this in a thread, or inline for a
        message of at most `INLINE_BYTES`)."""
        settings = ctx.protection.content
        message = ctx.message
        if message.too_complex:
            reasons = "; ".join(escape(d, 120) for d in message.defects[:3])
            return _result(Verdict.ERROR, f"the message could not be analysed: {reasons}")
        archives = _Archives(settings)
        blocked: dict[int, list[str]] = {}
        for part in message.parts:
            found = self._part(part, settings, archives)
            if found:
                blocked[part.index] = found

        parts = sorted(blocked)
        findings = [r for i in parts for r in blocked[i]]
        if settings.max_message_size and len(ctx.content) > settings.max_message_size:
            findings.append(
                f"the message is {len(ctx.content)} bytes, more than {settings.max_message_size}"
            )
            # "Delete attachment" then strips the attachments of an oversized message.
            parts = sorted({*parts, *(p.index for p in message.parts if _is_file(p))})

        if archives.errors:
            return _result(Verdict.ERROR, "; ".join(archives.errors + findings))
        if findings:
            return _result(Verdict.BLOCKED_ATTACHMENT, "; ".join(findings), tuple(parts))
        matches, matched_parts = self._patterns(ctx, settings)
        if matches:
            return _result(Verdict.CONTENT_MATCH, "; ".join(matches), tuple(matched_parts))
        return _result(Verdict.CLEAN, "; ".join(archives.notes))

    @staticmethod
    def _part(part: Part, settings: ContentSettings, archives: _Archives) -> list[str]:
        if not _is_file(part):
            return []
        label = escape(part.filename) if part.filename is not None else (
            f"part {part.index} ({escape(part.content_type, 80)})")  # fmt: skip
        reasons: list[str] = []
        for name in part.names:
            reasons += name_findings(name, settings.blocked_names)
        if settings.max_attachment_size and part.size > settings.max_attachment_size:
            reasons.append(
                f"{label} is {part.size} bytes, more than {settings.max_attachment_size}"
            )
        types = true_types(part.payload)
        if _is_zip(part.payload):
            types.discard("archive")
            if settings.archive_depth:
                types |= archives.open(part.payload, label, 1, reasons)
            else:
                types |= _zip_kind(part.payload)  # not opened: what the first member says
        for kind in sorted(types & set(settings.blocked_types)):
            reasons.append(f"{label} is {kind} (declared {escape(part.content_type, 80)})")
        return reasons

    @staticmethod
    def _patterns(ctx: ScanContext, settings: ContentSettings) -> tuple[list[str], list[int]]:
        matches: list[str] = []
        parts: set[int] = set()
        message = ctx.message
        for pattern in settings.header_patterns:
            regex = _regex(pattern)
            for name, value in message.headers:
                if regex.search(f"{name}: {value}"):
                    matches.append(
                        f"header pattern {escape(pattern, 80)} matched {escape(name, 80)}"
                    )
                    break
        for pattern in settings.body_patterns:
            regex = _regex(pattern)
            hits = [p.index for p in message.parts if p.text is not None and regex.search(p.text)]
            if hits:
                matches.append(f"body pattern {escape(pattern, 80)} matched part {hits[0]}")
                parts.update(hits)
        return matches, sorted(parts)


def _is_file(part: Part) -> bool:
    """What the content rules apply to: named, attached or not text (the body text is not),
    multipart containers aside (their parts are looked at one by one)."""
    if part.content_type.startswith("multipart/"):
        return False
    if part.filename is not None or part.is_attachment:
        return True
    return not part.content_type.startswith("text/")


def _result(verdict: Verdict, detail: str, parts: tuple[int, ...] = ()) -> CheckResult:
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    value = verdict.value
    if detail and verdict is not Verdict.CLEAN:
        summary = detail if len(detail) <= _MAX_HEADER else detail[:_MAX_HEADER] + "..."
        # An ASCII header value; the detail is escaped already, so no CR or LF reaches it.
        value += " (" + summary.encode("ascii", "backslashreplace").decode("ascii") + ")"
    return CheckResult(MODULE, verdict, detail, headers=((HEADER, value),), parts=parts)


# -- names -----------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _mask(mask: str) -> tuple[re.Pattern[str], bool]:
    """A compiled mask and whether it is searched (regular expression) or matched whole."""
    if mask.startswith("re:"):
        return re.compile(mask[3:], re.IGNORECASE), True
    return re.compile(fnmatch.translate(mask.lower()), re.IGNORECASE), False


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def name_findings(name: str, masks: list[str]) -> list[str]:
    """Why the file name `name` is blocked (empty when it is not)."""
    name = unicodedata.normalize("NFC", name)
    shown = escape(name)
    reasons = []
    if any(char in _BIDI for char in name):
        reasons.append(f"{shown} has bidirectional control characters (a disguised name)")
    clean = "".join(char for char in name if char not in _BIDI)
    variants = [clean, _CONTROL.split(clean, maxsplit=1)[0]]  # NUL and co. end names somewhere
    variants += [v.rstrip(" .") for v in variants]  # Windows drops trailing dots and spaces
    variants += [re.split(r"[/\\]", v)[-1] for v in variants]  # the last path component
    candidates: list[str] = []
    for variant in variants:
        pieces = [variant] if len(variant) <= 2 * _NAME_ENDS else [
            variant[:_NAME_ENDS], variant[-_NAME_ENDS:]]  # fmt: skip
        candidates += [p.lower() for p in pieces if p and p.lower() not in candidates]
    for mask in masks:
        regex, search = _mask(mask)
        hit = next((c for c in candidates if (regex.search(c) if search else regex.match(c))), None)
        if hit is not None:
            extensions = re.split(r"[/\\]", hit)[-1].split(".")[1:]
            double = ""
            if len(extensions) >= 2 and re.fullmatch(r"[a-z0-9]{1,5}", extensions[-2]):
                double = f" (double extension .{escape(extensions[-2])}.{escape(extensions[-1])})"
            reasons.append(f"{shown} matches {escape(mask, 80)}{double}")
            break
    return reasons


# -- true types ------------------------------------------------------------------------------


def true_types(data: bytes) -> set[str]:
    """The blockable types `data` is, from its own bytes (a polyglot can be several). Zip
    archives are "archive" here; the caller tells documents (OOXML, ODF) apart."""
    head = data[:_SNIFF]
    found: set[str] = set()
    if _executable(head):
        found.add("executable")
    if head.startswith(_OLE2):
        found.add("office_macro")  # OLE2 (doc, xls, ppt, msi) can carry macros in its streams
    if _script(head):
        found.add("script")
    if b"%PDF-" in head[:1024]:  # readers accept the header anywhere in the first KiB
        found.add("pdf")
    if any(head[at : at + 5] == b"CD001" for at in (0x8001, 0x8801, 0x9001)):
        found.add("archive")  # an ISO 9660 image: a container that mounts with a click
    if _is_zip(head):
        found.add("archive")
    try:
        kind = filetype.guess(head[:8192]) if head else None
    except Exception:  # filetype's matchers index fixed offsets; a short input may trip one
        kind = None
    if kind is not None:
        if kind.mime.startswith("image/"):
            found.add("image")
        elif kind.extension in _ARCHIVES:
            found.add("archive")
    return found


def _executable(head: bytes) -> bool:
    if head.startswith(b"MZ") and len(head) >= 64:
        pe = int.from_bytes(head[60:64], "little")
        if head[pe : pe + 4] == b"PE\0\0":
            return True
        # A DOS program, or a PE whose header lies beyond what is sniffed; text that happens to
        # start with "MZ" has no NUL bytes.
        return b"\0" in head[:64]
    return head.startswith(b"\x7fELF") or head[:4] in _MACHO


def _script(head: bytes) -> bool:
    if head.startswith((b"#!", b"\xef\xbb\xbf#!")):
        return True
    text = head
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # PowerShell often saves UTF-16
        text = head.decode("utf-16", "replace").encode("utf-8", "replace")
    return _SCRIPT.search(text) is not None


# -- zip archives ----------------------------------------------------------------------------


class _ArchiveError(Exception):
    """This archive cannot be analysed (the message is an error, never clean)."""


class _MemberError(ValueError):
    """A member's data cannot be read (the caller names the member)."""


def _is_zip(data: bytes) -> bool:
    """A zip archive: local header first, or an end record near the end (zip readers, zipfile
    included, find it there even after prepended bytes)."""
    if data[:4] in (_LOCAL_HEADER, _EOCD):
        return True
    start = max(0, len(data) - 65557)
    # The end record's signature ends in 0x06, a byte that text does not hold: a one-byte
    # search (memrchr, ~1 us per 64 KB) rules out a text part, where the signature's own
    # search takes about 20 times longer.
    if data.rfind(b"\x06", start) < 0:
        return False
    end = data.rfind(_EOCD, start)
    if end < 0 or len(data) - end < 22:
        return False
    # A plausible end record: its directory fits before it (bytes that merely look like the
    # signature in an image or a PDF seldom pass).
    return bool(struct.unpack_from("<I", data, end + 12)[0] <= end)


def _zip_kind(data: bytes) -> set[str]:
    try:
        kind = filetype.guess(data[:8192])
    except Exception:
        kind = None
    return set() if kind is not None and kind.extension in _DOCUMENTS else {"archive"}


def _central_entries(data: bytes) -> int | None:
    """How many central directory records a zip has at most (signatures counted in the
    directory's bytes), or None without an end record. Cheap, so that zipfile, which builds an
    object per record, is not handed 100,000 of them."""
    end = data.rfind(_EOCD, max(0, len(data) - 65557))
    if end < 0 or len(data) - end < 22:
        return None
    size = struct.unpack_from("<I", data, end + 12)[0]
    directory_end = end
    # ZIP64 (APPNOTE 4.3.14-15): the locator just before the end record, the record before it.
    if end >= 76 and data[end - 20 : end - 16] == b"PK\x06\x07":
        record = end - 76
        if data[record : record + 4] == b"PK\x06\x06":
            size = struct.unpack_from("<Q", data, record + 40)[0]
            directory_end = record
    # zipfile, too, locates the directory from its end and size (prepended bytes are allowed).
    return data.count(_CENTRAL_HEADER, max(0, directory_end - size), directory_end)


def _member_chunks(data: bytes, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """A member's content, inflated at most _CHUNK bytes per step."""
    at = info.header_offset
    if at < 0 or data[at : at + 4] != _LOCAL_HEADER or len(data) < at + 30:
        raise _MemberError("bad local header")
    name_length, extra_length = struct.unpack_from("<HH", data, at + 26)
    start = at + 30 + name_length + extra_length
    raw = memoryview(data)[start : start + info.compress_size]
    if len(raw) < info.compress_size:
        raise _MemberError("member data cut short")
    if info.compress_type == zipfile.ZIP_STORED:
        for i in range(0, len(raw), _CHUNK):
            yield bytes(raw[i : i + _CHUNK])
        return
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflate = zlib.decompressobj(-15)
        for i in range(0, len(raw), _CHUNK):
            pending = bytes(raw[i : i + _CHUNK])
            while pending and not inflate.eof:
                yield inflate.decompress(pending, _CHUNK)
                pending = inflate.unconsumed_tail
        while not inflate.eof:
            out = inflate.decompress(b"", _CHUNK)
            if not out:
                break
            yield out
        if not inflate.eof:
            raise _MemberError("deflate data cut short")
        return
    if info.compress_type == zipfile.ZIP_BZIP2:
        bunzip = bz2.BZ2Decompressor()
        for i in range(0, len(raw), _CHUNK):
            yield bunzip.decompress(bytes(raw[i : i + _CHUNK]), _CHUNK)
            while not bunzip.eof and not bunzip.needs_input:
                yield bunzip.decompress(b"", _CHUNK)
            if bunzip.eof:
                return
        raise _MemberError("bzip2 data cut short")
    raise _MemberError(f"compression method {info.compress_type} not supported")


class _Archives:
    """Zip inspection for one message, with its shared expansion budget."""

    def __init__(self, settings: ContentSettings) -> None:
        self.settings = settings
        self.blocked = set(settings.blocked_types)
        self.declared = 0
        self.actual = 0
        self.errors: list[str] = []
        self.notes: list[str] = []

    def open(self, data: bytes, label: str, level: int, reasons: list[str]) -> set[str]:
        """Inspect the zip `data` (`level` 1 for an attachment); add what is blocked inside to
        `reasons`; return the archive's own types."""
        try:
            return self._open(data, label, level, reasons)
        except _ArchiveError as exc:
            self.errors.append(str(exc))
        return {"archive"}

    def _open(self, data: bytes, label: str, level: int, reasons: list[str]) -> set[str]:
        limit = self.settings.archive_members
        count = _central_entries(data)
        if count is None:
            raise _ArchiveError(f"{label}: corrupt zip archive (no central directory)")
        if count > limit:
            raise _ArchiveError(f"{label}: archive with more than {limit} members")
        try:
            infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
        except Exception as exc:  # zipfile raises many kinds on hostile input
            raise _ArchiveError(f"{label}: corrupt zip archive ({escape(str(exc), 80)})") from None
        if len(infos) > limit:
            raise _ArchiveError(f"{label}: archive with more than {limit} members")
        names = [info.filename.lower() for info in infos]
        document = "[content_types].xml" in names or (
            "mimetype" in names and "meta-inf/manifest.xml" in names)  # fmt: skip
        # OOXML keeps VBA in */vbaProject.bin, ODF its Basic modules under Basic/<library>/.
        basic = any(n.startswith("basic/") and n.count("/") >= 2 for n in names)
        macro = any(n.endswith("vbaproject.bin") for n in names) or (document and basic)
        own = {"office_macro"} if macro else set() if document else {"archive"}

        self.declared += sum(info.file_size for info in infos)
        budget = self.settings.archive_expansion
        if self.declared > budget:
            raise _ArchiveError(
                f"{label}: archives declare {self.declared} bytes uncompressed, more than {budget}"
            )
        encrypted = 0
        for info in infos:
            member = f"{label}/{escape(info.filename)}"
            for reason in name_findings(info.filename, self.settings.blocked_names):
                reasons.append(f"{label} holds {reason}")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                encrypted += 1
                continue
            head, nested = self._read(data, info, member)
            types = true_types(head)
            if nested:
                types.discard("archive")
                if level >= self.settings.archive_depth:
                    depth = self.settings.archive_depth
                    raise _ArchiveError(f"{member}: archives nested deeper than {depth} levels")
                whole = self._whole(data, info, member)  # within the budget just counted
                types |= self._open(whole, member, level + 1, reasons)
            if document:
                types -= {"image", "pdf"}  # a document's own pictures are part of it
            for kind in sorted(types & self.blocked):
                reasons.append(f"{member} is {kind}")
            if len(reasons) > _MAX_REASONS:
                break
        if encrypted:
            text = f"{label} is an encrypted archive ({encrypted} members not checked)"
            (reasons if "archive" in self.blocked else self.notes).append(text)
        return own

    def _read(self, data: bytes, info: zipfile.ZipInfo, member: str) -> tuple[bytes, bool]:
        """Inflate a member against the budget: its first bytes, and whether it is a zip."""
        budget = self.settings.archive_expansion
        head = bytearray()
        tail = b""
        size = 0
        crc = 0
        try:
            for chunk in _member_chunks(data, info):
                size += len(chunk)
                self.actual += len(chunk)
                if self.actual > budget:
                    raise _ArchiveError(f"{member}: archives expand to more than {budget} bytes")
                if size > info.file_size:
                    raise _ArchiveError(f"{member}: larger than it declares (a zip bomb)")
                crc = zlib.crc32(chunk, crc)
                if len(head) < _SNIFF:
                    head += chunk[: _SNIFF - len(head)]
                tail = (tail + chunk)[-65557:]
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise _ArchiveError(f"{member}: corrupt ({escape(str(exc), 80)})") from None
        if size != info.file_size or crc != info.CRC:
            raise _ArchiveError(f"{member}: corrupt (size or CRC does not match)")
        nested = head[:4] in (_LOCAL_HEADER, _EOCD) or _EOCD in tail
        return bytes(head), nested

    @staticmethod
    def _whole(data: bytes, info: zipfile.ZipInfo, member: str) -> bytes:
        """A member read again in full (it was read once, within the budget)."""
        try:
            return b"".join(_member_chunks(data, info))
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise _ArchiveError(f"{member}: corrupt ({escape(str(exc), 80)})") from None
