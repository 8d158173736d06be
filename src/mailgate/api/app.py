"""The HTTP application: the REST API under /api/v1 (OpenAPI at /api/openapi.json) and the web
interface, both over `mailgate.admin.service.Admin`, with the security headers, the error
replies and the static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from mailgate.admin.accounts import AccountError
from mailgate.admin.service import Admin
from mailgate.api.security import SecurityHeaders
from mailgate.config.model import ConfigError
from mailgate.config.repository import ConflictError
from mailgate.quarantine import QuarantineError
from mailgate.queue.manager import QueueError

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


def field_errors(lines: list[str]) -> list[dict[str, str]]:
    """ConfigError lines ("field: message") as {"field", "message"} objects."""
    out = []
    for line in lines:
        field, sep, message = line.partition(": ")
        out.append({"field": field, "message": message} if sep else {"field": "", "message": line})
    return out


def create_app(admin: Admin) -> FastAPI:
    # The interactive docs pages load scripts from a CDN: not served; the document is.
    app = FastAPI(
        title="mailgate",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.admin = admin
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ConfigError)
    async def _config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": "invalid configuration; nothing was changed",
                             "errors": field_errors(exc.errors)}, status_code=422)  # fmt: skip

    @app.exception_handler(AccountError)
    async def _account_error(_: Request, exc: AccountError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "errors": field_errors([str(exc)])},
                            status_code=422)  # fmt: skip

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(QueueError)
    @app.exception_handler(QuarantineError)
    async def _not_found(_: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse({"detail": str(exc.args[0] if exc.args else exc)}, status_code=404)

    from mailgate.api.routes import router as api_router
    from mailgate.web.pages import router as web_router

    app.include_router(api_router, prefix="/api/v1")
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
