"""Anti-Phishing (mailgate.checks.phishing): links from text and HTML parts, hosts normalised
as browsers read them (userinfo tricks, IDNA, numeric IPs, percent-escapes, backslashes),
matched against listed domains and URL patterns; never CLEAN for a message that could not be
analysed.
"""

from __future__ import annotations

import asyncio
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.checks.phishing import (
    _TEXT_URL,
    _TRAILING,
    HEADER,
    MAX_LINKS,
    PhishingCheck,
    _text_urls,
    extract_urls,
    normalise_host,
    normalise_url,
)
from mailgate.config.protection import ContentSettings, PhishingSettings, Protection
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.types import ClientInfo, Envelope, Recipient

DOMAINS = ["evil.example", "192.168.1.1", "xn--pypal-4ve.com", "bücher.example"]


def context(raw: bytes, **phishing: Any) -> ScanContext:
    client = ClientInfo("192.0.2.10", helo="mx.example")
    envelope = Envelope(
        "Q1", "a@example.com", [Recipient("b@example.net", "example.net")], client, 0.0
    )
    phishing.setdefault("domains", DOMAINS)
    protection = Protection(
        content=ContentSettings(), phishing=PhishingSettings(enabled=True, **phishing)
    )
    return ScanContext(envelope, raw, client, RealClient("192.0.2.10", "mx.example"),
                       "gw.example", protection)  # fmt: skip


def scan(raw: bytes, **phishing: Any) -> CheckResult:
    return asyncio.run(PhishingCheck().scan(context(raw, **phishing)))


def message(text: str | None = None, html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["Subject"] = "Your account"
    msg.set_content(text if text is not None else "Hello.\n")
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


# -- verdicts --------------------------------------------------------------------------------


def test_clean_message() -> None:
    result = scan(message("See https://www.example.org/page and www.example.net.\n"))
    assert result.verdict is Verdict.CLEAN
    assert result.module == "phishing"
    assert result.headers == ((HEADER, "clean"),)


def test_listed_domain_in_text() -> None:
    result = scan(message("Log in at https://login.evil.example/verify?id=1 now.\n"))
    assert result.verdict is Verdict.PHISHING
    assert result.detail == (
        "phishing links: https://login.evil.example/verify?id=1 (listed domain evil.example)"
    )
    assert result.parts == (0,)
    assert result.headers[0][1].startswith("phishing (phishing links: https://login.evil")


@pytest.mark.parametrize(
    ("link", "listed"),
    [
        ("http://evil.example", True),
        ("http://a.b.evil.example/x", True),  # subdomains
        ("http://notevil.example/", False),
        ("http://evil.example.org/", False),
        ("http://paypal.com@evil.example/", True),  # userinfo: the host is after the "@"
        ("http://evil.example@paypal.com/", False),
        ("HTTP://EVIL.EXAMPLE./", True),  # case and trailing dot
        ("http://%65vil.example/", True),  # percent-escapes in the host
        ("http:\\\\evil.example\\login", True),  # backslashes
        ("http://evil\u3002example/", True),  # ideographic full stop
        ("http://3232235777/", True),  # 192.168.1.1 in decimal
        ("http://0xC0A80101/", True),  # in hex
        ("http://0300.0250.0001.0001/", True),  # in octal
        ("http://192.168.257/", True),  # the last part fills the remaining bytes
        ("http://p\u0430ypal.com/", True),  # Cyrillic "а": listed as its A-label
        ("http://B\u00fccher.example/", True),  # listed as a U-label
        ("https://evil.example:8443/", True),
        ("ftp://files.evil.example/", True),
        ("www.evil.example/login", True),
    ],
)
def test_host_normalisation(link: str, listed: bool) -> None:
    result = scan(message(f"Click {link} please\n"))
    assert (result.verdict is Verdict.PHISHING) is listed, result.detail


def test_url_patterns_on_the_normalised_and_the_written_url() -> None:
    text = "Go to http://user@Bank-Login.example/secure/verify now\n"
    result = scan(message(text), domains=[], url_patterns=[r"^https?://bank-login\.example/secure"])
    assert result.verdict is Verdict.PHISHING
    assert "(pattern ^https?://bank-login" in result.detail
    result = scan(message(text), domains=[], url_patterns=[r"user@"])
    assert result.verdict is Verdict.PHISHING
    assert scan(message(text), domains=[], url_patterns=[r"/other"]).verdict is Verdict.CLEAN


def test_many_hits_are_summarised() -> None:
    text = " ".join(f"http://h{i}.evil.example/" for i in range(8))
    result = scan(message(text))
    assert result.verdict is Verdict.PHISHING
    assert result.detail.endswith("; and 3 more")


# -- HTML ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        '<a href="https://evil.example/login">Your bank</a>',
        '<a href="h&#116;tps://evil&#46;example/">entities</a>',
        '<base href="https://evil.example/"><a href="login">relative</a>',
        "<p>Visible text: evil.example is www.evil.example/x</p>",
        '<img src="//evil.example/pixel.gif">',
        '<form action="https://evil.example/post"></form>',
        '<meta http-equiv="refresh" content="0; url=https://evil.example/">',
        '<img srcset="https://ok.example/a.png 1x, https://evil.example/b.png 2x">',
        "<!-- https://evil.example/hidden -->",
        "<script>location = 'https://evil.example/'</script>",
        '<a href="\n  https://evil.example/\t">whitespace</a>',
    ],
)
def test_links_in_html(html: str) -> None:
    result = scan(message(html=f"<html><body>{html}</body></html>"))
    assert result.verdict is Verdict.PHISHING, html
    assert result.parts == (2,)


