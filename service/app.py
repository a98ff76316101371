"""Builds the FastAPI app: middleware, one router per concern, the one error handler."""

from __future__ import annotations

import gc
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends import create_backend
from service.config import Settings, get_settings
from service.errors import BadRequest, ExtractionError, PayloadTooLarge
from service.lifecycle import DrainGuard, install_signal_handler
from service.logs import configure_logging
from service.routes import extract, health, meta
from service.state import AppState, BackendFactory

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
    )
    app.state.extraction = state
    app.include_router(extract.router)
    app.include_router(meta.router)
    app.include_router(health.router)
    Instrumentator(registry=state.metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(
        DrainGuard, drain=state.drain, respond=_error_response, on_reject=state.metrics.rejected_before_pipeline
    )
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID", validator=None)
    _install_error_handlers(app, state)
    return app


def _error_response(error: ExtractionError) -> JSONResponse:
    return JSONResponse(error.body(correlation_id.get()), status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI, state: AppState) -> None:
    @app.exception_handler(ExtractionError)
    async def extraction_error(_: Request, exc: ExtractionError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is 422; ours keeps 422 for schema-validation failures of model output.
        problems = [
            {"loc": [str(p) for p in err.get("loc", ())], "message": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        if request.url.path.startswith("/v1/extract"):
            state.metrics.rejected_before_pipeline()
        first: dict[str, Any] = problems[0] if problems else {"loc": [], "message": "invalid request"}
        where = ".".join(first["loc"][1:]) or "body"
        message = f"invalid request: {where}: {first['message']}"
        return _error_response(BadRequest(message, details={"errors": problems}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}, "request_id": correlation_id.get()}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error_type=type(exc).__name__)
        body = {
            "error": {"code": "internal_error", "message": "internal error; see the server log", "details": {}},
            "request_id": correlation_id.get(),
        }
        return JSONResponse(body, status_code=500)


class BodySizeLimit:
    """413 for bodies over `max_bytes`, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(
            f"request body is larger than {self.max_bytes} bytes", details={"limit_bytes": self.max_bytes}
        )
        await _error_response(error)(scope, receive, send)


class _TooLarge(Exception):
    pass


def app_factory() -> Any:
    """Entry point for `uvicorn --factory service.app:app_factory` (each worker builds its own app)."""
    app = create_app()
    # Everything built so far (settings, tasks, compiled validators, clients, tokenizers) lives as long as the
    # process: moved out of the collector's sight, full collections stay short (fewer latency outliers).
    gc.collect()
    gc.freeze()
    return app
