"""Anti-Phishing: links in the text and HTML parts (RFC 2045-2049 MIME, decoded by
pipeline.message) against the local lists of phishing domains and URL patterns.

Links are taken from text parts (http, https and ftp URLs, and "www." names), and from HTML
parts three ways: the href/src/action/... attributes and the visible text through html.parser
(entities decoded, relative links resolved against <base href>), and, as a net for what the
parser does not see (comments, scripts, HTML beyond the 1 MiB per message that is parsed),
every absolute URL in the entity-decoded source.

Each host is normalised as a browser would read it: the part after the last "@" (so
"http://paypal.com@evil.example/" is evil.example), percent-escapes decoded, lowercase, the
trailing dot dropped, backslashes taken for slashes, IDNA (UTS 46) to the A-label
("pаypal.com" with a Cyrillic "а" becomes "xn--pypal-4ve.com"), and numeric hosts ("3232235777",
"0xC0A80101", "0300.0250.1.1") as the dotted IPv4 address they mean (WHATWG URL, "IPv4
parser"). A host matches a listed domain when it is that domain or one of its subdomains; the
`url_patterns` are searched in the normalised URL and in the URL as written.

Verdicts: PHISHING with the matching links, CLEAN, ERROR when the message could not be
analysed (too complex to parse, or more links than are checked).

Security notes: html.parser on Python 3.11 is quadratic on some unterminated constructs, so
HTML is fed in slices and abandoned (for the raw-source net alone) when unparsed input piles
up; every regex here is linear; links, their length and the hosts' labels are bounded. Links
reach the detail and the header escaped and capped.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import re
import urllib.parse
from functools import lru_cache
from html.parser import HTMLParser

import idna

from mailgate.config.protection import PhishingSettings
from mailgate.pipeline.api import CheckResult, ScanContext, Verdict
from mailgate.pipeline.message import escape

__all__ = ["HEADER", "PhishingCheck", "extract_urls", "normalise_host", "normalise_url"]

MODULE = "phishing"
HEADER = "X-Mailgate-Phishing"

MAX_LINKS = 10_000  # distinct links per message; beyond, the message is not analysed
# Up to this size a message is inspected on the event loop (about 0.3 ms for 128 KB of plain
# text; a page of HTML full of links, the worst case, some 20 ms); beyond, in a thread.
INLINE_BYTES = 128 * 1024
_MAX_URL = 2048
_MAX_LABELS = 128
_HTML_SLICE = 16 * 1024
_MAX_PENDING = 16 * 1024  # unparsed HTML held by html.parser before it is given up on
# html.parser spends about a microsecond per character of tag-like text: HTML beyond this much
# per message gets the raw-source net alone.
_MAX_HTML_PARSE = 1024 * 1024
_MAX_SHOWN = 5

_SCHEMES = ("http", "https", "ftp")
# A link in text: a scheme with its slashes (browsers take backslashes too) or "www.".
_TEXT_URL = re.compile(
    r"(?:(?:https?|ftp):[/\\]{1,3}|(?<![\w.-])www\.)[^\s<>\"'`\x00-\x1f\x7f]{1,"
    + str(_MAX_URL)
    + "}",
    re.IGNORECASE,
)
# The pattern has no literal prefix, so finditer would try it at every character (about 50 ns
# per byte). Links are found from their anchors instead, which str and re search for at C speed.
_SCHEME_ANCHOR = re.compile(r":[/\\]")
_WWW_ANCHOR = re.compile(r"[wW][wW][wW]\.")
_WWW_LOWER = re.compile(r"www\.")
_SCHEME_BACK = (5, 4, 3)  # "https:", "http:" or "ftp:" before the colon, longest first
_TRAILING = ".,;:!?)]}'\"*"
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]{0,30}):")
_IGNORED = re.compile(r"[\t\n\r]")
_C0_SPACE = "".join(chr(c) for c in range(0x21))
# UTS 46 maps these to "." before splitting labels; so do browsers.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "background", "poster",
                             "cite", "longdesc", "data", "xlink:href", "ping"})  # fmt: skip
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\"\s>]+)", re.IGNORECASE)


class _TooMany(Exception):
    pass


class PhishingCheck:
    """The Anti-Phishing module."""

    module = MODULE

    async def scan(self, ctx: ScanContext) -> CheckResult:
        try:
            if ctx.small(INLINE_BYTES):
                return self.inspect(ctx)
            return await asyncio.to_thread(self.inspect, ctx)
        except Exception as exc:  # a check must not raise: the rule's error action applies
            return _result(Verdict.ERROR, f"unexpected {type(exc).__name__}: {exc}")

    def inspect(self, ctx: ScanContext) -> CheckResult:
        """The verdict, computed synchronously (`scan` runs this in a thread, or inline for a
        message of at most `INLINE_BYTES`)."""
        settings = ctx.protection.phishing
        message = ctx.message
        if message.too_complex:
            reasons = "; ".join(escape(d, 120) for d in message.defects[:3])
            return _result(Verdict.ERROR, f"the message could not be analysed: {reasons}")
        links: dict[str, int] = {}  # link -> the first part it is in
        parse_budget = _MAX_HTML_PARSE
        try:
            for part in message.parts:
                if part.text is None:
                    continue
                is_html = part.content_type in ("text/html", "application/xhtml+xml")
                parse = is_html and len(part.text) <= parse_budget
                if parse:
                    parse_budget -= len(part.text)
                for url in extract_urls(part.text, is_html, parse):
                    if url not in links:
                        if len(links) >= MAX_LINKS:
                            raise _TooMany
                        links[url] = part.index
        except _TooMany:
            return _result(Verdict.ERROR, f"more than {MAX_LINKS} links: not all were checked")

        hits: list[str] = []
        parts: set[int] = set()
        for url, index in links.items():
            reason = match(url, settings)
            if reason is not None:
                hits.append(f"{escape(url, 200)} ({reason})")
                parts.add(index)
        if not hits:
            return _result(Verdict.CLEAN, "")
        shown = "; ".join(hits[:_MAX_SHOWN])
        more = f"; and {len(hits) - _MAX_SHOWN} more" if len(hits) > _MAX_SHOWN else ""
        return _result(Verdict.PHISHING, f"phishing links: {shown}{more}", tuple(sorted(parts)))


def _result(verdict: Verdict, detail: str, parts: tuple[int, ...] = ()) -> CheckResult:
    value = verdict.value
    if detail:
        summary = detail if len(detail) <= 160 else detail[:160] + "..."
        # ASCII only; the detail is escaped already, so no CR or LF reaches the header.
        value += " (" + summary.encode("ascii", "backslashreplace").decode("ascii") + ")"
    return CheckResult(MODULE, verdict, detail, headers=((HEADER, value),), parts=parts)


def match(url: str, settings: PhishingSettings) -> str | None:
    """Why `url` is a phishing link (None when it is not)."""
    normal = normalise_url(url)
    if normal is None:
        return None
    normalised, host = normal
    domains = _domains(tuple(settings.domains))
    labels = host.split(".")[-_MAX_LABELS:]
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        if candidate in domains:
            return f"listed domain {candidate}"
    for pattern in settings.url_patterns:
        regex = _regex(pattern)
        if regex.search(normalised) or regex.search(url):
            return f"pattern {escape(pattern, 80)}"
    return None


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@lru_cache(maxsize=8)
def _domains(domains: tuple[str, ...]) -> frozenset[str]:
    """The listed domains, normalised as hosts are ("*.example.com" means example.com)."""
    out = set()
    for domain in domains:
        host = normalise_host(domain.strip().removeprefix("*").lstrip("."))
        if host:
            out.add(host)
    return frozenset(out)


# -- extraction ------------------------------------------------------------------------------


def extract_urls(text: str, is_html: bool, parse: bool = True) -> list[str]:
    """The links in a text or HTML part, in order, as written (entities decoded); `parse`
    False takes HTML's absolute URLs from its source alone."""
    if not is_html:
        return _text_urls(text)
    found = _text_urls(html.unescape(text))  # the net: every absolute URL in the source
    if parse and len(text) <= _MAX_HTML_PARSE:
        parser = _LinkParser()
        parser.run(text)
        found += parser.links
        found += _text_urls(" ".join(parser.text))
    return found


