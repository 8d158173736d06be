"""An integration scheme applied in one step: the seed's "via a border gateway with SMTP
recipient verification" as one validated configuration revision (`mailgate setup
border-gateway`; see mailgate.config.scheme)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator
from mailgate.api.routes.common import ERRORS, AdminOf, api_route
from mailgate.config.scheme import Applied, BorderScheme, border_gateway_scheme

router = APIRouter(prefix="/setup", tags=["setup"], route_class=api_route(), responses=ERRORS)

_Text = Annotated[str, Field(min_length=1, max_length=255)]


class BorderGatewayScheme(BaseModel):
    domains: list[_Text] = Field(
        min_length=1, max_length=1000, description="Local domains and subdomains, one record each."
    )
    internal: _Text = Field(
        description="The internal mail server, host[:port]: the route of every local domain."
    )
    border: _Text = Field(description="The border gateway, host[:port]: mailgate's relayhost.")
    border_mx_lookup: bool = Field(False, description="Find the border by its name's MX record.")
    trusted_networks: list[_Text] = Field(
        default_factory=list, max_length=1000,
        description="Networks of the internal servers; default: the internal server's address.",
    )  # fmt: skip
    upstream_gateways: list[_Text] = Field(
        default_factory=list, max_length=100,
        description="The border gateway's addresses, whose XFORWARD, XCLIENT or Received header "
        "names the real client; default: the border's address.",
    )  # fmt: skip


class SchemeApplied(BaseModel):
    revision: int = Field(description="The configuration revision saved and in force.")
    steps: list[str] = Field(description="What was done, one line per step of the seed.")


@router.post("/border-gateway", summary="The seed's integration via a border gateway, in one step")
async def border_gateway(body: BorderGatewayScheme, admin: AdminOf,
                         identity: Administrator) -> SchemeApplied:  # fmt: skip
    applied = Applied()
    scheme = BorderScheme(body.domains, body.internal, body.border, body.border_mx_lookup,
                          body.trusted_networks, body.upstream_gateways)  # fmt: skip
    edit = border_gateway_scheme(scheme, applied)
    comment = f"setup border-gateway: {', '.join(body.domains)} via {body.border}"
    revision = await admin.change(edit, identity.account, comment)
    return SchemeApplied(revision=revision.id, steps=applied.steps)
