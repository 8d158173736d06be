"""Settings: main (Settings → Built-in MTA → Main settings), advanced (Advanced settings, every
subsection) and protection (Settings → General → Protection, External services included).

PATCH sets only the fields given; sub-sections are merged field by field. The whole
configuration is validated before anything is saved: a bad value is refused with its field
named ("main.relayhost.port") and the running configuration stays as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import (
    CONFLICT,
    ERRORS,
    AdminOf,
    Patch,
    api_route,
    patch_model,
    section_changes,
    set_sections,
)
from mailgate.config.model import AdvancedSettings, MainSettings
from mailgate.config.protection import Protection

router = APIRouter(prefix="/settings", tags=["settings"])

# mypy cannot see through models made at run time; FastAPI needs the real ones.
if TYPE_CHECKING:
    MainPatch = Patch
    AdvancedPatch = Patch
    ProtectionPatch = Patch
else:
    MainPatch = patch_model(MainSettings)
    AdvancedPatch = patch_model(AdvancedSettings)
    ProtectionPatch = patch_model(Protection)


def _section_router(section: str) -> APIRouter:
    # Each section's body errors are named from the section down ("advanced.limits.x").
    return APIRouter(prefix=f"/{section}", route_class=api_route(section), responses=ERRORS)


async def _patch(admin: AdminOf, identity: Administrator, section: str, body: Patch) -> None:
    changes = section_changes(body, section)
    fields = ", ".join(f"{s}.{k}" for s, values in changes for k in values)
    await admin.change(
        set_sections(changes),
        identity.account,
        f"set {fields}" if fields else f"set {section}: nothing",
    )


main = _section_router("main")


@main.get("", summary="Main settings")
async def get_main(admin: AdminOf, _: Reader) -> MainSettings:
    return admin.config.main


@main.patch("", responses=CONFLICT, summary="Change main settings")
async def patch_main(body: MainPatch, admin: AdminOf, identity: Administrator) -> MainSettings:
    await _patch(admin, identity, "main", body)
    return admin.config.main


advanced = _section_router("advanced")


@advanced.get("", summary="Advanced settings (every subsection)")
async def get_advanced(admin: AdminOf, _: Reader) -> AdvancedSettings:
    return admin.config.advanced


@advanced.patch("", responses=CONFLICT, summary="Change advanced settings (any subsection)")
async def patch_advanced(
    body: AdvancedPatch, admin: AdminOf, identity: Administrator
) -> AdvancedSettings:
    await _patch(admin, identity, "advanced", body)
    return admin.config.advanced


protection = _section_router("protection")


@protection.get("", summary="Protection: modules, engines, external services, quarantine")
async def get_protection(admin: AdminOf, _: Reader) -> Protection:
    return admin.config.protection


@protection.patch(
    "", responses=CONFLICT, summary="Change protection settings (external services included)"
)
async def patch_protection(
    body: ProtectionPatch, admin: AdminOf, identity: Administrator
) -> Protection:
    await _patch(admin, identity, "protection", body)
    return admin.config.protection


for _section in (main, advanced, protection):
    router.include_router(_section)
