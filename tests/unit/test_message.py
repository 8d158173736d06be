"""The MIME parser for the scan modules (mailgate.pipeline.message): structure and decoding
(RFC 2045-2049, RFC 2047 and 2231, RFC 2183), the From mailbox, `without_parts`, and hostile
input (malformed MIME, floods, deep nesting) handled within limits and without exceptions.
"""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.pipeline.message import ParsedMessage, decode_words, header_fields

MAX_PARTS = 1000
MAX_DEPTH = 30


def parse(raw: bytes, max_parts: int = MAX_PARTS, max_depth: int = MAX_DEPTH) -> ParsedMessage:
    return ParsedMessage.parse(raw, max_parts=max_parts, max_depth=max_depth)


def wire(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


def sample() -> bytes:
    message = EmailMessage()
    message["From"] = '"Doe, Jane" <Jane@Example.COM>'
    message["To"] = "bob@example.net"
    message["Subject"] = "Grüße aus Köln"
    message.set_content("Hello, see http://example.org/\n")
    message.add_alternative("<p>Hello</p>\n", subtype="html")
    message.add_attachment(
        b"%PDF-1.4 report", maintype="application", subtype="pdf", filename="report.pdf"
    )
    message.add_attachment(b"MZ\0\0binary", maintype="application", subtype="octet-stream",
                           filename="tool.exe")  # fmt: skip
    return wire(message)


def mime(body: bytes, ctype: bytes = b"multipart/mixed; boundary=b") -> bytes:
    return b"From: a@example.com\r\nContent-Type: " + ctype + b"\r\n\r\n" + body


# -- structure and decoding ------------------------------------------------------------------


def test_walk_order_types_and_payloads() -> None:
    message = parse(sample())
    assert not message.too_complex
    assert message.defects == []
    assert [(p.index, p.content_type, p.filename, p.is_attachment) for p in message.parts] == [
        (0, "multipart/mixed", None, False),
        (1, "multipart/alternative", None, False),
        (2, "text/plain", None, False),
        (3, "text/html", None, False),
        (4, "application/pdf", "report.pdf", True),
        (5, "application/octet-stream", "tool.exe", True),
    ]
    assert message.parts[2].text == "Hello, see http://example.org/\r\n"
    assert message.parts[4].payload == b"%PDF-1.4 report"  # base64 decoded
    assert message.parts[4].size == len(b"%PDF-1.4 report")
    assert message.parts[5].payload == b"MZ\0\0binary"
    assert message.parts[5].text is None
    assert [p.parent for p in message.parts] == [None, 0, 1, 1, 0, 0]
    assert [p.depth for p in message.parts] == [0, 1, 2, 2, 1, 1]


def test_top_level_headers_are_unfolded_and_decoded() -> None:
    raw = (
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?b?IGF1cyBLw7Zsbg==?=\r\n"
        b"X-Long: first\r\n\tsecond\r\n  third\r\n"
        b"From: a@example.com\r\n\r\nbody\r\n"
    )
    message = parse(raw)
    assert message.headers == [
        ("Subject", "Grüße aus Köln"),
        ("X-Long", "first\tsecond  third"),
        ("From", "a@example.com"),
    ]
    assert message.subject == "Grüße aus Köln"


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("plain text", "plain text"),
        ("=?ISO-8859-1?Q?a=E9b?=", "aéb"),
        ("=?utf-8?B?w6k=?= =?utf-8?B?w6k=?=", "éé"),  # white space between words goes
        ("x =?utf-8?q?y?= z", "x y z"),  # white space around text stays
        ("=?x-unknown?q?abc?=", "abc"),  # unknown charset: as UTF-8
        ("=?utf-8*en?q?lang?=", "lang"),  # RFC 2231 language suffix
        ("=?utf-8?q?no_end", "=?utf-8?q?no_end"),
        ("=?utf-8?b?!!!?=", ""),
    ],
)
def test_decode_words(value: str, decoded: str) -> None:
    assert decode_words(value) == decoded


