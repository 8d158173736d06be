"""The REST API over HTTP against a running gateway: every resource end to end (and its effect
on SMTP and delivery), validation that names the field and changes nothing, the audit log, and
the security of the API: login, roles (an auditor changes nothing), CSRF for cookie sessions,
bearer tokens."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from fastapi.routing import iter_route_contexts

from mailgate.cli.main import cli
from mailgate.testing.sink import Sink
from mailgate.types import Envelope
from tests.conftest import INTERNAL_IP, Gateway, free_port, wait_until

PASSWORD = "correct horse battery"
API = "/api/v1"


@pytest.fixture
def internal(start_sink: Callable[..., Sink]) -> Sink:
    return start_sink(INTERNAL_IP)


@pytest.fixture
def closed_port() -> int:
    return free_port(INTERNAL_IP)  # nothing listens there (until a test starts a sink on it)


@pytest.fixture
def gw(start_gateway: Callable[..., Gateway], internal: Sink, closed_port: int) -> Gateway:
    """example.com delivered to a sink, deferred.example to a closed port (messages stay in the
    queue, no automatic retry during a test), *.exe attachments quarantined."""
    return start_gateway({
        "domains": [
            {"name": "example.com", "route": {"host": INTERNAL_IP, "port": internal.port}},
            {"name": "deferred.example", "route": {"host": INTERNAL_IP, "port": closed_port}},
        ],
        "advanced": {"queue": {"minimal_backoff_time": 300, "maximal_backoff_time": 300}},
        "protection": {"content": {"enabled": True, "blocked_names": ["*.exe"]}},
        "default_rule": {"name": "Default", "content": {"blocked_attachment": "quarantine"}},
    }, web=True)  # fmt: skip


@pytest.fixture
def clients() -> Iterator[Callable[..., httpx.Client]]:
    made: list[httpx.Client] = []

    def make(gw: Gateway, **options: Any) -> httpx.Client:
        client = httpx.Client(base_url=gw.web_url + API, timeout=30, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def login(client: httpx.Client, username: str, password: str) -> httpx.Client:
    """Log `client` in with the session cookie and send the CSRF token with every request."""
    reply = client.post("/session", json={"username": username, "password": password})
    assert reply.status_code == 200, reply.text
    client.headers["X-CSRF-Token"] = reply.json()["csrf"]
    return client


@pytest.fixture
def admin(gw: Gateway, clients: Callable[..., httpx.Client]) -> httpx.Client:
    """The administrator created at first start, logged in with its one-time password."""
    return login(clients(gw), *gw.admin_login)


def ok(reply: httpx.Response, status: int = 200) -> Any:
    assert reply.status_code == status, f"{reply.request.method} {reply.request.url}: {reply.text}"
    return reply.json() if reply.content else None


def revision(client: httpx.Client) -> int:
    value: int = ok(client.get("/config"))["revision"]
    return value


def message(subject: str, to: str = "bob@example.com", attachment: str | None = None) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@ext.org"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{subject.replace(' ', '.')}@ext.org>"
    mail.set_content("Hello.\n")
    if attachment:
        mail.add_attachment(b"MZ not really a program", maintype="application",
                            subtype="octet-stream", filename=attachment)  # fmt: skip
    return mail.as_bytes()


def send(gw: Gateway, data: bytes, to: str = "bob@example.com") -> None:
    with gw.client() as client:
        client.sendmail("alice@ext.org", [to], data)


def rcpt(gw: Gateway, address: str) -> int:
    """The reply code an untrusted client gets for RCPT TO:<address>."""
    with gw.client() as client:
        client.ehlo("mx.ext.org")
        client.mail("alice@ext.org")
        code, _ = client.rcpt(address)
        client.rset()
    return int(code)


def field_errors(reply: httpx.Response) -> dict[str, str]:
    assert reply.status_code == 422, reply.text
    return {e["field"]: e["message"] for e in reply.json()["errors"]}


def deferred(client: httpx.Client, count: int = 1) -> list[dict[str, Any]]:
    """Wait until `count` messages wait in the queue after a failed attempt."""

    def waiting() -> list[dict[str, Any]] | None:
        items = [i for i in ok(client.get("/queue"))
                 if i["state"] == "deferred" and i["recipients"][0]["reason"]]  # fmt: skip
        return items if len(items) >= count else None

    found: list[dict[str, Any]] = wait_until(waiting, what=f"{count} deferred message(s)")
    return found


# -- session ---------------------------------------------------------------------------------


def test_login_with_the_first_start_password(
    gw: Gateway, clients: Callable[..., httpx.Client]
) -> None:
    name, password = gw.admin_login
    client = clients(gw)
    assert client.post("/session", json={"username": name, "password": "wrong"}).status_code == 401
    assert client.get("/session").status_code == 401
    me = ok(client.post("/session", json={"username": name, "password": password}))
    assert (me["username"], me["role"]) == (name, "administrator")
    assert ok(client.get("/session"))["username"] == name
    client.headers["X-CSRF-Token"] = me["csrf"]
    assert client.delete("/session").status_code == 204
    assert client.get("/session").status_code == 401


# -- configuration ---------------------------------------------------------------------------


def test_domains_crud_and_the_effect_on_smtp(gw: Gateway, admin: httpx.Client) -> None:
    assert rcpt(gw, "carol@new.example") == 554  # not ours: relay access denied
    created = ok(admin.post("/domains", json={"name": "New.Example"}), 201)
    assert created == {"name": "new.example", "local": True, "route": None, "tls": None}
    assert rcpt(gw, "carol@new.example") == 250  # applied before the reply
    assert [d["name"] for d in ok(admin.get("/domains"))] == [
        "example.com", "deferred.example", "new.example"]  # fmt: skip
    assert ok(admin.get("/domains/NEW.example"))["name"] == "new.example"

    changed = ok(admin.patch("/domains/new.example", json={
        "route": {"host": INTERNAL_IP, "port": 2526}, "tls": "encrypt"}))  # fmt: skip
    assert changed["route"] == {"host": INTERNAL_IP, "port": 2526, "mx_lookup": False}
    assert (changed["local"], changed["tls"]) == (True, "encrypt")
    changed = ok(admin.patch("/domains/new.example", json={"local": False, "route": None}))
    assert (changed["local"], changed["route"], changed["tls"]) == (False, None, "encrypt")
    assert rcpt(gw, "carol@new.example") == 554

    assert admin.delete("/domains/new.example").status_code == 204
    assert admin.get("/domains/new.example").status_code == 404
    assert admin.delete("/domains/new.example").status_code == 404
    assert admin.patch("/domains/nowhere.example", json={"local": False}).status_code == 404
    assert admin.get("/domains/not a domain").status_code == 404
    duplicate = admin.post("/domains", json={"name": "EXAMPLE.com"})
    assert "already exists" in field_errors(duplicate)["domains"]


def test_settings_main_advanced_and_protection(gw: Gateway, admin: httpx.Client) -> None:
    main = ok(admin.get("/settings/main"))
    assert main["hostname"] == "mailgate.test"
    changed = ok(admin.patch("/settings/main", json={
        "trusted_networks": ["192.0.2.7/24", "2001:db8::/32"], "message_size_limit": 2_000_000,
    }))  # fmt: skip
    assert changed["trusted_networks"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert changed["message_size_limit"] == 2_000_000
    assert changed["hostname"] == main["hostname"]  # left out: unchanged
    assert gw.gateway is not None
    assert gw.gateway.holder.current.config.main.message_size_limit == 2_000_000  # applied

    before = ok(admin.get("/settings/advanced"))
    changed = ok(admin.patch("/settings/advanced", json={
        "limits": {"recipient_limit": 50}, "verification": {"reject_code": 450},
        "dns": {"timeout": 2},
    }))  # fmt: skip
    assert changed["limits"] == {**before["limits"], "recipient_limit": 50}
    assert changed["verification"]["reject_code"] == 450
    assert changed["dns"]["timeout"] == 2
    assert changed["queue"] == before["queue"]

    changed = ok(admin.patch("/settings/protection", json={
        "external_services": {"use_spf": True, "use_dkim": True, "use_dmarc": True},
        "quarantine": {"retention_days": 7}, "upstream_gateways": ["127.0.0.10"],
    }))  # fmt: skip
    assert changed["external_services"] == {"use_spf": True, "use_dkim": True, "use_dmarc": True}
    assert changed["quarantine"]["retention_days"] == 7
    assert changed["upstream_gateways"] == ["127.0.0.10/32"]
    assert changed["content"]["blocked_names"] == ["*.exe"]  # other modules unchanged
    assert ok(admin.get("/settings/protection")) == changed


# (method, path, body, the field the 422 must name)
INVALID: list[tuple[str, str, Any, str]] = [
    ("PATCH", "/settings/main", {"trusted_networks": ["10.0.0.0/33"]}, "main.trusted_networks[0]"),
    (
        "PATCH",
        "/settings/main",
        {"relayhost": {"host": "border.example", "port": 70000}},
        "main.relayhost.port",
    ),
    ("PATCH", "/settings/main", {"destination": "border_gateway"}, "main"),  # needs a relayhost
    ("PATCH", "/settings/main", {"hostname": "bad..name"}, "main.hostname"),
    (
        "PATCH",
        "/settings/advanced",
        {"limits": {"recipient_limt": 5}},
        "advanced.limits.recipient_limt",
    ),
    ("PATCH", "/settings/advanced", {"queue": {"minimal_backoff_time": 9000}}, "advanced.queue"),
    (
        "PATCH",
        "/settings/protection",
        {"external_services": {"use_dmarc": True}},
        "protection.external_services",
    ),
    (
        "PATCH",
        "/settings/protection",
        {"upstream_gateways": ["border"]},
        "protection.upstream_gateways[0]",
    ),
    # JSON has no infinity, but Python's parser reads this; no setting may be infinite.
    ("PATCH", "/settings/advanced", '{"dns": {"timeout": Infinity}}', "advanced.dns.timeout"),
    ("PATCH", "/settings/main", '{"hostname": ', "body"),  # not JSON
    ("POST", "/domains", {"name": "bad..domain"}, "name"),
    (
        "POST",
        "/domains",
        {"name": "ok.example", "route": {"host": INTERNAL_IP, "port": 70000}},
        "route.port",
    ),
    ("POST", "/domains", {"name": "ok.example", "colour": "blue"}, "colour"),
    ("PATCH", "/domains/example.com", {"tls": "sometimes"}, "tls"),
    ("POST", "/rules", {"name": "r", "client_networks": ["10.0.0.300/8"]}, "client_networks[0]"),
    ("POST", "/rules", {"name": "r", "position": 0}, "position"),
    ("POST", "/rules", {"name": "Default"}, "name"),  # would shadow the default rule by name
    ("POST", "/rules", {"name": "default"}, "name"),
    ("PATCH", "/rules/default", {"antivirus.infected": "explode"}, "antivirus.infected"),
    ("PATCH", "/rules/default", {"colour": "blue"}, "colour"),
    ("POST", "/rules/replace-action", {"old": "reject", "new": "bounce"}, "new"),
    (
        "POST",
        "/config/import",
        {"text": "main: {message_size_limit: 5}"},
        "main.message_size_limit",
    ),
    ("POST", "/config/import", {"text": "main: [unclosed"}, "file"),
    ("POST", "/verify/flush", {}, "all"),
    ("POST", "/verify/not-an-address/test", None, "address"),
    ("GET", "/log?limit=0", None, "limit"),
    # No text holds a NUL; PostgreSQL could not even compare one (the query would fail).
    ("GET", "/log?sender=a%00b", None, "sender"),
    ("POST", "/tokens", {"name": "a\x00b"}, "name"),
    ("POST", "/session", {"username": "admin\x00", "password": "x"}, "username"),
    (
        "PATCH",
        "/settings/protection",
        {"phishing": {"domains": ["a\x00.example"]}},
        "protection.phishing.domains[0]",
    ),
    ("GET", "/dashboard?hours=8000&bucket_minutes=1", None, "bucket_minutes"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), INVALID,
                         ids=[f"{m} {p} {f}" for m, p, _, f in INVALID])  # fmt: skip
def test_invalid_input_names_the_field_and_changes_nothing(
    gw: Gateway, admin: httpx.Client, method: str, path: str, body: Any, field: str
) -> None:
    before = ok(admin.get("/config"))
    if isinstance(body, str):  # sent as it is, not as JSON made from it
        reply = admin.request(method, path, content=body,
                              headers={"Content-Type": "application/json"})  # fmt: skip
    else:
        reply = admin.request(method, path, json=body)
    errors = field_errors(reply)
    assert field in errors, errors
    assert "nothing was changed" in reply.json()["detail"]
    assert ok(admin.get("/config")) == before  # same revision, same configuration


def test_rules_create_move_patch_replace_action_delete(gw: Gateway, admin: httpx.Client) -> None:
    listed = ok(admin.get("/rules"))
    assert [(r["name"], r["position"], r["default"]) for r in listed] == [("Default", 1, True)]
    ok(admin.post("/rules", json={"name": "sales", "recipients": ["*@sales.example.com"]}), 201)
    legal = ok(admin.post("/rules", json={
        "name": "legal", "senders": ["re:.*@court\\.example$"], "mode": "skip", "position": 1,
    }), 201)  # fmt: skip
    assert (legal["position"], legal["mode"], legal["antivirus"]["infected"]) == (
        1,
        "skip",
        "reject",
    )
    names = [r["name"] for r in ok(admin.get("/rules"))]
    assert names == ["legal", "sales", "Default"]

    moved = ok(admin.post("/rules/sales/move", json={"position": 1}))
    assert moved["position"] == 1
    assert [r["name"] for r in ok(admin.get("/rules"))] == ["sales", "legal", "Default"]

    patched = ok(admin.patch("/rules/sales", json={
        "antivirus.infected": "quarantine", "content.blocked_attachment": "delete",
        "enabled": False, "client_networks": ["10.1.0.0/16"],
    }))  # fmt: skip
    assert patched["antivirus"] == {"infected": "quarantine", "error": "tempfail"}
    assert patched["content"]["blocked_attachment"] == "delete"
    assert (patched["enabled"], patched["client_networks"]) == (False, ["10.1.0.0/16"])
    renamed = ok(admin.patch("/rules/legal", json={"name": "law"}))
    assert (renamed["name"], renamed["position"]) == ("law", 2)
    assert admin.get("/rules/legal").status_code == 404

    default = ok(admin.get("/rules/default"))
    assert (default["default"], default["position"], default["antivirus"]["infected"]) == (
        True, 3, "reject")  # fmt: skip
    replaced = ok(admin.post("/rules/replace-action", json={"old": "reject", "new": "delete"}))
    assert replaced["replaced"] > 0
    assert replaced["revision"] == revision(admin)
    default = ok(admin.get("/rules/DEFAULT"))
    assert default["antivirus"]["infected"] == "delete"
    assert default["content"]["blocked_attachment"] == "quarantine"  # was not reject
    assert (
        ok(admin.patch("/rules/default", json={"auth.spf_fail": "reject"}))["auth"]["spf_fail"]
        == "reject"
    )

    assert admin.delete("/rules/sales").status_code == 204
    assert [r["name"] for r in ok(admin.get("/rules"))] == ["law", "Default"]
    assert admin.delete("/rules/sales").status_code == 404
    assert "default rule" in field_errors(admin.delete("/rules/default"))["name"]
    assert (
        "always last"
        in field_errors(admin.post("/rules/default/move", json={"position": 1}))["name"]
    )
    assert admin.post("/rules/nope/move", json={"position": 1}).status_code == 404
    assert admin.patch("/rules/nope", json={"enabled": False}).status_code == 404


def test_config_export_then_import_round_trips(gw: Gateway, admin: httpx.Client) -> None:
    original = ok(admin.get("/config"))["config"]
    exported = admin.get("/config/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(exported.text) == original

    ok(admin.post("/domains", json={"name": "temporary.example"}), 201)
    ok(admin.patch("/settings/advanced", json={"limits": {"recipient_limit": 7}}))
    assert ok(admin.get("/config"))["config"] != original
    imported = ok(admin.post("/config/import", json={"text": exported.text}))
    assert imported["id"] == revision(admin)
    assert ok(admin.get("/config"))["config"] == original  # applied: the running one too
    assert gw.gateway is not None
    assert gw.gateway.holder.current.config.domain("temporary.example") is None
    # JSON is YAML too.
    ok(admin.post("/config/import", json={"text": json.dumps(original)}))
    history = ok(admin.get("/config/history?limit=3"))
    assert [h["id"] for h in history] == sorted((h["id"] for h in history), reverse=True)
    assert history[0]["author"] == "admin"


# -- the queue, the verification cache, the message log, the quarantine ---------------------


def test_queue_hold_release_delete_and_flush(
    gw: Gateway, admin: httpx.Client, start_sink: Callable[..., Sink], closed_port: int
) -> None:
    send(gw, message("first"), "bob@deferred.example")
    (item,) = deferred(admin)
    qid = item["qid"]
    assert (item["sender"], item["recipients"][0]["address"]) == (
        "alice@ext.org",
        "bob@deferred.example",
    )
    assert "refused" in item["recipients"][0]["reason"].lower()
    shown = ok(admin.get(f"/queue/{qid}"))
    assert shown["item"]["qid"] == qid
    assert "Subject: first" in shown["content"]
    assert "Received: from" in shown["content"]

    assert ok(admin.post(f"/queue/{qid}/hold"))["result"] == f"{qid}: placed on hold"
    assert ok(admin.get(f"/queue/{qid}"))["item"]["state"] == "hold"
    assert ok(admin.post(f"/queue/{qid}/release"))["result"] == f"{qid}: released from hold"
    deferred(admin)
    assert ok(admin.delete(f"/queue/{qid}"))["result"] == f"{qid}: deleted"
    assert ok(admin.get("/queue")) == []
    for method, path in (("GET", ""), ("POST", "/hold"), ("POST", "/release"), ("DELETE", "")):
        assert admin.request(method, f"/queue/{qid}{path}").status_code == 404
        assert admin.request(method, f"/queue/not-a-qid{path}").status_code == 404

    send(gw, message("second"), "bob@deferred.example")
    deferred(admin)
    sink = start_sink(INTERNAL_IP, closed_port)
    assert "1 deferred message(s)" in ok(admin.post("/queue/flush"))["result"]
    (delivered,) = sink.wait_for(1)
    assert delivered.parsed()["Subject"] == "second"
    wait_until(lambda: ok(admin.get("/queue")) == [], what="an empty queue")
    actions = [e["action"] for e in ok(admin.get("/audit?limit=10"))]
    assert {"queue.hold", "queue.release", "queue.delete", "queue.flush"} <= set(actions)


def test_queue_listing_reads_the_spool_off_the_event_loop(
    gw: Gateway, admin: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long queue must not hold up SMTP sessions while it is listed: the files are read in
    a worker thread, not on the thread that runs the event loop."""
    assert gw.gateway is not None
    spool = gw.gateway.queue.spool
    readers: list[str] = []
    original = spool.read_envelope

    def recording(qid: str, where: str = "queue") -> Envelope:
        readers.append(threading.current_thread().name)
        return original(qid, where)

    monkeypatch.setattr(spool, "read_envelope", recording)
    send(gw, message("listed"), "bob@deferred.example")
    (item,) = deferred(admin)
    assert item["state"] == "deferred"
    assert readers
    assert "mailgate-gateway" not in readers, readers  # the thread of GatewayThread's loop