def test_extract_urls_from_text() -> None:
    text = "a http://one.example/x, (www.two.example). awww.three.example ftp://f.example/"
    assert extract_urls(text, is_html=False) == [
        "http://one.example/x",
        "www.two.example",
        "ftp://f.example/",
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", ["<!--", "<", "</", "<!", "<![CDATA[", '<a href="', "&#"])
def test_hostile_html_within_budget(unit: str) -> None:
    # html.parser on Python 3.11 is quadratic on unterminated constructs: it is abandoned
    # then, and the raw-source net still finds the link.
    html = "<p>https://evil.example/ " + unit * (4_000_000 // len(unit))
    assert scan(message(html=html)).verdict is Verdict.PHISHING


# -- limits and errors -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_more_links_than_checked_is_an_error() -> None:
    text = " ".join(f"http://h{i}.ok.example/" for i in range(MAX_LINKS + 1))
    result = scan(message(text))
    assert result.verdict is Verdict.ERROR
    assert result.detail == f"more than {MAX_LINKS} links: not all were checked"


def deep(levels: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels)
    )
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\nhttp://evil.example/\r\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "raw",
    [
        deep(1000),
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n\r\nhi\r\n" * 10_000,
        b"Content-Type: multipart/alternative\r\n\r\n--x\r\n\r\nhttp://ok.example/\r\n",
    ],
)
def test_too_complex_is_an_error_never_clean(raw: bytes) -> None:
    result = scan(raw)
    assert result.verdict is Verdict.ERROR
    assert result.detail.startswith("the message could not be analysed: ")


def test_header_injection_through_a_link_stays_out_of_the_header() -> None:
    # A link cannot hold CR or LF, but format characters pass into it: they are escaped.
    result = scan(message("http://evil.example/\u202egnp.exe and more\n"))
    assert result.verdict is Verdict.PHISHING
    assert "\\u202egnp.exe" in result.detail
    (name, value), *_ = result.headers
    assert name == HEADER
    assert value.isascii()
    assert "\r" not in value
    assert "\n" not in value


def test_scan_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: PhishingCheck, ctx: ScanContext) -> CheckResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(PhishingCheck, "inspect", broken)
    assert scan(message()).verdict is Verdict.ERROR


# -- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("Example.COM.", "example.com"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("3232235777", "192.168.1.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[::FFFF:192.0.2.1]", "[::ffff:c000:201]"),
        ("a_b.example", "a_b.example"),  # no valid IDNA: kept as written
        ("256.1.1.1", "256.1.1.1"),  # not an address either
        ("", ""),
    ],
)
def test_normalise_host(host: str, normal: str) -> None:
    assert normalise_host(host) == normal


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        (
            "https://user:pw@Evil.Example:443/a?b#c",
            ("https://evil.example:443/a?b#c", "evil.example"),
        ),
        ("//evil.example/x", ("http://evil.example/x", "evil.example")),
        ("  http://evil.example/\x00", ("http://evil.example/", "evil.example")),
        ("javascript:alert(1)", None),
        ("mailto:a@evil.example", None),
        ("relative/path", None),
        ("http:///", None),
    ],
)
def test_normalise_url(url: str, normal: tuple[str, str] | None) -> None:
    assert normalise_url(url) == normal


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_extraction_and_normalisation_never_raise(text: str, is_html: bool) -> None:
    for url in extract_urls(text, is_html):
        normalise_url(url)
    normalise_url(text)
    normalise_host(text)


@given(st.text(alphabet="wW.:/\\htpsfHTPSx -\u0130\n", max_size=200))
@settings(max_examples=500)
@example("wwww.example.com and wWwW.x")
@example("xwww.y www.z .www.a http://www.b/ \u0130 Www.c")
def test_text_links_are_those_a_plain_regex_scan_finds(text: str) -> None:
    # The fast scan (anchors, skipping lower() without a "W") finds exactly what trying the
    # pattern at every position finds; U+0130 lengthens under lower().
    expected = [m.group(0).rstrip(_TRAILING) for m in _TEXT_URL.finditer(text)]
    assert _text_urls(text) == [url for url in expected if url]
