"""The web interface in a real browser (Chromium driven by Playwright): the seed's whole
procedure (SPEC section 1) done through the pages only, then checked over SMTP; refused input
shown next to its field with nothing saved; mail-borne XSS shown as text; the auditor role and
CSRF; screenshots of the main pages for the documentation."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from mailgate.testing.sink import Sink, refuse_unknown
from mailgate.tracking import Search
from tests.conftest import (
    BORDER_IP,
    EXTERNAL_CLIENT_IP,
    INTERNAL_IP,
    Gateway,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"


# -- browser fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Browsing:
    """Browser contexts for one test; any dialog (alert) or CSP violation fails the test."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.dialogs: list[str] = []
        self.csp_violations: list[str] = []

    def page(self) -> Page:
        context = self.browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        return page

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsing(browser: Browser) -> Iterator[Browsing]:
    session = Browsing(browser)
    yield session
    session.close()
    assert session.dialogs == [], "a script ran in the page"
    assert session.csp_violations == [], "the page broke its Content-Security-Policy"


def login(
    page: Page, gw: Gateway, username: str | None = None, password: str | None = None
) -> None:
    user, first_password = gw.admin_login
    page.goto(gw.web_url + "/")
    expect(page).to_have_url(gw.web_url + "/login?next=%2Fdashboard")
    page.get_by_label("User name").fill(username or user)
    page.get_by_label("Password").fill(password or first_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def auditor_page(gw: Gateway, browsing: Browsing) -> Page:
    """A page logged in as "audrey", a read-only auditor created on `gw`."""
    assert gw.gateway is not None
    gw.gateway.admin.accounts.create("audrey", "auditor-password-1", "auditor")
    page = browsing.page()
    login(page, gw, "audrey", "auditor-password-1")
    return page


def open_settings(page: Page, item: str) -> None:
    """Settings → (Built-in MTA | General → Protection) → item, through the menu."""
    page.get_by_role("navigation", name="Sections").get_by_text("Settings", exact=True).click()
    page.get_by_role("link", name=item, exact=True).click()
    expect(page.get_by_role("heading", name=item)).to_be_visible()


def open_section(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def save(page: Page, confirmation: str = "Saved.") -> None:
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text(confirmation)


def revision(gw: Gateway) -> int:
    return gw.config_service().current().id


def message(subject: str = "hello", to: str = "bob@example.com") -> bytes:
    return (
        f"From: <alice@sender.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(subject + to))}@sender.example>\r\n\r\nhello\r\n"
    ).encode()


# -- 1. the seed's procedure through the web interface ---------------------------------------


def test_seed_procedure_through_the_web_interface(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
    browsing: Browsing,
) -> None:
    _, nameserver = dns_zone
    internal = start_sink(INTERNAL_IP, rcpt_reply=refuse_unknown(["bob@example.com"]))
    border = start_sink(BORDER_IP)
    # As shipped, SPF and DMARC are on (the test's name server answers, not the internet's).
    gw = start_gateway(
        {
            "advanced": {"dns": {"nameservers": [nameserver]}},
            "protection": {
                "external_services": {"use_spf": True, "use_dkim": True, "use_dmarc": True}
            },
        },
        web=True,
    )
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:  # before: no local domain, nothing accepted
        smtp.ehlo("border.test")
        smtp.mail("alice@sender.example")
        code, reply = smtp.rcpt("bob@example.com")
        assert (code, reply[:5]) == (554, b"5.7.1")

    page = browsing.page()
    login(page, gw)

    # Step 1: Settings → Built-in MTA → Domains → Add domain, "Local domain", a route, Save.
    open_settings(page, "Domains")
    page.get_by_role("link", name="Add domain").click()
    page.get_by_label("Domain name").fill("example.com")
    expect(page.get_by_label("Local domain")).to_be_checked()
    page.get_by_label("Route: host or IP address").fill(INTERNAL_IP)
    page.get_by_label("Route: port").fill(str(internal.port))
    expect(page.get_by_label("Use MX record lookup")).not_to_be_checked()
    save(page, "Domain added")
    row = page.locator("#domains tbody tr", has_text="example.com")
    expect(row).to_contain_text(f"{INTERNAL_IP}:{internal.port}")
    expect(row).to_contain_text("Yes")

    # Steps 2 and 3: Main settings → "Send via border gateway" + address and port; trusted
    # networks.
    open_settings(page, "Main settings")
    page.get_by_label("Send via border gateway").check()
    page.get_by_label("Border gateway address").fill(BORDER_IP)
    page.get_by_label("Border gateway port").fill(str(border.port))
    page.get_by_label("Trusted networks").fill(f"{INTERNAL_IP}/32")
    save(page)

    # Step 4: General → Protection → External services: SPF and DMARC off.
    open_settings(page, "External services")
    page.get_by_label("Use SPF authentication").uncheck()
    page.get_by_label("Use DMARC authentication").uncheck()
    save(page)

    # Step 5: Reject → Delete message in every rule.
    open_section(page, "Rules")
    rules = page.locator("#rules")
    expect(rules.locator(".action-reject").first).to_be_visible()
    page.get_by_role("button", name="Replace Reject with Delete message in every rule").click()
    expect(page.get_by_role("status")).to_contain_text("Reject replaced with Delete message")
    expect(rules.locator(".action-reject")).to_have_count(0)

    # Step 6: Advanced settings → "Reject for unverified recipients".
    open_settings(page, "Advanced settings")
    page.get_by_label("Reject messages for recipient addresses").select_option(
        label="Reject for unverified recipients"
    )
    save(page)

    # Over the wire: untrusted client (the border) to a local domain, accepted and delivered
    # to the internal server; to an outside domain refused; an unknown user refused at RCPT
    # (verification against the internal server).
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        smtp.ehlo("border.test")
        smtp.mail("alice@sender.example")
        assert smtp.rcpt("bob@example.com")[0] == 250
        code, reply = smtp.rcpt("carol@outside.example")
        assert (code, reply[:5]) == (554, b"5.7.1")
        code, reply = smtp.rcpt("nobody@example.com")
        assert (code, reply[:5]) == (550, b"5.1.1")
        assert smtp.data(message("inbound"))[0] == 250
    (delivered,) = wait_until(lambda: internal.messages, 30, "delivery to the internal server")
    assert delivered.rcpt_to == ["bob@example.com"]
    assert delivered.header("Subject") == "inbound"

    # From the internal server (trusted): outside mail goes to the border gateway.
    with gw.client(INTERNAL_IP) as smtp:
        assert (
            smtp.sendmail(
                "bob@example.com",
                ["carol@outside.example"],
                message("outbound", "carol@outside.example"),
            )
            == {}
        )
    (relayed,) = wait_until(lambda: border.messages, 30, "delivery to the border gateway")
    assert relayed.rcpt_to == ["carol@outside.example"]
    assert relayed.header("Subject") == "outbound"

    # Every saved value is shown afterwards (fresh page loads).
    page.goto(gw.web_url + "/settings/mta/domains")
    expect(page.locator("#domains")).to_contain_text("example.com")
    page.goto(gw.web_url + "/settings/mta/main")
    expect(page.get_by_label("Send via border gateway")).to_be_checked()
    expect(page.get_by_label("Border gateway address")).to_have_value(BORDER_IP)
    expect(page.get_by_label("Border gateway port")).to_have_value(str(border.port))
    expect(page.get_by_label("Use MX record lookup")).not_to_be_checked()
    expect(page.get_by_label("Trusted networks")).to_have_value(f"{INTERNAL_IP}/32")
    page.goto(gw.web_url + "/settings/protection/external")
    expect(page.get_by_label("Use SPF authentication")).not_to_be_checked()
    expect(page.get_by_label("Use DMARC authentication")).not_to_be_checked()
    page.goto(gw.web_url + "/rules")
    expect(page.locator("#rules .action-reject")).to_have_count(0)
    expect(page.locator("#rules tr.default")).to_contain_text("Delete message")
    page.goto(gw.web_url + "/settings/mta/advanced")
    expect(page.get_by_label("Reject messages for recipient addresses")).to_have_value(
        "reject_unverified"
    )
    # The audit log names each field that changed.
    page.goto(gw.web_url + "/audit")
    audit = page.locator("#audit")
    for field in (
        "domains",
        "main.destination",
        "main.relayhost",
        "main.trusted_networks",
        "protection.external_services.use_spf",
        "default_rule.antivirus.infected",
        "advanced.verification.mode",
    ):
        expect(audit.get_by_text(field, exact=True).first).to_be_visible()
    config = gw.config_service().current().config
    assert [d.name for d in config.domains] == ["example.com"]
    assert config.main.destination == "border_gateway"
    assert config.advanced.verification.mode == "reject_unverified"


# -- 2. refused input ------------------------------------------------------------------------


def test_invalid_input_is_shown_next_to_the_field_and_nothing_is_saved(
    start_gateway: Callable[..., Gateway], browsing: Browsing
) -> None:
    gw = start_gateway(web=True)
    page = browsing.page()
    login(page, gw)
    before = revision(gw)

    page.goto(gw.web_url + "/settings/mta/main")
    page.get_by_label("Send via border gateway").check()
    page.get_by_label("Border gateway address").fill(BORDER_IP)
    page.get_by_label("Border gateway port").fill("70000")
    page.get_by_label("Trusted networks").fill("127.0.0.30/32\n10.0.0.0/33")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved")
    trusted = page.locator('[data-error-for="main.trusted_networks"]')
    expect(trusted).to_contain_text("'10.0.0.0/33' is not an IPv4 or IPv6 address or network")
    port = page.locator('[data-error-for="main.relayhost.port"]')
    expect(port).to_contain_text("65535")
    # Next to the field: in the same field block, and the input is marked invalid.
    expect(page.get_by_label("Border gateway port")).to_have_attribute("aria-invalid", "true")
    expect(
        page.locator(".field.invalid", has=page.get_by_label("Trusted networks"))
    ).to_contain_text("10.0.0.0/33")
    # What was typed is kept for correction.
    expect(page.get_by_label("Trusted networks")).to_have_value("127.0.0.30/32\n10.0.0.0/33")

    # A relayhost is required for "Send via border gateway": the error is at the address.
    page.get_by_label("Border gateway address").fill("")
    page.get_by_label("Border gateway port").fill("25")
    page.get_by_label("Trusted networks").fill("")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-error-for="main.relayhost.host"]')).to_contain_text(
        "relayhost is required"
    )

    page.goto(gw.web_url + "/settings/mta/domains/new")
    page.get_by_label("Domain name").fill("example.com")
    page.get_by_label("Route: host or IP address").fill("127.0.0.30")
    page.get_by_label("Route: port").fill("70000")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-error-for="domains.route.port"]')).to_contain_text("65535")
    page.get_by_label("Domain name").fill("not a domain!")
    page.get_by_label("Route: port").fill("25")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-error-for="domains.name"]')).to_contain_text("not a valid domain")

    page.goto(gw.web_url + "/settings/mta/advanced")
    page.get_by_label("Recipient limit").fill("many")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-error-for="advanced.limits.recipient_limit"]')).to_contain_text(
        "valid integer"
    )

    page.goto(gw.web_url + "/settings/protection/external")
    page.get_by_label("Use SPF authentication").uncheck()  # DMARC still on: refused
    page.get_by_label("Use DMARC authentication").check()
    page.get_by_role("button", name="Save").click()
    expect(
        page.locator('[data-error-for="protection.external_services.use_dmarc"]')
    ).to_contain_text("use_dmarc needs use_spf")

    assert revision(gw) == before
    page.goto(gw.web_url + "/settings/mta/main")
    expect(page.get_by_label("Use DNS (MX records of each domain)")).to_be_checked()
    expect(page.get_by_label("Trusted networks")).to_have_value("")
    page.goto(gw.web_url + "/settings/mta/domains")
    expect(page.locator("#domains")).to_have_count(0)


