"""The Authentication-Results value (mailgate.auth.results, RFC 8601): its format, and that
nothing taken from a message or its DNS can break out of it (header injection)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from mailgate.auth.dkim import DkimSignatureResult
from mailgate.auth.dmarc import DmarcResult
from mailgate.auth.results import authentication_results, comment, one_line, value
from mailgate.auth.spf import SpfResult

# -- a small RFC 8601 §2.2 reader, to check what the module writes ---------------------------


@dataclass
class ResInfo:
    method: str
    result: str
    reason: str | None = None
    props: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)


_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_WORD = re.compile(r"[^\s;()\"=]+")


def _lex(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == " ":
            i += 1
        elif char in ";=":
            tokens.append((char, char))
            i += 1
        elif char == "(":
            depth, start, i = 1, i + 1, i + 1
            while depth:
                if i >= len(text):
                    raise ValueError(f"unterminated comment in {text!r}")
                if text[i] == "\\":
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            tokens.append(("comment", re.sub(r"\\(.)", r"\1", text[start : i - 1])))
        elif char == '"':
            out, i = [], i + 1
            while True:
                if i >= len(text):
                    raise ValueError(f"unterminated quoted-string in {text!r}")
                if text[i] == "\\":
                    out.append(text[i + 1])
                    i += 2
                elif text[i] == '"':
                    i += 1
                    break
                else:
                    out.append(text[i])
                    i += 1
            tokens.append(("string", "".join(out)))
        else:
            match = _WORD.match(text, i)
            if not match:
                raise ValueError(f"unexpected {char!r} at {i} in {text!r}")
            tokens.append(("word", match.group()))
            i = match.end()
    return tokens


def parse_authres(text: str) -> tuple[str, list[ResInfo]]:
    """(authserv-id, resinfo list) of an Authentication-Results value; ValueError if malformed."""
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"not one line of printable ASCII: {text!r}")
    tokens = list(_lex(text))
    kind, authserv = tokens.pop(0)
    if kind not in ("word", "string") or (kind == "word" and not _TOKEN.fullmatch(authserv)):
        raise ValueError(f"bad authserv-id {authserv!r}")
    results: list[ResInfo] = []
    if [t[1] for t in tokens] == [";", "none"]:
        return authserv, results
    while tokens:
        if tokens.pop(0)[0] != ";":
            raise ValueError(f"expected ; in {text!r}")
        (k1, method), (k2, _eq), (k3, result) = tokens[:3]
        if (k1, k2, k3) != ("word", "=", "word"):
            raise ValueError(f"bad methodspec in {text!r}")
        del tokens[:3]
        info = ResInfo(method, result)
        while tokens and tokens[0][0] != ";":
            kind, word = tokens.pop(0)
            if kind == "comment":
                info.comments.append(word)
                continue
            if kind != "word" or not tokens or tokens.pop(0)[0] != "=":
                raise ValueError(f"bad property {word!r} in {text!r}")
            vkind, pvalue = tokens.pop(0)
            if vkind == "word" and not (
                _TOKEN.fullmatch(pvalue) or re.fullmatch(r"[^@\s]+@" + _TOKEN.pattern, pvalue)
            ):
                raise ValueError(f"bad value {pvalue!r} in {text!r}")
            if vkind not in ("word", "string"):
                raise ValueError(f"bad value for {word!r} in {text!r}")
            if word == "reason":
                info.reason = pvalue
            elif re.fullmatch(r"[a-z]+\.[a-z]+", word):
                info.props[word] = pvalue
            else:
                raise ValueError(f"bad property name {word!r} in {text!r}")
        results.append(info)
    return authserv, results


# -- fixtures ----------------------------------------------------------------------------------


def spf_result(
    result: str = "pass",
    sender: str = "alice@example.com",
    helo: str = "mx.example.com",
    identity: str = "mailfrom",
    ip: str = "192.0.2.1",
) -> SpfResult:
    domain = sender.rpartition("@")[2]
    return SpfResult(result, "", domain, identity, sender, ip, helo)  # type: ignore[arg-type]


DKIM_PASS = DkimSignatureResult("pass", "example.com", "sel", "", "rsa-sha256")
DMARC_PASS = DmarcResult("pass", "example.com", "none", "reject", "example.com")


def test_full_header() -> None:
    text = authentication_results(
        "mailgate.example.net",
        spf=spf_result(),
        dkim=[DKIM_PASS],
        dmarc=DMARC_PASS,
        client_ip="192.0.2.1",
        client_source="xforward",
    )
    assert text == (
        "mailgate.example.net; "
        "spf=pass (mailgate: client 192.0.2.1 from XFORWARD) smtp.mailfrom=alice@example.com; "
        "dkim=pass header.d=example.com header.s=sel; "
        "dmarc=pass (p=reject dis=none) header.from=example.com"
    )
    authserv, infos = parse_authres(text)
    assert authserv == "mailgate.example.net"
    assert [(i.method, i.result) for i in infos] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
    ]
    assert infos[0].props == {"smtp.mailfrom": "alice@example.com"}
    assert infos[0].comments == ["mailgate: client 192.0.2.1 from XFORWARD"]


def test_client_sources() -> None:
    for source, label in [
        ("connection", "connection"),
        ("xclient", "XCLIENT"),
        ("received", "Received header"),
        ("", "connection"),
    ]:
        text = authentication_results(
            "gw", spf=spf_result(), client_ip="192.0.2.9", client_source=source
        )
        assert f"(mailgate: client 192.0.2.9 from {label})" in text


def test_null_sender_reports_helo() -> None:
    result = spf_result(sender="postmaster@mx.example.org", helo="mx.example.org", identity="helo")
    text = authentication_results("gw", spf=result, client_ip="192.0.2.1")
    assert text.endswith("smtp.helo=mx.example.org")
    assert "smtp.mailfrom" not in text


def test_dkim_none_several_and_reasons() -> None:
    assert authentication_results("gw", dkim=()) == "gw; dkim=none"
    failed = DkimSignatureResult("fail", "example.org", "s2", "body hash mismatch")
    text = authentication_results("gw", dkim=[DKIM_PASS, failed])
    assert text == (
        "gw; dkim=pass header.d=example.com header.s=sel; "
        'dkim=fail reason="body hash mismatch" header.d=example.org header.s=s2'
    )
    _, infos = parse_authres(text)
    assert infos[1].reason == "body hash mismatch"


def test_dmarc_variants() -> None:
    failed = DmarcResult(
        "fail", "example.com", "quarantine", "reject", "example.com", sampled=False
    )
    assert authentication_results("gw", dmarc=failed) == (
        "gw; dmarc=fail (p=reject dis=quarantine) header.from=example.com"
    )
    assert authentication_results("gw", dmarc=DmarcResult("none", "example.com")) == (
        "gw; dmarc=none header.from=example.com"
    )
    assert authentication_results("gw", dmarc=DmarcResult("permerror", "")) == "gw; dmarc=permerror"
    two = authentication_results("gw", dmarc=[DMARC_PASS, failed])
    assert [i.method for i in parse_authres(two)[1]] == ["dmarc", "dmarc"]


def test_nothing_evaluated_is_none() -> None:
    assert authentication_results("gw") == "gw; none"
    assert authentication_results("gw", dmarc=[]) == "gw; none"


def test_unusual_but_valid_values_are_quoted() -> None:
    quoted_local = spf_result(sender='"john doe"@example.com')
    text = authentication_results("gw", spf=quoted_local)
    assert 'smtp.mailfrom="\\"john doe\\"@example.com"' in text
    assert parse_authres(text)[1][0].props["smtp.mailfrom"] == '"john doe"@example.com'
    literal = spf_result(sender="", helo="[192.0.2.1]", identity="helo")
    assert 'smtp.helo="[192.0.2.1]"' in authentication_results("gw", spf=literal)
    assert authentication_results("gate (1)") == '"gate (1)"; none'


def test_idn_domains_become_a_labels() -> None:
    result = spf_result(sender="jörg@bücher.example")
    text = authentication_results("gw", spf=result, dmarc=DmarcResult("none", "bücher.example"))
    # Non-ASCII outside domains is not kept (the value stays ASCII whatever the message).
    assert "smtp.mailfrom=j?rg@xn--bcher-kva.example" in text
    assert "header.from=xn--bcher-kva.example" in text


# -- injection ---------------------------------------------------------------------------------


def test_header_injection_in_sender_is_neutralised() -> None:
    evil = spf_result(sender="a@example.com\r\nX-Injected: yes")
    text = authentication_results("gw", spf=evil)
    assert "\r" not in text
    assert "\n" not in text
    _, (info,) = parse_authres(text)
    assert info.props["smtp.mailfrom"] == "a@example.com x-injected: yes"


def test_semicolons_and_equals_cannot_add_results() -> None:
    evil_d = DkimSignatureResult("fail", "example.com; dmarc=pass", "s; spf=pass", 'x"; dkim=pass')
    evil_from = DmarcResult(
        "fail", "evil.example header.from=example.com; dmarc=pass", "reject", "reject"
    )
    text = authentication_results("gw", dkim=[evil_d], dmarc=evil_from)
    _, infos = parse_authres(text)
    assert [(i.method, i.result) for i in infos] == [("dkim", "fail"), ("dmarc", "fail")]
    assert infos[0].props["header.d"] == "example.com; dmarc=pass"
    assert infos[0].reason == 'x"; dkim=pass'


def test_comment_breakout_is_escaped() -> None:
    text = authentication_results(
        "gw",
        spf=spf_result(),
        client_ip="192.0.2.1) smtp.mailfrom=ceo@bank.example; dmarc=pass (",
        client_source="xforward\\",
    )
    _, infos = parse_authres(text)
    assert [i.method for i in infos] == ["spf"]
    assert infos[0].props == {"smtp.mailfrom": "alice@example.com"}
    assert infos[0].comments == [
        "mailgate: client 192.0.2.1) smtp.mailfrom=ceo@bank.example; dmarc=pass ( from xforward\\"
    ]


def test_values_are_bounded() -> None:
    long = "a" * 5000 + "@example.com"
    text = authentication_results("gw", spf=spf_result(sender=long))
    assert len(text) < 600


def test_building_blocks() -> None:
    assert one_line(" a\r\n\tb\x00c\u2028d\u00e9 ") == "a b c d?"
    assert value("example.com") == "example.com"
    assert value('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert value("") == '""'
    assert comment("x (y) \\ z") == "(x \\(y\\) \\\\ z)"


_any_text = st.text(st.characters(codec="utf-8"), max_size=80)


@given(
    sender=_any_text,
    helo=_any_text,
    ip=_any_text,
    source=_any_text,
    d=_any_text,
    s=_any_text,
    reason=_any_text,
    from_domain=_any_text,
    authserv=_any_text,
    null_sender=st.booleans(),
)
def test_any_input_gives_a_well_formed_header(
    sender: str,
    helo: str,
    ip: str,
    source: str,
    d: str,
    s: str,
    reason: str,
    from_domain: str,
    authserv: str,
    null_sender: bool,
) -> None:
    spf = spf_result("fail", sender, helo, "helo" if null_sender else "mailfrom", ip)
    dkim = DkimSignatureResult("fail", d, s, reason)
    dmarc = DmarcResult("fail", from_domain, "reject", "reject")
    text = authentication_results(
        authserv, spf=spf, dkim=[dkim], dmarc=dmarc, client_ip=ip, client_source=source
    )
    _, infos = parse_authres(text)
    assert [(i.method, i.result) for i in infos] == [
        ("spf", "fail"),
        ("dkim", "fail"),
        ("dmarc", "fail"),
    ]
