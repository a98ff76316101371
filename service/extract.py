"""The extraction pipeline: prompt -> backend call (with transport retries) -> parse -> validate -> re-ask.

One place for the whole request flow. It knows nothing of FastAPI; errors are `service.errors` types.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from backends.base import Backend, BackendRequest, BackendResponse, StructuredMode, Usage
from backends.config import BackendConfig
from backends.errors import (
    BackendError,
    CircuitOpen,
    RetryableBackendError,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from service.config import Settings
from service.cost import request_cost
from service.errors import (
    BackendUnavailable,
    BadRequest,
    BudgetExceeded,
    DeadlineExceeded,
    ExtractionError,
    InvalidSchema,
    PiiDetected,
    SchemaValidationFailed,
    TextTooLong,
    UnknownTask,
    UpstreamError,
)
from service.metrics import Metrics
from service.parsing import OutputNotJSON, parse_output
from service.pii import PiiPolicy, scan
from service.prompts import build_messages, reask_messages
from service.request_log import RequestLog
from service.resilience import Bulkhead, CircuitBreaker
from service.results import Options, Result, Spend, failure_details, translate_backend_error
from service.routing import route
from service.tasks import Task, adhoc_task
from service.tokens import PER_MESSAGE_TOKENS, counter_for
from service.validation import Issue, ValidatorCache, dialect_gaps, schema_errors, schema_key, validate

log = structlog.get_logger("extraction")
LOG_POLICY = PiiPolicy(action="redact")


_RETRY_REASON: dict[type[BaseException] | None, str] = {
    UpstreamRateLimited: "retry_rate_limited",
    UpstreamServerError: "retry_server_error",
    UpstreamTimeout: "retry_timeout",
    UpstreamConnectionError: "retry_connection",
    UpstreamBadResponse: "retry_bad_response",
}


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
        request_log: RequestLog | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.metrics = metrics
        self.tasks = tasks
        self.request_log = request_log
        self.validators = ValidatorCache()
        self._sleep = sleep
        limits = settings.limits
        self.gate = Bulkhead(limits.max_inflight, limits.max_queue, "the service")
        self._limits = {
            name: Bulkhead(cfg.max_concurrency, cfg.max_queue, f"backend {name!r}")
            for name, cfg in settings.backends.items()
        }
        self.breakers = {
            name: CircuitBreaker(
                cfg.circuit.failure_threshold,
                cfg.circuit.reset_after_s,
                error_rate=cfg.circuit.error_rate,
                window=cfg.circuit.window,
            )
            for name, cfg in settings.backends.items()
        }
        for name in self.breakers:  # every backend on the dashboard from the start, closed
            metrics.circuit_state.labels(name).set(0)
        self._gaps: dict[tuple[str, str], list[str]] = {}
        self.counters = {
            name: counter_for(cfg, settings.vllm, backends.get(name)) for name, cfg in settings.backends.items()
        }
        self._overheads: dict[tuple[str, str], tuple[int, int]] = {}

    def resolve_task(
        self, name: str | None, schema: dict[str, Any] | None = None, instructions: str | None = None
    ) -> Task:
        """A configured task by name, or an ad-hoc task for a request's own schema."""
        if name is not None:
            try:
                return self.tasks[name]
            except KeyError:
                raise UnknownTask(
                    f"unknown task {name!r}; available: {', '.join(sorted(self.tasks))}",
                    details={"task": name, "available": sorted(self.tasks)},
                ) from None
        if schema is None:
            raise BadRequest("give a task name or a schema")
        if problem := schema_errors(schema):
            raise InvalidSchema(f"the schema is not a valid JSON Schema (draft 2020-12): {problem}")
        return adhoc_task(schema, instructions)

    async def extract(
        self,
        text: str,
        *,
        task: str | None = None,
        schema: dict[str, Any] | None = None,
        instructions: str | None = None,
        backend: str | None = None,
        options: Options | None = None,
        request_id: str | None = None,
    ) -> Result:
        """Extract from `text` for a named task or ad-hoc schema; raises an `ExtractionError` on failure.

        Every call is counted exactly once in extraction_requests_total, rejections included.
        """
        options = options or Options()
        started = time.monotonic()
        labels = ["-", "-"]  # unknown names never become label values
        outcome = "ok"
        spent: dict[str, Any] = {}
        result: Result | None = None
        self.metrics.inflight.inc()
        try:
            spec = self.resolve_task(task, schema, instructions)
            labels[0] = spec.name
            cfg = route(self.settings, spec, backend)
            labels[1] = cfg.name
            async with self.gate.slot():
                result = await self._run_chain(spec, text, cfg, options, started, labels)
            spent = {
                "attempts": result.attempts,
                "retries": result.retries,
                "cost_usd": result.cost_usd,
                "input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens,
            }
            return result
        except ExtractionError as e:
            outcome = e.outcome
            spent = {k: e.details[k] for k in ("attempts", "retries", "cost_usd", "usage") if k in e.details}
            raise
        except BaseException:
            outcome = "upstream_error"  # cancelled (client went away) or a bug: never counted as success
            raise
        finally:
            elapsed = time.monotonic() - started
            self.metrics.inflight.dec()
            self.metrics.requests.labels(*labels, outcome).inc()
            if outcome != "rejected":
                self.metrics.request_duration.labels(*labels).observe(elapsed)
            # Never the text or the output: those reach logs only through the opt-in request log.
            log.info(
                "extraction",
                request_id=request_id,
                task=labels[0],
                backend=labels[1],
                outcome=outcome,
                latency_ms=round(elapsed * 1000, 1),
                **spent,
            )
            if self.request_log is not None and outcome != "rejected":
                self._log_request(request_id, labels, outcome, text, result, spent, elapsed)

    def _log_request(
        self, request_id: str | None, labels: list[str], outcome: str, text: str, result: Result | None,
        spent: dict[str, Any], elapsed: float,
    ) -> None:  # fmt: skip
        assert self.request_log is not None
        usage = (
            {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens}
            if result
            else spent.get("usage")
        )
        output = result.data if result else None
        if self.settings.request_log.redact_pii:
            text, output = scan(text, LOG_POLICY)[0], scan(output, LOG_POLICY)[0]
        self.request_log.write({
            "ts": time.time(), "request_id": request_id, "task": labels[0], "backend": labels[1], "outcome": outcome,
            "text": text, "output": output, "usage": usage,
            "latency_ms": round(elapsed * 1000, 1),
        })  # fmt: skip

    async def _run_chain(
        self, task: Task, text: str, first: BackendConfig, options: Options, started: float, labels: list[str]
    ) -> Result:
        """`first`, then its fallback chain in order, until one answers with valid data.

        A backend is skipped on an upstream error (after its retries), an open circuit, a deadline hit by
        its own timeout, no valid answer after its re-asks, or a text too long for it (a smaller context window).
        Bad input and budget stops never fall back.
        What the failed backends consumed stays in the request's attempts, tokens and cost.
        """
        chain = [first, *(self.settings.backends[name] for name in first.fallback)]
        carried: list[dict[str, Any]] = []
        for index, cfg in enumerate(chain):
            labels[1] = cfg.name
            try:
                result = await self._run(task, text, cfg, options, started)
            except (UpstreamError, BackendUnavailable, DeadlineExceeded, SchemaValidationFailed, TextTooLong) as e:
                if isinstance(e, BudgetExceeded) or index == len(chain) - 1:
                    if carried:
                        _merge_spend(e.details, carried)
                        e.details["tried"] = [*(c["tried"] for c in carried), {"backend": cfg.name, "error": e.code}]
                    raise
                self.metrics.fallbacks.labels(cfg.name, chain[index + 1].name, e.code).inc()
                log.warning("fallback", backend=cfg.name, to=chain[index + 1].name, reason=e.code)
                carried.append({**e.details, "tried": {"backend": cfg.name, "error": e.code}})
                continue
            if carried:
                _merge_result(result, carried)
            return result
        raise AssertionError("unreachable: the chain is never empty")

    async def _check_tokens(
        self, task: Task, text: str, cfg: BackendConfig, messages: list[dict[str, str]], max_output: int
    ) -> None:
        """400 text_too_long when the text passes the task's token limit, or the prompt + text + max output
        passes the backend's context window. Nothing is tokenized while a cheap upper bound fits: a byte-level
        tokenizer never makes more tokens than bytes, and the prompt around the text is counted once per task
        and backend, so only texts near a limit cost a count (or, with a remote tokenizer, a round trip)."""
        counter = self.counters[cfg.name]
        limit = task.max_text_tokens or self.settings.limits.max_text_tokens
        if len(text.encode()) > limit:
            counted = await counter.count(text)
            if counted.tokens > limit:
                raise TextTooLong(
                    f"text is {counted.tokens} tokens ({counted.counted_with}); the limit for task {task.name!r} "
                    f"is {limit}",
                    details={"tokens": counted.tokens, "limit_tokens": limit, "counted_with": counted.counted_with,
                             "exact": counted.exact},
                )  # fmt: skip
        window = cfg.context_window
        if window is None:
            return
        content = _content_bytes(messages)
        overhead = await self._prompt_overhead(task, cfg)
        if overhead is None:  # an ad-hoc task: bytes all the way
            bound = content + PER_MESSAGE_TOKENS * len(messages)
        else:  # the counted prompt around an empty text, plus the text's bytes, plus slack for the seams
            bound = overhead[0] + (content - overhead[1]) + PER_MESSAGE_TOKENS
        if bound + max_output <= window:
            return
        prompt = await counter.count_messages(messages)
        if prompt.tokens + max_output > window:
            tokens = (await counter.count(text)).tokens
            raise TextTooLong(
                f"the prompt is {prompt.tokens} tokens with this text ({tokens}); with up to {max_output} "
                f"output tokens it does not fit backend {cfg.name!r}'s context window of {window} tokens",
                details={"tokens": tokens, "prompt_tokens": prompt.tokens, "max_output_tokens": max_output,
                         "context_window": window, "backend": cfg.name, "counted_with": prompt.counted_with,
                         "exact": prompt.exact},
            )  # fmt: skip

    async def _prompt_overhead(self, task: Task, cfg: BackendConfig) -> tuple[int, int] | None:
        """(tokens, content bytes) of a configured task's prompt with an empty text, counted once per backend;
        None for ad-hoc tasks, and while a remote tokenizer is failing (its estimate is not remembered)."""
        if self.tasks.get(task.name) is not task:
            return None
        key = (cfg.name, task.name)
        if key not in self._overheads:
            counter = self.counters[cfg.name]
            empty = build_messages(task, "", cfg.prompt_style)
            counted = await counter.count_messages(empty)
            if counted.counted_with != counter.name:
                return None
            self._overheads[key] = (counted.tokens, _content_bytes(empty))
        return self._overheads[key]

    async def _run(self, task: Task, text: str, cfg: BackendConfig, options: Options, started: float) -> Result:
        max_chars = task.max_text_chars or self.settings.limits.max_text_chars
        if len(text) > max_chars:
            raise TextTooLong(
                f"text is {len(text)} characters; the limit for task {task.name!r} is {max_chars}",
                details={"length": len(text), "limit": max_chars},
            )
        deadline_s = min(self.settings.retry.deadline_s, options.timeout_s or math.inf)
        deadline_at = started + deadline_s
        max_attempts = min(cfg.max_attempts, options.max_attempts or cfg.max_attempts)
        max_tokens = min(
            options.max_output_tokens or task.max_output_tokens or cfg.max_output_tokens, cfg.max_output_tokens
        )
        mode, strict = self._structured_mode(cfg, task)
        validator = self.validators.get(task.json_schema)
        messages = build_messages(task, text, cfg.prompt_style)
        await self._check_tokens(task, text, cfg, messages, max_tokens)
        spend = Spend()
        last_text, last_issues = "", list[Issue]()
        try:
            async with asyncio.timeout(deadline_s - (time.monotonic() - started)):
                for attempt in range(1, max_attempts + 1):
                    self._check_budget(options, cfg, messages, max_tokens, spend, last_issues, last_text)
                    request = BackendRequest(
                        messages=messages,
                        schema=task.json_schema,
                        schema_name=task.name,
                        mode=mode,
                        strict=strict,
                        max_output_tokens=max_tokens,
                        temperature=cfg.temperature if options.temperature is None else options.temperature,
                        timeout_s=cfg.timeout_s,
                    )
                    response = await self._call(
                        cfg, request, "initial" if attempt == 1 else "reask", deadline_at, spend
                    )
                    self._account(cfg, task, response, spend)
                    data, issues, repaired = self._check(cfg, response, validator)
                    if not issues:
                        data = self._apply_pii_policy(task, data, validator, spend)
                        self._record_success(task, cfg, data, first_attempt=attempt == 1)
                        return Result(
                            data=data,
                            task=task.name,
                            backend=cfg.name,
                            model=response.model,
                            attempts=spend.answers,
                            retries=spend.calls - spend.answers,
                            usage=spend.usage,
                            cost_usd=float(spend.cost),
                            latency_ms=round((time.monotonic() - started) * 1000, 2),
                            structured_output=mode,
                            repaired=repaired,
                        )
                    last_text, last_issues = response.text, issues
                    messages = messages + reask_messages(
                        response.text, issues, truncated=response.finish_reason == "length"
                    )
        except TimeoutError:
            raise DeadlineExceeded(
                f"no valid answer within the deadline of {deadline_s:g} s", details=spend.details()
            ) from None
        except BackendError as e:
            raise translate_backend_error(e, spend) from e
        raise SchemaValidationFailed(
            f"the output did not validate against the schema after {spend.answers} attempt(s)",
            details=failure_details(spend, last_issues, last_text),
        )

    async def _call(
        self, cfg: BackendConfig, request: BackendRequest, reason: str, deadline_at: float, spend: Spend
    ) -> BackendResponse:
        backend = self.backends[cfg.name]
        policy = self.settings.retry
        backoff = wait_random_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
                return min(error.retry_after_s, policy.retry_after_cap_s)
            return float(backoff(state))

        def stop(state: RetryCallState) -> bool:
            # Give up rather than sleep into the deadline: the caller gets the real error, not a 504.
            out_of_time = state.upcoming_sleep >= deadline_at - time.monotonic()
            return state.attempt_number > cfg.max_retries or out_of_time

        def before_sleep(state: RetryCallState) -> None:
            nonlocal reason
            error = state.outcome.exception() if state.outcome else None
            reason = _RETRY_REASON.get(type(error) if error else None, "retry")

        async for try_ in AsyncRetrying(
            retry=retry_if_exception_type(RetryableBackendError),
            wait=wait,
            stop=stop,
            reraise=True,
            sleep=self._sleep,
            before_sleep=before_sleep,
        ):
            with try_:
                breaker = self.breakers[cfg.name]
                if not breaker.allow():
                    raise CircuitOpen(
                        f"backend {cfg.name!r} is failing: its circuit is open after {breaker.failures} "
                        f"consecutive failed calls",
                        backend=cfg.name,
                        retry_after_s=breaker.retry_after_s(),
                    )
                self.metrics.attempts.labels(cfg.name, reason).inc()
                spend.calls += 1
                timeout = max(0.001, min(cfg.timeout_s, deadline_at - time.monotonic()))
                try:
                    async with self._limits[cfg.name].slot():
                        t0 = time.perf_counter()
                        try:
                            response = await backend.complete(replace(request, timeout_s=timeout))
                        finally:
                            self.metrics.backend_duration.labels(cfg.name).observe(time.perf_counter() - t0)
                except RetryableBackendError:
                    breaker.failure()
                    raise
                except BaseException:
                    breaker.release()  # shed, rejected or cancelled: says nothing of the backend's health
                    raise
                else:
                    breaker.success()
                finally:
                    self.metrics.circuit_state.labels(cfg.name).set(int(breaker.state))
        spend.answers += 1
        return response

    def _apply_pii_policy(self, task: Task, data: Any, validator: Any, spend: Spend) -> Any:
        policy = task.pii or self.settings.pii
        if policy.action == "allow":
            return data
        redacted, hits = scan(data, policy)
        if not hits:
            return data
        for _, kind in hits:
            self.metrics.pii_findings.labels(task.name, kind, policy.action).inc()
        found = [{"path": path, "kind": kind} for path, kind in hits]
        if policy.action == "reject":
            raise PiiDetected(
                f"the output holds {len(hits)} PII value(s) ({', '.join(sorted({k for _, k in hits}))}) and "
                f"task {task.name!r} rejects PII",
                details={**spend.details(), "findings": found},
            )
        if problems := validate(redacted, validator):
            raise PiiDetected(
                "redacting PII made the output invalid against the schema",
                details={**spend.details(), "findings": found, "errors": [i.as_dict() for i in problems]},
            )
        return redacted

    def _account(self, cfg: BackendConfig, task: Task, response: BackendResponse, spend: Spend) -> None:
        usage = response.usage
        cost = request_cost(usage.input_tokens, usage.output_tokens, cfg.pricing)
        spend.usage += usage
        spend.cost += cost
        m = self.metrics
        m.tokens.labels(cfg.name, task.name, "input").inc(usage.input_tokens)
        m.tokens.labels(cfg.name, task.name, "output").inc(usage.output_tokens)
        m.cost.labels(cfg.name, task.name).inc(float(cost))

    def _check(self, cfg: BackendConfig, response: BackendResponse, validator: Any) -> tuple[Any, list[Issue], bool]:
        if response.finish_reason == "length":
            return None, [Issue("$", "output truncated at the output-token limit")], False
        try:
            parsed = parse_output(response.text)
        except OutputNotJSON as e:
            return None, [Issue("$", str(e))], False
        if parsed.repaired:
            self.metrics.json_repairs.labels(cfg.name).inc()
        return parsed.value, validate(parsed.value, validator), parsed.repaired

    def _check_budget(
        self,
        options: Options,
        cfg: BackendConfig,
        messages: list[dict[str, str]],
        max_tokens: int,
        spend: Spend,
        last_issues: list[Issue],
        last_text: str,
    ) -> None:
        if options.max_cost_usd is None:
            return
        # Input estimate: ~3 characters per token errs on the costly side for most tokenizers.
        est_input = math.ceil(sum(len(m["content"]) for m in messages) / 3)
        estimate = request_cost(est_input, max_tokens, cfg.pricing)
        budget = Decimal(str(options.max_cost_usd))
        if spend.cost + estimate > budget:
            details = failure_details(spend, last_issues, last_text) if spend.answers else spend.details()
            details.update(max_cost_usd=options.max_cost_usd, next_attempt_estimate_usd=float(estimate))
            raise BudgetExceeded(
                f"stopped before attempt {spend.answers + 1}: it could cost up to ${estimate:.6f}, "
                f"which with ${spend.cost:.6f} spent would pass max_cost_usd ${options.max_cost_usd}",
                details=details,
            )

    def _structured_mode(self, cfg: BackendConfig, task: Task) -> tuple[StructuredMode, bool]:
        if cfg.structured_output != "json_schema":
            return cfg.structured_output, False
        dialect = cfg.schema_dialect or "full"
        key = (schema_key(task.json_schema), dialect)
        if key not in self._gaps:
            self._gaps[key] = dialect_gaps(task.json_schema, dialect)
            if self._gaps[key]:
                log.warning(
                    "structured_output_degraded",
                    backend=cfg.name,
                    task=task.name,
                    dialect=dialect,
                    gaps=self._gaps[key][:5],
                    fallback="json_object + validation + re-ask",
                )
        if self._gaps[key]:
            self.metrics.structured_degraded.labels(cfg.name, task.name).inc()
            return "json_object", False
        return "json_schema", dialect == "openai_strict"

    def _record_success(self, task: Task, cfg: BackendConfig, data: Any, *, first_attempt: bool) -> None:
        self.metrics.schema_valid.labels(task.name, cfg.name, str(first_attempt).lower()).inc()
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None or value == [] or value == "":
                    self.metrics.field_null.labels(task.name, name).inc()


def _merge_spend(details: dict[str, Any], carried: list[dict[str, Any]]) -> None:
    """Add what earlier backends of a fallback chain consumed to an error's details."""
    for c in carried:
        details["attempts"] = details.get("attempts", 0) + c.get("attempts", 0)
        details["retries"] = details.get("retries", 0) + c.get("retries", 0)
        details["cost_usd"] = details.get("cost_usd", 0.0) + c.get("cost_usd", 0.0)
        usage = details.setdefault("usage", {"input_tokens": 0, "output_tokens": 0})
        for key in ("input_tokens", "output_tokens"):
            usage[key] = usage.get(key, 0) + c.get("usage", {}).get(key, 0)


def _merge_result(result: Result, carried: list[dict[str, Any]]) -> None:
    """Add what earlier backends of a fallback chain consumed to the final result."""
    for c in carried:
        result.attempts += c.get("attempts", 0)
        result.retries += c.get("retries", 0)
        result.cost_usd += c.get("cost_usd", 0.0)
        usage = c.get("usage", {})
        result.usage = result.usage + Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0))


def _content_bytes(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].encode()) for m in messages)
