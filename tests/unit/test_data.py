"""Message content after DATA (mailgate.smtp.data): line ends, dot-unstuffing (RFC 5321 section
4.5.2), the header section, hop counting, the Received header (RFC 5321 section 4.4), and long
lines broken on the way out (Postfix's smtp_line_length_limit).
"""

from __future__ import annotations

import email
import email.policy
import random
from datetime import UTC, datetime

import pytest

from mailgate.smtp import data
from mailgate.smtp.data import (
    END_OF_DATA,
    count_hops,
    crlf_only,
    find_end_of_data,
    fold_long_lines,
    has_long_line,
    header_line,
    header_section,
    normalize,
    received_header,
    stuff,
)

WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
STAMP = "Tue, 02 Jan 2024 03:04:05 +0000"


# -- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # CRLF is kept as it is.
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        # Bare LF and bare CR become CRLF.
        (b"Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"Subject: x\r\rbody\r", b"Subject: x\r\n\r\nbody\r\n"),
        (b"a\r\nb\nc\rd\r\n", b"a\r\nb\r\nc\r\nd\r\n"),
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        # Content without a final CRLF gets one.
        (b"abc", b"abc\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n"),
        (b"", b""),
        # Dot-unstuffing, the first line included.
        (b"..leading dot\r\n", b".leading dot\r\n"),
        (b".x\r\n", b"x\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
        (b"a\r\n...\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        # A stuffed ".." line is a line holding one period.
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"..\r\n", b".\r\n"),
        # Periods elsewhere in a line are content.
        (b"a.b\r\nc .\r\n", b"a.b\r\nc .\r\n"),
        # Unstuffing applies to lines that ended in a bare LF too, after they become CRLF.
        (b"a\n..b\n", b"a\r\n.b\r\n"),
    ],
)
def test_normalize(raw: bytes, expected: bytes) -> None:
    assert normalize(raw) == expected


def test_normalize_leaves_no_bare_line_ends() -> None:
    out = normalize(b"a\nb\rc\r\n.\n.d\r.e\n")
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")


@pytest.mark.parametrize("window", [1, 2, 3, 1 << 20])
@pytest.mark.parametrize("seed", range(100))
def test_crlf_only_agrees_with_counting_line_ends(
    seed: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small windows put the window edges between a CR and its LF, and everywhere else.
    monkeypatch.setattr(data, "_CRLF_WINDOW", window)
    rng = random.Random(seed)
    raw = b"".join(rng.choice([b"\r\n", b"\r\n", b"\r", b"\n", b"a", b"\n\r"])
                   for _ in range(rng.randrange(0, 12)))  # fmt: skip
    crlf = raw.count(b"\r\n")
    assert crlf_only(raw) == (raw.count(b"\r") == crlf == raw.count(b"\n")), raw


def test_unstuffing_then_stuffing_gives_the_wire_form_back() -> None:
    wire = b"..first\r\nplain\r\n..\r\n...x\r\nend.\r\n"
    content = normalize(wire)
    assert content == b".first\r\nplain\r\n.\r\n..x\r\nend.\r\n"
    assert stuff(content) == wire
    assert stuff(b"no dot\r\nat a line start.\r\n") == b"no dot\r\nat a line start.\r\n"
    assert stuff(b".") == b".."
    assert stuff(b"") == b""


# -- find_end_of_data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "start", "expected"),
    [
        (b"\r\nbody\r\n.\r\n", 0, 6),
        (b"\r\n.\r\n", 0, 0),  # an empty message
        (b"\r\nbody\r\n.\r", 0, -1),  # not yet complete
        (b"\r\nbody\r\n..\r\n", 0, -1),  # a stuffed period is content
        # Pipelined: the first end counts, not the last.
        (b"\r\na\r\n.\r\nMAIL FROM:<>\r\nb\r\n.\r\n", 0, 3),
        # Overlapping sequences: the first begins the end.
        (b"\r\na\r\n.\r\n.\r\n", 0, 3),
        # The search starts at `start`: an end before it was seen already.
        (b"\r\na\r\n.\r\nb\r\n.\r\n", 4, 9),
        (b"\r\na\r\n.\r\n", 4, -1),
    ],
)
def test_find_end_of_data(buf: bytes, start: int, expected: int) -> None:
    assert find_end_of_data(buf, start) == expected
    assert find_end_of_data(bytearray(buf), start) == expected