def test_verification_show_test_and_flush(gw: Gateway, admin: httpx.Client) -> None:
    assert admin.get("/verify/bob@example.com").status_code == 404
    tested = ok(admin.post("/verify/bob@example.com/test"))
    assert (tested["address"], tested["status"]) == ("bob@example.com", "ok")
    assert "250" in tested["reply"]
    assert ok(admin.get("/verify/<bob@EXAMPLE.com>"))["status"] == "ok"
    ok(admin.post("/verify/carol@example.com/test"))
    # A test answers once its result is in the shared store.
    listed = {e["address"] for e in ok(admin.get("/verify?status=ok"))}
    assert listed == {"bob@example.com", "carol@example.com"}
    assert [e["address"] for e in ok(admin.get("/verify?contains=carol"))] == ["carol@example.com"]
    assert ok(admin.get("/verify?status=bad")) == []

    assert ok(admin.post("/verify/flush", json={"address": "bob@example.com"})) == {"removed": 1}
    assert admin.get("/verify/bob@example.com").status_code == 404
    assert ok(admin.post("/verify/flush", json={"status": "bad"})) == {"removed": 0}
    assert ok(admin.post("/verify/flush", json={"all": True})) == {"removed": 1}
    assert ok(admin.get("/verify")) == []
    assert "address" in field_errors(admin.get("/verify/not an address"))


