"""Accounts and their credentials: passwords hashed with argon2 (RFC 9106), API tokens and
login sessions kept only as SHA-256 of the secret, roles administrator and auditor.

Security notes: a login for an unknown user still costs one argon2 verification (no timing
oracle on user names); secrets come from `secrets.token_urlsafe`; a session carries its own
CSRF token; the last enabled administrator can be neither removed nor demoted nor disabled.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from mailgate.store.schema import accounts, api_tokens, web_sessions

Role = Literal["administrator", "auditor"]
ROLES: tuple[Role, ...] = ("administrator", "auditor")
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("mailgate: a password nobody has")
MIN_PASSWORD_LENGTH = 10


class AccountError(ValueError):
    """A request about accounts was refused; the message says why (names the field)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    username: str
    role: Role
    created: float
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "administrator"


@dataclass(frozen=True, slots=True)
class Session:
    account: Account
    csrf: str
    expires: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_username(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError("username: 1-100 letters, digits or . _ - @")
    return name


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1000:
        raise AccountError("password: at most 1000 characters")
    return password


def _account(row: object) -> Account:
    data = dict(row)  # type: ignore[call-overload]
    return Account(int(data["id"]), str(data["username"]), data["role"],
                   float(data["created"]), bool(data["disabled"]))  # fmt: skip


class Accounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- accounts --------------------------------------------------------------------------

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(accounts)).scalar() or 0)

    def all(self) -> list[Account]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(accounts).order_by(accounts.c.username)).mappings()
            return [_account(r) for r in rows]

    def get(self, username: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(accounts).where(accounts.c.username == username)
            ).mappings().first()  # fmt: skip
        return _account(row) if row else None

    def create(self, username: str, password: str, role: str) -> Account:
        if role not in ROLES:
            raise AccountError(f"role: one of {', '.join(ROLES)}")
        name = _check_username(username)
        hashed = _HASHER.hash(_check_password(password))
        try:
            with self.engine.begin() as conn:
                conn.execute(accounts.insert().values(
                    username=name, password_hash=hashed, role=role, created=time.time(),
                    disabled=False,
                ))  # fmt: skip
        except IntegrityError:
            raise AccountError(f"username: {name} already exists") from None
        account = self.get(name)
        assert account is not None
        return account

    def set_password(self, username: str, password: str) -> None:
        hashed = _HASHER.hash(_check_password(password))
        with self.engine.begin() as conn:
            found = conn.execute(update(accounts).where(accounts.c.username == username)
                                 .values(password_hash=hashed)).rowcount  # fmt: skip
            if not found:
                raise AccountError(f"username: {username} does not exist")
            # A new password ends every session of the account.
            account_id = select(accounts.c.id).where(accounts.c.username == username)
            conn.execute(delete(web_sessions).where(web_sessions.c.account_id.in_(account_id)))

    def update(self, username: str, *, role: str | None = None,
               disabled: bool | None = None) -> Account:  # fmt: skip
        account = self.get(username)
        if account is None:
            raise AccountError(f"username: {username} does not exist")
        if role is not None and role not in ROLES:
            raise AccountError(f"role: one of {', '.join(ROLES)}")
        demoting = account.is_admin and ((role not in (None, "administrator")) or disabled)
        if demoting and self._other_admins(account.id) == 0:
            raise AccountError("role: the last administrator must stay an enabled administrator")
        values: dict[str, object] = {}
        if role is not None:
            values["role"] = role
        if disabled is not None:
            values["disabled"] = disabled
        if values:
            with self.engine.begin() as conn:
                conn.execute(update(accounts).where(accounts.c.id == account.id).values(values))
                if disabled:
                    conn.execute(
                        delete(web_sessions).where(web_sessions.c.account_id == account.id)
                    )
        updated = self.get(username)
        assert updated is not None
        return updated

    def remove(self, username: str) -> None:
        account = self.get(username)
        if account is None:
            raise AccountError(f"username: {username} does not exist")
        if account.is_admin and not account.disabled and self._other_admins(account.id) == 0:
            raise AccountError("username: the last administrator cannot be removed")
        with self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.account_id == account.id))
            conn.execute(delete(api_tokens).where(api_tokens.c.account_id == account.id))
            conn.execute(delete(accounts).where(accounts.c.id == account.id))

    def _other_admins(self, account_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(accounts).where(
                    accounts.c.role == "administrator", accounts.c.disabled.is_(False),
                    accounts.c.id != account_id)
            ).scalar() or 0)  # fmt: skip

    def authenticate(self, username: str, password: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(accounts).where(accounts.c.username == username)
            ).mappings().first()  # fmt: skip
        stored = str(row["password_hash"]) if row else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row["disabled"]:
            return None
        return _account(row)

    # -- sessions --------------------------------------------------------------------------

    def open_session(self, account: Account, lifetime: float) -> tuple[str, Session]:
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.expires < now))
            conn.execute(web_sessions.insert().values(
                id_hash=_digest(secret), account_id=account.id, csrf=csrf, created=now,
                expires=now + lifetime,
            ))  # fmt: skip
        return secret, Session(account, csrf, now + lifetime)

    def session(self, secret: str, lifetime: float) -> Session | None:
        """The session for a cookie value, extended (sliding expiry), or None."""
        now = time.time()
        query = (
            select(web_sessions.c.csrf, web_sessions.c.expires, accounts)
            .join(accounts, accounts.c.id == web_sessions.c.account_id)
            .where(web_sessions.c.id_hash == _digest(secret))
        )
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None or row["expires"] < now or row["disabled"]:
                return None
            if row["expires"] - now < lifetime - 60:  # extend at most once a minute
                conn.execute(update(web_sessions).where(web_sessions.c.id_hash == _digest(secret))
                             .values(expires=now + lifetime))  # fmt: skip
        return Session(_account(row), str(row["csrf"]), now + lifetime)

    def close_session(self, secret: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == _digest(secret)))

    # -- API tokens ------------------------------------------------------------------------

    def create_token(self, username: str, name: str) -> tuple[int, str]:
        """A new token for `username`: its id and its secret (only the hash is stored)."""
        account = self.get(username)
        if account is None:
            raise AccountError(f"username: {username} does not exist")
        if not name.strip() or len(name) > 100:
            raise AccountError("name: 1-100 characters")
        token = "mgt_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            inserted = conn.execute(api_tokens.insert().values(
                account_id=account.id, name=name.strip(), token_hash=_digest(token),
                created=time.time(), last_used=None,
            ))  # fmt: skip
            key = inserted.inserted_primary_key
            assert key is not None  # an INSERT of one row always has it
            token_id = int(key[0])
        return token_id, token

    def tokens(self, username: str | None = None) -> list[dict[str, object]]:
        query = select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.created,
                       api_tokens.c.last_used, accounts.c.username).join(
            accounts, accounts.c.id == api_tokens.c.account_id)  # fmt: skip
        if username is not None:
            query = query.where(accounts.c.username == username)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(api_tokens.c.id)).mappings()]

    def revoke_token(self, token_id: int) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(delete(api_tokens).where(api_tokens.c.id == token_id)).rowcount
        if not gone:
            raise AccountError(f"token: {token_id} does not exist")

    def by_token(self, token: str) -> Account | None:
        query = select(accounts, api_tokens.c.id.label("token_id")).join(
            api_tokens, api_tokens.c.account_id == accounts.c.id
        ).where(api_tokens.c.token_hash == _digest(token))  # fmt: skip
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None or row["disabled"]:
                return None
            conn.execute(update(api_tokens).where(api_tokens.c.id == row["token_id"])
                         .values(last_used=time.time()))  # fmt: skip
        return _account(row)
