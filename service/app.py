"""Builds the FastAPI app: middleware, one router per concern, the one error handler."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from backends import create_backend
from service.api_models import problems
from service.config import Settings, get_settings
from service.errors import BadRequest, ExtractionError
from service.lifecycle import DrainGuard, install_signal_handler
from service.logs import configure_logging
from service.middleware import COUNTED, ApiKeyGate, BodySizeLimit, error_response, unreadable_body
from service.routes import extract, health, meta
from service.state import AppState, BackendFactory

# A caller's X-Request-ID is kept (echoed in answers and errors, logged) when it looks like an id; anything else
# (5,000 characters, spaces, control characters) is replaced by a fresh one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def _usable_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


log = structlog.get_logger("extraction.app")


def create_app(
    settings: Settings | None = None,
    backend_factory: BackendFactory | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ASGI app. Without arguments: settings from EXTRACTION_CONFIG and the environment. `clock` drives the
    circuit breakers (tests pass a fake one)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    state = AppState.build(settings, backend_factory or create_backend, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.shutdown.drain:
            install_signal_handler(state.drain, settings.shutdown)
        log.info(
            "started",
            tasks=sorted(state.tasks),
            backends=sorted(state.backends),
            default_backend=settings.default_backend,
        )
        yield
        await state.aclose()

    app = FastAPI(
        title="extraction-service",
        version="0.1.0",
        summary="Text in, JSON out: always valid against a JSON Schema, from a prompted or a fine-tuned model.",
        lifespan=lifespan,
        # `/v1/extract/` is a 404 problem body, not a 307 to a Location built from the caller's Host header
        redirect_slashes=False,
    )
    app.state.extraction = state
    app.include_router(extract.router)
    app.include_router(meta.router)
    app.include_router(health.router)
    Instrumentator(registry=state.metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    # Outermost last: request id, drain, the key (before any body is read), the body's size, the routes.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.limits.max_body_bytes,
        count=lambda outcome: state.metrics.requests.labels("-", "-", outcome).inc(),
    )
    app.add_middleware(ApiKeyGate, authenticator=state.authenticator, on_reject=state.metrics.rejected_before_pipeline)
    app.add_middleware(
        DrainGuard, drain=state.drain, respond=error_response, on_reject=state.metrics.rejected_before_pipeline
    )
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID", validator=_usable_request_id)
    _install_error_handlers(app, state)
    return app


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of this path answers (each asked through the routes' own `matches`)."""
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]


def _is_json_type(content_type: str) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json (parameters aside)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _install_error_handlers(app: FastAPI, state: AppState) -> None:
    @app.exception_handler(ExtractionError)
    async def extraction_error(_: Request, exc: ExtractionError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is 422; ours keeps 422 for schema-validation failures of model output.
        found = problems(exc.errors())
        if request.url.path.startswith(COUNTED):
            state.metrics.rejected_before_pipeline()
        first: dict[str, Any] = found[0] if found else {"loc": [], "message": "invalid request"}
        where = ".".join(first["loc"][1:]) or "body"
        message = f"invalid request: {where}: {first['message']}"
        details: dict[str, Any] = {"errors": found}
        content_type = request.headers.get("content-type", "")
        if first.get("type") == "json_invalid":
            details["reason"] = "malformed_json"
        elif where == "body" and not _is_json_type(content_type):
            # FastAPI does not parse a body sent as another type, and says only "not a valid dictionary".
            sent = repr(content_type[:80]) if content_type else "none"
            message = f"the body must be JSON sent as content-type application/json, not {sent}"
            details["reason"] = "content_type"
        return error_response(BadRequest(message, details=details))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse the body (invalid UTF-8, too deep, huge integer)
            if request.url.path.startswith(COUNTED):
                state.metrics.rejected_before_pipeline()
            return error_response(unreadable_body(exc.__cause__))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}, "request_id": correlation_id.get()}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first route of the path (GET and HEAD are two)
            headers["Allow"] = ", ".join(_allowed(app, request.scope))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error_type=type(exc).__name__)
        body = {
            "error": {"code": "internal_error", "message": "internal error; see the server log", "details": {}},
            "request_id": correlation_id.get(),
        }
        return JSONResponse(body, status_code=500)


def app_factory() -> Any:
    """Entry point for `uvicorn --factory service.app:app_factory` (each worker builds its own app)."""
    app = create_app()
    # Everything built so far (settings, tasks, compiled validators, clients, tokenizers) lives as long as the
    # process: moved out of the collector's sight, full collections stay short (fewer latency outliers).
    gc.collect()
    gc.freeze()
    return app
