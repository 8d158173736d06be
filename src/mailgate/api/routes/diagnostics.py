"""Diagnostics: what the gateway would do with a message (`mailgate trace`: MAIL and RCPT
replies, recipient verification, next hop, rule; nothing is sent) and the integration check
(`mailgate check`: the seed's integration tested against the live network, with what to fix).

A trace from the verification cache reads what the gateway already knows, so any account may
make one; a probe asks the next hops (recorded in the audit log as verify.test) and is for
administrators, as is the check, which connects to the relayhost, the routes and the internal
servers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import ERRORS, AdminOf, Invalid, api_route
from mailgate.trace import TraceError

router = APIRouter(tags=["diagnostics"], route_class=api_route(), responses=ERRORS)


# -- trace -----------------------------------------------------------------------------------

PROBE_REFUSED = (
    "probe: only an administrator may probe the next hops; without probe, a trace reads the "
    "verification cache"
)


class TraceRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    client: str = Field(max_length=64, description="IP address of the connecting client.")
    helo: str = Field("", max_length=255, description="The client's HELO name (shown only).")
    sender: str = Field(
        max_length=512, description='Envelope sender; "" or "<>" for the null sender.'
    )
    recipients: list[Annotated[str, Field(max_length=512)]] = Field(
        min_length=1,
        max_length=1000,
        description="Envelope recipients, in RCPT TO order (at most 1000, 512 characters each).",
    )
    size: int | None = Field(None, ge=0, description="Message size declared with MAIL SIZE=.")
    smtputf8: bool = Field(False, description="The client declares SMTPUTF8.")
    probe: bool = Field(
        False,
        description="Ask the next hop now about recipients to verify (a probe, as at RCPT time; "
        "the result goes to the verification cache; administrators only). Default: the cache "
        "only.",
    )


class LookupResult(BaseModel):
    status: Literal["ok", "bad", "temp", "unknown"] = Field(
        description="ok: accepted; bad: refused; temp: temporary failure; unknown: not checked "
        "(not in the verification cache, and no probe)."
    )
    detail: str = Field(description="The next hop's reply, the DNS finding, or why unknown.")
    source: str = Field(description='Where it came from: "cache, <time>", "probe", "dns", or "".')


class RecipientResult(BaseModel):
    address: str = Field(description="The recipient as the session reads it.")
    reply: str = Field(description="The reply to RCPT TO.")
    accepted: bool | None = Field(
        description="Whether RCPT TO is accepted; null when it depends on a check not made."
    )
    relay: str = Field(description="Why relaying is permitted or denied.")
    check: Literal["verify", "domain"] | None = Field(
        description="What RCPT TO waits for: recipient verification, the domain check, or none."
    )
    check_result: LookupResult | None = Field(description="That check's outcome, if made.")
    next_hop: str = Field(description="Where delivery would go (accepted recipients).")
    via: str = Field(description="Why that next hop: a route, the relayhost, or MX.")
    tls: str = Field(description="The TLS level delivery would use.")
    hosts: list[str] = Field(description="The addresses delivery would try, in order.")
    hop_error: str = Field(description="Why delivery would fail, if it would.")
    rule: str = Field(description="The rule that would apply.")
    rule_mode: str = Field(description="That rule's mode: modules, skip, reject or delete.")
    modules: list[str] = Field(description="The scan modules that would run.")


class TraceResult(BaseModel):
    client: str = Field(description="The client's IP address.")
    helo: str = Field(description="The HELO name given.")
    trusted: bool = Field(description="The client is in the trusted networks.")
    upstream: bool = Field(description="The client is a configured upstream gateway.")
    sender: str = Field(description="The envelope sender as given.")
    mail_reply: str = Field(description="The reply to MAIL FROM.")
    recipients: list[RecipientResult] = Field(description="Each RCPT TO, in order.")
    data_reply: str = Field(description="The reply DATA would get.")


@router.post("/trace", summary="What the gateway would do with a message (nothing is sent)")
async def trace(body: TraceRequest, admin: AdminOf, identity: Reader) -> TraceResult:
    if body.probe and not identity.account.is_admin:
        raise HTTPException(403, PROBE_REFUSED)
    try:
        result = await admin.trace(
            client=body.client,
            sender=body.sender,
            recipients=body.recipients,
            helo=body.helo,
            size=body.size,
            smtputf8=body.smtputf8,
            probe=body.probe,
            actor=identity.account,
        )
    except TraceError as exc:
        field, _, message = str(exc).partition(": ")
        raise Invalid(field, message) from None
    return TraceResult.model_validate(result.to_json())


# -- integration check -----------------------------------------------------------------------


class CheckRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    timeout: float = Field(
        10.0, ge=0.1, le=60, description="Limit of each network step, in seconds."
    )


class FindingResult(BaseModel):
    name: str = Field(description="What was checked.")
    status: Literal["ok", "warn", "fail"] = Field(description="The outcome.")
    detail: str = Field(description="What was seen.")
    fix: str = Field(description='What to do about it ("" when ok).')


class CheckReport(BaseModel):
    failed: bool = Field(description="At least one finding failed (warnings alone do not).")
    findings: list[FindingResult] = Field(
        description="Every finding, in the order of the seed's procedure."
    )


@router.post("/check", summary="Check the integration against the live network")
async def check(body: CheckRequest, admin: AdminOf, _: Administrator) -> CheckReport:
    findings = [
        FindingResult(name=f.name, status=f.status, detail=f.detail, fix=f.fix)
        for f in await admin.integration_check(body.timeout)
    ]
    return CheckReport(failed=any(f.status == "fail" for f in findings), findings=findings)