def test_a_character_split_between_encoded_words_is_joined() -> None:
    # "⊠" is E2 8A A0: its bytes are split across two encoded words.
    assert decode_words("=?utf-8?B?4oo=?= =?utf-8?B?oA==?=") == "\u22a0"


def test_content_type_defaults() -> None:
    # RFC 2045 section 5.2: none means text/plain; an invalid one too (with a defect).
    assert parse(b"Subject: x\r\n\r\nbody").parts[0].content_type == "text/plain"
    invalid = parse(b"Content-Type: garbage\r\n\r\nbody")
    assert invalid.parts[0].content_type == "text/plain"
    assert any("invalid Content-Type" in d for d in invalid.defects)
    # RFC 2046 section 5.1.5: in a digest the default is message/rfc822.
    digest = parse(
        mime(
            b"--b\r\n\r\nSubject: inner\r\n\r\nhello\r\n--b--\r\n",
            b"multipart/digest; boundary=b",
        )
    )
    assert [p.content_type for p in digest.parts] == [
        "multipart/digest",
        "message/rfc822",
        "text/plain",
    ]
    assert digest.parts[2].text == "hello"


def test_file_names_rfc2231_rfc2047_and_nfc() -> None:
    body = (
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment;\r\n filename*0*=utf-8''r%C3%A9sum;\r\n filename*1=\"e.pdf\"\r\n\r\nx\r\n"
        b'--b\r\nContent-Type: application/octet-stream; name="=?utf-8?q?caf=C3=A9.txt?="\r\n\r\nx\r\n'
        # "e" followed by COMBINING ACUTE ACCENT: NFC makes it one character.
        b'--b\r\nContent-Disposition: attachment; filename="cafe\xcc\x81.doc"\r\n\r\nx\r\n'
        b"--b--\r\n"
    )
    message = parse(mime(body))
    names = [p.filename for p in message.parts[1:]]
    assert names == ["résume.pdf", "café.txt", "caf\u00e9.doc"]
    assert all(p.is_attachment for p in message.parts[1:])


def test_every_name_a_part_carries_is_kept() -> None:
    # Clients disagree on which of filename*, filename and name wins: all are kept.
    body = (
        b'--b\r\nContent-Type: application/pdf; name="third.pdf"\r\n'
        b"Content-Disposition: attachment; filename=\"second.pdf\"; filename*=utf-8''first.exe\r\n"
        b"\r\nx\r\n--b--\r\n"
    )
    part = parse(mime(body)).parts[1]
    assert part.filename == "first.exe"
    assert part.names == ("first.exe", "second.pdf", "third.pdf")


def test_unnamed_inline_part_is_not_an_attachment() -> None:
    body = b"--b\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\n\r\nx\r\n--b--\r\n"
    part = parse(mime(body)).parts[1]
    assert part.filename is None
    assert not part.is_attachment
    attached = b"--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n--b--\r\n"
    assert parse(mime(attached)).parts[1].is_attachment


@pytest.mark.parametrize(
    ("cte", "body", "payload", "defect"),
    [
        (b"base64", b"aGVsbG8gd29y\r\nbGQ=\r\n", b"hello world", False),
        (b"base64", b"aGVsbG8gd29ybGQ\r\n", b"hello world", True),  # padding missing
        (b"base64", b"aGVs*bG8=\r\n", b"hello", True),  # a stray character
        (b"base64", b"aGk=aGk=\r\n", b"hihi", True),  # data after the padding
        (b"BASE64", b"aGk=\r\n", b"hi", False),
        (b"quoted-printable", b"caf=C3=A9 =\r\nsoft\r\n", b"caf\xc3\xa9 soft\r\n", False),
        (b"8bit", b"caf\xc3\xa9", b"caf\xc3\xa9", False),
        (b"x-custom", b"raw", b"raw", True),
        (b"x-uuencode", b"begin 644 a\r\n#:&D*\r\n`\r\nend\r\n", b"hi\n", False),
    ],
)
def test_transfer_encodings(cte: bytes, body: bytes, payload: bytes, defect: bool) -> None:
    raw = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: " + cte
    message = parse(raw + b"\r\n\r\n" + body)
    assert message.parts[0].payload == payload
    assert bool(message.defects) is defect
    assert not message.too_complex


