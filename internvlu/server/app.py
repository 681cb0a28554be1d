"""The FastAPI application: the key check, the body limit, OpenAI's error shape, the web page and the routes.

- Key: with `--api-key`, every `/v1/` request needs `Authorization: Bearer KEY`, compared in constant time; the page
  itself (`/`) holds no secret and asks for the key.
- Body: at most `MAX_REQUEST_BYTES`, refused with 413 from its Content-Length, or as soon as that many bytes
  have arrived without one.
- Host: bound to loopback without a key, only loopback Host headers are answered (a web page elsewhere cannot
  reach the server through DNS rebinding).
- CORS: none unless `--cors-origin` names the origins.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import traceback
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from internvlu.limits import MAX_REQUEST_BYTES
from internvlu.server import job_routes, openai_routes
from internvlu.server.errors import ApiError
from internvlu.server.state import ServerState

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/style.css": ("style.css", "text/css; charset=utf-8")}
DRAIN_WAIT_S = 30  # how long shutdown waits for the running job to stop


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is refused before the app reads more of it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, f"the request body is larger than {self.limit // (1024 * 1024)} MiB; send smaller "
                             "or fewer images", code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse(too_large.body(), status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large
            return message

        return await self.app(scope, limited, send)


def key_check(state: ServerState):
    expected = state.api_key.encode() if state.api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "missing or wrong API key; send the server's --api-key as Authorization: Bearer KEY",
                           code="invalid_api_key")
    return check


def page_route(app: FastAPI) -> None:
    static = resources.files("internvlu.server") / "static"
    for route, (name, media_type) in PAGE_FILES.items():
        content = (static / name).read_bytes()

        async def serve(content=content, media_type=media_type) -> Response:
            return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
        app.add_api_route(route, serve, methods=["GET"], include_in_schema=False)


def error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}; see the README for the endpoints",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return await api_error(request, ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return await api_error(request, ApiError(400, f"{where}: {first.get('msg', 'invalid request')}", where))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("request %s %s failed:\n%s", request.method, request.url.path,
                  "".join(traceback.format_exception(exc)).rstrip())
        return await api_error(request, ApiError(500, f"internal error ({type(exc).__name__}); the server log has "
                                                      "the traceback", code="internal_error"))


def create_app(state: ServerState, loopback: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.queue.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            state.queue.drain("the server is shutting down; resubmit the job once it is back")
            await asyncio.to_thread(state.queue.join, DRAIN_WAIT_S)

    app = FastAPI(title="internvlu", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    error_handlers(app)
    secured = [Depends(key_check(state))]
    app.include_router(openai_routes.router(state), prefix="/v1", dependencies=secured)
    app.include_router(job_routes.router(state), prefix="/v1", dependencies=secured)
    page_route(app)
    if state.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=state.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    if loopback and not state.api_key:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)
    return app
