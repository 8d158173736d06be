"""The message log (tracking): search by any recorded field, and one message's whole path
(client, verdicts, rules, action, reply, and every delivery outcome)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from mailgate.api.auth import Reader
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, api_route
from mailgate.tracking import Search

router = APIRouter(prefix="/log", tags=["message log"], route_class=api_route(), responses=ERRORS)

_TEXT = 512


class Delivery(BaseModel):
    qid: str
    time: float = Field(description="Unix time.")
    recipient: str
    status: str = Field(description="sent, deferred, bounced, deleted, quarantined, released...")
    dsn: str = Field(description="Enhanced status code, e.g. 2.0.0.")
    relay: str = Field(description="The next hop that answered.")
    detail: str = Field(description="Its reply or the error.")


class Record(BaseModel):
    qid: str
    node: str = Field(description="The node that received it.")
    received: float = Field(description="Unix time.")
    client_ip: str
    real_client_ip: str = Field(description="The client behind the border gateway.")
    real_client_source: str = Field(description="Where the real client came from.")
    helo: str
    sender: str
    recipients: list[str]
    subject: str
    size: int
    rules: list[str] = Field(description="Rules that applied.")
    verdicts: dict[str, str] = Field(description='Module -> "verdict (detail)".')
    action: str = Field(description="queued, rejected, deleted, quarantined...")
    reply: str = Field(description="The reply given to the client.")
    deliveries: list[Delivery]


@router.get("", summary="Search the message log, newest first")
async def search(
    admin: AdminOf,
    _: Reader,
    qid: str | None = Query(None, max_length=32, description="Queue id."),
    sender: str | None = Query(None, max_length=_TEXT, description="Part of the sender."),
    recipient: str | None = Query(None, max_length=_TEXT, description="Part of a recipient."),
    subject: str | None = Query(None, max_length=_TEXT, description="Part of the subject."),
    client: str | None = Query(None, max_length=64, description="Client or real client IP."),
    action: str | None = Query(None, max_length=32, description="queued, rejected..."),
    verdict: str | None = Query(None, max_length=_TEXT, description="e.g. infected, spam."),
    since: float | None = Query(None, allow_inf_nan=False, description="Unix time, from."),
    until: float | None = Query(None, allow_inf_nan=False, description="Unix time, to."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[Record]:
    query = Search(
        qid=qid,
        sender=sender,
        recipient=recipient,
        subject=subject,
        client=client,
        action=action,
        verdict=verdict,
        since=since,
        until=until,
        limit=limit,
    )
    return [Record.model_validate(row) for row in await admin.log_search(query)]


@router.get("/{qid}", summary="One message's whole path", responses=NOT_FOUND)
async def show(qid: str, admin: AdminOf, _: Reader) -> Record:
    row = await admin.log_show(qid)
    if row is None:
        raise HTTPException(404, f"{qid}: not in the message log")
    return Record.model_validate(row)
