"""Queue: the messages waiting for delivery (filter, flush, hold, release, delete) and one
message's envelope and content, shown as text."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.queue.manager import QueueError
from mailgate.web.pages.common import changer, done, error_page, page, render, text, viewer

router = APIRouter()
SHOWN_BYTES = 512 * 1024


def _matches(item: dict[str, Any], needle: str) -> bool:
    if not needle:
        return True
    haystack = [item["qid"], item["sender"], item["state"]]
    haystack += [r["address"] for r in item["recipients"]]
    haystack += [str(r.get("reason") or "") for r in item["recipients"]]
    return any(needle.lower() in str(h).lower() for h in haystack)


@router.get("/queue")
@page
async def queue(request: Request) -> Response:
    ctx = await viewer(request)
    needle = request.query_params.get("q", "").strip()
    items = await ctx.admin.queue_list()
    shown = [i for i in items if _matches(i, needle)]
    return render(
        ctx, "queue.html", title="Queue", section="queue", items=shown, q=needle, total=len(items)
    )


@router.get("/queue/{qid}")
@page
async def queue_message(request: Request, qid: str) -> Response:
    ctx = await viewer(request)
    try:
        item, content = ctx.admin.queue_show(qid)
    except (QueueError, OSError, ValueError):
        return error_page(ctx, 404, "This message is not in the queue (delivered or removed).")
    return render(
        ctx,
        "queue_show.html",
        title=f"Queued message {qid}",
        section="queue",
        item=item,
        content=content[:SHOWN_BYTES].decode("utf-8", "replace"),
        truncated=len(content) > SHOWN_BYTES,
        size=len(content),
    )


@router.post("/queue/flush")
@page
async def flush(request: Request) -> Response:
    ctx = await changer(request)
    await ctx.admin.queue_flush(ctx.account)
    return done("/queue", "queue.flush")


@router.post("/queue/action")
@page
async def action(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    what, qid = text(form, "action"), text(form, "qid")
    if what not in ("hold", "release", "delete"):
        return error_page(ctx, 404, "Unknown queue operation.")
    try:
        await ctx.admin.queue_action(what, qid, ctx.account)
    except QueueError:
        return error_page(ctx, 404, "This message is not in the queue (delivered or removed).")
    return done("/queue", f"queue.{what}")
