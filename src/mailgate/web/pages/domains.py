"""Settings → Built-in MTA → Domains: local domains and their routes (the seed's step 1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.config import service as edits
from mailgate.config.model import ConfigError, Domain, NextHop
from mailgate.web.pages.common import Ctx, changer, done, error_page, page, render, text, viewer
from mailgate.web.pages.forms import FormField, attach_errors, model_fields, read_all, relative

router = APIRouter()
BASE = "/settings/mta/domains"
CRUMB = "Settings → Built-in MTA"
TLS_NAMES = {
    "": "Default (advanced settings)",
    "none": "None",
    "may": "May (opportunistic)",
    "encrypt": "Encrypt (mandatory)",
}


def domain_fields(record: dict[str, Any]) -> list[FormField]:
    route = record.get("route") or {}
    fields = model_fields(
        Domain,
        "domains",
        record,
        only=["name", "local"],
        labels={"name": "Domain name", "local": "Local domain"},
    )
    fields += model_fields(
        NextHop,
        "domains.route",
        route,
        labels={
            "host": "Route: host or IP address",
            "port": "Route: port",
            "mx_lookup": "Use MX record lookup",
        },
    )
    fields[2].optional = True
    fields[2].help = (
        "Manual route (next hop) for this domain: host name, FQDN, IPv4 or IPv6 "
        "address. Empty: the relayhost or DNS (MX) is used."
    )
    if not route:
        fields[3].value = 25
    fields += model_fields(
        Domain,
        "domains",
        record,
        only=["tls"],
        labels={"tls": "TLS level"},
        choice_labels={"tls": TLS_NAMES},
    )
    return fields


def _record(values: dict[str, Any]) -> dict[str, Any]:
    flat = relative(values, "domains")
    route = relative(flat, "route")
    record: dict[str, Any] = {"name": flat["name"], "local": flat["local"], "tls": flat["tls"]}
    record["route"] = route if route.get("host") else None
    return record


@router.get(BASE)
@page
async def domains(request: Request) -> Response:
    ctx = await viewer(request)
    config = ctx.admin.config
    return render(
        ctx,
        "domains.html",
        title="Domains",
        section="settings.domains",
        breadcrumb=CRUMB,
        domains=config.domains,
        tls_names=TLS_NAMES,
    )


def _form(
    ctx: Ctx, fields: list[FormField], original: str, general: list[str], status: int = 200
) -> Response:
    title = f"Domain {original}" if original else "Add domain"
    return render(
        ctx,
        "domain_form.html",
        status,
        title=title,
        section="settings.domains",
        breadcrumb=CRUMB + " → Domains",
        fields=fields,
        original=original,
        general=general,
    )


@router.get(BASE + "/new")
@page
async def new_domain(request: Request) -> Response:
    ctx = await viewer(request)
    return _form(ctx, domain_fields({"name": "", "local": True}), "", [])


@router.get(BASE + "/edit")
@page
async def edit_domain(request: Request) -> Response:
    ctx = await viewer(request)
    name = request.query_params.get("name", "")
    domain = next((d for d in ctx.admin.config.domains if d.name == name), None)
    if domain is None:
        return error_page(ctx, 404, "There is no such domain.")
    return _form(ctx, domain_fields(domain.model_dump(mode="json")), domain.name, [])


@router.post(BASE + "/save")
@page
async def save_domain(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    original = text(form, "original")
    fields = domain_fields({})
    record = _record(read_all(fields, form))
    if original:
        edit, comment = edits.update_domain(original, record), f"web: domain {original}"
    else:
        edit, comment = edits.add_domain(record), f"web: add domain {record['name']}"
    try:
        await ctx.admin.change(edit, ctx.account, comment)
    except ConfigError as exc:
        general = attach_errors(fields, exc.errors)
        return _form(ctx, fields, original, general, 422)
    return done(BASE, "saved" if original else "domain.added")


@router.post(BASE + "/delete")
@page
async def delete_domain(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    name = text(form, "name")
    try:
        await ctx.admin.change(edits.remove_domain(name), ctx.account, f"web: delete {name}")
    except ConfigError:
        return error_page(ctx, 404, "There is no such domain.")
    return done(BASE, "domain.deleted")
