"""Settings → Set up: border gateway in a real browser (Chromium driven by Playwright): opened
from the navigation, a scheme that would trust the border gateway refused next to its field
with nothing saved, then the seed's scheme applied in one revision (the six steps shown) and in
force at once over SMTP; an auditor sees the note and no form. Its screenshot is taken with the
other pages' in test_web_ui."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from mailgate.testing.raw import RawSmtp
from tests.conftest import (
    BORDER_IP,
    EXTERNAL_CLIENT_IP,
    GATEWAY_IP,
    INTERNAL_IP,
    Gateway,
    free_port,
)
from tests.e2e.test_web_ui import (
    Browsing,
    auditor_page,
    browser,
    browsing,
    login,
    open_settings,
    revision,
)

pytestmark = pytest.mark.e2e

__all__ = ["browser", "browsing"]  # the browser fixtures, shared with test_web_ui

PAGE = "Set up: border gateway"


def rcpt(gw: Gateway, address: str) -> str:
    """An untrusted client's reply to RCPT TO."""
    with RawSmtp(GATEWAY_IP, gw.port, EXTERNAL_CLIENT_IP) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.command("MAIL FROM:<alice@ext.org>")
        return str(smtp.command(f"RCPT TO:<{address}>"))


def fill(page: Page, internal: str, border: str, trusted: str = "", mx: bool = False) -> None:
    form = page.locator("main form[method=post]")
    form.get_by_label("Local domains").fill("example.com\nsub.example.com")
    form.get_by_label("Internal mail server").fill(internal)
    form.get_by_label("Border gateway", exact=True).fill(border)
    box = form.get_by_label("Find the border gateway by its MX record")
    if mx:
        box.check()
    else:
        box.uncheck()
    form.get_by_label("Trusted networks").fill(trusted)
    form.get_by_label("Upstream gateway addresses").fill("")
    form.get_by_role("button", name="Apply the scheme").click()


def test_the_seed_scheme_in_one_step_through_the_web_interface(
    start_gateway: Callable[..., Gateway], browsing: Browsing
) -> None:
    gw = start_gateway(web=True)
    assert rcpt(gw, "bob@example.com") == "554 5.7.1 <bob@example.com>: Relay access denied"
    internal = f"{INTERNAL_IP}:{free_port(INTERNAL_IP)}"  # nothing listens there
    page = browsing.page()
    login(page, gw)
    open_settings(page, PAGE)
    expect(page).to_have_url(gw.web_url + "/settings/setup")
    before = revision(gw)

    # The border gateway inside the trusted networks: an open relay, refused next to the field.
    fill(page, internal, "10.0.0.1", "10.0.0.0/24")
    expect(page.locator("[data-error-for=trusted_networks]")).to_have_text(
        "10.0.0.0/24 contains the border gateway 10.0.0.1/32: mail from the internet arrives "
        "through it and would be relayed anywhere"
    )
    expect(page.get_by_label("Trusted networks")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved.")
    expect(page.get_by_label("Trusted networks")).to_have_value("10.0.0.0/24")  # kept as typed
    expect(page.locator("#steps")).to_have_count(0)
    assert revision(gw) == before

    # A configuration path in the error (main.relayhost) goes to the field it belongs to.
    fill(page, internal, BORDER_IP, mx=True)
    expect(page.locator("[data-error-for=border]")).to_have_text(
        "mx_lookup needs a domain name, not an IP address"
    )
    assert revision(gw) == before
    assert rcpt(gw, "bob@example.com") == "554 5.7.1 <bob@example.com>: Relay access denied"

    # The seed's scheme: one revision, six steps, and the way to the integration check.
    fill(page, internal, f"{BORDER_IP}:2525")
    status = page.get_by_role("status")
    expect(status).to_contain_text(f"Applied in revision {before + 1}.")
    steps = page.locator("#steps li")
    expect(steps).to_have_count(6)
    expect(steps.nth(0)).to_have_text(
        f"1. local domains example.com, sub.example.com, routed to [{internal.replace(':', ']:')}"
    )
    expect(steps.nth(1)).to_have_text(f"2. border gateway [{BORDER_IP}]:2525 as relayhost")
    expect(steps.nth(2)).to_have_text(f"3. trusted networks {INTERNAL_IP}/32")
    expect(steps.nth(5)).to_have_text("6. recipient verification: reject for unverified recipients")
    assert revision(gw) == before + 1
    # The form now shows the scheme in use.
    expect(page.get_by_label("Local domains")).to_have_value("example.com\nsub.example.com")
    expect(page.get_by_label("Internal mail server")).to_have_value(internal)
    expect(page.get_by_label("Border gateway", exact=True)).to_have_value(f"{BORDER_IP}:2525")
    expect(page.get_by_label("Trusted networks")).to_have_value(f"{INTERNAL_IP}/32")
    expect(page.get_by_label("Upstream gateway addresses")).to_have_value(f"{BORDER_IP}/32")

    # In force at once: the new local domain is no longer denied; verification asks the
    # internal server, where nothing listens.
    assert rcpt(gw, "bob@example.com").startswith(
        "450 4.1.1 <bob@example.com>: Recipient address rejected: unverified address"
    )
    assert gw.gateway is not None
    assert gw.gateway.holder.current.revision == before + 1

    # Applied again unchanged: no new revision.
    page.get_by_role("button", name="Apply the scheme").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"Nothing to save: the scheme is the one in use (revision {before + 1})."
    )
    assert revision(gw) == before + 1

    # Without the session's CSRF token: refused, nothing saved.
    forged = page.request.post(
        gw.web_url + "/settings/setup",
        form={"domains": "other.example", "internal": INTERNAL_IP, "border": BORDER_IP},
    )
    assert forged.status == 403
    assert revision(gw) == before + 1

    page.get_by_role("link", name="Run the integration check in Diagnostics").click()
    expect(page).to_have_url(gw.web_url + "/diagnostics#check")
    expect(page.get_by_role("button", name="Run the integration check")).to_be_visible()


def test_auditor_sees_the_note_and_no_form(
    start_gateway: Callable[..., Gateway], browsing: Browsing
) -> None:
    gw = start_gateway(web=True)
    page = auditor_page(gw, browsing)
    open_settings(page, PAGE)
    expect(page.locator("main")).to_contain_text("Setting up the scheme is for administrators")
    expect(page.locator("main form")).to_have_count(0)
    expect(page.locator("main textarea, main input, main button")).to_have_count(0)
    token = page.locator("#logout input[name=csrf_token]").get_attribute("value")
    assert token
    before = revision(gw)
    refused = page.request.post(
        gw.web_url + "/settings/setup",
        form={"csrf_token": token, "domains": "example.com", "internal": INTERNAL_IP,
              "border": BORDER_IP},
    )  # fmt: skip
    assert refused.status == 403
    assert revision(gw) == before
