"""The REST API's routes, one module per resource, all under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.security import APIKeyCookie, HTTPBearer

from mailgate.api.auth import COOKIE
from mailgate.api.routes import (
    accounts,
    audit,
    config,
    diagnostics,
    domains,
    log,
    quarantine,
    queue,
    rules,
    session,
    settings,
    setup,
    stats,
    tokens,
    verify,
)

# Only for the OpenAPI document: it then says how to authenticate. mailgate.api.auth does the
# checking; these never refuse anything themselves.
_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer mgt_...`.")
_cookie = APIKeyCookie(
    name=COOKIE,
    auto_error=False,
    description="The web session; changes also need the X-CSRF-Token header.",
)

router = APIRouter()
router.include_router(session.router)  # logging in needs no credentials yet
for module in (domains, settings, rules, queue, verify, log, quarantine, accounts, tokens, audit,
               config, stats, diagnostics, setup):  # fmt: skip
    router.include_router(module.router, dependencies=[Depends(_bearer), Depends(_cookie)])