# -- 3. mail-borne XSS -----------------------------------------------------------------------


def _b64word(text: str) -> str:
    return "=?utf-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def _xss_message(subject: str, from_header: str, filename_params: str, marker: str) -> bytes:
    return (
        f"From: {from_header}\r\nTo: <bob@example.com>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{marker}@evil.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{marker}: {SCRIPT} {IMG}\r\n"
        f"--b1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Disposition: attachment; {filename_params}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1--\r\n"
    ).encode()


def assert_inert(page: Page) -> None:
    """Nothing from a payload became an element or an attribute."""
    expect(page.locator("script")).to_have_count(0)
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("[onerror]")).to_have_count(0)


def test_xss_payloads_in_mail_are_shown_as_text(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], browsing: Browsing
) -> None:
    internal = start_sink(INTERNAL_IP)
    gw = start_gateway(
        {
            "domains": [
                {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}}
            ],
            "protection": {
                "content": {"enabled": True, "blocked_names": ["*.exe"], "blocked_types": []}
            },
            "default_rule": {"name": "Default", "content": {"blocked_attachment": "quarantine"}},
        },
        web=True,
    )
    encoded_name = urllib.parse.quote(f"{SCRIPT}.exe", safe="")
    messages = {
        # plain payloads; a harmless attachment name: delivered
        "plain": _xss_message(
            SCRIPT, f'"{IMG}" <eve@evil.example>', f'filename="{IMG}.txt"', "plain"
        ),
        # RFC 2047 subject and display name, RFC 2231 and RFC 2047 file names: quarantined
        "encoded": _xss_message(
            _b64word(IMG),
            f"{_b64word(SCRIPT)} <mallory@evil.example>",
            f"filename*=utf-8''{encoded_name}; name=\"{_b64word(SCRIPT + '.exe')}\"",
            "encoded",
        ),
        # plain payloads with a blocked name: quarantined
        "blocked": _xss_message(
            f"{IMG} invoice",
            f'"{SCRIPT}" <trent@evil.example>',
            f'filename="{SCRIPT}.exe"',
            "blocked",
        ),
    }
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        for sender, content in (
            ("eve@evil.example", messages["plain"]),
            ("mallory@evil.example", messages["encoded"]),
            ("trent@evil.example", messages["blocked"]),
        ):
            assert smtp.sendmail(sender, ["bob@example.com"], content) == {}
    assert gw.gateway is not None
    tracking, quarantine = gw.gateway.tracking, gw.gateway.quarantine
    wait_until(lambda: len(tracking.search(Search())) == 3, 30, "three messages in the log")
    wait_until(lambda: len(quarantine.search()) == 2, 30, "two messages in the quarantine")
    wait_until(lambda: internal.messages, 30, "the clean message delivered")

    page = browsing.page()
    login(page, gw)
    page.goto(gw.web_url + "/log")
    log = page.locator("#log")
    expect(log.get_by_text(SCRIPT, exact=True)).to_be_visible()
    expect(log.get_by_text(IMG, exact=True)).to_be_visible()
    expect(log.get_by_text(f"{IMG} invoice", exact=True)).to_be_visible()
    assert_inert(page)
    for subject in (SCRIPT, IMG, f"{IMG} invoice"):
        page.goto(gw.web_url + "/log")
        page.locator("#log").get_by_role("link", name=subject, exact=True).click()
        expect(page.locator("#subject")).to_have_text(subject)
        assert_inert(page)
    # The blocked message's verdict names the attachment: as text as well.
    expect(page.locator("#verdicts")).to_contain_text(SCRIPT)

    page.goto(gw.web_url + "/quarantine")
    expect(page.locator("#quarantine").get_by_text(IMG, exact=True)).to_be_visible()
    assert_inert(page)
    for subject, display_name in ((IMG, SCRIPT), (f"{IMG} invoice", SCRIPT)):
        page.goto(gw.web_url + "/quarantine")
        page.locator("#quarantine").get_by_role("link", name=subject, exact=True).click()
        expect(page.locator("#subject")).to_have_text(subject)
        headers = page.locator("#headers")
        expect(headers.locator("tr:has(th:text-is('Subject')) td")).to_have_text(subject)
        expect(headers.locator("tr:has(th:text-is('From')) td")).to_contain_text(display_name)
        expect(page.locator("#attachments .filename")).to_have_text(f"{SCRIPT}.exe")
        expect(page.locator("#text")).to_contain_text(f"{SCRIPT} {IMG}")
        assert_inert(page)
    page.goto(gw.web_url + "/dashboard")  # verdict labels in the charts
    expect(page.locator("svg.chart").first).to_be_visible()
    assert_inert(page)
    assert browsing.dialogs == []


