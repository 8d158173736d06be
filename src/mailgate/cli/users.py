"""`mailgate user` and `mailgate token`: accounts of the web interface and REST API, and their
API tokens, managed on the store directly (the gateway need not run).

Passwords are prompted twice and never taken as arguments (they would show in the process
list and the shell history); scripts give them on standard input with --password-stdin. Every
change is recorded in the audit log as made by cli:<user>.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from mailgate.admin.accounts import ROLES, AccountError, Accounts
from mailgate.admin.audit import AuditLog
from mailgate.cli.common import Context, author, fail


def _accounts(ctx: Context) -> Accounts:
    return Accounts(ctx.config_service().repository.engine)


def _audit(ctx: Context, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    AuditLog(ctx.config_service().repository.engine).record(author(), action, target, detail)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _when(value: object) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(float(str(value))).strftime("%Y-%m-%d %H:%M:%S")


_PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@click.group()
def user() -> None:
    """Accounts of the web interface and REST API (roles administrator and auditor)."""


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(ctx: Context, as_json: bool) -> None:
    """List the accounts."""
    found = _accounts(ctx).all()
    if as_json:
        click.echo(json.dumps([
            {"username": a.username, "role": a.role, "created": a.created, "disabled": a.disabled}
            for a in found
        ], indent=2))  # fmt: skip
        return
    if not found:
        click.echo("no accounts: start mailgate once to create the administrator")
    for a in found:
        state = " (disabled)" if a.disabled else ""
        click.echo(f"{a.username:30} {a.role:14} created {_when(a.created)}{state}")


@user.command()
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@_PASSWORD_STDIN
@click.pass_obj
def add(ctx: Context, name: str, role: str, password_stdin: bool) -> None:
    """Create an account."""
    try:
        account = _accounts(ctx).create(name, _password(password_stdin), role)
    except AccountError as exc:
        fail(str(exc), 2)
    _audit(ctx, "account.create", account.username, {"role": account.role})
    click.echo(f"created {account.role} {account.username}")


@user.command()
@click.argument("name")
@_PASSWORD_STDIN
@click.pass_obj
def passwd(ctx: Context, name: str, password_stdin: bool) -> None:
    """Set an account's password (ends its login sessions)."""
    accounts = _accounts(ctx)
    if accounts.get(name) is None:
        fail(f"account {name!r} does not exist")
    try:
        accounts.set_password(name, _password(password_stdin))
    except AccountError as exc:
        fail(str(exc), 2)
    _audit(ctx, "account.password", name)
    click.echo(f"password of {name} changed")


@user.command("set")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default=None)
@click.option("--disable", "disabled", flag_value=True, default=None,
              help="Refuse its logins and tokens.")  # fmt: skip
@click.option("--enable", "disabled", flag_value=False, help="Allow it again.")
@click.pass_obj
def set_(ctx: Context, name: str, role: str | None, disabled: bool | None) -> None:
    """Change an account's role, or disable or enable it."""
    if role is None and disabled is None:
        fail("nothing to change: give --role, --disable or --enable", 2)
    accounts = _accounts(ctx)
    before = accounts.get(name)
    if before is None:
        fail(f"account {name!r} does not exist")
    try:
        after = accounts.update(name, role=role, disabled=disabled)
    except AccountError as exc:
        fail(str(exc), 2)
    changes = [
        {"field": f, "before": getattr(before, f), "after": getattr(after, f)}
        for f in ("role", "disabled") if getattr(before, f) != getattr(after, f)
    ]  # fmt: skip
    _audit(ctx, "account.update", name, {"changes": changes})
    state = "disabled" if after.disabled else "enabled"
    click.echo(f"{after.username}: {after.role}, {state}")


@user.command()
@click.argument("name")
@click.pass_obj
def remove(ctx: Context, name: str) -> None:
    """Remove an account and its API tokens."""
    accounts = _accounts(ctx)
    if accounts.get(name) is None:
        fail(f"account {name!r} does not exist")
    try:
        accounts.remove(name)
    except AccountError as exc:
        fail(str(exc), 2)
    _audit(ctx, "account.delete", name)
    click.echo(f"removed {name}")


@click.group()
def token() -> None:
    """API tokens: `Authorization: Bearer <token>`, acting with their account's role."""


@token.command()
@click.argument("name")
@click.option("--user", "username", required=True, help="The account the token acts as.")
@click.pass_obj
def create(ctx: Context, name: str, username: str) -> None:
    """Create a token named NAME; it is printed once and never shown again."""
    accounts = _accounts(ctx)
    try:
        token_id, secret = accounts.create_token(username, name)
    except AccountError as exc:
        fail(str(exc), 2)
    _audit(ctx, "token.create", f"{username}: {name}", {"id": token_id, "username": username})
    click.echo(f"token {token_id} for {username} (shown once, keep it safe):", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--user", "username", default=None, help="Only this account's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_tokens(ctx: Context, username: str | None, as_json: bool) -> None:
    """List the tokens (never their secrets)."""
    found = _accounts(ctx).tokens(username)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no API tokens")
    for t in found:
        click.echo(f"{t['id']:5}  {t['username']:20} {t['name']:30} "
                   f"created {_when(t['created'])}, last used {_when(t['last_used'])}")  # fmt: skip


@token.command()
@click.argument("token_id", metavar="ID", type=int)
@click.pass_obj
def revoke(ctx: Context, token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    accounts = _accounts(ctx)
    known = {int(str(t["id"])): t for t in accounts.tokens()}
    if token_id not in known:
        fail(f"token {token_id} does not exist")
    accounts.revoke_token(token_id)
    found = known[token_id]
    _audit(ctx, "token.revoke", f"{found['username']}: {found['name']}", {"id": token_id})
    click.echo(f"token {token_id} revoked")