@pytest.mark.parametrize(
    ("ctype", "body", "text", "defect"),
    [
        (b"text/plain; charset=iso-8859-1", b"caf\xe9", "café", False),
        (b"text/plain; charset=utf-8", b"caf\xe9", "caf\ufffd", False),
        (b"text/plain", b"caf\xc3\xa9", "café", False),  # undeclared 8-bit read as UTF-8
        (b"text/plain; charset=x-klingon", b"abc", "abc", True),
        (b"text/plain; charset=punycode", b"abc-", "abc-", True),  # quadratic decoder refused
        (b"text/plain; charset=rot13", b"abc", "abc", True),  # not a text encoding
    ],
)
def test_text_charsets(ctype: bytes, body: bytes, text: str, defect: bool) -> None:
    message = parse(b"Content-Type: " + ctype + b"\r\n\r\n" + body)
    assert message.parts[0].text == text
    assert bool(message.defects) is defect


# -- From ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (b"jane@Example.COM", "jane@example.com"),
        (b'"Doe, Jane" <jane@Example.com.>', "jane@example.com"),
        (b"Jane (the boss) <jane@example.com> (work)", "jane@example.com"),
        (b"=?utf-8?q?ceo=40bank=2Eexample_?= <x@evil.example>", "x@evil.example"),
        (b'"ceo@bank.example" <x@evil.example>', "x@evil.example"),
        (b"<@route.example:jane@example.com>", "jane@example.com"),
        (b"team: jane@example.com;", "jane@example.com"),
        (b'"john doe"@example.com', '"john doe"@example.com'),
        (b"jane@[192.0.2.1]", "jane@[192.0.2.1]"),
        # CVE-2023-27043: Python's own parser reads this as alice@example.org.
        (b"alice@example.org)<bob@example.org>", None),
        (b"<a@example.com> <b@example.org>", None),
        (b"no address here", None),
        (b"jane@", None),
        (b"@example.com", None),
        (b"(unclosed comment a@example.com", None),
        (b"", None),
    ],
)
def test_from_mailbox(value: bytes, address: str | None) -> None:
    message = parse(b"From: " + value + b"\r\n\r\nbody")
    assert message.from_address == address
    assert message.from_domain == (address.rpartition("@")[2] if address else None)


def test_several_from_mailboxes_take_the_first_with_a_defect() -> None:
    message = parse(b"From: a@one.example, b@two.example\r\n\r\nbody")
    assert message.from_domain == "one.example"
    assert any("several mailboxes" in d for d in message.defects)
    message = parse(b"From: a@one.example\r\nFrom: b@two.example\r\n\r\nbody")
    assert message.from_domain == "one.example"
    assert any("several From fields" in d for d in message.defects)


def test_no_from() -> None:
    message = parse(b"Subject: x\r\n\r\nbody")
    assert message.from_address is None
    assert message.from_domain is None


# -- message/rfc822 --------------------------------------------------------------------------


def forwarded(encoding: bytes = b"7bit") -> bytes:
    inner = sample()
    if encoding == b"base64":
        inner = base64.encodebytes(inner).replace(b"\n", b"\r\n")
    return mime(
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: " + encoding + b"\r\n\r\n"
        + inner + b"\r\n--b--\r\n"
    )  # fmt: skip


def test_forwarded_message_is_walked() -> None:
    message = parse(forwarded())
    assert [p.content_type for p in message.parts] == [
        "multipart/mixed", "text/plain", "message/rfc822", "multipart/mixed",
        "multipart/alternative", "text/plain", "text/html", "application/pdf",
        "application/octet-stream",
    ]  # fmt: skip
    assert message.parts[8].filename == "tool.exe"
    assert message.parts[8].depth == 3
    assert not message.too_complex


