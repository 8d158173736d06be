"""API tokens (`Authorization: Bearer mgt_...`): create one for an account (the token is
shown once, only its hash is kept), list them, revoke one. Administrators only; a token acts
with its account's role. Every change is audited."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, api_route

router = APIRouter(prefix="/tokens", tags=["tokens"], route_class=api_route(), responses=ERRORS)


class TokenInfo(BaseModel):
    id: int
    name: str = Field(description="What the token is for.")
    username: str = Field(description="The account it acts as.")
    created: float = Field(description="Unix time.")
    last_used: float | None = Field(description="Unix time of its last use, if any.")


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="What the token is for.")
    username: str | None = Field(
        None, max_length=100, description="The account it acts as; default: yours."
    )


class CreatedToken(TokenInfo):
    token: str = Field(description="The secret: shown this once, never again.")


@router.get("", summary="Every API token (never the secrets)")
async def list_tokens(admin: AdminOf, _: Administrator) -> list[TokenInfo]:
    return [TokenInfo.model_validate(t) for t in await admin._run(admin.accounts.tokens)]


@router.post("", status_code=201, summary="Create a token (the secret is shown once)")
async def create_token(body: NewToken, admin: AdminOf, identity: Administrator) -> CreatedToken:
    username = body.username or identity.account.username
    token_id, token = await admin._run(admin.accounts.create_token, username, body.name)
    info = next(t for t in await admin._run(admin.accounts.tokens, username) if t["id"] == token_id)
    await admin._run(
        admin.audit.record,
        identity.account.username,
        "token.create",
        f"{username}: {body.name}",
        {"id": info["id"], "username": username},
    )
    return CreatedToken.model_validate({**info, "token": token})


@router.delete("/{token_id}", status_code=204, summary="Revoke a token", responses=NOT_FOUND)
async def revoke_token(
    admin: AdminOf, identity: Administrator, token_id: int = Path(ge=1, le=2**62)
) -> None:
    known = {int(str(t["id"])): t for t in await admin._run(admin.accounts.tokens)}
    if token_id not in known:
        raise HTTPException(404, f"token {token_id} does not exist")
    await admin._run(admin.accounts.revoke_token, token_id)
    token = known[token_id]
    await admin._run(
        admin.audit.record,
        identity.account.username,
        "token.revoke",
        f"{token['username']}: {token['name']}",
        {"id": token_id},
    )
