"""The web interface's pages, one module per section of the navigation (the seed's names):
log in, dashboard, Settings → Set up: border gateway (the seed's scheme in one step), Settings →
Built-in MTA (domains, main and advanced settings), Settings → General → Protection, rules,
queue, diagnostics (integration check, trace), message log, quarantine, accounts and the audit
log."""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.web.pages import (
    accounts,
    dashboard,
    diagnostics,
    domains,
    log,
    login,
    quarantine,
    queue,
    rules,
    settings,
    setup,
)

router = APIRouter(include_in_schema=False)
for module in (login, dashboard, domains, settings, rules, queue, log, quarantine, accounts,
               diagnostics, setup):  # fmt: skip
    router.include_router(module.router)