def _text_urls(text: str) -> list[str]:
    """The links _TEXT_URL finds in text, as finditer would return them, without trying it at
    every position."""
    urls = []
    end = 0
    for start in _url_starts(text):
        if start < end:  # inside the previous link
            continue
        found = _TEXT_URL.match(text, start)
        if found is None:
            continue
        end = found.end()
        url = found.group(0).rstrip(_TRAILING)
        if url:
            urls.append(url)
        if len(urls) > MAX_LINKS:
            raise _TooMany
    return urls


def _url_starts(text: str) -> list[int]:
    """Positions, in order, where a link may start: before a scheme's colon and at "www."."""
    starts = []
    if ":" in text:  # a single-character test is a memchr: text without a colon is common
        for anchor in _SCHEME_ANCHOR.finditer(text):
            colon = anchor.start()
            for back in _SCHEME_BACK:
                if colon >= back and _TEXT_URL.match(text, colon - back, colon + 1 + _MAX_URL):
                    starts.append(colon - back)
                    break
    # Lowering only matters for "W"; without one the text is searched as it is.
    lowered = text.lower() if "W" in text else text
    if len(lowered) == len(text):  # the same positions (lower() only ever lengthens)
        # A literal pattern: the regex engine's literal-prefix search is about twice as fast
        # as str.find("www") (whose skip table does badly on English text) and a
        # case-insensitive class many times slower than both.
        starts.extend(found.start() for found in _WWW_LOWER.finditer(lowered))
    else:
        starts.extend(found.start() for found in _WWW_ANCHOR.finditer(text))
    starts.sort()
    return starts


