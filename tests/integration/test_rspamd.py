"""Anti-Spam over Rspamd's HTTP protocol (/checkv2) against a real, offline Rspamd 3.x.

One RspamdInstance (mailgate.testing.rspamd) serves the module; its only DNS server is a
mailgate.testing.dns_server on loopback that knows no names, so the one lookup Rspamd makes (the
client's PTR, as no Hostname is sent for RealClient(name="unknown")) is answered NXDOMAIN here.

What the samples get from the stock rules of Rspamd 3.4 (reject 15, add header 6, greylist 4);
the client has no PTR record, hence RDNS_NONE (1) and ONCE_RECEIVED (0.1) everywhere:
* GTUBE: action reject, symbol GTUBE alone, score set to the reject threshold (15.00); no extra
  configuration is needed, Rspamd always rejects it;
* a well-formed personal message: no action, 1.00;
* the same without Message-ID and To: greylist, 5.50 (MISSING_MID 2.5, MISSING_TO 2);
* a message without Date, Message-ID and To, with an all-caps subject and an HTML-only body
  whose link text shows an https URL but points to an IP address: add header, 11.30
  (SUBJ_ALL_CAPS 3, MISSING_MID 2.5, MISSING_TO 2, HTTP_TO_IP 1, MISSING_DATE 1, ...);
* Rspamd's own GTUBE variants (enable_test_patterns): add header 6.00, rewrite subject 0.00.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from mailgate.checks.rspamd import MAX_REPLY_BYTES, SYMBOLS_HEADER_LIMIT, RspamdCheck
from mailgate.config.protection import AntispamSettings, Protection
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.testing.dns_server import DnsServer, DnsZone
from mailgate.testing.rspamd import (
    GTUBE,
    GTUBE_ADD_HEADER,
    GTUBE_REWRITE_SUBJECT,
    RspamdInstance,
    rspamd_available,
)
from mailgate.types import ClientInfo, Envelope, Recipient

RSPAMD_IP = "127.0.0.70"
DNS_IP = "127.0.0.71"
FAKE_IP = "127.0.0.72"
CLIENT_IP = "192.0.2.10"  # TEST-NET-1: never a local network for Rspamd
PTR_NAME = "10.2.0.192.in-addr.arpa"


def message(headers: list[str], body: str) -> bytes:
    return ("\r\n".join([*headers, "", body]) + "\r\n").encode()


def well_formed(body: str, subject: str = "Lunch on Friday") -> bytes:
    return message(
        [
            "From: Alice Martin <alice@sender.example>",
            "To: Bob Durand <bob@example.org>",
            f"Subject: {subject}",
            f"Date: {email.utils.formatdate(localtime=False)}",
            "Message-ID: <20261127.lunch.4711@sender.example>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
        ],
        body,
    )


CLEAN = well_formed(
    "Hello Bob,\r\n\r\nshall we meet at noon at the usual place on Friday?\r\n"
    "I will bring the figures for the second quarter.\r\n\r\nAlice"
)
SPAM = well_formed(f"This is the GTUBE test message.\r\n\r\n{GTUBE}\r\n", "Test")
PROBABLE = message(
    [
        "From: <billing@sender.example>",
        "Subject: URGENT ACTION REQUIRED YOUR ACCOUNT IS SUSPENDED",
        "MIME-Version: 1.0",
        "Content-Type: text/html; charset=utf-8",
    ],
    '<html><body><p><a href="http://192.0.2.99/login">https://www.bank.example/login</a>'
    "</p><p>Verify your account now.</p></body></html>",
)
PROBABLE_TEST_PATTERN = well_formed(f"{GTUBE_ADD_HEADER}\r\n", "Test")
REWRITE_TEST_PATTERN = well_formed(f"{GTUBE_REWRITE_SUBJECT}\r\n", "Test")
GREYLIST = message(
    [
        "From: Alice Martin <alice@sender.example>",
        "Subject: Lunch on Friday",
        f"Date: {email.utils.formatdate(localtime=False)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ],
    "Hello Bob, shall we meet at noon on Friday?",
)


def context(
    url: str,
    content: bytes,
    *,
    timeout: float = 10.0,
    scores: tuple[float, float] | None = None,
    sender: str = "alice@sender.example",
    recipients: tuple[str, ...] = ("bob@example.org",),
    qid: str = "4Xq7Lk2mZ",
    socket: str | None = None,
) -> ScanContext:
    spam, probable = scores if scores else (None, None)
    client = ClientInfo("127.0.0.10", 40000, "border.example.org")
    envelope = Envelope(
        qid=qid,
        sender=sender,
        recipients=[Recipient(r, r.rpartition("@")[2]) for r in recipients],
        client=client,
        arrival=time.time(),
        size=len(content),
    )
    settings = AntispamSettings(
        enabled=True,
        url=url,
        socket=socket,
        timeout=timeout,
        spam_score=spam,
        probable_spam_score=probable,
    )
    return ScanContext(
        envelope=envelope,
        content=content,
        client=client,
        real_client=RealClient(CLIENT_IP, "mx.sender.example"),
        hostname="mailgate.test",
        protection=Protection(antispam=settings),
    )


def scan_all(contexts: list[ScanContext]) -> list[CheckResult]:
    """Scan with one check (one HTTP client, reused), closed afterwards."""

    async def run() -> list[CheckResult]:
        check = RspamdCheck()
        try:
            return [await check.scan(ctx) for ctx in contexts]
        finally:
            await check.aclose()

    return asyncio.run(run())


def scan(ctx: ScanContext) -> CheckResult:
    return scan_all([ctx])[0]


def assert_one_line_headers(result: CheckResult) -> None:
    names = [name for name, _ in result.headers]
    assert names == ["X-Spam-Score", "X-Spam-Status", "X-Spam-Symbols"]
    for _, value in result.headers:
        assert value, result.headers
        assert value.isascii(), value
        assert value.isprintable(), value
    assert len(dict(result.headers)["X-Spam-Symbols"]) <= SYMBOLS_HEADER_LIMIT


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer(DnsZone(), host=DNS_IP) as server:
        yield server


@pytest.fixture(scope="module")
def rspamd(dns: DnsServer) -> Iterator[RspamdInstance]:
    assert rspamd_available(), "Debian's rspamd package is not installed"
    instance = RspamdInstance(RSPAMD_IP, name="test-rspamd", nameserver=dns.address)
    started = time.monotonic()
    instance.start()
    # A start-up budget: the reduced TLD list keeps it near two seconds (see the harness).
    assert time.monotonic() - started < 15
    yield instance
    instance.remove()


# -- verdicts from Rspamd's action --------------------------------------------------------------


def test_gtube_is_spam(rspamd: RspamdInstance) -> None:
    result = scan(context(rspamd.url, SPAM))
    assert result.module == "antispam"
    assert result.verdict is Verdict.SPAM
    assert result.score == 15.0
    assert result.detail == "score 15.00/required 15.00, action reject, symbols GTUBE"
    assert dict(result.headers)["X-Spam-Status"].startswith("Yes, score=15.00 ")
    assert_one_line_headers(result)


def test_well_formed_message_is_clean(rspamd: RspamdInstance) -> None:
    result = scan(context(rspamd.url, CLEAN))
    assert result.verdict is Verdict.CLEAN, result.detail
    assert result.score is not None
    assert result.score < 4, result.headers
    assert ", action no action, " in result.detail
    assert dict(result.headers)["X-Spam-Status"].startswith("No, ")
    assert_one_line_headers(result)


def test_the_unix_socket_gets_the_same_verdicts(rspamd: RspamdInstance) -> None:
    # A URL nobody listens on: only the socket can answer.
    url = "http://127.0.0.1:9"
    socket_path = str(rspamd.socket_path)
    spam = scan(context(url, SPAM, socket=socket_path))
    assert (spam.verdict, spam.score) == (Verdict.SPAM, 15.0), spam.detail
    clean = scan(context(url, CLEAN, socket=socket_path))
    assert clean.verdict is Verdict.CLEAN, clean.detail
    assert_one_line_headers(clean)
    missing = scan(context(url, CLEAN, socket=socket_path + ".missing"))
    assert missing.verdict is Verdict.ERROR
    assert missing.detail.startswith(
        f"cannot connect to Rspamd at {url}/checkv2 (socket {socket_path}.missing): "
    )


def test_suspicious_message_is_probable_spam(rspamd: RspamdInstance) -> None:
    result = scan(context(rspamd.url, PROBABLE))
    assert result.verdict is Verdict.PROBABLE_SPAM, result.detail
    assert result.score is not None
    assert 6 <= result.score < 15
    assert ", action add header, symbols SUBJ_ALL_CAPS,MISSING_MID,MISSING_TO," in result.detail
    symbols = dict(result.headers)["X-Spam-Symbols"]
    assert symbols.startswith("SUBJ_ALL_CAPS(3.00), MISSING_MID(2.50), MISSING_TO(2.00)")
    assert "HTTP_TO_IP(1.00)" in symbols
    assert dict(result.headers)["X-Spam-Status"].startswith("Yes, ")
    assert_one_line_headers(result)


@pytest.mark.parametrize(
    ("sample", "action", "verdict"),
    [
        (CLEAN, "no action", Verdict.CLEAN),
        # Rspamd would have an MTA greylist this; mailgate does not greylist.
        (GREYLIST, "greylist", Verdict.CLEAN),
        (PROBABLE, "add header", Verdict.PROBABLE_SPAM),
        (PROBABLE_TEST_PATTERN, "add header", Verdict.PROBABLE_SPAM),
        (REWRITE_TEST_PATTERN, "rewrite subject", Verdict.PROBABLE_SPAM),
        (SPAM, "reject", Verdict.SPAM),
    ],
    ids=["clean", "greylist", "probable", "yjs-pattern", "zjs-pattern", "gtube"],
)
def test_rspamd_action_decides_without_scores(
    rspamd: RspamdInstance, sample: bytes, action: str, verdict: Verdict
) -> None:
    result = scan(context(rspamd.url, sample))
    assert f", action {action}, " in result.detail
    assert result.verdict is verdict
    assert_one_line_headers(result)


# -- verdicts from configured scores ------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # The probable-spam sample scores about 10, GTUBE exactly 15, the clean one about 0.
        ((8.0, 4.0), [Verdict.SPAM, Verdict.SPAM, Verdict.CLEAN]),
        ((20.0, 5.0), [Verdict.PROBABLE_SPAM, Verdict.PROBABLE_SPAM, Verdict.CLEAN]),
        # Above every score: the score decides, not Rspamd's "reject".
        ((40.0, 30.0), [Verdict.CLEAN, Verdict.CLEAN, Verdict.CLEAN]),
        ((15.0, 15.0), [Verdict.CLEAN, Verdict.SPAM, Verdict.CLEAN]),
        ((-5.0, -5.0), [Verdict.SPAM, Verdict.SPAM, Verdict.SPAM]),
    ],
)
def test_score_thresholds_decide_when_configured(
    rspamd: RspamdInstance, scores: tuple[float, float], expected: list[Verdict]
) -> None:
    samples = [PROBABLE, SPAM, CLEAN]
    results = scan_all([context(rspamd.url, sample, scores=scores) for sample in samples])
    assert [r.verdict for r in results] == expected, [r.detail for r in results]
    assert all(f"/required {scores[0]:.2f}, " in r.detail for r in results)


# -- the envelope reaches Rspamd ----------------------------------------------------------------


def test_envelope_and_client_reach_rspamd(rspamd: RspamdInstance, dns: DnsServer) -> None:
    before = dns.queries[PTR_NAME, "PTR"]
    ctx = context(
        rspamd.url,
        CLEAN,
        qid="4XqENVELOPE",
        recipients=("bob@example.org", "carol@example.org", "dave@exämple.org"),
    )
    result = scan(ctx)
    assert result.verdict is Verdict.CLEAN
    line = next(row for row in rspamd.log().splitlines() if "qid: <4XqENVELOPE>" in row)
    assert f"ip: {CLIENT_IP}," in line
    assert "from: <alice@sender.example>" in line
    # An internationalised domain travels as A-labels (raw UTF-8 would be BROKEN_HEADERS).
    assert "rcpts: <bob@example.org,carol@example.org,dave@xn--exmple-cua.org>" in line
    assert "BROKEN_HEADERS" not in line
    # No Hostname for an unknown name: Rspamd asked its (local) DNS server for the PTR itself.
    assert "RDNS_NONE" in line
    assert dns.queries[PTR_NAME, "PTR"] > before


def test_bounce_and_smtputf8_sender(rspamd: RspamdInstance) -> None:
    bounce, utf8 = scan_all(
        [
            context(rspamd.url, CLEAN, sender="", qid="4XqBOUNCE"),
            context(rspamd.url, CLEAN, sender="élodie@sender.example", qid="4XqUTF8"),
        ]
    )
    assert bounce.verdict is Verdict.CLEAN, bounce.detail
    # A UTF-8 local part has no ASCII form: the sender is left out rather than scored 8 points.
    assert utf8.verdict is Verdict.CLEAN, utf8.detail
    lines = {qid: row for row in rspamd.log().splitlines() for qid in ("4XqBOUNCE", "4XqUTF8")
             if f"qid: <{qid}>" in row and "rspamd_task_write_log" in row}  # fmt: skip
    assert "BROKEN_HEADERS" not in lines["4XqUTF8"]
    assert "from: <" not in lines["4XqUTF8"]
    assert "from: <" not in lines["4XqBOUNCE"]


def test_rspamd_stayed_offline(rspamd: RspamdInstance, dns: DnsServer) -> None:
    scan(context(rspamd.url, PROBABLE))
    log = rspamd.log()
    assert "maps.rspamd.com" not in log
    assert "rspamd.com" not in log.replace("https://rspamd.com/doc", "")
    # The only name Rspamd ever looked up is the client's PTR, at the loopback DNS server.
    assert set(dns.queries.snapshot()) <= {(PTR_NAME, "PTR")}


# -- scanner trouble is an ERROR, within the deadline ---------------------------------------------


def test_stopped_rspamd_is_an_error_within_the_deadline(dns: DnsServer) -> None:
    with RspamdInstance(RSPAMD_IP, name="test-rspamd-stop", nameserver=dns.address) as instance:
        assert scan(context(instance.url, CLEAN)).verdict is Verdict.CLEAN
        instance.stop()
        assert not instance.running
        assert not instance.ping()
        started = time.monotonic()
        result = scan(context(instance.url, CLEAN, timeout=3.0))
        assert time.monotonic() - started < 3.0
    assert result.verdict is Verdict.ERROR
    assert result.detail.startswith(f"cannot connect to Rspamd at {instance.url}/checkv2")
    assert result.headers == ()
    assert result.score is None


async def serve(reply: bytes | None, use: Callable[[str], Awaitable[CheckResult]]) -> CheckResult:
    """Run a fake server on FAKE_IP that reads the request and sends `reply` (None: nothing,
    ever), and call `use` with its URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if reply is None:
                await reader.read()  # until the client gives up
            else:
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, FAKE_IP, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await use(f"http://{FAKE_IP}:{port}")
    finally:
        server.close()
        await server.wait_closed()