@pytest.mark.parametrize("seed", range(300))
def test_find_end_of_data_agrees_with_a_forward_search(seed: int) -> None:
    # Short random pieces from the sequence's own bytes make ends, overlaps and near misses.
    rng = random.Random(seed)
    pieces = [b"\r\n", b".", b"\r", b"\n", b"x", END_OF_DATA, b"\r\n."]
    buf = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
    for start in range(len(buf) + 1):
        assert find_end_of_data(buf, start) == buf.find(END_OF_DATA, start), (buf, start)


# -- header_section --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\r\nB: 2\r\n\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\r\n\tfolded\r\n\r\nbody\r\n\r\nmore\r\n", b"A: 1\r\n\tfolded\r\n"),
        # No empty line: the whole message is header.
        (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n"),
        # An empty line first: no header at all.
        (b"\r\nbody\r\n", b""),
        (b"", b""),
    ],
)
def test_header_section(content: bytes, expected: bytes) -> None:
    assert header_section(content) == expected


# -- header_line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("X-Mailgate-Antivirus", "clean", "X-Mailgate-Antivirus: clean\r\n"),
        ("X-Empty", "", "X-Empty: \r\n"),
        # Control characters, line breaks included, become "?": no header of its own.
        ("X-A", "a\r\nB: injected\n\tc", "X-A: a??B: injected??c\r\n"),
        # Runs of spaces become one.
        ("X-A", "  a   b ", "X-A: a b\r\n"),
        ("X-A", "bell\x07here", "X-A: bell?here\r\n"),
        # Exactly 78 characters stays one line; one more folds before the last word.
        ("X-A", "b" * 73, "X-A: " + "b" * 73 + "\r\n"),
        ("X-A", "b" * 70 + " cc", "X-A: " + "b" * 70 + " cc\r\n"),
        ("X-A", "b" * 71 + " cc", "X-A: " + "b" * 71 + "\r\n\tcc\r\n"),
        # A word longer than the width is not broken.
        ("X-A", "c" * 100, "X-A: " + "c" * 100 + "\r\n"),
    ],
)
def test_header_line(name: str, value: str, expected: str) -> None:
    assert header_line(name, value) == expected


@pytest.mark.parametrize("seed", range(100))
def test_header_line_folds_at_spaces_within_the_width(seed: int) -> None:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abc=;.()") for _ in range(rng.randrange(1, 30)))
             for _ in range(rng.randrange(0, 40))]  # fmt: skip
    value = " ".join(words)
    field = header_line("Authentication-Results", value)
    assert field.endswith("\r\n")
    lines = field[:-2].split("\r\n")
    assert all(line.startswith("\t") for line in lines[1:])
    # Unfolded, it is the field as written; every line fits unless one word alone is longer.
    assert " ".join(line.removeprefix("\t") for line in lines) == f"Authentication-Results: {value}"
    for line in lines:
        assert len(line) <= 78 or " " not in line.removeprefix("\t").partition(": ")[2], line


# -- count_hops ------------------------------------------------------------------------------


def test_count_hops_case_insensitive_at_line_start() -> None:
    header = (
        b"Received: from a by b\r\n"
        b"\tfor <x@example.com>; date\r\n"
        b"received: from c\r\n"
        b"RECEIVED:\tfrom d\r\n"
        b"Received : from e\r\n"
        b"X-Received: not a hop\r\n"
        b"Subject: Received: not a hop\r\n"
        b"\tReceived: a continuation line, not a hop\r\n"
        b" Received: neither\r\n"
        b"ReceivedX: nor this\r\n"
    )
    assert count_hops(header) == 4


def test_count_hops_none() -> None:
    assert count_hops(b"Subject: hi\r\nFrom: a@example.com\r\n") == 0
    assert count_hops(b"") == 0


# -- received_header -------------------------------------------------------------------------


def test_received_header_layout() -> None:
    header = received_header(
        helo="client.example.org",
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="ESMTP",
        qid="0000ABCDEFGHJK",
        recipient="bob@example.com",
        when=WHEN,
    )
    assert header == (
        "Received: from client.example.org (unknown [192.0.2.1])\r\n"
        "\tby gw.example.com (mailgate) with ESMTP id 0000ABCDEFGHJK\r\n"
        f"\tfor <bob@example.com>; {STAMP}\r\n"
    )


