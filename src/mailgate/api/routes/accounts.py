"""Accounts and roles: list, create, change role or disable, set a password, remove.

Administrators only, except that every account may change its own password (giving the
current one, so a stolen session alone cannot take the account over). The last enabled
administrator can be neither removed, demoted nor disabled. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from mailgate.admin.accounts import MIN_PASSWORD_LENGTH, Account
from mailgate.api.auth import Administrator, Identity, Reader
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, Invalid, api_route

router = APIRouter(prefix="/accounts", tags=["accounts"], route_class=api_route(), responses=ERRORS)

Role = Literal["administrator", "auditor"]
Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1000)]


class AccountOut(BaseModel):
    username: str
    role: Role
    created: float = Field(description="Unix time.")
    disabled: bool = Field(description="A disabled account cannot log in or use its tokens.")

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls(
            username=account.username,
            role=account.role,
            created=account.created,
            disabled=account.disabled,
        )


class NewAccount(BaseModel):
    username: str = Field(min_length=1, max_length=100, description="Letters, digits, . _ - @")
    password: Password
    role: Role


class AccountChange(BaseModel):
    role: Role | None = None
    disabled: bool | None = None


class PasswordChange(BaseModel):
    password: Password
    current_password: str | None = Field(
        None, max_length=1000, description="Required to change your own password."
    )


async def _self_or_administrator(username: str, identity: Reader) -> Identity:
    # A dependency, so the refusal comes before the body is even looked at.
    if username != identity.account.username and not identity.account.is_admin:
        raise HTTPException(403, "administrators only")
    return identity


SelfOrAdministrator = Annotated[Identity, Depends(_self_or_administrator)]


async def _account(admin: AdminOf, username: str) -> Account:
    account = await admin._run(admin.accounts.get, username)
    if account is None:
        raise HTTPException(404, f"account {username!r} does not exist")
    return account


@router.get("", summary="Every account")
async def list_accounts(admin: AdminOf, _: Administrator) -> list[AccountOut]:
    return [AccountOut.of(a) for a in await admin._run(admin.accounts.all)]


@router.get(
    "/{username}",
    summary="One account (administrators, or the account itself)",
    responses=NOT_FOUND,
)
async def get_account(username: str, admin: AdminOf, _: SelfOrAdministrator) -> AccountOut:
    return AccountOut.of(await _account(admin, username))


@router.post("", status_code=201, summary="Create an account")
async def create_account(body: NewAccount, admin: AdminOf, identity: Administrator) -> AccountOut:
    account = await admin._run(admin.accounts.create, body.username, body.password, body.role)
    await admin._run(
        admin.audit.record,
        identity.account.username,
        "account.create",
        account.username,
        {"role": account.role},
    )
    return AccountOut.of(account)


@router.patch(
    "/{username}", summary="Change an account's role, or disable/enable it", responses=NOT_FOUND
)
async def update_account(
    username: str, body: AccountChange, admin: AdminOf, identity: Administrator
) -> AccountOut:
    before = await _account(admin, username)
    after = await admin._run(
        lambda: admin.accounts.update(username, role=body.role, disabled=body.disabled)
    )
    changes = [
        {"field": field, "before": getattr(before, field), "after": getattr(after, field)}
        for field in ("role", "disabled")
        if getattr(before, field) != getattr(after, field)
    ]
    if changes:
        await admin._run(admin.audit.record, identity.account.username, "account.update",
                         username, {"changes": changes})  # fmt: skip
    return AccountOut.of(after)


@router.put(
    "/{username}/password",
    status_code=204,
    responses=NOT_FOUND,
    summary="Set a password (administrators; anyone for their own, with the current one)",
    description="Ends every login session of the account; its API tokens stay valid.",
)
async def set_password(
    username: str, body: PasswordChange, admin: AdminOf, identity: SelfOrAdministrator
) -> None:
    own = username == identity.account.username
    await _account(admin, username)
    if own:
        current = body.current_password or ""
        if await admin._run(admin.accounts.authenticate, username, current) is None:
            raise Invalid("current_password", "wrong or missing current password")
    await admin._run(admin.accounts.set_password, username, body.password)
    await admin._run(
        admin.audit.record, identity.account.username, "account.password", username, {}
    )


@router.delete(
    "/{username}", status_code=204, summary="Remove an account and its tokens", responses=NOT_FOUND
)
async def delete_account(username: str, admin: AdminOf, identity: Administrator) -> None:
    await _account(admin, username)
    await admin._run(admin.accounts.remove, username)
    await admin._run(admin.audit.record, identity.account.username, "account.delete", username, {})