def test_message_log_search_and_show(gw: Gateway, admin: httpx.Client, internal: Sink) -> None:
    send(gw, message("quarterly report"))
    internal.wait_for(1)
    (found,) = wait_until(lambda: [
        r for r in ok(admin.get("/log?subject=quarterly")) if r["deliveries"]
    ], what="the logged delivery")  # fmt: skip
    qid = found["qid"]
    assert (found["sender"], found["recipients"], found["action"]) == (
        "alice@ext.org", ["bob@example.com"], "queued")  # fmt: skip
    assert found["client_ip"] == "127.0.0.100"
    assert found["deliveries"][0]["status"] == "sent"
    received = found["received"]
    for query in (f"qid={qid}", "sender=ALICE@ext", "recipient=bob@", "subject=Quarterly",
                  "client=127.0.0.100", "action=queued", f"since={received - 1}",
                  f"until={received + 1}", "limit=1"):  # fmt: skip
        assert [r["qid"] for r in ok(admin.get(f"/log?{query}"))] == [qid], query
    for query in ("sender=mallory", "action=rejected", "verdict=infected",
                  f"since={received + 1}", f"until={received - 1}", "client=127.0.0.1"):  # fmt: skip
        assert ok(admin.get(f"/log?{query}")) == [], query
    shown = ok(admin.get(f"/log/{qid}"))
    assert shown["qid"] == qid
    assert shown["deliveries"][0]["recipient"] == "bob@example.com"
    assert admin.get("/log/NOSUCHQID").status_code == 404


