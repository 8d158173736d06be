"""Settings → Set up: border gateway: the seed's integration "via a border gateway with SMTP
recipient verification" in one step (`mailgate setup border-gateway`, `POST
/api/v1/setup/border-gateway`; see mailgate.config.scheme), for an administrator right after
installing, so the scheme is never half set up.

The form is prefilled from the configuration in force (local domains, the first one's route,
the relayhost, trusted networks, upstream gateways), so the page also shows the scheme in use.
Applying it saves one revision; a refusal is shown next to the field it names and nothing is
saved. The result (revision and the six steps) is shown on the page itself, with the way to
the integration check. Administrators only; auditors see the values, read-only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.config.model import ConfigError
from mailgate.config.scheme import SMTP_PORT, Applied, BorderScheme, border_gateway_scheme
from mailgate.web.pages.common import Ctx, changer, page, render, viewer
from mailgate.web.pages.forms import FormField, attach_errors, read_all

router = APIRouter()
BASE = "/settings/setup"
TITLE = "Set up: border gateway"
MAX_LENGTH = 255
MAX_ITEMS = {"domains": 1000, "trusted_networks": 1000, "upstream_gateways": 100}

# Configuration paths an error line may name, and the form field they belong to.
ALIASES = {
    "domains.route": "internal",
    "main.relayhost": "border",
    "main.trusted_networks": "trusted_networks",
    "protection.upstream_gateways": "upstream_gateways",
}


def _shown(host: str, port: int) -> str:
    """host[:port] as the form takes it back."""
    if ":" in host:
        return f"[{host}]:{port}"
    return host if port == SMTP_PORT else f"{host}:{port}"


def scheme_fields(config: dict[str, Any]) -> list[FormField]:
    """The form's fields, prefilled from the configuration (a plain dump) where it has values."""
    local = [d for d in config.get("domains") or [] if d.get("local")]
    route = next((d["route"] for d in local if d.get("route")), None)
    main = config.get("main") or {}
    relay = main.get("relayhost") or {}
    protection = config.get("protection") or {}
    return [
        FormField("domains", "Local domains", kind="lines",
                  value=[d["name"] for d in local],
                  help="The domains and subdomains mailgate accepts mail for, one per line "
                  "(a record for example.com does not make sub.example.com local)."),
        FormField("internal", "Internal mail server",
                  value=_shown(route["host"], route["port"]) if route else "",
                  help="host[:port] ([IPv6]:port): the route of every local domain, and the "
                  "server recipient verification asks."),
        FormField("border", "Border gateway",
                  value=_shown(relay["host"], relay["port"]) if relay else "",
                  help="host[:port] ([IPv6]:port): the relayhost all outgoing mail goes to."),
        FormField("border_mx_lookup", "Find the border gateway by its MX record",
                  kind="checkbox", value=bool(relay.get("mx_lookup")),
                  help="Deliver to the MX records of the border gateway's name (Postfix "
                  "host:port). Off: its own addresses ([host]:port). Only for names."),
        FormField("trusted_networks", "Trusted networks", kind="lines",
                  value=list(main.get("trusted_networks") or []),
                  help="The internal servers' addresses or networks (CIDR) that may send out "
                  "through mailgate, one per line; never the border gateway. Empty: the "
                  "internal server's address."),
        FormField("upstream_gateways", "Upstream gateway addresses", kind="lines",
                  value=list(protection.get("upstream_gateways") or []),
                  help="The border gateway's addresses, whose XFORWARD, XCLIENT or Received "
                  "header names the real client (SPF and DMARC stay on), one per line. "
                  "Empty: the border gateway's address."),
    ]  # fmt: skip


def _page(
    ctx: Ctx,
    status: int = 200,
    *,
    fields: list[FormField] | None = None,
    general: list[str] | None = None,
    revision: int | None = None,
    steps: list[str] | None = None,
    changed: bool = True,
) -> Response:
    if fields is None:
        fields = scheme_fields(ctx.admin.config.model_dump(mode="json"))
    return render(
        ctx,
        "setup.html",
        status,
        title=TITLE,
        section="settings.setup",
        breadcrumb="Settings",
        fields=fields,
        general=general or [],
        revision=revision,
        steps=steps or [],
        changed=changed,
    )


@router.get(BASE)
@page
async def setup(request: Request) -> Response:
    ctx = await viewer(request)
    return _page(ctx)


def _problems(values: dict[str, Any]) -> list[str]:
    """What the form itself refuses ("field: message"), before the scheme is made."""
    out = []
    for name in ("internal", "border"):
        if len(values[name]) > MAX_LENGTH:
            out.append(f"{name}: at most {MAX_LENGTH} characters")
    for name, most in MAX_ITEMS.items():
        if len(values[name]) > most:
            out.append(f"{name}: at most {most} lines")
        elif any(len(v) > MAX_LENGTH for v in values[name]):
            out.append(f"{name}: at most {MAX_LENGTH} characters a line")
    return out


@router.post(BASE)
@page
async def apply(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    fields = scheme_fields({})
    values = read_all(fields, form)
    problems = _problems(values)
    if not problems:
        applied = Applied()
        scheme = BorderScheme(
            values["domains"],
            values["internal"],
            values["border"],
            values["border_mx_lookup"],
            values["trusted_networks"],
            values["upstream_gateways"],
        )
        before = ctx.admin.revision
        try:
            edit = border_gateway_scheme(scheme, applied)
            comment = f"setup border-gateway: {', '.join(scheme.domains)} via {scheme.border}"
            revision = await ctx.admin.change(edit, ctx.account, comment)
        except ConfigError as exc:
            problems = exc.errors
        else:
            return _page(
                ctx,
                revision=revision.id,
                steps=applied.steps,
                changed=revision.id != before,
            )
    general = attach_errors(fields, problems, ALIASES)
    return _page(ctx, 422, fields=fields, general=general)
