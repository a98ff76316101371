"""POST /v1/extract and /v1/extract/batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Request

from service.api_models import (
    BatchItemResult,
    BatchRequest,
    BatchResponse,
    ErrorInfo,
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    InvalidItem,
    TokenUsage,
)
from service.auth import Principal
from service.deps import PrincipalDep, RequestIdDep, StateDep
from service.errors import BadRequest, ClientClosedRequest, ExtractionError
from service.pipeline.spend import Spend
from service.routing import backend_name
from service.state import AppState

router = APIRouter(prefix="/v1", tags=["extract"])
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, object]] = {
    400: {
        "model": ErrorResponse,
        "description": "bad_request, unknown_task, unknown_backend, invalid_schema, text_too_long",
    },
    401: {"model": ErrorResponse, "description": "unauthorized: no API key, or an unknown one (when keys are on)"},
    403: {"model": ErrorResponse, "description": "forbidden: the key may not use this task or backend"},
    408: {"model": ErrorResponse, "description": "request_timeout (answered by `extraction serve` before the app)"},
    413: {"model": ErrorResponse, "description": "payload_too_large"},
    431: {"model": ErrorResponse, "description": "headers_too_large (answered by `extraction serve` before the app)"},
    422: {
        "model": ErrorResponse,
        "description": "schema_validation_failed (with the last validation errors and "
        "a raw-output snippet), budget_exceeded, validation_timeout or pii_detected",
    },
    429: {
        "model": ErrorResponse,
        "description": "rate_limited (the key's requests or tokens per minute) or quota_exceeded (its daily "
        "budget), with Retry-After",
    },
    502: {"model": ErrorResponse, "description": "upstream_error"},
    503: {"model": ErrorResponse, "description": "backend_unavailable or overloaded"},
    504: {"model": ErrorResponse, "description": "deadline_exceeded"},
}


def _backend_header(
    value: Annotated[str | None, Header(alias="X-Extraction-Backend", description="Backend override.")] = None,
) -> str | None:
    """The header's backend name without the whitespace HTTP clients and proxies leave around values."""
    return (value.strip() or None) if value is not None else None


BackendHeader = Annotated[str | None, Depends(_backend_header)]


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the client going away (or never comes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it, so the upstream call is cancelled too and
    no tokens are spent on an answer nobody reads."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientClosedRequest("the client disconnected; the extraction was cancelled")
    return task.result()


def _authorize(state: AppState, principal: Principal | None, body: ExtractRequest, backend: str | None) -> None:
    """403 unless the key may use this task and the backend the request would be routed to."""
    if principal is None:
        return
    task = state.tasks.get(body.task) if body.task else None
    wanted = backend_name(state.settings, task, body.backend or backend)
    try:
        principal.authorize(body.task, wanted)
    except ExtractionError:
        state.metrics.rejected_before_pipeline()
        raise


async def _run(
    state: AppState, body: ExtractRequest, backend: str | None, request_id: str | None, principal: Principal | None
) -> ExtractResponse:
    """One extraction; the key is charged every answer it was billed for, whatever the outcome (failed attempts,
    and a request the caller abandoned, included), and its fallback chain keeps to the backends it may use."""
    billed: list[Spend] = []
    try:
        return await state.extractor.extract(
            body.text,
            task=body.task,
            schema=body.json_schema,
            instructions=body.instructions,
            grounding=body.grounding,
            backend=body.backend or backend,
            options=body.options,
            request_id=request_id,
            on_spend=billed.append,
            may_use=principal.allows_backend if principal is not None else None,
        )
    finally:
        if principal is not None and billed:
            total = sum(billed, Spend())
            principal.charge(total.tokens, total.cost_usd)


def _admit(state: AppState, principal: Principal | None, items: int) -> None:
    if principal is None:
        return
    try:
        principal.admit(items)
    except ExtractionError:
        state.metrics.rejected_before_pipeline(items)
        raise


@router.post("/extract", response_model=ExtractResponse, responses=ERRORS)
async def extract(
    request: Request,
    body: ExtractRequest,
    state: StateDep,
    request_id: RequestIdDep,
    principal: PrincipalDep,
    x_backend: BackendHeader,
) -> ExtractResponse:
    """Extract JSON that validates against the task's (or the given) schema."""
    _authorize(state, principal, body, x_backend)
    _admit(state, principal, 1)
    return await _cancel_on_disconnect(request, _run(state, body, x_backend, request_id, principal))


@router.post(
    "/extract/batch",
    response_model=BatchResponse,
    responses={code: ERRORS[code] for code in (400, 401, 403, 413, 429)},
)
async def extract_batch(
    request: Request,
    body: BatchRequest,
    state: StateDep,
    request_id: RequestIdDep,
    principal: PrincipalDep,
    x_backend: BackendHeader,
) -> BatchResponse:
    """Independent extractions run concurrently (each backend's max_concurrency applies); per-item results."""
    limit = state.settings.limits.max_batch_items
    if len(body.items) > limit:
        state.metrics.rejected_before_pipeline()  # one request turned away, as a malformed body is
        raise BadRequest(
            f"batch has {len(body.items)} items; the limit is {limit}",
            details={"items": len(body.items), "limit": limit},
        )
    _admit(state, principal, len(body.items))  # each item is a request for the key's rate

    async def one(index: int, item: ExtractRequest | InvalidItem) -> tuple[BatchItemResult, Spend]:
        try:
            if isinstance(item, InvalidItem):
                state.metrics.rejected_before_pipeline()  # counted once, as a malformed single request is
                first = item.errors[0] if item.errors else {"loc": [], "message": "invalid request"}
                where = ".".join(str(part) for part in first["loc"])
                said = f"{where}: {first['message']}" if where else first["message"]
                raise BadRequest(f"invalid item: {said}", details={"errors": item.errors})
            _authorize(state, principal, item, body.backend or x_backend)
            result = await _run(state, item, body.backend or x_backend, request_id, principal)
        except ExtractionError as e:
            error = ErrorInfo(code=e.code, message=e.message, details=e.details)
            return BatchItemResult(index=index, ok=False, error=error, status=e.status), e.spend or Spend()
        return BatchItemResult(index=index, ok=True, result=result, status=200), result.spend

    done = await _cancel_on_disconnect(request, asyncio.gather(*(one(i, item) for i, item in enumerate(body.items))))
    # Failed items cost too (their attempts were billed): totals cover every item.
    total = sum((spend for _, spend in done), Spend())
    succeeded = sum(r.ok for r, _ in done)
    return BatchResponse(
        results=[r for r, _ in done],
        succeeded=succeeded,
        failed=len(done) - succeeded,
        usage=TokenUsage(input_tokens=total.usage.input_tokens, output_tokens=total.usage.output_tokens),
        cost_usd=total.cost_usd,
        request_id=request_id,
    )