def kept_message(gw: Gateway, admin: httpx.Client, subject: str) -> dict[str, Any]:
    send(gw, message(subject, attachment="setup.exe"))
    kept: dict[str, Any] = wait_until(lambda: next(iter(
        ok(admin.get("/quarantine", params={"text": subject}))), None),
        what="the quarantined message")  # fmt: skip
    return kept


def test_quarantine_search_download_release_delete(
    gw: Gateway, admin: httpx.Client, internal: Sink
) -> None:
    kept = kept_message(gw, admin, "invoice one")
    assert (kept["sender"], kept["recipients"], kept["rule"]) == (
        "alice@ext.org", ["bob@example.com"], "Default")  # fmt: skip
    assert "setup.exe" in json.dumps(kept["verdicts"])
    assert internal.messages == []  # kept, not delivered
    assert ok(admin.get(f"/quarantine/{kept['id']}")) == kept
    assert [k["id"] for k in ok(admin.get("/quarantine?sender=alice&recipient=bob"))] == [
        kept["id"]
    ]
    assert ok(admin.get("/quarantine?text=nothing-like-this")) == []

    raw = admin.get(f"/quarantine/{kept['id']}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.headers["content-disposition"] == f'attachment; filename="{kept["id"]}.eml"'
    assert b"Subject: invoice one" in raw.content
    assert b'filename="setup.exe"' in raw.content

    result = ok(admin.post(f"/quarantine/{kept['id']}/release"))["result"]
    assert "released, queued as" in result
    (delivered,) = internal.wait_for(1)
    assert delivered.parsed()["Subject"] == "invoice one"
    assert admin.get(f"/quarantine/{kept['id']}").status_code == 404

    other = kept_message(gw, admin, "invoice two")
    assert admin.delete(f"/quarantine/{other['id']}").status_code == 204
    for method, path in (("GET", ""), ("GET", "/raw"), ("POST", "/release"), ("DELETE", "")):
        assert admin.request(method, f"/quarantine/{other['id']}{path}").status_code == 404
        assert admin.request(method, f"/quarantine/../etc{path}").status_code == 404
    assert ok(admin.get("/quarantine")) == []


def test_stats_and_dashboard(gw: Gateway, admin: httpx.Client, internal: Sink) -> None:
    send(gw, message("counted"))
    internal.wait_for(1)

    def counted() -> dict[str, Any] | None:
        board: dict[str, Any] = ok(admin.get("/dashboard?hours=2&bucket_minutes=30"))
        return board if board["actions"] else None

    board = wait_until(counted, what="the dashboard's figures")
    assert board["actions"] == {"queued": 1}
    assert len(board["times"]) == len(board["received"]) == len(board["delivered"])
    assert sum(board["received"]) == 1
    assert board["queue_size"] == 0
    assert isinstance(ok(admin.get("/stats"))["counters"], dict)


# -- accounts, tokens, the audit log ---------------------------------------------------------


def test_accounts_and_the_last_administrator(
    gw: Gateway, admin: httpx.Client, clients: Callable[..., httpx.Client]
) -> None:
    name, _ = gw.admin_login
    created = ok(admin.post("/accounts", json={
        "username": "carol", "password": PASSWORD, "role": "auditor"}), 201)  # fmt: skip
    assert (created["username"], created["role"], created["disabled"]) == (
        "carol",
        "auditor",
        False,
    )
    assert "already exists" in field_errors(admin.post("/accounts", json={
        "username": "carol", "password": PASSWORD, "role": "auditor"}))["username"]  # fmt: skip
    assert "password" in field_errors(admin.post("/accounts", json={
        "username": "dave", "password": "short", "role": "auditor"}))  # fmt: skip
    assert "username" in field_errors(admin.post("/accounts", json={
        "username": "da ve", "password": PASSWORD, "role": "auditor"}))  # fmt: skip
    assert [a["username"] for a in ok(admin.get("/accounts"))] == [name, "carol"]

    # The only administrator can be neither demoted, disabled nor removed.
    assert (
        "last administrator"
        in field_errors(admin.patch(f"/accounts/{name}", json={"role": "auditor"}))["role"]
    )
    assert (
        "last administrator"
        in field_errors(admin.patch(f"/accounts/{name}", json={"disabled": True}))["role"]
    )
    assert "last administrator" in field_errors(admin.delete(f"/accounts/{name}"))["username"]

    carol = login(clients(gw), "carol", PASSWORD)
    assert ok(carol.get("/accounts/carol"))["role"] == "auditor"
    assert carol.get(f"/accounts/{name}").status_code == 403
    # Anyone may change their own password, with the current one; nobody else's.
    wrong = carol.put(
        "/accounts/carol/password", json={"password": "x" * 12, "current_password": "nope"}
    )
    assert "current_password" in field_errors(wrong)
    assert carol.put(f"/accounts/{name}/password", json={"password": "x" * 12}).status_code == 403
    new_password = "a much better password"
    reply = carol.put(
        "/accounts/carol/password", json={"password": new_password, "current_password": PASSWORD}
    )
    assert reply.status_code == 204
    assert carol.get("/session").status_code == 401  # a new password ends the sessions
    carol = login(clients(gw), "carol", new_password)

    promoted = ok(admin.patch("/accounts/carol", json={"role": "administrator"}))
    assert promoted["role"] == "administrator"
    assert ok(carol.get("/accounts"))  # an administrator now, in the same session
    ok(admin.patch(f"/accounts/{name}", json={"role": "auditor"}))  # no longer the last one
    ok(carol.patch(f"/accounts/{name}", json={"role": "administrator"}))
    assert ok(admin.patch("/accounts/carol", json={"disabled": True}))["disabled"] is True
    assert carol.get("/session").status_code == 401
    assert (
        clients(gw)
        .post("/session", json={"username": "carol", "password": new_password})
        .status_code
        == 401
    )
    assert admin.put("/accounts/carol/password", json={"password": PASSWORD}).status_code == 204
    ok(admin.patch("/accounts/carol", json={"disabled": False}))
    login(clients(gw), "carol", PASSWORD)

    assert admin.delete("/accounts/carol").status_code == 204
    assert admin.delete("/accounts/carol").status_code == 404
    assert admin.patch("/accounts/carol", json={"disabled": True}).status_code == 404
    assert admin.put("/accounts/carol/password", json={"password": PASSWORD}).status_code == 404
    audited = [(e["action"], e["target"]) for e in ok(admin.get("/audit?actor=admin"))]
    for action in ("account.create", "account.update", "account.password", "account.delete"):
        assert (action, "carol") in audited


def test_tokens_authenticate_until_revoked(
    gw: Gateway, admin: httpx.Client, clients: Callable[..., httpx.Client]
) -> None:
    created = ok(admin.post("/tokens", json={"name": "ci"}), 201)
    assert created["token"].startswith("mgt_")
    assert (created["name"], created["username"], created["last_used"]) == ("ci", "admin", None)
    script = clients(gw, headers={"Authorization": f"Bearer {created['token']}"})
    assert ok(script.get("/session"))["username"] == "admin"
    # No cookie, so no CSRF token is needed for a change.
    ok(script.post("/domains", json={"name": "scripted.example"}), 201)
    listed = ok(admin.get("/tokens"))
    assert [(t["id"], t["name"]) for t in listed] == [(created["id"], "ci")]
    assert listed[0]["last_used"] is not None
    assert "token" not in listed[0]

    assert admin.delete(f"/tokens/{created['id']}").status_code == 204
    assert script.get("/session").status_code == 401
    assert script.delete("/domains/scripted.example").status_code == 401
    assert admin.delete(f"/tokens/{created['id']}").status_code == 404
    assert ok(admin.get("/tokens")) == []
    assert "username" in field_errors(
        admin.post("/tokens", json={"name": "x", "username": "nobody"})
    )
    assert (
        clients(gw, headers={"Authorization": "Bearer mgt_forged"}).get("/session").status_code
        == 401
    )
    actions = [e["action"] for e in ok(admin.get("/audit?actor=admin"))]
    assert {"token.create", "token.revoke"} <= set(actions)


def test_accounts_and_tokens_from_the_cli_work_over_the_api(
    gw: Gateway, clients: Callable[..., httpx.Client]
) -> None:
    def mailgate(*args: str, stdin: str | None = None) -> str:
        result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), *args], input=stdin)
        assert result.exit_code == 0, result.output
        return result.output

    mailgate("user", "add", "erin", "--role", "auditor", "--password-stdin", stdin=PASSWORD + "\n")
    assert "erin" in mailgate("user", "list")
    erin = login(clients(gw), "erin", PASSWORD)
    assert ok(erin.get("/session"))["role"] == "auditor"
    secret = mailgate("token", "create", "reports", "--user", "erin").strip().splitlines()[-1]
    reports = clients(gw, headers={"Authorization": f"Bearer {secret}"})
    assert ok(reports.get("/session"))["username"] == "erin"
    assert reports.post("/domains", json={"name": "x.example"}).status_code == 403
    (listed,) = json.loads(mailgate("token", "list", "--json"))
    mailgate("token", "revoke", str(listed["id"]))
    assert reports.get("/session").status_code == 401
    mailgate("user", "set", "erin", "--disable")
    assert erin.get("/session").status_code == 401
    result = CliRunner().invoke(cli, ["--data-dir", str(gw.data_dir), "user", "remove", "admin"])
    assert result.exit_code == 2
    assert "last administrator" in result.output
    mailgate("user", "remove", "erin")
    audit = ok(login(clients(gw), *gw.admin_login).get("/audit?action=account.create"))
    assert audit[0]["target"] == "erin"
    assert audit[0]["actor"].startswith("cli")