def test_base64_forwarded_message_is_decoded_and_walked() -> None:
    # RFC 2046 forbids it, some clients do it: the content is analysed all the same.
    message = parse(forwarded(b"base64"))
    assert message.parts[8].filename == "tool.exe"
    assert message.parts[8].payload == b"MZ\0\0binary"
    assert any("message/rfc822 with base64" in d for d in message.defects)
    # Its parts are not in the original bytes: removing one removes the whole container.
    out = parse(message.without_parts({8}))
    assert [p.content_type for p in out.parts] == ["multipart/mixed", "text/plain", "text/plain"]
    assert "application/octet-stream" not in [p.content_type for p in out.parts]


# -- without_parts ---------------------------------------------------------------------------


def notice(part_text: str | None) -> str:
    assert part_text is not None
    return part_text


def test_without_parts_replaces_the_attachment_and_keeps_the_rest() -> None:
    raw = sample()
    message = parse(raw)
    out = message.without_parts({5})
    again = parse(out)
    assert [p.filename for p in again.parts] == [None, None, None, None, "report.pdf", None]
    assert again.parts[5].content_type == "text/plain"
    assert 'removed an attachment from this message: "tool.exe"' in notice(again.parts[5].text)
    # Everything before and after the removed part is kept byte for byte.
    start = raw.index(b"Content-Type: application/octet-stream")
    end = raw.index(b"\r\n--", start)
    assert out[:start] == raw[:start]
    assert out.endswith(raw[end:])
    assert b"\n" not in out.replace(b"\r\n", b"")  # CRLF line ends only
    # The result is still what the email package reads as the same structure.
    reread = email.message_from_bytes(out, policy=email.policy.default)
    assert [p.get_content_type() for p in reread.walk()][-1] == "text/plain"


def test_without_parts_on_several_and_nested_parts() -> None:
    raw = sample()
    message = parse(raw)
    # The alternative (1) with its children (2, 3), and the PDF (4).
    again = parse(message.without_parts({1, 2, 4}))
    assert [p.content_type for p in again.parts] == [
        "multipart/mixed", "text/plain", "text/plain", "application/octet-stream",
    ]  # fmt: skip
    assert "a part of type multipart/alternative" in notice(again.parts[1].text)
    assert message.without_parts(set()) == raw
    assert message.without_parts({99, -1}) == raw


def test_without_parts_on_the_whole_message_keeps_its_other_fields() -> None:
    raw = b"From: a@example.com\r\nSubject: hi\r\nContent-Type: application/octet-stream;\r\n name=x.exe\r\n\r\nMZ\r\n"
    out = parse(raw).without_parts({0})
    assert out.startswith(b"From: a@example.com\r\nSubject: hi\r\nContent-Type: text/plain")
    again = parse(out)
    assert again.from_address == "a@example.com"
    assert 'attachment from this message: "x.exe"' in notice(again.parts[0].text)


def test_header_injection_through_a_file_name() -> None:
    # A name with CR LF (RFC 2231 %0D%0A) must not become a header line in the notice.
    body = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
        b"filename*=utf-8''a%0D%0AX-Injected%3A%20yes%0D%0A%0D%0A--b%0D%0Ab.exe\r\n\r\nx\r\n--b--\r\n"
    )
    message = parse(mime(body))
    assert message.parts[2].filename == "a\r\nX-Injected: yes\r\n\r\n--b\r\nb.exe"
    out = message.without_parts({2})
    assert b"X-Injected" not in out
    again = parse(out)
    assert len(again.parts) == 3
    for part in email.message_from_bytes(out, policy=email.policy.compat32).walk():
        assert part.get("X-Injected") is None
    assert "a\\u000d\\u000aX-Injected: yes" in notice(again.parts[2].text)


# -- hostile input ---------------------------------------------------------------------------


