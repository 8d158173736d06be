"""The Diagnostics page in a real browser (Chromium driven by Playwright): opened from the
navigation, a message traced (the SMTP dialogue and a row per recipient, a bad client address
shown next to its field, a declared size over the limit and SMTPUTF8), the integration check run
against the seed's topology with real listeners (all ok, then a failure marked once the border
gateway stops), and an auditor's trace from the verification cache (no probe, no check). Its
screenshot is taken with the other pages' in test_web_ui."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from mailgate.testing.sink import Sink, refuse_unknown
from tests.conftest import BORDER_IP, EXTERNAL_CLIENT_IP, INTERNAL_IP, Gateway
from tests.e2e.test_web_ui import Browsing, auditor_page, browser, browsing, login, open_section
from tests.integration.test_api_diagnostics import seed

pytestmark = pytest.mark.e2e

__all__ = ["browser", "browsing"]  # the browser fixtures, shared with test_web_ui

MAILBOXES = ["postmaster@example.com", "bob@example.com"]


def trace(
    page: Page,
    client: str,
    recipients: list[str],
    probe: bool = True,
    *,
    sender: str = "alice@ext.org",
    size: str = "",
    smtputf8: bool = False,
) -> None:
    form = page.locator("#trace form")
    form.get_by_label("Client IP address").fill(client)
    form.get_by_label("HELO name").fill("mx.ext.org")
    form.get_by_label("Sender").fill(sender)
    form.get_by_label("Recipients").fill("\n".join(recipients))
    form.get_by_label("Declared size (bytes)").fill(size)
    utf8_box = form.get_by_label("SMTPUTF8")
    if smtputf8:
        utf8_box.check()
    else:
        utf8_box.uncheck()
    probe_box = form.get_by_label("Probe the next hop now")
    if probe:
        probe_box.check()
    elif probe_box.count():  # an auditor's form has no probe
        probe_box.uncheck()
    form.get_by_role("button", name="Trace").click()


def test_trace_and_integration_check_through_the_web_interface(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
    browsing: Browsing,
) -> None:
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    border = start_sink(BORDER_IP)
    gw = start_gateway(seed(border.port, internal.port, dns_zone[1]), web=True)
    page = browsing.page()
    login(page, gw)
    open_section(page, "Diagnostics")
    expect(page).to_have_url(gw.web_url + "/diagnostics")

    # A trace: the local recipient verified by a probe and accepted, the other one denied.
    trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com", "x@other.example"])
    dialogue = page.locator("#dialogue")
    expect(dialogue).to_contain_text(
        f"client {EXTERNAL_CLIENT_IP} (HELO mx.ext.org): not in trusted networks"
    )
    expect(dialogue).to_contain_text("MAIL FROM:<alice@ext.org>: 250 2.1.0 Ok")
    expect(dialogue).to_contain_text("RCPT TO:<bob@example.com>: 250 2.1.5 Ok\n")
    expect(dialogue).to_contain_text("verification: ok (probe)")
    expect(dialogue).to_contain_text(
        "RCPT TO:<x@other.example>: 554 5.7.1 <x@other.example>: Relay access denied"
    )
    expect(dialogue).to_contain_text("DATA: 354 End data with <CR><LF>.<CR><LF>")
    rows = page.locator("#trace-recipients tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(1)).to_have_text("250 2.1.5 Ok")
    expect(rows.nth(0)).to_contain_text(f"[{INTERNAL_IP}]:{internal.port}")
    expect(rows.nth(1).locator("td").nth(1)).to_have_text(
        "554 5.7.1 <x@other.example>: Relay access denied"
    )
    assert internal.sessions > 0  # the probe asked the internal server
    # The form keeps what was typed.
    expect(page.get_by_label("Recipients")).to_have_value("bob@example.com\nx@other.example")

    # A client that is no IP address: the error next to the field, no trace.
    trace(page, "mx.ext.org", ["bob@example.com"], probe=False)
    expect(page.locator("[data-error-for=client]")).to_have_text(
        "'mx.ext.org' is not an IP address"
    )
    expect(page.get_by_label("Client IP address")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert")).to_contain_text("The trace was not made.")
    expect(page.locator("#dialogue")).to_have_count(0)

    # A declared size over message_size_limit, and a UTF-8 sender without SMTPUTF8, get
    # MAIL FROM's refusals; with SMTPUTF8 declared, the UTF-8 sender is accepted.
    trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com"], probe=False, size="999999999")
    expect(page.locator("#dialogue")).to_contain_text(
        "MAIL FROM:<alice@ext.org>: 552 5.3.4 Message size exceeds fixed limit"
    )
    expect(page.get_by_label("Declared size (bytes)")).to_have_value("999999999")
    trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com"], probe=False, sender="jörg@ext.org")
    expect(page.locator("#dialogue")).to_contain_text(
        "MAIL FROM:<jörg@ext.org>: 553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    )
    trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com"], probe=False, sender="jörg@ext.org",
          smtputf8=True)  # fmt: skip
    expect(page.locator("#dialogue")).to_contain_text("MAIL FROM:<jörg@ext.org>: 250 2.1.0 Ok")
    # A size that is no whole number: the error next to the field, no trace.
    for bad in ("lots", "-1", "\u00b2"):  # a superscript two is a digit to str.isdigit()
        trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com"], probe=False, size=bad)
        expect(page.locator("[data-error-for=size]")).to_have_text(
            "a whole number of bytes, or empty"
        )
        expect(page.locator("#dialogue")).to_have_count(0)

    # The integration check: every finding ok.
    page.get_by_role("button", name="Run the integration check").click()
    findings = page.locator("#findings tbody tr")
    expect(page.get_by_role("status")).to_have_text("No check failed.")
    expect(findings.first).to_contain_text("local domains")
    expect(page.locator("#findings tr[data-status=ok]")).to_have_count(findings.count())
    expect(page.locator("#findings")).to_contain_text(
        f"route example.com [{INTERNAL_IP}]:{internal.port}"
    )
    expect(page.locator("#findings")).to_contain_text(
        "postmaster accepted, an unknown address refused"
    )

    # The border gateway stops: its finding fails, marked, with what to fix.
    border.stop()
    page.get_by_role("button", name="Run the integration check").click()
    expect(page.get_by_role("alert")).to_have_text(
        "1 check(s) failed: see the marked rows and their fixes."
    )
    failed = page.locator("#findings tr.finding-fail")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text(f"relayhost [{BORDER_IP}]:{border.port}")
    expect(failed).to_contain_text("Connection refused")
    expect(failed).to_contain_text("mailgate settings main --relayhost")
    expect(failed.locator(".badge")).to_have_text("FAIL")


def test_auditor_traces_from_the_cache_and_can_neither_probe_nor_check(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
    browsing: Browsing,
) -> None:
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(MAILBOXES))
    border = start_sink(BORDER_IP)
    gw = start_gateway(seed(border.port, internal.port, dns_zone[1]), web=True)
    page = auditor_page(gw, browsing)
    open_section(page, "Diagnostics")
    expect(page.locator("main")).to_contain_text(
        "The integration check and probes are for administrators"
    )
    expect(page.get_by_role("button", name="Run the integration check")).to_have_count(0)
    expect(page.locator("#trace form").get_by_label("Probe the next hop now")).to_have_count(0)

    # A trace from the cache: bob's verification is not known yet, and nobody was asked.
    trace(page, EXTERNAL_CLIENT_IP, ["bob@example.com", "x@other.example"], probe=False)
    dialogue = page.locator("#dialogue")
    expect(dialogue).to_contain_text("MAIL FROM:<alice@ext.org>: 250 2.1.0 Ok")
    expect(dialogue).to_contain_text("250 2.1.5 Ok if the next hop accepts <bob@example.com>")
    expect(dialogue).to_contain_text(
        "RCPT TO:<x@other.example>: 554 5.7.1 <x@other.example>: Relay access denied"
    )
    assert internal.sessions == 0

    # Posting a probe or a check anyway is refused, and still nothing is asked.
    token = page.locator("#logout input[name=csrf_token]").get_attribute("value")
    assert token
    form = {"csrf_token": token, "client": EXTERNAL_CLIENT_IP, "sender": "a@ext.org",
            "recipients": "bob@example.com"}  # fmt: skip
    refused = page.request.post(gw.web_url + "/diagnostics/trace", form={**form, "probe": "on"})
    assert refused.status == 403
    assert "Only an administrator may probe the next hops" in refused.text()
    refused = page.request.post(gw.web_url + "/diagnostics/check", form=form)
    assert refused.status == 403
    # Without the session's CSRF token, not even a trace.
    refused = page.request.post(gw.web_url + "/diagnostics/trace",
                                form={**form, "csrf_token": "wrong"})  # fmt: skip
    assert refused.status == 403
    assert internal.sessions == 0