def test_audit_log_shows_who_changed_which_field(gw: Gateway, admin: httpx.Client) -> None:
    old = revision(admin)
    ok(admin.patch("/settings/main", json={"trusted_networks": ["198.51.100.0/24"]}))
    ok(admin.patch("/rules/default", json={"antivirus.infected": "delete"}))
    entries = ok(admin.get("/audit?action=config.change&limit=2"))
    assert [e["actor"] for e in entries] == ["admin", "admin"]
    rule_change, settings_change = entries
    assert settings_change["target"] == "set main.trusted_networks"
    assert settings_change["detail"] == {"revision": old + 1, "changes": [
        {"field": "main.trusted_networks", "before": [], "after": ["198.51.100.0/24"]}]}  # fmt: skip
    assert rule_change["detail"]["changes"] == [
        {"field": "default_rule.antivirus.infected", "before": "reject", "after": "delete"}]  # fmt: skip
    assert ok(admin.get("/audit?actor=nobody")) == []


# -- security: who may do what ---------------------------------------------------------------


def api_routes(gw: Gateway) -> list[tuple[str, str]]:
    """Every (method, path) of the API, from the application itself: none can be forgotten."""
    assert gw.gateway is not None
    found = []
    for route in iter_route_contexts(gw.gateway.web.app.routes):
        path = route.path_format or ""
        if path.startswith(API):
            found += [
                (m, path.removeprefix(API)) for m in sorted(route.methods or ()) if m != "HEAD"
            ]
    assert len(found) > 50
    return found