def http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def scan_fake(reply: bytes | None, timeout: float = 5.0) -> CheckResult:
    async def use(url: str) -> CheckResult:
        check = RspamdCheck()
        try:
            return await check.scan(context(url, CLEAN, timeout=timeout))
        finally:
            await check.aclose()

    return asyncio.run(serve(reply, use))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (http("200 OK", b"<html>It works!</html>", "text/html"), "something other than JSON"),
        (http("200 OK", b"\xff\xfe\x00garbage"), "something other than JSON"),
        (http("200 OK", b"[1, 2, 3]"), "JSON without a result object"),
        (http("200 OK", b'{"score": 3.5, "symbols": {}}'), "has no action"),
        (http("200 OK", b'{"action": "no action"}'), "has no valid score"),
        (http("200 OK", b'{"action": "reject", "score": "high"}'), "has no valid score"),
        (http("200 OK", b'{"action": "reject", "score": true}'), "has no valid score"),
        (http("200 OK", b'{"action": "reject", "score": NaN}'), "has no valid score"),
        (http("200 OK", b'{"action": "reject", "score": 1e400}'), "has no valid score"),
        (
            http("200 OK", b'{"action": "reject", "score": 1' + b"0" * 400 + b"}"),
            "has no valid score",
        ),  # a number too big for a float
        (http("200 OK", b'{"action": "quarantine", "score": 1}'), "unknown action 'quarantine'"),
        (http("500 Internal Server Error", b'{"error": "task timeout"}'), "HTTP 500: task timeout"),
        (http("200 OK", b'{"error": "Message\\r\\nInjected: yes"}'), "reports an error"),
        (b"220 mail.example ESMTP\r\n", "ProtocolError"),
        (b"", "ProtocolError"),
    ],
)
def test_garbage_answer_is_an_error(reply: bytes, reason: str) -> None:
    result = scan_fake(reply)
    assert result.verdict is Verdict.ERROR
    assert reason in result.detail, result.detail
    assert result.detail.isascii()
    assert result.detail.isprintable()
    assert result.headers == ()