def deep(levels: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels)
    )
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi" + tail


@pytest.mark.timeout(30)
def test_deep_nesting_stops_at_max_depth() -> None:
    message = parse(deep(1000))
    assert message.too_complex
    assert max(p.depth for p in message.parts) <= MAX_DEPTH
    assert any("nested deeper than 30" in d for d in message.defects)
    # Within the limit, the same structure is fine.
    shallow = parse(deep(30))
    assert not shallow.too_complex
    assert shallow.parts[-1].text == "hi"


@pytest.mark.timeout(30)
def test_ten_thousand_parts_stop_at_max_parts() -> None:
    raw = mime(b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n" * 10_000 + b"--b--\r\n")
    message = parse(raw)
    assert message.too_complex
    assert len(message.parts) <= MAX_PARTS
    assert parse(raw, max_parts=20_000).too_complex is False


@pytest.mark.timeout(30)
def test_ten_megabyte_header_line() -> None:
    raw = b"Subject: " + b"a" * 10_000_000 + b"\r\nFrom: x@example.com\r\n\r\nbody\r\n"
    message = parse(raw)
    assert len(message.subject) == 10_000_000
    assert message.from_domain == "example.com"
    assert message.parts[0].text == "body\r\n"


@pytest.mark.timeout(30)
def test_header_line_flood_is_too_complex() -> None:
    message = parse(b"X-A: b\r\n" * 1_000_000 + b"\r\nbody")
    assert message.too_complex


@pytest.mark.timeout(30)
def test_parameter_flood_is_too_complex() -> None:
    assert parse(b"Content-Type: text/plain" + b"; a=b" * 100_000 + b"\r\n\r\nx").too_complex
    # Semicolons inside a quoted value are one value, read in linear time.
    message = parse(b'Content-Type: text/plain; name="' + b";" * 5_000_000 + b'"\r\n\r\nx')
    assert message.parts[0].filename == ";" * 5_000_000


def test_nul_bytes() -> None:
    raw = b"From: a@exa\0mple.com\r\nSub\0ject: x\r\nContent-Type: text/plain\r\n\r\n\0body\0"
    message = parse(raw)
    assert not message.too_complex
    assert message.from_address is not None
    # "Sub\0ject" is no header field: the body starts there (the email package's rule).
    assert any("no empty line" in d for d in message.defects)


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        (mime(b"--b\r\nhi\r\n--b--\r\n", b"multipart/mixed"), "without a boundary"),
        (mime(b"--b\r\nhi\r\n--b--\r\n", b'multipart/mixed; boundary=""'), "without a boundary"),
        (mime(b"--other\r\nhi\r\n--other--\r\n"), "boundary never found"),
        (
            mime(
                b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n--b--\r\n"
            ),
            "boundary reused",
        ),
        (
            b"Content-Type: text/plain\r\nContent-Type: application/x-msdownload\r\n\r\nMZ",
            "conflicting content-type",
        ),
    ],
)
def test_ambiguous_structure_is_too_complex(raw: bytes, defect: str) -> None:
    message = parse(raw)
    assert message.too_complex
    assert any(defect in d for d in message.defects)


