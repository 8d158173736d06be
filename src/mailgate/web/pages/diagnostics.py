"""Diagnostics: the integration check (`mailgate check`: the seed's integration tested against
the live network, each finding with what to fix) and a message trace (`mailgate trace`: the
SMTP dialogue a client would get, each recipient's check, next hop and rule; nothing is sent).

Both are posted with the CSRF token and their results are shown on the page itself (nothing
is changed, so there is nothing to redirect to). The check connects to the relayhost, the
routes and the internal servers, and a probe asks the next hops: those are for administrators.
A trace from the verification cache only reads, so an auditor may make one too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.trace import Trace, TraceError
from mailgate.trace import render as dialogue
from mailgate.web.pages.common import Ctx, asker, changer, error_page, page, render, viewer
from mailgate.web.pages.forms import FormField, attach_errors, read_all

router = APIRouter()
BASE = "/diagnostics"
MAX_RECIPIENTS = 1000
MAX_LENGTH = 512
MAX_SIZE_DIGITS = 18  # up to 10**18 - 1 bytes: the declared size is only compared with the limit
CHECK_TIMEOUT = 10.0


def trace_fields(*, can_probe: bool = True) -> list[FormField]:
    """The trace form's fields; without `can_probe` (an auditor), no probe."""
    fields = [
        FormField("client", "Client IP address",
                  help="The address of the connecting client: trusted networks, upstream "
                  "gateways and rules are decided by it."),
        FormField("helo", "HELO name", help="Shown only; no decision depends on it."),
        FormField("sender", "Sender",
                  help='The envelope sender (MAIL FROM); empty for the null sender "<>".'),
        FormField("recipients", "Recipients", kind="lines",
                  help="The envelope recipients (RCPT TO), one per line."),
        FormField("size", "Declared size (bytes)", kind="number", optional=True,
                  help="As MAIL FROM's SIZE= gives it; empty: not declared."),
        FormField("smtputf8", "SMTPUTF8", kind="checkbox",
                  help="The client declares SMTPUTF8 (needed for non-ASCII addresses)."),
        FormField("probe", "Probe the next hop now", kind="checkbox",
                  help="Ask the internal server about recipients to verify, as at RCPT time "
                  "(the result goes to the verification cache). Off: the cache only."),
    ]  # fmt: skip
    return fields if can_probe else [f for f in fields if f.name != "probe"]


def _page(
    ctx: Ctx,
    status: int = 200,
    *,
    fields: list[FormField] | None = None,
    general: list[str] | None = None,
    result: Trace | None = None,
    findings: list[Any] | None = None,
) -> Response:
    return render(
        ctx,
        "diagnostics.html",
        status,
        title="Diagnostics",
        section="diagnostics",
        fields=fields or trace_fields(can_probe=ctx.can_change),
        general=general or [],
        result=result,
        lines=dialogue(result) if result is not None else [],
        findings=findings,
        failed=any(f.status == "fail" for f in findings or []),
    )


@router.get(BASE)
@page
async def diagnostics(request: Request) -> Response:
    ctx = await viewer(request)
    return _page(ctx)


def _problems(values: dict[str, Any]) -> list[str]:
    """What the form itself refuses ("field: message"), before the trace is made."""
    out = []
    for name in ("client", "helo", "sender"):
        if len(values[name]) > MAX_LENGTH:
            out.append(f"{name}: at most {MAX_LENGTH} characters")
    size = values["size"]
    if size is not None and not (
        size.isascii() and size.isdigit() and len(size) <= MAX_SIZE_DIGITS
    ):
        out.append("size: a whole number of bytes, or empty")
    recipients = values["recipients"]
    if len(recipients) > MAX_RECIPIENTS:
        out.append(f"recipients: at most {MAX_RECIPIENTS} recipients")
    if any(len(r) > MAX_LENGTH for r in recipients):
        out.append(f"recipients: at most {MAX_LENGTH} characters each")
    return out


@router.post(BASE + "/trace")
@page
async def trace(request: Request) -> Response:
    ctx = await asker(request)
    form = await request.form()
    if form.get("probe") and not ctx.can_change:
        return error_page(ctx, 403, "Only an administrator may probe the next hops; an "
                          "auditor's trace reads the verification cache.")  # fmt: skip
    fields = trace_fields(can_probe=ctx.can_change)
    values = read_all(fields, form)
    for name in ("client", "helo", "sender"):
        values[name] = values[name].strip()
    problems = _problems(values)
    if not problems:
        try:
            result = await ctx.admin.trace(
                client=values["client"],
                sender=values["sender"],
                recipients=values["recipients"],
                helo=values["helo"],
                size=int(values["size"]) if values["size"] is not None else None,
                smtputf8=values["smtputf8"],
                probe=bool(values.get("probe")),
                actor=ctx.account,
            )
        except TraceError as exc:
            problems = [str(exc)]
        else:
            return _page(ctx, fields=fields, result=result)
    general = attach_errors(fields, problems)
    return _page(ctx, 422, fields=fields, general=general)


@router.post(BASE + "/check")
@page
async def check(request: Request) -> Response:
    ctx = await changer(request)
    findings = await ctx.admin.integration_check(CHECK_TIMEOUT)
    return _page(ctx, findings=findings)