def test_received_header_ipv6_and_tls() -> None:
    header = received_header(
        helo="client.example.org",
        client_name="mail.example.org",
        client_ip="2001:db8::1",
        hostname="gw.example.com",
        proto="ESMTPS",
        qid="Q1",
        recipient="bob@example.com",
        when=WHEN,
        tls="using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
    )
    assert header == (
        "Received: from client.example.org (mail.example.org [IPv6:2001:db8::1])\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
        "\tby gw.example.com (mailgate) with ESMTPS id Q1\r\n"
        f"\tfor <bob@example.com>; {STAMP}\r\n"
    )


def test_received_header_without_single_recipient() -> None:
    # Several recipients: no "for" clause (it would disclose the other recipients).
    header = received_header(
        helo="client.example.org",
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="SMTP",
        qid="Q2",
        recipient=None,
        when=WHEN,
    )
    assert header == (
        "Received: from client.example.org (unknown [192.0.2.1])\r\n"
        f"\tby gw.example.com (mailgate) with SMTP id Q2; {STAMP}\r\n"
    )
    assert "for <" not in header


def test_received_header_without_helo_uses_ip() -> None:
    header = received_header(
        helo="",
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="SMTP",
        qid="Q3",
        recipient=None,
        when=WHEN,
    )
    assert header.startswith("Received: from 192.0.2.1 (unknown [192.0.2.1])\r\n")


def _header_lines(header: str) -> list[str]:
    assert header.endswith("\r\n")
    lines = header[:-2].split("\r\n")
    assert all("\r" not in line and "\n" not in line for line in lines)
    return lines


@pytest.mark.parametrize(
    "helo",
    [
        "evil\r\nX-Evil: 1",
        "evil\nX-Evil: 1",
        "evil\rX-Evil: 1",
        "evil\r\n\r\nX-Evil: 1",
        "evil\u2028X-Evil: 1",
        "evil\x85X-Evil: 1",
    ],
)
def test_received_header_hostile_helo_cannot_inject(helo: str) -> None:
    header = received_header(
        helo=helo,
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="ESMTP",
        qid="Q4",
        recipient="bob@example.com",
        when=WHEN,
    )
    lines = _header_lines(header)
    assert len(lines) == 3
    assert lines[0].startswith("Received: from evil")
    assert lines[0].endswith(" (unknown [192.0.2.1])")
    assert all(line.startswith("\t") for line in lines[1:])
    message = email.message_from_string(
        header + "Subject: x\r\n\r\nbody\r\n", policy=email.policy.default
    )
    assert message.keys() == ["Received", "Subject"]
    assert message["X-Evil"] is None


def test_received_header_hostile_recipient_and_tls_cannot_inject() -> None:
    header = received_header(
        helo="client.example.org",
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="ESMTPS",
        qid="Q5",
        recipient="bob@example.com\r\nBcc: x@evil.example",
        when=WHEN,
        tls="TLSv1.3\r\nX-Evil: 1",
    )
    lines = _header_lines(header)
    assert len(lines) == 4
    message = email.message_from_string(header + "\r\n", policy=email.policy.default)
    assert message.keys() == ["Received"]


def test_received_header_helo_cannot_close_the_comment() -> None:
    # Parentheses in the HELO would end the "(name [ip])" comment early and forge its content.
    header = received_header(
        helo="evil) (trusted.example [10.0.0.1]",
        client_name="unknown",
        client_ip="192.0.2.1",
        hostname="gw.example.com",
        proto="ESMTP",
        qid="Q6",
        recipient=None,
        when=WHEN,
    )
    first = _header_lines(header)[0]
    assert first == "Received: from evil trusted.example [10.0.0.1] (unknown [192.0.2.1])"


# -- fold_long_lines ---------------------------------------------------------------------------