def test_unterminated_multipart_keeps_its_last_part() -> None:
    message = parse(mime(b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--b\r\n\r\nlast"))
    assert not message.too_complex
    assert [p.text for p in message.parts[1:]] == ["first", "last"]
    assert any("without its close delimiter" in d for d in message.defects)


def test_repeated_delimiters_make_empty_parts() -> None:
    message = parse(mime(b"--b\r\n--b\r\n--b \t\r\n\r\nx\r\n--b--\r\n"))
    assert [p.payload for p in message.parts[1:]] == [b"", b"", b"x"]


def test_parts_after_the_close_delimiter_are_analysed_too() -> None:
    # Clients that read past the close delimiter would show them.
    raw = mime(
        b"--b\r\n\r\nshown\r\n--b--\r\n--b\r\nContent-Type: application/x-msdownload\r\n\r\nMZ\r\n"
    )
    message = parse(raw)
    assert message.parts[-1].content_type == "application/x-msdownload"
    assert any("after the close delimiter" in d for d in message.defects)


def test_boundary_as_a_prefix_is_no_delimiter() -> None:
    message = parse(mime(b"--b\r\n\r\n--bb is text\r\n--b--\r\n"))
    assert [p.payload for p in message.parts[1:]] == [b"--bb is text"]


def test_bare_cr_in_a_header_is_no_line_end() -> None:
    message = parse(b"Subject: a\rContent-Type: text/html\r\n\r\nbody")
    assert message.parts[0].content_type == "text/plain"
    assert message.subject == "a Content-Type: text/html"


# -- Hypothesis ------------------------------------------------------------------------------


def check_budget(message: ParsedMessage, max_parts: int, max_depth: int) -> None:
    assert len(message.parts) <= max_parts
    assert all(p.depth <= max_depth for p in message.parts)
    assert [p.index for p in message.parts] == list(range(len(message.parts)))
    assert all(isinstance(d, str) for d in message.defects)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 20), st.integers(0, 5))
def test_arbitrary_bytes_never_raise(raw: bytes, max_parts: int, max_depth: int) -> None:
    message = parse(raw, max_parts, max_depth)
    check_budget(message, max_parts, max_depth)
    parse(message.without_parts(set(range(len(message.parts)))), max_parts, max_depth)


SAMPLES = [sample(), forwarded(), forwarded(b"base64"), deep(8)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SAMPLES)))
    pieces = [b"\r\n", b"--", b"\0", b"=", b'"', b";", b"\r\n\r\n", b"Content-Type: multipart/mixed; boundary=b0\r\n"]  # fmt: skip
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            del raw[at : at + draw(st.integers(1, 50))]
        elif kind == 1:
            raw[at:at] = draw(st.sampled_from(pieces) | st.binary(max_size=20))
        else:
            raw[at : at + 1] = bytes([draw(st.integers(0, 255))])
    return bytes(raw)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(mutated(), st.sets(st.integers(0, 40), max_size=5))
def test_mutated_mime_never_raises(raw: bytes, remove: set[int]) -> None:
    message = parse(raw, 30, 6)
    check_budget(message, 30, 6)
    out = message.without_parts(remove)
    check_budget(parse(out, 30, 6), 30, 6)


# -- header blocks ---------------------------------------------------------------------------

# What can follow the start of a header line: text with colons, tabs, spaces, line-boundary
# characters that are no line end for the email package (VT, FF, FS, NEL, LS), non-ASCII.
_VALUE = st.text(st.sampled_from(list("ab: \tZ;=\x0b\x0c\x1c\x85\u2028\xe9\ufffd")), max_size=12)
_NAME = st.text(st.sampled_from(list("Subject-FromX!~9")), max_size=8)
_LINE = st.one_of(
    st.builds(lambda name, value: f"{name}:{value}", _NAME, _VALUE),  # a field ("" name too)
    st.builds(lambda lead, value: lead + value, st.sampled_from([" ", "\t"]), _VALUE),
    st.builds(lambda value: "From " + value, _VALUE),  # an mbox envelope line
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_LINE, st.sampled_from(["\r\n", "\n"])), min_size=1, max_size=8),
       st.booleans())  # fmt: skip
def test_header_fields_are_the_email_packages(lines: list[tuple[str, str]], last_end: bool) -> None:
    """`header_fields` against the email package's feedparser (compat32), which the walk used
    before: the same fields, values and defects for every block of header lines."""
    text = "".join(line + end for line, end in lines)
    if not last_end:
        text = text[: -len(lines[-1][1])]
    parsed = email.parser.Parser(policy=email.policy.compat32).parsestr(text, headersonly=True)
    expected = [(str(name), str(value)) for name, value in parsed.raw_items()]
    assert header_fields(text) == (expected, [type(d).__name__ for d in parsed.defects])
