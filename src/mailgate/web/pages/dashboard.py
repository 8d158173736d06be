"""Dashboard: messages in and out over time, actions and verdicts, the queue, verification
outcomes (SVG charts drawn on the server from Admin.dashboard)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.web import charts
from mailgate.web.pages.common import page, render, viewer
from mailgate.web.pages.labels import LOG_ACTIONS

router = APIRouter()

PERIODS = {"6": (6, 30), "24": (24, 60), "168": (168, 360)}  # hours -> (hours, bucket minutes)


@router.get("/dashboard")
@page
async def dashboard(request: Request) -> Response:
    ctx = await viewer(request)
    period = request.query_params.get("hours", "24")
    hours, bucket = PERIODS.get(period, PERIODS["24"])
    data = await ctx.admin.dashboard(hours, bucket)
    traffic = charts.line_chart(
        "Messages received and delivered",
        data["times"],
        [("received", data["received"]), ("delivered", data["delivered"])],
        width=1140,
    )
    actions = charts.bar_chart(
        "Actions", [(LOG_ACTIONS.get(k, k), v) for k, v in data["actions"].items()]
    )
    verdicts = charts.bar_chart("Verdicts", list(data["verdicts"].items()))
    verification = charts.bar_chart("Recipient verification", sorted(data["verification"].items()))
    return render(
        ctx,
        "dashboard.html",
        title="Dashboard",
        section="dashboard",
        period=str(hours),
        traffic=traffic,
        actions=actions,
        verdicts=verdicts,
        verification=verification,
        queue_size=data["queue_size"],
        totals={
            "received": sum(data["received"]),
            "delivered": sum(data["delivered"]),
        },
        bucket=bucket,
    )