def is_change(method: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS")


@pytest.fixture
def world(gw: Gateway, admin: httpx.Client, internal: Sink) -> dict[str, str]:
    """One real object of every kind, so a refusal proves the role check, not a 404."""
    ok(admin.post("/rules", json={"name": "sales", "recipients": ["*@sales.example.com"]}), 201)
    send(gw, message("logged"))
    internal.wait_for(1)
    logged = wait_until(lambda: ok(admin.get("/log?subject=logged")), what="a log record")
    send(gw, message("queued"), "bob@deferred.example")
    (queued,) = deferred(admin)
    kept = kept_message(gw, admin, "kept")
    ok(admin.post("/verify/bob@example.com/test"))
    token = ok(admin.post("/tokens", json={"name": "ci"}), 201)
    return {
        "/domains/{name}": "/domains/example.com",
        "/rules/{name}": "/rules/sales",
        "/queue/{qid}": f"/queue/{queued['qid']}",
        "/verify/{address}": "/verify/bob@example.com",
        "/log/{qid}": f"/log/{logged[0]['qid']}",
        "/quarantine/{kept_id}": f"/quarantine/{kept['id']}",
        "/accounts/{username}": "/accounts/admin",
        "/tokens/{token_id}": f"/tokens/{token['id']}",
    }


def fill(path: str, world: dict[str, str], **override: str) -> str:
    for pattern, value in {**world, **override}.items():
        if path.startswith(pattern):
            return value + path.removeprefix(pattern)
    assert "{" not in path, f"no test object for {path}: add one to the world fixture"
    return path


def state(client: httpx.Client) -> Any:
    """What a refused request must leave as it was."""
    return [ok(client.get(p)) for p in ("/config", "/queue", "/quarantine", "/verify",
                                        "/accounts", "/tokens")]  # fmt: skip


def test_without_login_every_route_answers_401(
    gw: Gateway, world: dict[str, str], clients: Callable[..., httpx.Client], admin: httpx.Client
) -> None:
    anonymous = clients(gw)
    before = state(admin)
    for method, path in api_routes(gw):
        if (method, path) == ("POST", "/session"):
            continue  # logging in is how one gets a session
        reply = anonymous.request(method, fill(path, world), json={})
        assert reply.status_code == 401, (method, path, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert state(admin) == before


def test_an_auditor_reads_everything_and_changes_nothing(
    gw: Gateway, world: dict[str, str], clients: Callable[..., httpx.Client], admin: httpx.Client
) -> None:
    ok(admin.post("/accounts", json={"username": "audrey", "password": PASSWORD,
                                     "role": "auditor"}), 201)  # fmt: skip
    auditor = login(clients(gw), "audrey", PASSWORD)
    # Accounts and tokens are the administrators' business, reads included (SPEC 4).
    admin_only_reads = {"/accounts", "/tokens"}
    # Posted questions that change nothing: a trace from the verification cache (a probe is
    # refused, see test_api_diagnostics). With an empty body, the auditor hears what is missing.
    questions = {("POST", "/trace")}
    before = state(admin)
    checked = 0
    for method, path in api_routes(gw):
        if path == "/session":
            continue  # the auditor's own login
        if (method, path) in questions:
            reply = auditor.request(method, path, json={})
            assert reply.status_code == 422, (method, path, reply.text)
        elif is_change(method):
            # Changing one's own password is allowed; "admin" here is someone else.
            target = fill(path, world)
            reply = auditor.request(method, target, json={})
            assert reply.status_code == 403, (method, path, reply.text)
        else:
            target = fill(path, world, **{"/accounts/{username}": "/accounts/audrey"})
            reply = auditor.request(method, target)
            expected = 403 if path in admin_only_reads else 200
            assert reply.status_code == expected, (method, path, reply.text)
        checked += 1
    assert checked > 50
    assert state(admin) == before


def test_cookie_changes_need_the_csrf_token(
    gw: Gateway, world: dict[str, str], admin: httpx.Client
) -> None:
    token = admin.headers.pop("X-CSRF-Token")
    before = state(admin)
    for method, path in api_routes(gw):
        if not is_change(method) or (method, path) == ("POST", "/session"):
            continue
        for header in ({}, {"X-CSRF-Token": "forged"}):
            reply = admin.request(method, fill(path, world), json={}, headers=header)
            assert reply.status_code == 403, (method, path, header, reply.text)
            assert "CSRF" in reply.json()["detail"]
    assert state(admin) == before
    admin.headers["X-CSRF-Token"] = token
    assert admin.delete("/domains/example.com").status_code == 204
