"""The REST API against its own OpenAPI document, by property-based testing (schemathesis):
every operation of /api/openapi.json of a running gateway gets generated requests, valid and
invalid, as an administrator (API token); no reply may be a server error (5xx), and every reply
must conform to the document (status code documented, content type and body as described).

Each operation starts from the same configuration, so what one operation's requests set (a
listener, a time-out) does not change what the next one sees. Probes and deliveries go to a
closed port on loopback and DNS to a local server, so nothing leaves the machine.

The operations are driven with schemathesis's Python API (`APIOperation.as_strategy`) rather
than its pytest plugin: the plugin's lazy schema (`schemathesis.pytest.from_fixture`, needed for
a server started by a fixture) sets `Function._nodeid`, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.core.result import Ok

from tests.conftest import INTERNAL_IP, Gateway, free_port

# No server errors, and every reply as the document describes it.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")  # fmt: skip
EXAMPLES = 50  # per operation and mode: 54 operations in about a minute


@dataclass
class Target:
    """The running gateway and the administrator whose token the generated requests carry."""

    url: str
    username: str
    token: str
    token_id: int
    baseline: str  # the configuration every operation starts from (exported YAML)
    http: httpx.Client

    def restore(self) -> None:
        reply = self.http.post("/api/v1/config/import", json={"text": self.baseline})
        assert reply.status_code == 200, reply.text


@pytest.fixture
def target(start_gateway: Callable[..., Gateway], dns_zone: tuple[object, str]) -> Iterator[Target]:
    _, nameserver = dns_zone
    gw = start_gateway({
        # Every next hop is the "border gateway", a closed port: probes and deliveries fail at
        # once, whatever address or domain a request names.
        "main": {"destination": "border_gateway",
                 "relayhost": {"host": INTERNAL_IP, "port": free_port(INTERNAL_IP)}},
        "advanced": {"dns": {"nameservers": [nameserver], "timeout": 1},
                     "verification": {"probe_timeout": 2}},
    }, web=True)  # fmt: skip
    with httpx.Client(base_url=gw.web_url, timeout=30) as http:
        name, password = gw.admin_login
        me = http.post("/api/v1/session", json={"username": name, "password": password}).json()
        http.headers["X-CSRF-Token"] = me["csrf"]
        # An account of its own, with a name no generated string will hit by chance.
        username = f"schemathesis-{secrets.token_hex(4)}"
        reply = http.post("/api/v1/accounts", json={
            "username": username, "password": secrets.token_urlsafe(16), "role": "administrator"})  # fmt: skip
        assert reply.status_code == 201, reply.text
        created = http.post("/api/v1/tokens", json={"name": "schemathesis", "username": username})
        assert created.status_code == 201, created.text
        token = created.json()
        http.headers.pop("X-CSRF-Token")
        http.cookies.clear()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        baseline = http.get("/api/v1/config/export").text
        yield Target(gw.web_url, username, token["token"], token["id"], baseline, http)


def load_schema(target: Target) -> schemathesis.BaseSchema:
    document = target.http.get("/api/openapi.json").json()
    config = schemathesis.Config.from_dict({
        "base-url": target.url,
        "headers": {"Authorization": f"Bearer {target.token}"},
        # The token above authenticates; generated credentials would only exercise the login.
        "generation": {"with-security-parameters": False},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "request-timeout": 30,
    })  # fmt: skip
    return schemathesis.openapi.from_dict(document, config=config)


def locks_out(case: schemathesis.Case[Any], target: Target) -> bool:
    """Requests that would take the test's own credentials away; each is left out because
    every later request would then get 401 or 403, which proves nothing about the API."""
    path, method = case.operation.path, case.method.upper()
    params = case.path_parameters or {}
    if path == "/api/v1/accounts/{username}" and params.get("username") == target.username:
        # Removing the account revokes its token; demoting or disabling it refuses changes.
        return method in ("DELETE", "PATCH")
    if path == "/api/v1/tokens/{token_id}" and method == "DELETE":
        return str(params.get("token_id")) == str(target.token_id)  # revoking the token itself
    return False


def exercise(operation: schemathesis.APIOperation[Any, Any, Any, Any], target: Target) -> list[str]:
    """Generated requests for one operation, valid and invalid; the failures found."""
    failures: list[str] = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        # No shrinking: a failure is reported as found (with a curl command to replay it),
        # which keeps the run's time bounded.
        @hypothesis.settings(
            max_examples=EXAMPLES, deadline=None, database=None, print_blob=False,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )  # fmt: skip
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case[Any]) -> None:
            if not locks_out(case, target):
                case.call_and_validate()

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            if mode is schemathesis.GenerationMode.POSITIVE:
                raise
            # No invalid request exists: no parameters, or any string is a valid one.
        # Every operation runs and the failures are reported together; several failures of
        # one request come as a BaseExceptionGroup.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def test_api_conforms_to_its_openapi_document(target: Target) -> None:
    schema = load_schema(target)
    failures: list[str] = []
    exercised = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operation = result.ok()
        target.restore()  # each operation starts from the same configuration
        failures += exercise(operation, target)
        exercised += 1
    assert exercised > 50
    assert not failures, "\n\n".join(failures)
