"""ESMTP parameters of MAIL and RCPT (mailgate.smtp.params): SIZE (RFC 1870), BODY (RFC 6152),
SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT and xtext (RFC 3461).

Every refusal is checked as the exact reply the client sees: code, enhanced code and text.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.params import (
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
    xtext_decode,
    xtext_encode,
)
from mailgate.types import Reply


def bad(name: str) -> Reply:
    return Reply(501, "5.5.4", f"Bad {name} parameter syntax")


def unsupported(name: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {name}")


def mail_refusal(text: str, **kwargs: bool) -> Reply:
    with pytest.raises(ParamError) as info:
        parse_mail_params(text, **kwargs)
    return info.value.reply


def rcpt_refusal(text: str) -> Reply:
    with pytest.raises(ParamError) as info:
        parse_rcpt_params(text)
    return info.value.reply


# -- MAIL ------------------------------------------------------------------------------------


def test_no_parameters() -> None:
    assert parse_mail_params("") == MailParams()
    assert parse_rcpt_params("") == RcptParams()


def test_all_mail_parameters_together() -> None:
    params = parse_mail_params("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159")
    assert params == MailParams(
        size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ314159"
    )


def test_keywords_are_case_insensitive() -> None:
    params = parse_mail_params("size=42 body=8bitmime smtputf8 ret=full envid=x")
    assert params == MailParams(size=42, body="8BITMIME", smtputf8=True, ret="FULL", envid="x")


@pytest.mark.parametrize(("text", "size"), [("SIZE=0", 0), ("SIZE=10240000", 10_240_000)])
def test_size(text: str, size: int) -> None:
    assert parse_mail_params(text).size == size


@pytest.mark.parametrize(
    "text",
    [
        "SIZE",
        "SIZE=",
        "SIZE=-1",
        "SIZE=+5",
        "SIZE=1x",
        "SIZE=1.5",
        "SIZE=" + "9" * 21,
        # Only ASCII digits are digits in SMTP (RFC 1870 size-value = 1*20DIGIT).
        "SIZE=²",
        "SIZE=\u0661\u0662",
    ],
)
def test_bad_size(text: str) -> None:
    assert mail_refusal(text) == bad("SIZE")


@pytest.mark.parametrize(("text", "body"), [("BODY=7BIT", "7BIT"), ("BODY=8bitmime", "8BITMIME")])
def test_body(text: str, body: str) -> None:
    assert parse_mail_params(text).body == body


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("BODY=BINARYMIME", unsupported("BODY=BINARYMIME")),
        ("BODY=binarymime", unsupported("BODY=binarymime")),
        ("BODY=", unsupported("BODY=")),
        ("BODY", unsupported("BODY=")),
    ],
)
def test_bad_body(text: str, reply: Reply) -> None:
    assert mail_refusal(text) == reply


def test_smtputf8() -> None:
    assert parse_mail_params("SMTPUTF8").smtputf8 is True
    assert parse_mail_params("").smtputf8 is False
    assert mail_refusal("SMTPUTF8=yes") == bad("SMTPUTF8")


def test_smtputf8_when_not_offered() -> None:
    assert mail_refusal("SMTPUTF8", smtputf8_enabled=False) == unsupported("SMTPUTF8")


@pytest.mark.parametrize(("text", "ret"), [("RET=FULL", "FULL"), ("RET=hdrs", "HDRS")])
def test_ret(text: str, ret: str) -> None:
    assert parse_mail_params(text).ret == ret


@pytest.mark.parametrize("text", ["RET", "RET=", "RET=BODY", "RET=FULLX"])
def test_bad_ret(text: str) -> None:
    assert mail_refusal(text) == bad("RET")


@pytest.mark.parametrize(
    ("text", "envid"),
    [
        ("ENVID=abc", "abc"),
        ("ENVID=a+2Bb+3Dc", "a+b=c"),
        ("ENVID=x+20y", "x y"),
        ("ENVID=" + "a" * 100, "a" * 100),
    ],
)
def test_envid(text: str, envid: str) -> None:
    assert parse_mail_params(text).envid == envid


@pytest.mark.parametrize(
    "text",
    [
        "ENVID",
        "ENVID=",
        "ENVID=" + "a" * 101,
        "ENVID=a+2b",  # hex digits of xtext are upper case (RFC 3461 section 4)
        "ENVID=a+",
        "ENVID=a+G0",
        "ENVID=a=b",  # "=" must be encoded
    ],
)
def test_bad_envid(text: str) -> None:
    assert mail_refusal(text) == bad("ENVID")


@pytest.mark.parametrize("text", ["AUTH=<>", "AUTH=user+40example.com", "AUTH=anything SIZE=5"])
def test_auth_ignored(text: str) -> None:
    # RFC 4954 section 5: without an authenticated session the value is ignored, not refused.
    params = parse_mail_params(text)
    assert params.envid is None
    assert params.size == (5 if "SIZE" in text else None)


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("XFOO=1", unsupported("XFOO")),
        ("xfoo", unsupported("XFOO")),
        ("SIZE=10 X-FOO=bar", unsupported("X-FOO")),
        ("NOTIFY=NEVER", unsupported("NOTIFY")),  # a RCPT parameter on MAIL
        ("ORCPT=rfc822;a@b", unsupported("ORCPT")),
    ],
)
def test_unknown_mail_parameter(text: str, reply: Reply) -> None:
    assert mail_refusal(text) == reply


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("X_Y=1", bad("X_Y")),
        ("-X=1", bad("-X")),
        ("=1", bad("empty")),
    ],
)
def test_malformed_keyword(text: str, reply: Reply) -> None:
    assert mail_refusal(text) == reply


def test_refusal_reply_renders_on_the_wire() -> None:
    assert mail_refusal("BODY=BINARYMIME").render() == (
        b"555 5.5.4 Unsupported option: BODY=BINARYMIME\r\n"
    )


# -- RCPT ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "notify"),
    [
        ("NOTIFY=NEVER", ("NEVER",)),
        ("NOTIFY=never", ("NEVER",)),
        ("NOTIFY=SUCCESS", ("SUCCESS",)),
        ("NOTIFY=SUCCESS,FAILURE,DELAY", ("DELAY", "FAILURE", "SUCCESS")),
        ("NOTIFY=failure,delay", ("DELAY", "FAILURE")),
        ("NOTIFY=FAILURE,FAILURE", ("FAILURE",)),
    ],
)
def test_notify(text: str, notify: tuple[str, ...]) -> None:
    assert parse_rcpt_params(text).notify == notify


@pytest.mark.parametrize(
    "text",
    [
        "NOTIFY",
        "NOTIFY=",
        "NOTIFY=NEVER,SUCCESS",  # RFC 3461 section 4.1: NEVER stands alone
        "NOTIFY=FAILURE,NEVER",
        "NOTIFY=SUCCESS,,FAILURE",
        "NOTIFY=ALWAYS",
    ],
)
def test_bad_notify(text: str) -> None:
    assert rcpt_refusal(text) == bad("NOTIFY")


@pytest.mark.parametrize(
    ("text", "orcpt"),
    [
        ("ORCPT=rfc822;user@example.com", "rfc822;user@example.com"),
        ("ORCPT=RFC822;user+2Btag@example.com", "rfc822;user+tag@example.com"),
        ("ORCPT=rfc822;a+3Db@example.com", "rfc822;a=b@example.com"),
        # xtext encodes octets: "+C3+A9" is the UTF-8 of "é".
        ("ORCPT=rfc822;j+C3+A9r+C3+B4me@example.com", "rfc822;jérôme@example.com"),
    ],
)
def test_orcpt(text: str, orcpt: str) -> None:
    assert parse_rcpt_params(text).orcpt == orcpt


@pytest.mark.parametrize(
    "text",
    [
        "ORCPT",
        "ORCPT=rfc822",
        "ORCPT=;user@example.com",
        "ORCPT=rfc822;",
        "ORCPT=rfc822;a+zz@example.com",
        "ORCPT=rfc822;a=b@example.com",
        "ORCPT=rfc822;" + "a" * 501,
    ],
)
def test_bad_orcpt(text: str) -> None:
    assert rcpt_refusal(text) == bad("ORCPT")


def test_notify_and_orcpt_together() -> None:
    assert parse_rcpt_params("NOTIFY=NEVER ORCPT=rfc822;a@example.com") == RcptParams(
        notify=("NEVER",), orcpt="rfc822;a@example.com"
    )


@pytest.mark.parametrize(
    ("text", "reply"),
    [("SIZE=10", unsupported("SIZE")), ("XFOO=1", unsupported("XFOO"))],
)
def test_unknown_rcpt_parameter(text: str, reply: Reply) -> None:
    assert rcpt_refusal(text) == reply


# -- xtext -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("plain", "plain"),
        ("a+b=c", "a+2Bb+3Dc"),
        ("a b", "a+20b"),
        ("é", "+C3+A9"),
        ("€", "+E2+82+AC"),
        ("\x00", "+00"),
    ],
)
def test_xtext_encode(text: str, encoded: str) -> None:
    assert xtext_encode(text) == encoded


@pytest.mark.parametrize(
    ("text", "decoded"),
    [("plain", "plain"), ("a+2Bb+3Dc", "a+b=c"), ("+C3+A9t+C3+A9", "été")],
)
def test_xtext_decode(text: str, decoded: str) -> None:
    assert xtext_decode(text) == decoded


@pytest.mark.parametrize("text", ["a+", "a+2", "a+2b", "a=b", "a b", "é", "a\x7f"])
def test_xtext_decode_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the documented error is a plain ValueError
        xtext_decode(text)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii()
    assert all("!" <= ch <= "~" and ch != "=" for ch in encoded)
    assert xtext_decode(encoded) == text
