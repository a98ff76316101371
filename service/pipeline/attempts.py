"""The attempts against one backend: prompt -> call -> parse -> validate -> re-ask, under a budget and a
deadline, then the PII policy. Each answer's tokens and USD are counted, failed ones included."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from backends.base import BackendRequest, BackendResponse, StructuredMode, Usage
from backends.errors import BackendError
from backends.profiles import repetition_penalty_param
from service.api_models import ExtractOptions
from service.config import BackendConfig, Settings
from service.cost import request_cost
from service.errors import (
    BudgetExceeded,
    DeadlineExceeded,
    ExtractionError,
    PiiDetected,
    SchemaValidationFailed,
    ValidationTimeout,
)
from service.grounding import Change
from service.metrics import Metrics
from service.pii import scan
from service.pipeline.checks import Checks
from service.pipeline.failures import failure_details, translate_backend_error
from service.pipeline.limits import TextLimits
from service.pipeline.resilient import ResilientBackend
from service.pipeline.spend import Spend
from service.pipeline.structured import StructuredModes
from service.prompts import build_messages, reask_messages
from service.schemas.budget import TooSlow
from service.schemas.compiled import CompiledSchema, Issue
from service.tasks import ADHOC, Task

log = structlog.get_logger("extraction")


@dataclass(frozen=True, slots=True)
class Answer:
    """A valid answer from one backend, and what it took."""

    data: Any
    backend: str
    model: str
    mode: StructuredMode
    spend: Spend
    grounded: tuple[Change, ...] = ()


class _Tally:
    """The running spend of one backend's attempts (a frozen Spend is taken from it for results and errors).
    `before`: what the request spent on earlier backends, for its budget; `on_answer` hears of each answer."""

    def __init__(self, before: Decimal = Decimal(0), on_answer: Callable[[Spend], None] | None = None) -> None:
        self.answers = 0
        self.calls = 0
        self.asks = 0
        self._asked = False
        self.usage = Usage()
        self.cost = Decimal(0)
        self.before = before
        self.on_answer = on_answer

    def ask(self) -> None:
        """An attempt begins: its first call is the ask, any further ones are retries."""
        self._asked = False

    def call(self) -> None:
        self.calls += 1
        if not self._asked:
            self._asked = True
            self.asks += 1

    def spend(self) -> Spend:
        return Spend(self.answers, self.calls, self.usage, self.cost, self.asks)


class Attempts:
    """Runs the attempts of one request against one backend. One per extractor."""

    def __init__(self, settings: Settings, metrics: Metrics, limits: TextLimits, checks: Checks) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = limits
        self.checks = checks
        self.modes = StructuredModes(metrics, settings.backends)

    async def run(
        self,
        task: Task,
        text: str,
        cfg: BackendConfig,
        backend: ResilientBackend,
        options: ExtractOptions,
        started: float,
        spent_before: Spend = Spend(),  # noqa: B008 - a frozen value
        on_answer: Callable[[Spend], None] | None = None,
    ) -> Answer:
        """The attempts against `backend`. `spent_before`: what earlier backends of the chain consumed (the
        request's `max_cost_usd` covers them too); `on_answer` gets each answer's spend as soon as it is billed."""
        self.limits.check_chars(task, text)
        deadline_s = min(self.settings.retry.deadline_s, options.timeout_s or math.inf)
        max_attempts = min(cfg.max_attempts, options.max_attempts or cfg.max_attempts)
        max_tokens = min(
            options.max_output_tokens or task.max_output_tokens or cfg.max_output_tokens, cfg.max_output_tokens
        )
        messages = build_messages(task, text, cfg.prompt_style)
        await self.limits.check_tokens(task, text, cfg, messages, max_tokens)
        tally = _Tally(spent_before.cost, on_answer)
        try:
            async with asyncio.timeout(deadline_s - (time.monotonic() - started)):
                return await self._loop(task, text, cfg, backend, options, messages, max_attempts, max_tokens,
                                        started + deadline_s, tally)  # fmt: skip
        except TimeoutError:
            raise DeadlineExceeded(
                f"no valid answer within the deadline of {deadline_s:g} s", spend=tally.spend()
            ) from None
        except BackendError as e:
            raise translate_backend_error(e, tally.spend()) from e
        except ExtractionError as e:
            if e.spend is None and tally.calls:  # e.g. shed by the backend's bulkhead on a re-ask
                e.add_spend(tally.spend())
            raise

    async def _loop(
        self,
        task: Task,
        text: str,
        cfg: BackendConfig,
        backend: ResilientBackend,
        options: ExtractOptions,
        messages: list[dict[str, str]],
        max_attempts: int,
        max_tokens: int,
        deadline_at: float,
        tally: _Tally,
    ) -> Answer:
        mode, strict, sent_schema = await self.modes.mode(cfg, task, backend.inner)
        compiled = task.compiled
        last_text, last_issues = "", list[Issue]()
        temperature = cfg.temperature if options.temperature is None else options.temperature
        answered: set[str] = set()
        asked = messages  # the first ask, asked again with a repetition penalty after a loop
        penalty: float | None = None
        penalises = cfg.loop_repetition_penalty is not None and repetition_penalty_param(cfg.kind) is not None
        for attempt in range(1, max_attempts + 1):
            self._check_budget(options, cfg, messages, max_tokens, tally, last_issues, last_text)
            request = BackendRequest(
                messages=messages,
                schema=sent_schema,
                schema_name=task.name,
                mode=mode,
                strict=strict,
                max_output_tokens=max_tokens,
                temperature=temperature,
                timeout_s=cfg.timeout_s,
                repetition_penalty=penalty,
            )
            reason = "initial" if attempt == 1 else "reask"
            tally.ask()
            response = await backend.complete(request, deadline_at=deadline_at, reason=reason, on_call=tally.call)
            tally.answers += 1
            self._account(cfg, task, response, tally)
            data, issues = await self._check(cfg, response, compiled, tally)
            if not issues:
                data = await self._apply_pii_policy(task, data, compiled, tally.spend())
                data, grounded = await self._ground(task, cfg, text, data, compiled)  # on what PII policy left
                self._record_success(task, cfg, data, first_attempt=attempt == 1)
                return Answer(data, cfg.name, response.model, mode, tally.spend(), grounded)
            last_text, last_issues = response.text, issues
            truncated = response.finish_reason == "length"
            looped = truncated or response.text in answered
            answered.add(response.text)
            # After a loop, an engine with a repetition penalty is asked afresh with it, greedy: shown its own loop
            # in a re-ask, a small model copies it again at any temperature (README, request flow). Sampling
            # follows a loop without that penalty, or a penalised answer that loops too.
            fresh = looped and penalises
            sample = looped and (not fresh or penalty is not None)
            if sample and cfg.reask_temperature is not None and options.temperature is None:
                temperature = max(temperature, cfg.reask_temperature)
            if fresh:
                penalty, messages = cfg.loop_repetition_penalty, asked
            else:
                messages = messages + reask_messages(response.text, issues, truncated=truncated)
            if truncated:
                max_tokens = _affordable(
                    _raised_limit(max_tokens, cfg, options, response), max_tokens, options, cfg, messages, tally
                )
        raise SchemaValidationFailed(
            f"the output did not validate against the schema after {tally.answers} attempt(s)",
            details=failure_details(last_issues, last_text),
            spend=tally.spend(),
        )

    def _account(self, cfg: BackendConfig, task: Task, response: BackendResponse, tally: _Tally) -> None:
        usage = response.usage
        cost = request_cost(usage.input_tokens, usage.output_tokens, cfg.pricing)
        tally.usage += usage
        tally.cost += cost
        if tally.on_answer is not None:
            tally.on_answer(Spend(1, 0, usage, cost))
        m = self.metrics
        m.tokens.labels(cfg.name, task.name, "input").inc(usage.input_tokens)
        m.tokens.labels(cfg.name, task.name, "output").inc(usage.output_tokens)
        if usage.cached_input_tokens:  # a subset of input: the prefix the engine did not compute again
            m.tokens.labels(cfg.name, task.name, "cached_input").inc(usage.cached_input_tokens)
        m.cost.labels(cfg.name, task.name).inc(float(cost))

    async def _check(
        self, cfg: BackendConfig, response: BackendResponse, compiled: CompiledSchema, tally: _Tally
    ) -> tuple[Any, list[Issue]]:
        if response.finish_reason == "length":
            return None, [Issue("$", "output truncated at the output-token limit")]
        try:
            checked = await self.checks.answer(response.text, compiled)
        except TooSlow:
            raise self._too_slow(response.text, tally) from None
        if checked.repaired:
            self.metrics.json_repairs.labels(cfg.name).inc()
        return checked.data, checked.issues

    def _too_slow(self, text: str, tally: _Tally) -> ValidationTimeout:
        budget = self.settings.limits.validation_budget_s
        return ValidationTimeout(
            f"the answer could not be validated within limits.validation_budget_s ({budget:g} s): the schema's "
            "patterns or branches are too costly for it; no further attempt was made",
            details={**failure_details([], text), "limit": "validation_budget_s", "allowed": budget},
            spend=tally.spend(),
        )

    def _check_budget(
        self,
        options: ExtractOptions,
        cfg: BackendConfig,
        messages: list[dict[str, str]],
        max_tokens: int,
        tally: _Tally,
        last_issues: list[Issue],
        last_text: str,
    ) -> None:
        if options.max_cost_usd is None:
            return
        estimate = _estimate(messages, max_tokens, cfg)
        budget = Decimal(str(options.max_cost_usd))
        if tally.before + tally.cost + estimate > budget:
            details = failure_details(last_issues, last_text) if tally.answers else {}
            details.update(max_cost_usd=options.max_cost_usd, next_attempt_estimate_usd=float(estimate))
            raise BudgetExceeded(
                f"stopped before attempt {tally.answers + 1}: it could cost up to ${estimate:.6f}, "
                f"which with ${tally.before + tally.cost:.6f} spent would pass max_cost_usd ${options.max_cost_usd}",
                details=details,
                spend=tally.spend(),
            )

    async def _ground(
        self, task: Task, cfg: BackendConfig, text: str, data: Any, compiled: CompiledSchema
    ) -> tuple[Any, tuple[Change, ...]]:
        """A valid answer with its grounded values checked against the text (service.grounding). Snapped values
        are validated again: an answer they would make invalid is kept as the model gave it (`reverted`)."""
        if not task.grounding:
            return data, ()
        fields = {rule: "-" if task.name == ADHOC else rule for rule in task.grounding}  # ad-hoc: one series

        def count(rule: str, outcome: str) -> None:
            self.metrics.grounding.labels(task.name, cfg.name, fields[rule], outcome).inc()

        try:
            result = await self.checks.ground(data, task.grounding, text)
        except TooSlow:  # a valid answer stays valid: it goes out unchecked, and that is counted
            for rule in task.grounding:
                count(rule, "skipped")
            return data, ()
        except Exception:  # a bug in grounding must not cost the caller a valid, paid-for answer
            log.exception("grounding_failed", task=task.name, backend=cfg.name)
            for rule in task.grounding:
                count(rule, "error")
            return data, ()
        if result.changes:
            try:
                problems = await self.checks.revalidate(result.data, compiled)
            except TooSlow:
                problems = [Issue("$", "the grounded answer could not be validated within the time budget")]
            if problems:
                for o in result.outcomes:
                    count(o.rule, "reverted" if o.outcome == "snapped" else o.outcome)
                return data, ()
        for o in result.outcomes:
            count(o.rule, o.outcome)
        return result.data, tuple(result.changes)

    async def _apply_pii_policy(self, task: Task, data: Any, compiled: CompiledSchema, spend: Spend) -> Any:
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
                details={"findings": found},
                spend=spend,
            )
        try:
            problems = await self.checks.revalidate(redacted, compiled)
        except TooSlow:
            problems = [Issue("$", "the redacted output could not be validated within the time budget")]
        if problems:
            raise PiiDetected(
                "redacting PII made the output invalid against the schema",
                details={"findings": found, "errors": [i.as_dict() for i in problems]},
                spend=spend,
            )
        return redacted

    def _record_success(self, task: Task, cfg: BackendConfig, data: Any, *, first_attempt: bool) -> None:
        self.metrics.schema_valid.labels(task.name, cfg.name, str(first_attempt).lower()).inc()
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None or value == [] or value == "":
                    # Field names of ad-hoc schemas are the caller's: one series for all of them.
                    self.metrics.field_null.labels(task.name, "-" if task.name == ADHOC else name).inc()


def _raised_limit(max_tokens: int, cfg: BackendConfig, options: ExtractOptions, response: BackendResponse) -> int:
    """The output limit of the re-ask after an answer cut off at `max_tokens`: twice it, up to the backend's
    `max_output_tokens`, where the request did not set its own and the context window (when known) has room for
    what was sent, what came back (now part of the prompt) and a margin for the re-ask's words. A long but sound
    answer (a receipt whose company name ran over the task's 160 tokens) then fits; a loop stops at the cap."""
    if options.max_output_tokens is not None:
        return max_tokens  # the caller's cap
    raised = min(max_tokens * 2, cfg.max_output_tokens)
    if cfg.context_window is not None:
        used = response.usage.input_tokens + response.usage.output_tokens + REASK_MARGIN_TOKENS
        raised = min(raised, cfg.context_window - used)
    return max(max_tokens, raised)


def _affordable(
    raised: int,
    current: int,
    options: ExtractOptions,
    cfg: BackendConfig,
    messages: list[dict[str, str]],
    tally: _Tally,
) -> int:
    """The largest output limit between `current` and `raised` whose worst case the request's max_cost_usd
    still covers: a raised limit must not stop a re-ask the old limit would have been allowed."""
    per_token = request_cost(0, 1, cfg.pricing)
    if options.max_cost_usd is None or raised <= current or not per_token:
        return raised
    left = Decimal(str(options.max_cost_usd)) - tally.before - tally.cost - _estimate(messages, 0, cfg)
    return max(current, min(raised, int(left / per_token)))  # the estimate is linear in the limit


def _estimate(messages: list[dict[str, str]], max_tokens: int, cfg: BackendConfig) -> Decimal:
    """The worst-case cost of an attempt: ~3 characters per input token errs on the costly side for most
    tokenizers, and every allowed output token is counted."""
    est_input = math.ceil(sum(len(m["content"]) for m in messages) / 3)
    return request_cost(est_input, max_tokens, cfg.pricing)


REASK_MARGIN_TOKENS = 64  # the re-ask's own message around the answer it quotes