def postfix_text_out(content: bytes, limit: int, record: int = 2048) -> bytes:
    """What Postfix's SMTP client writes for `content`, before dot-stuffing (smtp_proto.c,
    smtp_text_out): the queue file holds each line as records of at most `record` octets
    (line_length_limit), all but the last of a line marked "continued", and the output is
    counted record by record. A reference written from that algorithm, not from
    fold_long_lines."""
    out = bytearray()
    space_left = limit
    for line in content.split(b"\r\n")[:-1]:
        records = [line[i : i + record] for i in range(0, len(line), record)] or [b""]
        for number, text in enumerate(records):
            cont = number < len(records) - 1
            left, start = len(text), 0
            while True:
                if limit > 0 and left >= space_left:
                    out += text[start : start + space_left] + b"\r\n"
                    start += space_left
                    left -= space_left
                    space_left = limit
                    if left > 0 or cont:
                        out += b" "
                        space_left -= 1
                else:
                    out += text[start:]
                    if cont:
                        space_left -= left
                    else:
                        out += b"\r\n"
                        space_left = limit
                    break
                if left <= 0:
                    break
    return bytes(out)


@pytest.mark.parametrize("length", [997, 998, 999, 1000, 1995, 1996, 2048, 2049, 4100, 10_000])
def test_a_long_line_is_broken_as_postfix_breaks_it(length: int) -> None:
    content = b"Subject: x\r\n\r\nshort\r\n" + bytes(48 + i % 10 for i in range(length)) + b"\r\n"
    folded = fold_long_lines(content, 998)
    assert folded == postfix_text_out(content, 998)
    assert max(len(line) for line in folded.split(b"\r\n")) <= 998
    # Taking out each inserted CRLF and space gives the original back.
    assert folded.replace(b"\r\n ", b"") == content


def test_the_broken_pieces_are_the_limit_then_a_space_and_one_less() -> None:
    line = b"a" * 998 + b"b" * 997 + b"c" * 5
    folded = fold_long_lines(b"X-Long: " + line + b"\r\n\r\nbody\r\n", 998)
    assert folded == (b"X-Long: " + line[:990] + b"\r\n " + line[990:1987] + b"\r\n "
                      + line[1987:] + b"\r\n\r\nbody\r\n")  # fmt: skip


def test_lines_within_the_limit_come_back_as_the_same_object() -> None:
    content = b"Subject: x\r\n\r\n" + b"\r\n".join(b"y" * n for n in (998, 600, 76, 998)) + b"\r\n"
    assert fold_long_lines(content, 998) is content
    short = b"Subject: x\r\n\r\n" + (b"w" * 74 + b"\r\n") * 1400
    assert fold_long_lines(short, 998) is short
    long = b"Subject: x\r\n\r\n" + b"v" * 5000 + b"\r\n"
    assert fold_long_lines(long, 0) is long


@pytest.mark.parametrize("limit", [78, 500, 998, 999, 1000])
@pytest.mark.parametrize("seed", range(20))
def test_random_line_lengths_match_postfix(limit: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = [bytes(rng.choice(b"abc. ") for _ in range(rng.choice([0, 1, 77, limit - 1, limit,
             limit + 1, 2 * limit, 3000, rng.randrange(5000)]))) for _ in range(30)]  # fmt: skip
    content = b"\r\n".join(lines) + b"\r\n"
    assert fold_long_lines(content, limit) == postfix_text_out(content, limit)


def test_a_line_starting_with_a_dot_stays_a_line_start_for_dot_stuffing() -> None:
    # The continuation begins with a space, so only the first piece can need a second dot.
    content = b"." + b"d" * 1500 + b"\r\n"
    folded = fold_long_lines(content, 998)
    assert folded == b"." + b"d" * 997 + b"\r\n " + b"d" * 503 + b"\r\n"


@pytest.mark.parametrize("seed", range(200))
def test_has_long_line_agrees_with_measuring_every_line(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([78, 100, 998])
    lengths = [rng.choice([0, 1, limit - 2, limit - 1, limit, limit + 1, rng.randrange(3 * limit)])
               for _ in range(rng.randrange(1, 40))]  # fmt: skip
    content = b"".join(b"x" * n + b"\r\n" for n in lengths)
    if rng.random() < 0.3:  # a last line without its CRLF
        content += b"y" * rng.choice([limit, limit + 1, 5])
    expected = max(len(line) for line in content.split(b"\r\n")) > limit
    assert has_long_line(content, limit) is expected
