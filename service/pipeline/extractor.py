"""The one entry point of the pipeline: a request's task, its route, and the fallback chain of backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog
from pydantic import ValidationError

from backends.base import Backend
from service.api_models import ExtractOptions, ExtractResponse, GroundingChange, TokenUsage
from service.config import BackendConfig, Settings
from service.errors import (
    BackendUnavailable,
    BadRequest,
    BudgetExceeded,
    DeadlineExceeded,
    ExtractionError,
    InvalidSchema,
    SchemaValidationFailed,
    TextTooLong,
    UnknownTask,
    UpstreamError,
    ValidationTimeout,
)
from service.metrics import Metrics
from service.pipeline.attempts import Answer, Attempts
from service.pipeline.checks import Checks
from service.pipeline.limits import TextLimits
from service.pipeline.observe import Observer, Trace
from service.pipeline.resilient import ResilientBackend
from service.pipeline.spend import Spend
from service.request_log import RequestLog
from service.resilience import Bulkhead, CircuitBreaker
from service.routing import route
from service.schemas.problems import NAME_ECHO, clip
from service.tasks import Task, adhoc_task

log = structlog.get_logger("extraction")

# Failures after which the next backend of a chain is tried; bad input, budget stops and a schema too costly
# to validate never fall back.
FALLBACK_ON = (UpstreamError, BackendUnavailable, DeadlineExceeded, SchemaValidationFailed, TextTooLong)


class Extractor:
    """Runs extractions against the configured backends. One per app; shared by all requests."""

    def __init__(
        self,
        settings: Settings,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        tasks: Mapping[str, Task],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        request_log: RequestLog | None = None,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self.metrics = metrics
        limits = settings.limits
        self.gate = Bulkhead(limits.max_inflight, limits.max_queue, "the service")
        self.backends = {
            name: ResilientBackend(backends[name], cfg, settings.retry, metrics, sleep=sleep, clock=clock)
            for name, cfg in settings.backends.items()
        }
        self.limits = TextLimits(settings, backends, tasks)
        self.checks = Checks(limits)
        self.attempts = Attempts(settings, metrics, self.limits, self.checks)
        self.observer = Observer(metrics, request_log, settings.request_log.redact_pii)

    def close(self) -> None:
        """Release what the extractor holds beyond the backends (its worker threads)."""
        self.checks.close()

    def circuit(self, backend: str) -> CircuitBreaker:
        """The circuit breaker of a configured backend."""
        return self.backends[backend].circuit

    def named_task(self, name: str) -> Task:
        """A configured task; 400 unknown_task."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"unknown task {clip(name, NAME_ECHO)!r}; available: {', '.join(sorted(self.tasks))}",
                details={"task": clip(name, NAME_ECHO), "available": sorted(self.tasks)},
            ) from None

    async def adhoc_task(
        self, schema: dict[str, Any] | bool, instructions: str | None = None, grounding: Mapping[str, str] | None = None
    ) -> Task:
        """A task for a request's own schema, checked off the event loop: 400 invalid_schema before any call."""
        if isinstance(schema, bool):  # valid JSON Schema, but it describes nothing to extract
            allows = "any JSON value" if schema else "no value at all"
            raise InvalidSchema(f"invalid schema: `{str(schema).lower()}` allows {allows}; give an object schema")
        limit = self.settings.limits.max_instructions_chars
        if instructions is not None and len(instructions) > limit:
            raise TextTooLong(
                f"instructions are {len(instructions)} characters; the limit is {limit} "
                "(limits.max_instructions_chars)",
                details={"field": "instructions", "length": len(instructions), "limit": limit},
            )
        compiled = await self.checks.admit(schema, self.attempts.modes.prepare)
        try:
            return adhoc_task(compiled, instructions, grounding)
        except ValidationError as e:  # grounding rules that do not fit the schema (the task checks them)
            message = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in e.errors())
            raise BadRequest(message, details={"grounding": dict(grounding or {})}) from None

    async def extract(
        self,
        text: str,
        *,
        task: str | None = None,
        schema: dict[str, Any] | bool | None = None,
        instructions: str | None = None,
        grounding: Mapping[str, str] | None = None,
        backend: str | None = None,
        options: ExtractOptions | None = None,
        request_id: str | None = None,
        on_spend: Callable[[Spend], None] | None = None,
        may_use: Callable[[str], bool] | None = None,
    ) -> ExtractResponse:
        """Extract from `text` for a named task or ad-hoc schema; raises an `ExtractionError` on failure.

        Every call is counted exactly once in extraction_requests_total, rejections included. `on_spend` hears
        of each billed answer as it happens (so a caller is charged even when the request is cancelled);
        `may_use` says which backends the caller may use: a fallback chain skips the others.
        """
        options = options or ExtractOptions()
        started = time.monotonic()
        trace = Trace()
        outcome, spend, output = "ok", Spend(), None
        consumed = Spend()

        def billed(increment: Spend) -> None:
            nonlocal consumed
            consumed = consumed + increment
            if on_spend is not None:
                on_spend(increment)

        self.observer.started()
        try:
            if task is None and schema is None:
                raise BadRequest("give a task name or a schema")
            spec = self.named_task(task) if task is not None else None
            if spec is not None:
                trace.task = spec.name
                cfg = route(self.settings, spec, backend)
                trace.backend = cfg.name
            async with self.gate.slot():
                if spec is None:  # checked inside the gate, so a flood of new schemas is shed like any other
                    assert schema is not None
                    spec = await self.adhoc_task(schema, instructions, grounding)
                    trace.task = spec.name
                    cfg = route(self.settings, spec, backend)
                    trace.backend = cfg.name
                answer = await self._chain(spec, text, cfg, options, started, trace, billed, may_use)
            spend, output = answer.spend, answer.data
            return _response(answer, spec, started, request_id)
        except ExtractionError as e:
            outcome, spend = e.outcome, e.spend or Spend()
            raise
        except asyncio.CancelledError:
            outcome, spend = "cancelled", consumed  # the client went away (or the server stopped): no answer
            raise
        except BaseException:
            outcome, spend = "upstream_error", consumed  # a bug: never counted as success
            raise
        finally:
            elapsed = time.monotonic() - started
            self.observer.finished(trace, outcome, spend, elapsed, request_id, text, output)

    async def _chain(
        self,
        task: Task,
        text: str,
        first: BackendConfig,
        options: ExtractOptions,
        started: float,
        trace: Trace,
        billed: Callable[[Spend], None],
        may_use: Callable[[str], bool] | None,
    ) -> Answer:
        """`first`, then its fallback chain in order, until one answers with valid data.

        A backend is skipped on an upstream error (after its retries), an open circuit, a full queue (503
        overloaded: the surplus spills to the next backend), a deadline hit by its own timeout, no valid answer
        after its re-asks, or a text too long for it (a smaller context window); backends the caller may not use
        are left out of the chain. What the failed backends consumed stays in the request's attempts, tokens and
        cost, and counts against its `max_cost_usd`.
        """
        fallbacks = [self.settings.backends[name] for name in first.fallback]
        chain = [first, *(c for c in fallbacks if may_use is None or may_use(c.name))]
        carried = Spend()
        tried: list[dict[str, str]] = []
        for index, cfg in enumerate(chain):
            trace.backend = cfg.name
            try:
                answer = await self.attempts.run(
                    task, text, cfg, self.backends[cfg.name], options, started, carried, billed
                )
            except ExtractionError as e:
                last = not isinstance(e, FALLBACK_ON) or isinstance(e, BudgetExceeded | ValidationTimeout)
                if last or index == len(chain) - 1:
                    if tried:
                        e.add_spend(carried)
                        e.details["tried"] = [*tried, {"backend": cfg.name, "error": e.code}]
                        # the message counted the last backend's attempts; `details.attempts` counts them all
                        e.message = f"{e.message} on {cfg.name}, the last of {len(tried) + 1} backends tried"
                        e.args = (e.message,)
                    raise
                self.metrics.fallbacks.labels(cfg.name, chain[index + 1].name, e.code).inc()
                log.warning("fallback", backend=cfg.name, to=chain[index + 1].name, reason=e.code)
                carried = carried + (e.spend or Spend())
                tried.append({"backend": cfg.name, "error": e.code})
                continue
            return replace(answer, spend=carried + answer.spend)
        raise AssertionError("unreachable: the chain is never empty")


def _response(answer: Answer, task: Task, started: float, request_id: str | None) -> ExtractResponse:
    spend = answer.spend
    response = ExtractResponse(
        data=answer.data,
        task=task.name,
        backend=answer.backend,
        model=answer.model,
        attempts=spend.answers,
        retries=spend.retries,
        usage=TokenUsage(input_tokens=spend.usage.input_tokens, output_tokens=spend.usage.output_tokens),
        cost_usd=spend.cost_usd,
        latency_ms=round((time.monotonic() - started) * 1000, 2),
        structured_output=answer.mode,
        grounding=[GroundingChange(**change.as_dict()) for change in answer.grounded],
        request_id=request_id,
    ).with_spend(spend)
    return response