class _LinkParser(HTMLParser):
    """URL attributes (resolved against <base href>) and visible text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.text: list[str] = []
        self._base: str | None = None
        self._hidden = 0

    def run(self, document: str) -> None:
        try:
            for start in range(0, len(document), _HTML_SLICE):
                self.feed(document[start : start + _HTML_SLICE])
                # What html.parser could not parse yet stays in rawdata and is scanned again
                # on every feed: a long unterminated construct makes that quadratic.
                if len(self.rawdata) > _MAX_PENDING:
                    return
            self.close()
        except (AssertionError, ValueError):  # html.parser's errors on broken markup
            return

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "template"):
            self._hidden += 1
        values = dict(attrs)
        if tag == "base" and values.get("href"):
            self._base = values["href"]
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            found = _REFRESH_URL.search(values.get("content") or "")
            if found:
                self._add(found.group(1))
        for name, value in attrs:
            if value and name in _URL_ATTRIBUTES:
                self._add(value)
            elif value and name == "srcset":
                for candidate in value.split(",")[:100]:
                    self._add(candidate.strip().split(" ")[0])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in ("script", "style", "template"):
            self._hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "template") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)

    def _add(self, value: str) -> None:
        value = _IGNORED.sub("", value).strip()[:_MAX_URL]
        if not value:
            return
        if self._base and _SCHEME.match(value) is None and not value.startswith(("//", "\\\\")):
            value = urllib.parse.urljoin(self._base, value)
        self.links.append(value)
        if len(self.links) > MAX_LINKS:
            raise _TooMany


# -- normalisation ---------------------------------------------------------------------------


def normalise_url(url: str) -> tuple[str, str] | None:
    """(scheme://host[:port]/rest, host) for an http, https or ftp link ("www." links are
    http), or None for anything else (mailto:, relative links, unreadable hosts)."""
    # Browsers drop leading and trailing C0 controls and spaces, and tabs and newlines anywhere.
    text = _IGNORED.sub("", url).strip(_C0_SPACE)[:_MAX_URL]
    scheme_match = _SCHEME.match(text)
    if scheme_match is not None:
        scheme = scheme_match.group(1).lower()
        if scheme not in _SCHEMES:
            return None
        rest = text[scheme_match.end() :].lstrip("/\\")
    elif text.lower().startswith("www."):
        scheme, rest = "http", text
    elif text.startswith(("//", "\\\\")):
        scheme, rest = "http", text.lstrip("/\\")  # protocol-relative
    else:
        return None
    end = len(rest)
    for stop in "/?#\\":
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority, path = rest[:end], rest[end:].replace("\\", "/")
    hostport = authority.rpartition("@")[2]  # browsers take the last "@"
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        host = f"[{host}]"
        port = port.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    normal = normalise_host(host)
    if not normal:
        return None
    port_text = f":{port}" if port.isdigit() else ""
    return f"{scheme}://{normal}{port_text}{path}", normal


def normalise_host(host: str) -> str:
    """A host as browsers resolve it: lowercase A-label without trailing dot, or an IP
    address in its usual form; "" when there is no host."""
    text = urllib.parse.unquote(host).strip().translate(_DOTS).rstrip(".").lower()
    if not text:
        return ""
    if text.startswith("[") and text.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            return text
    ipv4 = _ipv4(text)
    if ipv4 is not None:
        return ipv4
    if len(text) > 1024:
        return text  # no host name is this long; IDNA would only spend time on it
    try:
        return idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        # Not a valid IDNA name (underscores, empty labels, ...): compare it as written.
        return text


def _ipv4(host: str) -> str | None:
    """WHATWG URL "IPv4 parser": a host whose last label is a number is an IPv4 address in
    decimal, octal (leading 0) or hex (0x) parts, the last part filling the remaining bytes."""
    parts = host.split(".")
    if len(parts) > 4 or not re.fullmatch(r"0[xX][0-9a-fA-F]*|[0-9]+", parts[-1]):
        return None
    numbers = []
    for part in parts:
        if not part or len(part) > 40:
            return None
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part[0] == "0":
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for i, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))
