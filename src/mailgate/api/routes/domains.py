"""Domain records (Settings → Built-in MTA → Domains): list, show, add, change, remove.

A change is saved as a new configuration revision and applied before the reply: a domain
added here is accepted at RCPT by the next SMTP command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    AdminOf,
    Patch,
    api_route,
    patch_model,
    patch_values,
)
from mailgate.config import service as edits
from mailgate.config.model import ConfigError, Domain, validate

router = APIRouter(prefix="/domains", tags=["domains"], route_class=api_route(), responses=ERRORS)

# mypy cannot see through a model made at run time; FastAPI needs the real one.
if TYPE_CHECKING:
    DomainPatch = Patch
else:
    DomainPatch = patch_model(Domain, frozenset({"name"}))


def _find(admin: AdminOf, name: str) -> Domain:
    """The record for `name` (any spelling: case, U-labels), or 404."""
    try:
        canonical = validate({"domains": [{"name": name}]}).domains[0].name
    except ConfigError:
        canonical = None
    domain = admin.config.domain(canonical) if canonical else None
    if domain is None:
        raise HTTPException(404, f"domain {name!r} does not exist")
    return domain


@router.get("", summary="List the domain records")
async def list_domains(admin: AdminOf, _: Reader) -> list[Domain]:
    return list(admin.config.domains)


@router.get("/{name}", summary="One domain record", responses=NOT_FOUND)
async def get_domain(name: str, admin: AdminOf, _: Reader) -> Domain:
    return _find(admin, name)


@router.post("", status_code=201, summary="Add a domain record", responses=CONFLICT)
async def create_domain(body: Domain, admin: AdminOf, identity: Administrator) -> Domain:
    record = body.model_dump(mode="json")
    await admin.change(edits.add_domain(record), identity.account, f"add domain {body.name}")
    return _find(admin, body.name)


@router.patch(
    "/{name}",
    summary="Change a domain record",
    responses={**NOT_FOUND, **CONFLICT},
    description="Fields left out stay as they are; `route: null` removes the manual route.",
)
async def update_domain(
    name: str, body: DomainPatch, admin: AdminOf, identity: Administrator
) -> Domain:
    domain = _find(admin, name)
    changes = patch_values(body)
    await admin.change(
        edits.update_domain(domain.name, changes),
        identity.account,
        f"change domain {domain.name}: {', '.join(changes) or 'nothing'}",
    )
    return _find(admin, domain.name)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Remove a domain record",
    responses={**NOT_FOUND, **CONFLICT},
)
async def delete_domain(name: str, admin: AdminOf, identity: Administrator) -> None:
    domain = _find(admin, name)
    await admin.change(
        edits.remove_domain(domain.name), identity.account, f"remove domain {domain.name}"
    )