def test_endless_answer_is_cut_short() -> None:
    body = b'{"action": "no action", "score": 0, "pad": "' + b"x" * MAX_REPLY_BYTES + b'"}'
    result = scan_fake(http("200 OK", body))
    assert result.verdict is Verdict.ERROR
    assert result.detail.endswith(f"answered more than {MAX_REPLY_BYTES} bytes")


def test_silent_server_is_an_error_at_the_deadline() -> None:
    started = time.monotonic()
    result = scan_fake(None, timeout=0.5)
    elapsed = time.monotonic() - started
    assert result.verdict is Verdict.ERROR
    assert result.detail.endswith("within 0.5s"), result.detail
    assert 0.4 < elapsed < 2.5


def test_hostile_symbols_become_one_printable_line() -> None:
    names = ", ".join(f'"SYM_{i}\\r\\nX-Injected: {i}": {{"score": {i}}}' for i in range(60))
    body = f'{{"action": "add header", "score": 7.5, "required_score": 15, "symbols": {{{names}}}}}'
    result = scan_fake(http("200 OK", body.encode()))
    assert result.verdict is Verdict.PROBABLE_SPAM
    assert_one_line_headers(result)
    symbols = dict(result.headers)["X-Spam-Symbols"]
    assert symbols.startswith("SYM_59??X-Injected: 59(59.00), SYM_58")
    assert symbols.endswith(", ...")
    assert result.detail.isprintable()
