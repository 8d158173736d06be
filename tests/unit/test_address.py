"""Envelope address parsing (mailgate.smtp.address): RFC 5321 section 4.1.2 paths, RFC 6531.

The relay decision trusts what this module says about an address, so besides the syntax this
file checks every address form used to make a remote recipient look local, and fuzzes the
parser with Hypothesis.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.policy.relay import RelayPolicy
from mailgate.smtp.address import (
    AddressError,
    literal_address,
    parse_domain,
    parse_path,
    printable,
    split_path,
)
from mailgate.types import Mailbox


def mailbox(path: str) -> Mailbox:
    result = parse_path(path, allow_null=False)
    assert result is not None
    return result


# -- split_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("<user@example.com>", ("user@example.com", "")),
        (
            "<user@example.com> SIZE=1000 BODY=8BITMIME",
            ("user@example.com", "SIZE=1000 BODY=8BITMIME"),
        ),
        ("  <user@example.com>   SIZE=1  ", ("user@example.com", "SIZE=1")),
        ("<>", ("", "")),
        ("<> SIZE=10", ("", "SIZE=10")),
        # Postfix smtpd_strict_rfc821_envelope = no: a bare address is accepted.
        ("user@example.com", ("user@example.com", "")),
        ("user@example.com SIZE=10", ("user@example.com", "SIZE=10")),
        # A ">" inside a quoted local part does not end the path.
        ('<"a>b"@example.com> SIZE=10', ('"a>b"@example.com', "SIZE=10")),
        # Nor does one after an escaped quote inside the quoted string.
        ('<"a\\">b"@example.com>', ('"a\\">b"@example.com', "")),
        ("<@a.example,@b.example:user@c.example>", ("@a.example,@b.example:user@c.example", "")),
    ],
)
def test_split_path(argument: str, expected: tuple[str, str]) -> None:
    assert split_path(argument) == expected


@pytest.mark.parametrize(
    "argument",
    [
        "",
        "   ",
        "<user@example.com",  # unterminated
        '<"user>@example.com',  # the quote never closes, so neither does the path
        "<user@example.com>SIZE=10",  # garbage right after the path
        "<user@example.com>>",
    ],
)
def test_split_path_refuses(argument: str) -> None:
    with pytest.raises(AddressError):
        split_path(argument)


# -- parse_path: the ordinary forms -----------------------------------------------------------


def test_null_path_allowed_only_where_asked() -> None:
    assert parse_path("", allow_null=True) is None
    with pytest.raises(AddressError):
        parse_path("", allow_null=False)


def test_plain_address() -> None:
    m = mailbox("user@example.com")
    assert m == Mailbox(
        local="user",
        domain="example.com",
        display_domain="example.com",
        routed=False,
        literal=False,
        utf8=False,
    )
    assert m.address == "user@example.com"
    assert str(m) == "user@example.com"


def test_bare_address_through_split_path() -> None:
    path, params = split_path("User.Name+tag@Example.COM SIZE=5")
    assert params == "SIZE=5"
    m = mailbox(path)
    assert m.local == "User.Name+tag"  # the local part keeps its case
    assert m.domain == "example.com"
    assert m.display_domain == "Example.COM"


def test_domain_case_folded_and_trailing_dot_stripped() -> None:
    m = mailbox("user@EXAMPLE.com.")
    assert m.domain == "example.com"
    assert m.display_domain == "EXAMPLE.com"
    assert m.address == "user@EXAMPLE.com"
    assert not m.routed


# -- quoted local parts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "local", "routed"),
    [
        ('"john doe"@example.com', '"john doe"', False),
        ('"a\\"b"@example.com', '"a\\"b"', False),
        ('"a>b"@example.com', '"a>b"', False),
        ('"a\\\\b"@example.com', '"a\\\\b"', False),
        # A quoted "@", "%" or "!" is sender-specified routing (Postfix resolves it so).
        ('"user@evil.example"@example.com', '"user@evil.example"', True),
        ('"@"@example.com', '"@"', True),
        ('"user%evil.example"@example.com', '"user%evil.example"', True),
        ('"evil.example!user"@example.com', '"evil.example!user"', True),
        # An escaped "@" is still an "@" once unquoted.
        ('"user\\@evil.example"@example.com', '"user\\@evil.example"', True),
    ],
)
def test_quoted_local_part(path: str, local: str, routed: bool) -> None:
    m = mailbox(path)
    assert m.local == local
    assert m.domain == "example.com"
    assert m.routed is routed
    assert m.address == f"{local}@example.com"


@pytest.mark.parametrize(
    "path",
    [
        '"unterminated@example.com',
        '"a"b@example.com',  # text after the closing quote
        '"a"',  # no domain
        '"a\\',  # quoted pair cut short
    ],
)
def test_malformed_quoted_local_part_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


# -- routing operators and source routes -----------------------------------------------------


def test_source_route_stripped_and_flagged() -> None:
    m = mailbox("@a.example,@b.example:user@c.example")
    assert m.local == "user"
    assert m.domain == "c.example"
    assert m.address == "user@c.example"
    assert m.routed is True


def test_single_hop_source_route() -> None:
    m = mailbox("@relay.example:user@EXAMPLE.com")
    assert (m.local, m.domain, m.routed) == ("user", "example.com", True)


@pytest.mark.parametrize(
    "path",
    [
        "@a.example",  # no colon
        "@a.example:",  # nothing after the route
        "@:user@c.example",  # empty hop
        "@a.example,b.example:user@c.example",  # hop without "@"
        "@a.example,@:user@c.example",
        "@bad_host:user@c.example",  # hop is not a domain
    ],
)
def test_bad_source_route_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


@pytest.mark.parametrize(
    "path",
    [
        "user%evil.example@example.com",
        "evil.example!user@example.com",
        "a!b%c@example.com",
    ],
)
def test_percent_and_bang_are_routing(path: str) -> None:
    m = mailbox(path)
    assert m.domain == "example.com"
    assert m.routed is True


def test_ordinary_local_part_not_routed() -> None:
    assert mailbox("first.last+tag-1=x#y$z&'*/?^_`{|}~@example.com").routed is False


# -- IDNA ------------------------------------------------------------------------------------


def test_unicode_domain_becomes_a_label() -> None:
    m = mailbox("user@Exämple.COM")
    assert m.domain == "xn--exmple-cua.com"
    assert m.display_domain == "Exämple.COM"
    assert m.utf8 is True


@pytest.mark.parametrize(
    "text",
    ["EXAMPLE.com.", "example.com", "Example.Com", "example.com."],
)
def test_spellings_of_one_domain_are_equal(text: str) -> None:
    assert parse_domain(text) == "example.com"


@pytest.mark.parametrize(
    "text", ["exämple.com", "EXÄMPLE.COM", "xn--exmple-cua.com", "XN--EXMPLE-CUA.COM."]
)
def test_u_label_and_a_label_are_equal(text: str) -> None:
    assert parse_domain(text) == "xn--exmple-cua.com"


@pytest.mark.parametrize("text", ["xn--zz", "xn--zz.com", "a.XN--ZZ.example"])
def test_invalid_a_label_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_domain(text)
    with pytest.raises(AddressError):
        parse_path(f"user@{text}", allow_null=False)


def test_a_label_domain_needs_no_smtputf8() -> None:
    m = mailbox("user@xn--exmple-cua.com")
    assert m.domain == "xn--exmple-cua.com"
    assert m.utf8 is False


# -- utf8 flag -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "utf8"),
    [
        ("user@example.com", False),
        ("üser@example.com", True),
        ('"ü ser"@example.com', True),
        ("user@exämple.com", True),
        ("user@[192.0.2.1]", False),
        ("ü@[192.0.2.1]", True),
    ],
)
def test_utf8_flag(path: str, utf8: bool) -> None:
    assert mailbox(path).utf8 is utf8


# -- address literals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "domain", "inner"),
    [
        ("user@[192.0.2.1]", "[192.0.2.1]", "192.0.2.1"),
        ("user@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", "2001:db8::1"),
        ("user@[IPv6:2001:DB8:0:0:0:0:0:1]", "[IPv6:2001:db8::1]", "2001:db8::1"),
        ("user@[ipv6:2001:db8::1]", "[IPv6:2001:db8::1]", "2001:db8::1"),
    ],
)
def test_address_literal_canonical(path: str, domain: str, inner: str) -> None:
    m = mailbox(path)
    assert m.domain == domain
    assert m.display_domain == domain
    assert m.literal is True
    assert m.routed is False
    assert literal_address(m.domain) == inner


@pytest.mark.parametrize(
    "path",
    [
        "user@[300.1.1.1]",
        "user@[192.0.2]",
        "user@[192.0.2.1",
        "user@[]",
        "user@[IPv6:zz]",
        "user@[IPv6:192.0.2.1]",
        "user@[2001:db8::1]",  # IPv6 needs its "IPv6:" tag (RFC 5321 section 4.1.3)
        "user@[IPv4:192.0.2.1]",
        "user@[example.com]",
        "user@[192.0.2.1].",
    ],
)
def test_bad_address_literal_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("example.com", None),
        ("xn--exmple-cua.com", None),
    ],
)
def test_literal_address(domain: str, expected: str | None) -> None:
    assert literal_address(domain) == expected


# -- refused forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "user@evil.example@example.com",  # two unquoted "@"
        "a@b@c",
        "@example.com",  # empty local part
        "user@",  # empty domain
        "user",  # no domain
        "user.@example.com",
        ".user@example.com",
        "us..er@example.com",
        "us er@example.com",
        "user@exa mple.com",
        "user@exa_mple.com",
        "user@example..com",
        "user@.example.com",
        "user@example.com..",
        "user@.",
    ],
)
def test_malformed_address_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


@pytest.mark.parametrize(
    "path",
    [
        "\x01user@example.com",
        "us\x00er@example.com",
        "user\x7f@example.com",
        "user\r\n@example.com",
        "user\u0085@example.com",
        '"a\x00b"@example.com',
        '"a\tb"@example.com',
        '"a\r\nb"@example.com',
        '"a\x7fb"@example.com',
        '"a\\\x01"@example.com',
        "user@exam\x00ple.com",
        "user@example.com\r\n",
        # C1 controls (NEL is a line break for many readers) must not slip in inside quotes
        # when the unquoted form refuses them.
        '"a\u0085b"@example.com',
    ],
)
def test_control_characters_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_null=False)


@pytest.mark.parametrize("text", ["a" * 64 + ".com", "example." + "b" * 64])
def test_label_longer_than_63_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_domain(text)


def test_label_of_63_accepted() -> None:
    assert parse_domain("a" * 63 + ".com") == "a" * 63 + ".com"


def test_domain_length_limit() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert parse_domain(longest) == longest
    # The trailing dot does not count.
    assert parse_domain(longest + ".") == longest
    with pytest.raises(AddressError):
        parse_domain(longest + "d")
    with pytest.raises(AddressError):
        parse_path(f"user@{longest}x", allow_null=False)


def test_unicode_domain_whose_a_label_is_too_long_refused() -> None:
    # Each label is short in Unicode; the A-labels together exceed 253.
    label = "ä" * 20  # A-label "xn--4c" + 20 characters: 26
    text = ".".join([label] * 10)
    with pytest.raises(AddressError):
        parse_domain(text)


@pytest.mark.parametrize("text", ["-example.com", "example-.com", "www.-a.com", "www.a-.com", "-"])
def test_hyphen_at_label_edge_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_domain(text)


def test_inner_hyphens_accepted() -> None:
    assert parse_domain("Mail-Gate.Example-1.com") == "mail-gate.example-1.com"


def test_path_too_long_refused() -> None:
    with pytest.raises(AddressError):
        parse_path("a" * 1020 + "@example.com", allow_null=False)


# -- printable -------------------------------------------------------------------------------


def test_printable_replaces_controls() -> None:
    assert printable("evil\r\nX-Evil: 1\x00") == "evil??X-Evil: 1?"
    assert printable("exämple") == "exämple"


def test_printable_truncates() -> None:
    assert printable("x" * 200) == "x" * 200
    assert printable("x" * 201) == "x" * 200 + "..."
    assert printable("abcdef", limit=3) == "abc..."


# -- Hypothesis: the parser never lets a malformed or routed address through ------------------

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_LITERAL = re.compile(r"^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9a-f:.]+)\]$")

_atoms = st.text(alphabet=_ATEXT + "éü", min_size=1, max_size=8)
_dot_atom = st.lists(_atoms, min_size=1, max_size=3).map(".".join)
_qcontent = st.text(alphabet=st.sampled_from(list('ab @%!.,:<>()[];\\"é\x01\t')), max_size=10)


@st.composite
def _quoted(draw: st.DrawFn) -> str:
    raw = draw(_qcontent)
    # Mostly well-formed quoting, sometimes raw text with stray quotes and backslashes.
    if draw(st.booleans()):
        return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + raw + '"'


_label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-äßé_",
    min_size=1,
    max_size=12,
)
_domain_name = st.one_of(
    st.sampled_from(
        [
            "example.com",
            "EXAMPLE.com.",
            "Example.COM",
            "exämple.com",
            "xn--exmple-cua.com",
            "xn--zz.com",
            "XN--ZZ.com",
            "sub.example.com",
            "example.com.evil.org",
            "evil.org",
            "ｅｘａｍｐｌｅ.com",
            "example。com",
        ]
    ),
    st.tuples(
        st.lists(_label, min_size=1, max_size=4).map(".".join), st.sampled_from(["", "."])
    ).map("".join),
)
_literal = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip.exploded.upper()}]"),
    st.sampled_from(["[300.1.1.1]", "[IPv6:zz]", "[2001:db8::1]", "[]", "[192.0.2.1"]),
)
_hop = st.lists(_domain_name.map(lambda d: "@" + d), min_size=1, max_size=3).map(",".join)


@st.composite
def address_like(draw: st.DrawFn) -> str:
    local = draw(st.one_of(_dot_atom, _quoted()))
    domain = draw(st.one_of(_domain_name, _literal))
    route = draw(st.one_of(st.just(""), _hop.map(lambda h: h + ":")))
    return f"{route}{local}@{domain}"


def _unquoted_local(local: str) -> str:
    """The content of a quoted local part with its quoted pairs resolved."""
    if not local.startswith('"'):
        return local
    out = []
    i = 1
    while i < len(local) - 1:
        if local[i] == "\\":
            out.append(local[i + 1])
            i += 2
        else:
            out.append(local[i])
            i += 1
    return "".join(out)


def _check_invariants(text: str) -> Mailbox | None:
    try:
        m = parse_path(text, allow_null=False)
    except AddressError:
        return None
    assert m is not None
    if m.literal:
        assert _LITERAL.match(m.domain), m.domain
        inner = literal_address(m.domain)
        assert inner is not None
        ip = ipaddress.ip_address(inner)
        expected = f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"
        assert m.domain == expected
    else:
        assert parse_domain(m.domain) == m.domain
        assert m.domain.isascii()
        assert m.domain == m.domain.lower()
        assert not m.domain.endswith(".")
        assert len(m.domain) <= 253
        assert all(0 < len(label) <= 63 for label in m.domain.split("."))
        assert text.endswith((m.address, m.address + "."))
    unquoted = _unquoted_local(m.local)
    if text.startswith("@"):
        assert m.routed, text
    if "%" in m.local or "!" in m.local:
        assert m.routed, text
    if m.local.startswith('"') and "@" in unquoted:
        assert m.routed, text
    return m


@settings(max_examples=1000, deadline=None)
@given(st.text())
def test_fuzz_parse_path_arbitrary_text(text: str) -> None:
    _check_invariants(text)


@settings(max_examples=1000, deadline=None)
@given(address_like())
def test_fuzz_parse_path_address_like(text: str) -> None:
    _check_invariants(text)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(address_like(), st.text()))
def test_fuzz_relay_never_opened_for_untrusted(text: str) -> None:
    m = _check_invariants(text)
    if m is None:
        return
    decision = RelayPolicy(["example.com"]).decide(m, trusted=False)
    if m.domain != "example.com":
        assert not decision.permitted, text
    if m.routed or m.literal:
        assert not decision.permitted, text
    if decision.permitted:
        assert m.domain == "example.com"
        assert not m.routed
