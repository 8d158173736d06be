"""The quarantine (KSMG "Backup"): search kept messages, read one's verdicts, download the
original, release it to its recipients, delete it.

Security note: the original is served as text/plain with nosniff and as an attachment, so a
browser neither renders the sender's HTML nor guesses another type from its bytes.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, Result, api_route

router = APIRouter(
    prefix="/quarantine", tags=["quarantine"], route_class=api_route(), responses=ERRORS
)

_TEXT = 512


class Kept(BaseModel):
    id: str = Field(description="Quarantine id.")
    qid: str = Field(description="Queue id the message was received as.")
    node: str = Field(description="The node that keeps the file.")
    created: float = Field(description="When it was kept (Unix time).")
    sender: str
    recipients: list[str]
    subject: str
    size: int
    rule: str = Field(description="The rule that quarantined it.")
    verdicts: dict[str, str] = Field(description='Module -> "verdict (detail)".')
    reason: str


@router.get("", summary="Search kept messages, newest first")
async def search(
    admin: AdminOf,
    _: Reader,
    text: str | None = Query(
        None, max_length=_TEXT, description="Text in subject, sender, recipients or reason."
    ),
    sender: str | None = Query(None, max_length=_TEXT, description="Part of the sender."),
    recipient: str | None = Query(None, max_length=_TEXT, description="Part of a recipient."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[Kept]:
    rows = await admin.quarantine_search(text, sender, recipient, limit)
    return [Kept.model_validate(row) for row in rows]


@router.get("/{kept_id}", summary="A kept message's verdicts", responses=NOT_FOUND)
async def get(kept_id: str, admin: AdminOf, _: Reader) -> Kept:
    meta, _content = await admin.quarantine_get(kept_id)
    return Kept.model_validate(meta)


@router.get(
    "/{kept_id}/raw",
    summary="Download the original message",
    # A response class without a media type: FastAPI would otherwise document the JSON error
    # replies in the route's media type. The reply's own type is set where it is made.
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {
            "description": "The message as it would have been delivered, byte for byte, as an "
            "attachment <id>.eml.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
    },
)
async def raw(kept_id: str, admin: AdminOf, _: Reader) -> Response:
    _meta, content = await admin.quarantine_get(kept_id)
    # kept_id passed the quarantine's id check (letters and digits): safe in the header.
    return Response(
        content,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="{kept_id}.eml"',
        },
    )


@router.post(
    "/{kept_id}/release",
    summary="Deliver to the original recipients, unscanned",
    responses=NOT_FOUND,
)
async def release(kept_id: str, admin: AdminOf, identity: Administrator) -> Result:
    return Result(result=await admin.quarantine_release(kept_id, identity.account))


@router.delete("/{kept_id}", status_code=204, summary="Delete a kept message", responses=NOT_FOUND)
async def delete(kept_id: str, admin: AdminOf, identity: Administrator) -> None:
    await admin.quarantine_delete(kept_id, identity.account)
