"""Message log: search by sender, recipient, subject, client, action, verdict and dates; one
message's whole path (reception, rules, verdicts, reply, each delivery outcome)."""

from __future__ import annotations

import calendar
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.tracking import Search
from mailgate.web.pages.common import error_page, page, render, viewer
from mailgate.web.pages.labels import LOG_ACTIONS, MODULE_NAMES

router = APIRouter()
FIELDS = ("sender", "recipient", "subject", "client", "action", "verdict", "since", "until")


def _moment(value: str, end: bool) -> float | None:
    """A date ("2024-07-10") or date and time ("2024-07-10T12:30"), as UTC, or None."""
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            parsed = time.strptime(value.strip(), layout)
        except ValueError:
            continue
        seconds = float(calendar.timegm(parsed))
        if end and layout == "%Y-%m-%d":
            seconds += 86399
        return seconds
    return None


@router.get("/log")
@page
async def search(request: Request) -> Response:
    ctx = await viewer(request)
    params = {k: request.query_params.get(k, "").strip()[:500] for k in FIELDS}
    errors = {}
    since = _moment(params["since"], False) if params["since"] else None
    until = _moment(params["until"], True) if params["until"] else None
    if params["since"] and since is None:
        errors["since"] = "Use a date (2024-07-10) or a date and time (2024-07-10T12:30)."
    if params["until"] and until is None:
        errors["until"] = "Use a date (2024-07-10) or a date and time (2024-07-10T12:30)."
    query = Search(
        sender=params["sender"] or None,
        recipient=params["recipient"] or None,
        subject=params["subject"] or None,
        client=params["client"] or None,
        action=params["action"] or None,
        verdict=params["verdict"] or None,
        since=since,
        until=until,
        limit=200,
    )
    rows = [] if errors else await ctx.admin.log_search(query)
    return render(
        ctx,
        "log.html",
        title="Message log",
        section="log",
        rows=rows,
        params=params,
        errors=errors,
        actions=LOG_ACTIONS,
    )


@router.get("/log/{qid}")
@page
async def show(request: Request, qid: str) -> Response:
    ctx = await viewer(request)
    record = await ctx.admin.log_show(qid[:64])
    if record is None:
        return error_page(ctx, 404, "There is no such message in the log.")
    return render(
        ctx,
        "log_show.html",
        title=f"Message {record['qid']}",
        section="log",
        m=record,
        modules=MODULE_NAMES,
        actions=LOG_ACTIONS,
    )
