"""Quarantine (KSMG "Backup"): search, view one message (headers and text part as text only;
attachments by name, never opened; HTML never rendered), release, download, delete."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route

from mailgate.pipeline.message import ParsedMessage
from mailgate.quarantine import QuarantineError
from mailgate.web.pages.common import changer, done, error_page, page, render, viewer
from mailgate.web.pages.labels import MODULE_NAMES

router = APIRouter()
SHOWN_TEXT = 200_000
_API_RAW = re.compile(r"/api/v1/quarantine/\{[^}/]+\}/raw")


def _download_url(request: Request, kept_id: str) -> str:
    """The REST API's raw download when it has one, else this interface's own."""
    for route in request.app.routes:
        if (
            isinstance(route, Route)
            and _API_RAW.fullmatch(route.path)
            and ("GET" in (route.methods or ()))
        ):
            return re.sub(r"\{[^}/]+\}", kept_id, route.path)
    return f"/quarantine/{kept_id}/download"


def _view(content: bytes) -> dict[str, Any]:
    parsed = ParsedMessage.parse(content, max_parts=500, max_depth=20)
    text = None
    attachments = []
    for part in parsed.parts:
        if part.is_attachment:
            attachments.append(
                {
                    "names": list(part.names) or ["(no name)"],
                    "type": part.content_type,
                    "size": part.size,
                }
            )
        elif text is None and part.content_type == "text/plain" and part.text is not None:
            text = part.text
    html_parts = sum(1 for p in parsed.parts if p.content_type == "text/html")
    return {
        "headers": parsed.headers,
        "text": text[:SHOWN_TEXT] if text is not None else None,
        "truncated": text is not None and len(text) > SHOWN_TEXT,
        "attachments": attachments,
        "html_parts": html_parts,
        "defects": parsed.defects,
    }


@router.get("/quarantine")
@page
async def search(request: Request) -> Response:
    ctx = await viewer(request)
    params = {
        k: request.query_params.get(k, "").strip()[:500] for k in ("q", "sender", "recipient")
    }
    rows = await ctx.admin.quarantine_search(
        params["q"] or None, params["sender"] or None, params["recipient"] or None, 200
    )
    return render(
        ctx, "quarantine.html", title="Quarantine", section="quarantine", rows=rows, params=params
    )


@router.get("/quarantine/{kept_id}")
@page
async def show(request: Request, kept_id: str) -> Response:
    ctx = await viewer(request)
    try:
        meta, content = await ctx.admin.quarantine_get(kept_id)
    except QuarantineError as exc:
        return error_page(ctx, 404, str(exc))
    return render(
        ctx,
        "quarantine_show.html",
        title="Quarantined message",
        section="quarantine",
        meta=meta,
        view=_view(content),
        modules=MODULE_NAMES,
        download=_download_url(request, meta["id"]),
    )


@router.get("/quarantine/{kept_id}/download")
@page
async def download(request: Request, kept_id: str) -> Response:
    ctx = await viewer(request)
    try:
        meta, content = await ctx.admin.quarantine_get(kept_id)
    except QuarantineError as exc:
        return error_page(ctx, 404, str(exc))
    # As an attachment, as plain text, never sniffed: the browser must not render mail.
    return Response(
        content,
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{meta["id"]}.eml"',
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/quarantine/{kept_id}/release")
@page
async def release(request: Request, kept_id: str) -> Response:
    ctx = await changer(request)
    try:
        await ctx.admin.quarantine_release(kept_id, ctx.account)
    except QuarantineError as exc:
        return error_page(ctx, 404, str(exc))
    return done("/quarantine", "quarantine.release")


@router.post("/quarantine/{kept_id}/delete")
@page
async def delete(request: Request, kept_id: str) -> Response:
    ctx = await changer(request)
    try:
        await ctx.admin.quarantine_delete(kept_id, ctx.account)
    except QuarantineError as exc:
        return error_page(ctx, 404, str(exc))
    return done("/quarantine", "quarantine.delete")