# -- 4. the auditor role and CSRF ------------------------------------------------------------

READ_ONLY_PAGES = [
    "/dashboard",
    "/settings/mta/domains",
    "/settings/mta/domains/edit?name=example.com",
    "/settings/mta/main",
    "/settings/mta/advanced",
    "/settings/protection/external",
    "/settings/protection/modules",
    "/rules",
    "/rules/edit?name=default",
    "/rules/edit?name=Partners",
    "/queue",
    "/log",
    "/quarantine",
    "/accounts",
    "/audit",
]


def assert_no_change_controls(page: Page) -> None:
    """No form that posts (but logging out), no button or input outside the search forms."""
    expect(page.locator("form[method=post]:not(#logout)")).to_have_count(0)
    outside = ":not(form[method=get] *):not(#logout *)"
    expect(page.locator(f"button{outside}")).to_have_count(0)
    expect(page.locator(f"input:not([type=hidden]){outside}")).to_have_count(0)
    expect(page.locator(f"select{outside}")).to_have_count(0)
    expect(page.locator(f"textarea{outside}")).to_have_count(0)


def test_auditor_sees_no_change_controls_and_cannot_post(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], browsing: Browsing
) -> None:
    internal = start_sink(INTERNAL_IP)
    closed_port = free_port("127.0.0.31")  # nothing listens: mail for it stays in the queue
    gw = start_gateway(
        {
            "domains": [
                {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
                {"name": "branch.example", "route": {"host": "127.0.0.31", "port": closed_port}},
            ],
            "protection": {"content": {"enabled": True, "blocked_names": ["*.exe"]}},
            "default_rule": {"name": "Default", "content": {"blocked_attachment": "quarantine"}},
            "rules": [{"name": "Partners", "senders": ["*@partner.example"], "mode": "skip"}],
        },
        web=True,
    )
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        smtp.sendmail(
            "a@sender.example", ["bob@branch.example"], message("queued", "bob@branch.example")
        )
        smtp.sendmail(
            "a@sender.example",
            ["bob@example.com"],
            _xss_message("blocked", "<a@sender.example>", 'filename="x.exe"', "q"),
        )
    assert gw.gateway is not None
    kept = wait_until(lambda: gw.gateway.quarantine.search() if gw.gateway else [], 30)
    queued = wait_until(gw.queue, 30, "a message in the queue")

    admin = browsing.page()
    login(admin, gw)
    open_section(admin, "Accounts")
    form = admin.locator("#new-account")
    form.get_by_label("User name").fill("audrey")
    form.get_by_label("Password (at least 10 characters)").fill("auditor-password-1")
    form.get_by_label("Role").select_option(label="Read-only auditor")
    form.get_by_role("button", name="Add account").click()
    expect(admin.get_by_role("status")).to_contain_text("Account created")
    expect(admin.locator("#accounts tr[data-user=audrey]")).to_contain_text("Read-only auditor")

    auditor = browsing.page()
    login(auditor, gw, "audrey", "auditor-password-1")
    pages = [
        *READ_ONLY_PAGES,
        f"/queue/{queued[0]['qid']}",
        f"/quarantine/{kept[0]['id']}",
        f"/log/{kept[0]['qid']}",
    ]
    for path in pages:
        response = auditor.goto(gw.web_url + path)
        assert response is not None, path
        assert response.status == 200, path
        expect(auditor.locator("main h1")).to_be_visible()
        assert_no_change_controls(auditor)

    # A direct POST with the auditor's own session and its valid CSRF token: 403.
    token = auditor.locator("#logout input[name=csrf_token]").get_attribute("value")
    assert token
    before = revision(gw)
    posts: list[tuple[str, dict[str, str | float | bool]]] = [
        (
            "/settings/mta/main",
            {
                "main.destination": "dns",
                "main.trusted_networks": "0.0.0.0/0",
                "main.hostname": "evil.test",
                "main.message_size_limit": "2048",
                "main.relayhost.host": "",
                "main.relayhost.port": "25",
            },
        ),
        (
            "/settings/mta/domains/save",
            {"original": "", "domains.name": "evil.example", "domains.local": "on"},
        ),
        ("/settings/mta/domains/delete", {"name": "example.com"}),
        ("/rules/replace-reject", {}),
        ("/rules/delete", {"name": "Partners"}),
        ("/queue/flush", {}),
        ("/queue/action", {"qid": queued[0]["qid"], "action": "delete"}),
        (f"/quarantine/{kept[0]['id']}/release", {}),
        (
            "/accounts/new",
            {"username": "mallory", "password": "mallory-password", "role": "administrator"},
        ),
        ("/accounts/change", {"username": "admin", "action": "disable"}),
    ]
    for path, form_data in posts:
        refused = auditor.request.post(gw.web_url + path, form={**form_data, "csrf_token": token})
        assert refused.status == 403, path
    # ... and the same POST without a token from an administrator's session: 403 too.
    for path, form_data in posts:
        refused = admin.request.post(gw.web_url + path, form=form_data)
        assert refused.status == 403, path
        wrong = admin.request.post(gw.web_url + path, form={**form_data, "csrf_token": token})
        assert wrong.status == 403, path  # the auditor's token is not the administrator's
    assert revision(gw) == before
    assert [k["id"] for k in gw.gateway.quarantine.search()] == [kept[0]["id"]]
    assert [q["qid"] for q in gw.queue()] == [queued[0]["qid"]]
    names = {a.username: a for a in gw.gateway.admin.accounts.all()}
    assert set(names) == {"admin", "audrey"}
    assert not names["admin"].disabled

    # The auditor may change its own password (its account page), nothing else.
    auditor.goto(gw.web_url + "/account")
    auditor.get_by_label("Current password").fill("auditor-password-1")
    auditor.get_by_label("New password (at least 10 characters)").fill("auditor-password-2")
    auditor.get_by_label("New password again").fill("auditor-password-2")
    auditor.get_by_role("button", name="Change password").click()
    expect(auditor.get_by_role("status")).to_contain_text("Password changed")
    auditor.goto(gw.web_url + "/dashboard")  # still logged in with a fresh session
    expect(auditor.get_by_role("heading", name="Dashboard")).to_be_visible()


# -- 5. screenshots for the documentation ----------------------------------------------------

SHOTS = [
    (
        "dashboard",
        "/dashboard",
        "Dashboard: messages in and out, actions, verdicts, queue, verification",
    ),
    (
        "setup",
        "/settings/setup",
        "Settings → Set up: border gateway (the seed's scheme in one step)",
    ),
    ("domains", "/settings/mta/domains", "Settings → Built-in MTA → Domains"),
    (
        "main-settings",
        "/settings/mta/main",
        "Settings → Built-in MTA → Main settings (border gateway, trusted networks)",
    ),
    (
        "advanced-settings",
        "/settings/mta/advanced",
        "Settings → Built-in MTA → Advanced settings (recipient verification)",
    ),
    (
        "external-services",
        "/settings/protection/external",
        "Settings → General → Protection → External services",
    ),
    ("rules", "/rules", "Rules, after Reject → Delete message"),
    ("queue", "/queue", "Queue"),
    ("message-log", "/log", "Message log"),
    ("message", None, "One message's path and decisions"),
    ("quarantine", "/quarantine", "Quarantine"),
    ("accounts", "/accounts", "Accounts"),
    ("audit-log", "/audit", "Audit log with field-level changes"),
    (
        "diagnostics",
        "/diagnostics",
        "Diagnostics: the integration check, a failure marked with its fix",
    ),
]


def test_screenshots_of_the_main_pages(
    start_gateway: Callable[..., Gateway],
    start_sink: Callable[..., Sink],
    dns_zone: tuple[Any, str],
    browsing: Browsing,
) -> None:
    internal = start_sink(
        INTERNAL_IP, rcpt_reply=refuse_unknown(["bob@example.com", "carol@example.com"])
    )
    border = start_sink(BORDER_IP)
    closed_port = free_port("127.0.0.31")
    gw = start_gateway(
        {
            "advanced": {"dns": {"nameservers": [dns_zone[1]]}},
            "protection": {
                "content": {"enabled": True, "blocked_names": ["*.exe", "*.js"]},
                "external_services": {"use_spf": True, "use_dkim": True, "use_dmarc": True},
            },
            "rules": [
                {"name": "Partners", "senders": ["*@partner.example"], "mode": "skip"},
                {"name": "Internal senders", "client_networks": [f"{INTERNAL_IP}/32"]},
            ],
            "default_rule": {"name": "Default", "content": {"blocked_attachment": "quarantine"}},
        },
        web=True,
    )
    page = browsing.page()
    login(page, gw)
    # The seed's settings, through the pages (they also fill the audit log).
    page.goto(gw.web_url + "/settings/mta/domains/new")
    page.get_by_label("Domain name").fill("example.com")
    page.get_by_label("Route: host or IP address").fill(INTERNAL_IP)
    page.get_by_label("Route: port").fill(str(internal.port))
    save(page, "Domain added")
    page.goto(gw.web_url + "/settings/mta/domains/new")
    page.get_by_label("Domain name").fill("branch.example")
    page.get_by_label("Route: host or IP address").fill("127.0.0.31")
    page.get_by_label("Route: port").fill(str(closed_port))
    save(page, "Domain added")
    page.goto(gw.web_url + "/settings/mta/main")
    page.get_by_label("Send via border gateway").check()
    page.get_by_label("Border gateway address").fill(BORDER_IP)
    page.get_by_label("Border gateway port").fill(str(border.port))
    page.get_by_label("Trusted networks").fill(f"{INTERNAL_IP}/32\n10.0.0.0/8")
    save(page)
    page.goto(gw.web_url + "/settings/protection/external")
    page.get_by_label("Use SPF authentication").uncheck()
    page.get_by_label("Use DMARC authentication").uncheck()
    save(page)
    page.goto(gw.web_url + "/rules")
    page.get_by_role("button", name="Replace Reject with Delete message in every rule").click()
    expect(page.get_by_role("status")).to_be_visible()
    page.goto(gw.web_url + "/settings/mta/advanced")
    page.get_by_label("Reject messages for recipient addresses").select_option("reject_unverified")
    save(page)
    page.goto(gw.web_url + "/settings/mta/domains/edit?name=example.com")
    expect(page.get_by_label("Domain name")).to_have_value("example.com")

    # Traffic: delivered in and out, one quarantined, one waiting in the queue.
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        for n in range(4):
            smtp.sendmail("alice@sender.example", ["bob@example.com"], message(f"report {n}"))
        smtp.sendmail(
            "eve@sender.example",
            ["carol@example.com"],
            _xss_message("Invoice", "<eve@sender.example>", 'filename="invoice.exe"', "i"),
        )
    with gw.client(INTERNAL_IP) as smtp:  # trusted: not verified (the branch is down)
        smtp.sendmail(
            "alice@example.com", ["dan@branch.example"], message("branch", "dan@branch.example")
        )
        smtp.sendmail(
            "bob@example.com",
            ["carol@outside.example"],
            message("outbound", "carol@outside.example"),
        )
    assert gw.gateway is not None
    wait_until(lambda: len(internal.messages) == 4 and border.messages, 30, "deliveries")
    wait_until(lambda: gw.gateway and gw.gateway.quarantine.search(), 30, "the quarantine")
    wait_until(gw.queue, 30, "the queue")
    wait_until(lambda: gw.gateway and len(gw.gateway.tracking.search(Search())) == 7, 30)

    page.goto(gw.web_url + "/accounts")
    form = page.locator("#new-account")
    form.get_by_label("User name").fill("auditor")
    form.get_by_label("Password (at least 10 characters)").fill("auditor-password-1")
    form.get_by_label("Role").select_option("auditor")
    form.get_by_role("button", name="Add account").click()
    expect(page.get_by_role("status")).to_be_visible()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Screenshots of the web interface",
        "",
        "Made by `tests/e2e/test_web_ui.py::test_screenshots_of_the_main_pages` "
        "(Chromium, 1280x800) after the seed's procedure was done through the pages.",
        "",
    ]
    for name, path, caption in SHOTS:
        if path is None:
            page.goto(gw.web_url + "/log?subject=Invoice")
            page.locator("#log").get_by_role("link", name="Invoice").click()
        else:
            page.goto(gw.web_url + path)
        expect(page.locator("main h1")).to_be_visible()
        if name == "diagnostics":  # the branch's route points at a closed port: one failure
            page.get_by_role("button", name="Run the integration check").click()
            expect(page.locator("#findings tr[data-status=fail]").first).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        lines.append(f"- [{caption}]({name}.png)")
    (SCREENSHOTS / "README.md").write_text("\n".join(lines) + "\n")
    for name, _, _ in SHOTS:
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_login_refuses_a_wrong_password(
    start_gateway: Callable[..., Gateway], browsing: Browsing
) -> None:
    gw = start_gateway(web=True)
    page = browsing.page()
    page.goto(gw.web_url + "/login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    page.goto(gw.web_url + "/settings/mta/main")
    expect(page).to_have_url(gw.web_url + "/login?next=%2Fsettings%2Fmta%2Fmain")
    login(page, gw)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.goto(gw.web_url + "/dashboard")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


# -- 6. the other operations: rules, queue, quarantine, accounts -----------------------------


def test_rules_queue_quarantine_and_accounts_operations(
    start_gateway: Callable[..., Gateway], start_sink: Callable[..., Sink], browsing: Browsing
) -> None:
    internal = start_sink(INTERNAL_IP)
    closed_port = free_port("127.0.0.31")
    gw = start_gateway(
        {
            "domains": [
                {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
                {"name": "branch.example", "route": {"host": "127.0.0.31", "port": closed_port}},
            ],
            "protection": {"content": {"enabled": True, "blocked_names": ["*.exe"]}},
            "default_rule": {"name": "Default", "content": {"blocked_attachment": "quarantine"}},
        },
        web=True,
    )
    page = browsing.page()
    login(page, gw)

    # Rules: add two, edit one's action, move, delete.
    for name, sender in (("First", "*@one.example"), ("Second", "*@two.example")):
        page.goto(gw.web_url + "/rules")
        page.get_by_role("link", name="Add rule").click()
        page.get_by_label("Rule name").fill(name)
        page.get_by_label("Senders").fill(sender)
        save(page, "Rule added")
    rows = page.locator("#rules tbody tr")
    expect(rows.nth(0)).to_contain_text("First")
    expect(rows.nth(1)).to_contain_text("Second")
    expect(rows.nth(2)).to_contain_text("Default")
    page.get_by_role("button", name="Move Second up").click()
    expect(page.get_by_role("status")).to_contain_text("Rule moved")
    expect(rows.nth(0)).to_contain_text("Second")
    page.locator("tr[data-rule=First]").get_by_role("link", name="Edit").click()
    anti_virus = page.get_by_role("group", name="Anti-Virus")
    anti_virus.get_by_label("Infected").select_option(label="Quarantine")
    page.get_by_label("Senders").fill("re:[")
    page.get_by_role("button", name="Save").click()
    expect(page.locator('[data-error-for="rules.senders"]')).to_contain_text(
        "bad regular expression"
    )
    page.get_by_label("Senders").fill("*@one.example")
    save(page)
    assert gw.config_service().current().config.rules[1].antivirus.infected == "quarantine"
    page.get_by_role("button", name="Delete Second").click()
    expect(page.get_by_role("status")).to_contain_text("Rule deleted")
    expect(page.locator("#rules tbody tr")).to_have_count(2)
    # The default rule: its actions, not its match fields.
    page.goto(gw.web_url + "/rules/edit?name=default")
    expect(page.get_by_label("Senders")).to_have_count(0)
    page.get_by_role("group", name="Anti-Spam").get_by_label("Spam", exact=True).select_option(
        "quarantine"
    )
    save(page)
    assert gw.config_service().current().config.default_rule.antispam.spam == "quarantine"

    # Domains: edit the route, delete.
    page.goto(gw.web_url + "/settings/mta/domains")
    page.locator("#domains tr", has_text="branch.example").get_by_role("link", name="Edit").click()
    page.get_by_label("TLS level").select_option("none")
    save(page)
    expect(page.locator("#domains tr", has_text="branch.example")).to_contain_text("None")

    # Queue: a message for the unreachable branch waits; hold, release, delete, flush.
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        smtp.sendmail(
            "a@sender.example", ["dan@branch.example"], message("wait", "dan@branch.example")
        )
        smtp.sendmail(
            "a@sender.example",
            ["bob@example.com"],
            _xss_message("kept", "<a@sender.example>", 'filename="x.exe"', "k"),
        )
    (queued,) = wait_until(gw.queue, 30, "the queued message")
    qid = queued["qid"]
    page.goto(gw.web_url + "/queue")
    page.get_by_role("button", name=f"Hold {qid}").click()
    expect(page.get_by_role("status")).to_contain_text("on hold")
    expect(page.locator(f"tr[data-qid='{qid}']")).to_contain_text("hold")
    page.get_by_role("button", name=f"Release {qid}").click()
    expect(page.get_by_role("status")).to_contain_text("released")
    page.get_by_role("button", name="Flush queue").click()
    expect(page.get_by_role("status")).to_contain_text("scheduled")
    page.get_by_role("link", name=qid).click()
    expect(page.locator("pre.message")).to_contain_text("Subject: wait")
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("deleted")
    wait_until(lambda: not gw.queue(), 30, "the queue to be empty")

    # Quarantine: view, download (as text, attachment), release, delete.
    assert gw.gateway is not None
    wait_until(lambda: gw.gateway and gw.gateway.quarantine.search(), 30, "the quarantine")
    page.goto(gw.web_url + "/quarantine")
    page.locator("#quarantine").get_by_role("link", name="kept").click()
    link = page.get_by_role("link", name="Download").get_attribute("href")
    assert link
    download = page.request.get(gw.web_url + link)
    assert download.status == 200
    assert download.headers["content-type"].startswith(
        ("text/plain", "message/rfc822", "application/octet-stream")
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "attachment" in download.headers.get("content-disposition", "")
    assert b"Subject: kept" in download.body()
    page.get_by_role("button", name="Release (deliver)").click()
    expect(page.get_by_role("status")).to_contain_text("released")
    (released,) = wait_until(lambda: internal.messages, 30, "the released message")
    assert released.header("Subject") == "kept"
    with gw.client(EXTERNAL_CLIENT_IP) as smtp:
        smtp.sendmail(
            "a@sender.example",
            ["bob@example.com"],
            _xss_message("kept again", "<a@sender.example>", 'filename="x.exe"', "k2"),
        )
    wait_until(lambda: gw.gateway and gw.gateway.quarantine.search(), 30, "the quarantine")
    page.goto(gw.web_url + "/quarantine")
    page.locator("#quarantine").get_by_role("link", name="kept again").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("deleted")
    assert gw.gateway.quarantine.search() == []

    # Accounts: add, change role, disable, reset password, delete; errors next to the field.
    page.goto(gw.web_url + "/accounts")
    form = page.locator("#new-account")
    form.get_by_label("User name").fill("olivia")
    form.get_by_label("Password (at least 10 characters)").fill("short")
    form.get_by_role("button", name="Add account").click()
    expect(page.locator('[data-error-for="password"]')).to_contain_text("at least 10")
    form.get_by_label("Password (at least 10 characters)").fill("olivia-password-1")
    form.get_by_role("button", name="Add account").click()
    row = page.locator("tr[data-user=olivia]")
    expect(row).to_contain_text("Administrator")
    row.get_by_label("Role of olivia").select_option("auditor")
    row.get_by_role("button", name="Change role").click()
    expect(row).to_contain_text("Read-only auditor")
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    row.get_by_role("button", name="Enable").click()
    expect(row).to_contain_text("enabled")
    row.get_by_label("New password for olivia").fill("olivia-password-2")
    row.get_by_role("button", name="Reset password").click()
    expect(page.get_by_role("status")).to_contain_text("Account changed")
    assert gw.gateway.admin.accounts.authenticate("olivia", "olivia-password-2") is not None
    page.locator("tr[data-user=admin]").get_by_role("button", name="Delete admin").click()
    expect(page.locator('[data-error-for="admin"]')).to_contain_text("last administrator")
    page.get_by_role("button", name="Delete olivia").click()
    expect(page.locator("tr[data-user=olivia]")).to_have_count(0)
