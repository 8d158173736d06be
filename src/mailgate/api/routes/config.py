"""The whole configuration: read it, export it as a YAML file, import a YAML or JSON file
(validated as a whole: a bad file changes nothing), and the history of revisions."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import CONFLICT, ERRORS, AdminOf, api_route
from mailgate.config.model import Config
from mailgate.config.repository import Revision

router = APIRouter(
    prefix="/config", tags=["configuration"], route_class=api_route(), responses=ERRORS
)


YAML = "application/yaml"  # RFC 9512


class Current(BaseModel):
    revision: int = Field(description="The revision in force on this node.")
    config: Config


class ConfigFile(BaseModel):
    text: str = Field(max_length=10_000_000, description="The whole configuration, YAML or JSON.")


class RevisionInfo(BaseModel):
    id: int
    created_at: datetime
    author: str
    comment: str

    @classmethod
    def of(cls, revision: Revision) -> RevisionInfo:
        return cls(
            id=revision.id,
            created_at=revision.created_at,
            author=revision.author,
            comment=revision.comment,
        )


@router.get("", summary="The configuration in force, and its revision")
async def current(admin: AdminOf, _: Reader) -> Current:
    return Current(revision=admin.revision, config=admin.config)


@router.get(
    "/export",
    summary="The configuration as a YAML file",
    # A response class without a media type, so FastAPI documents the errors as JSON and only
    # the content given here for 200: the YAML document is a Config.
    response_class=Response,
    responses={200: {
        "description": "The configuration as YAML; `POST /config/import` takes it back.",
        "content": {YAML: {"schema": {"$ref": "#/components/schemas/Config"}}},
    }},
)  # fmt: skip
async def export(admin: AdminOf, _: Reader) -> Response:
    return Response(
        await admin.export_config(),
        media_type=YAML,
        headers={"Content-Disposition": 'attachment; filename="mailgate.yaml"'},
    )


@router.post(
    "/import",
    summary="Replace the whole configuration with a YAML or JSON file",
    responses=CONFLICT,
)
async def import_(body: ConfigFile, admin: AdminOf, identity: Administrator) -> RevisionInfo:
    return RevisionInfo.of(await admin.import_config(body.text, identity.account))


@router.get("/history", summary="The latest revisions, newest first")
async def history(
    admin: AdminOf, _: Reader, limit: int = Query(50, ge=1, le=1000)
) -> list[RevisionInfo]:
    return [RevisionInfo.of(r) for r in await admin.history(limit)]
