"""The mail queue (Postfix postqueue/postsuper): list, show a message with its content, hold,
release, delete, and flush (retry every deferred message now).

Operations go through the running scheduler, so a message being delivered is never moved
under it; each change is recorded in the audit log.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, Result, api_route

router = APIRouter(prefix="/queue", tags=["queue"], route_class=api_route(), responses=ERRORS)


class QueuedRecipient(BaseModel):
    address: str
    status: Literal["pending", "sent", "bounced"]
    reason: str | None = Field(description="The last delivery attempt's reply or error.")


class QueueItem(BaseModel):
    qid: str = Field(description="Queue id.")
    state: Literal["active", "deferred", "hold"]
    arrival: float = Field(description="When it was received (Unix time).")
    size: int = Field(description="Size in bytes.")
    sender: str = Field(description="Envelope sender; empty for the null sender.")
    recipients: list[QueuedRecipient]
    attempts: int = Field(description="Delivery attempts so far.")
    next_attempt: float | None = Field(description="Next attempt (Unix time), if scheduled.")


class QueuedMessage(BaseModel):
    item: QueueItem
    content: str = Field(
        description="The message as it will be sent, trace headers first; bytes that are not "
        "UTF-8 are shown as U+FFFD."
    )


@router.get("", summary="The queued messages, oldest first")
async def list_queue(admin: AdminOf, _: Reader) -> list[QueueItem]:
    return [QueueItem.model_validate(item) for item in await admin.queue_list()]


@router.get("/{qid}", summary="One queued message with its content", responses=NOT_FOUND)
async def show_message(qid: str, admin: AdminOf, _: Reader) -> QueuedMessage:
    item, content = admin.queue_show(qid)
    return QueuedMessage(
        item=QueueItem.model_validate(item), content=content.decode("utf-8", "replace")
    )


@router.post("/flush", summary="Retry every deferred message now")
async def flush(admin: AdminOf, identity: Administrator) -> Result:
    return Result(result=await admin.queue_flush(identity.account))


@router.post("/{qid}/hold", summary="Put a message on hold", responses=NOT_FOUND)
async def hold(qid: str, admin: AdminOf, identity: Administrator) -> Result:
    return Result(result=await admin.queue_action("hold", qid, identity.account))


@router.post("/{qid}/release", summary="Release a held message", responses=NOT_FOUND)
async def release(qid: str, admin: AdminOf, identity: Administrator) -> Result:
    return Result(result=await admin.queue_action("release", qid, identity.account))


@router.delete("/{qid}", summary="Delete a message (never delivered)", responses=NOT_FOUND)
async def delete(qid: str, admin: AdminOf, identity: Administrator) -> Result:
    return Result(result=await admin.queue_action("delete", qid, identity.account))
