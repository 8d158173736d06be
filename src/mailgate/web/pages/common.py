"""What every page shares: the templates (Jinja2, autoescape on for everything), who is asking
and may they (the session cookie, CSRF for every POST, administrators only for changes), and
the replies (a page, a redirect after a change, an error page).

Security notes: every template is autoescaped, whatever its name; mail data reaches templates
only as text. A POST is refused (403) without the session's CSRF token, and for an auditor.
Pages that show mail data are never cached (the app's security headers).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import FormData

from mailgate.admin.accounts import Account
from mailgate.admin.service import Admin
from mailgate.api.auth import Identity, check_csrf, identify

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

P = ParamSpec("P")


def _when(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value)))


def _size(value: int | None) -> str:
    number = float(value or 0)
    for unit in ("B", "KiB", "MiB"):
        if number < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} GiB"


ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,  # every template, whatever its file name
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["when"] = _when
ENV.filters["size"] = _size
ENV.filters["urlq"] = lambda value: quote(str(value), safe="")

# Confirmations after a change (Post/Redirect/Get): the redirect names one of these, so no
# text from the request is ever reflected into the page.
DONE = {
    "saved": "Saved. The change is applied now.",
    "unchanged": "Nothing to save: the values are the ones in use.",
    "domain.added": "Domain added. The change is applied now.",
    "domain.deleted": "Domain deleted. The change is applied now.",
    "rule.added": "Rule added. The change is applied now.",
    "rule.deleted": "Rule deleted. The change is applied now.",
    "rule.moved": "Rule moved. The change is applied now.",
    "rules.replaced": "Reject replaced with Delete message in every rule. Applied now.",
    "queue.flush": "Deferred messages are scheduled for delivery now.",
    "queue.hold": "Message placed on hold.",
    "queue.release": "Message released from hold.",
    "queue.delete": "Message deleted from the queue.",
    "quarantine.release": "Message released: queued for delivery to its recipients.",
    "quarantine.delete": "Message deleted from the quarantine.",
    "account.added": "Account created.",
    "account.changed": "Account changed.",
    "account.deleted": "Account deleted.",
    "password": "Password changed.",
}


class Exit(Exception):
    """Leave a page with this response (login redirect, 403, 404)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def page(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """A page handler: an `Exit` raised inside becomes its response."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except Exit as leave:
            return leave.response

    return wrapper


@dataclass(slots=True)
class Ctx:
    """One request of a logged-in account."""

    request: Request
    identity: Identity

    @property
    def admin(self) -> Admin:
        admin: Admin = self.request.app.state.admin
        return admin

    @property
    def account(self) -> Account:
        return self.identity.account

    @property
    def can_change(self) -> bool:
        return self.identity.account.is_admin


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return redirect("/login?next=" + quote(target, safe=""))


async def viewer(request: Request) -> Ctx:
    """Any logged-in account; the login page otherwise."""
    identity = await identify(request)
    if identity is None:
        raise Exit(_login_redirect(request))
    return Ctx(request, identity)


async def changer(request: Request, *, own_account: bool = False) -> Ctx:
    """A POST that changes something: logged in, the session's CSRF token, an administrator
    (or, with `own_account`, any account changing only itself)."""
    ctx = await asker(request)
    if not own_account and not ctx.identity.account.is_admin:
        raise Exit(
            error_page(ctx, 403, "This account is read-only (auditor): it cannot change anything.")
        )
    return ctx


async def asker(request: Request) -> Ctx:
    """A POST that changes nothing (a question asked with a form): logged in and the
    session's CSRF token, any account."""
    identity = await identify(request)
    if identity is None:
        raise Exit(redirect("/login"))
    ctx = Ctx(request, identity)
    try:
        await check_csrf(request, identity)
    except HTTPException:
        raise Exit(
            error_page(
                ctx,
                403,
                "The form was refused: its security token is "
                "missing or wrong. Reload the page and try again.",
            )
        ) from None
    return ctx


def render(ctx: Ctx | None, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    done = ""
    if ctx is not None:
        done = DONE.get(ctx.request.query_params.get("done", ""), "")
    values.setdefault("section", "")
    values.setdefault("title", "")
    html = ENV.get_template(template).render(
        ctx=ctx,
        user=ctx.account if ctx else None,
        csrf=ctx.identity.csrf if ctx else "",
        can_change=ctx.can_change if ctx else False,
        done=done,
        **values,
    )
    return HTMLResponse(html, status_code=status)


def error_page(ctx: Ctx | None, status: int, message: str) -> HTMLResponse:
    titles = {403: "Forbidden", 404: "Not found"}
    return render(ctx, "error.html", status, title=titles.get(status, "Error"), message=message)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def done(url: str, key: str) -> RedirectResponse:
    joiner = "&" if "?" in url else "?"
    return redirect(f"{url}{joiner}done={key}")


def text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default


_SAFE_NEXT = re.compile(r"/[A-Za-z0-9/_.~%?=&+-]*")


def safe_next(target: str) -> str:
    """A local path to go to after logging in (never another site)."""
    if _SAFE_NEXT.fullmatch(target) and not target.startswith("//") and target != "/login":
        return target
    return "/dashboard"
