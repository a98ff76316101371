"""What goes upstream as `response_format`: the schema where the backend's engine enforces it with the meaning
we validate by, else JSON mode.

A schema is sent only when (1) it means in 2020-12 what it means in its own draft (engines read every schema
as 2020-12: a draft-04 `dependencies` or boolean `exclusiveMaximum` would be dropped or misread), (2) the
engine's profile (`backends.profiles`) enforces every keyword in it, and (3) it is within the backend's
`structured_limits` (a big grammar is slow to compile, and vLLM compiles it on its scheduler's path).
Otherwise the request degrades explicitly to JSON mode + validation + re-ask: logged once per schema and
backend, counted per request in extraction_structured_output_degraded_total. The decision is made once per
schema and backend and kept with the compiled schema, so it is evicted with it.

The static limits cannot foresee every slow grammar, so a schema that passes them is also tried at run time:
the first request with it sends a one-token probe with the grammar to the backend (`compile_budget_s`,
default 10 s for vLLM). vLLM compiles grammars in a thread pool of (cores + 1) // 2 workers that every
structured request passes through (one worker on 2 cores), so a grammar that takes long holds the others; a
probe that has not come back within the budget, or that the engine refuses (400), degrades that schema to JSON
mode + validation for that backend (reason "compile_time" or "rejected"), counted in
extraction_grammar_probes_total and, per request, in extraction_structured_output_degraded_total. Concurrent
requests with the same new schema wait for the one probe. A probe that fails for another reason (server down)
decides nothing; the request goes on and meets that error itself. A refusal is final; a `compile_time` verdict
holds for `reprobe_after_s` (300 s), then the next request probes again: the probe's time includes its wait
behind whatever else the engine is doing, so a burst of load (or a training job on the same cores) must not
demote a schema, a shipped task's included, until the service restarts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from backends.base import Backend, BackendRequest, StructuredMode
from backends.errors import BackendError, UpstreamTimeout
from backends.profiles import dialect_gaps, relaxed
from service.config import BackendConfig
from service.metrics import Metrics
from service.schemas.compiled import CompiledSchema
from service.schemas.drafts import meaning_changes
from service.schemas.problems import clip
from service.schemas.walk import subschemas
from service.tasks import ADHOC, Task

log = structlog.get_logger("extraction")
MAX_GAPS = 10  # reasons kept per decision (a schema can have one per property)


@dataclass(frozen=True, slots=True)
class Decision:
    mode: StructuredMode
    strict: bool
    reason: str | None = None  # why it degraded: "draft", "engine", "size", "error", "compile_time", "rejected"
    gaps: tuple[str, ...] = ()
    until: float = math.inf  # monotonic time up to which a probe's verdict holds
    send: dict[str, Any] | None = None  # the schema the engine gets, when not the task's own (relaxed)
    relaxed: tuple[str, ...] = ()  # what the engine is not asked to enforce (validation and re-ask do)


def decide(cfg: BackendConfig, compiled: CompiledSchema) -> Decision:
    """The mode for this backend and schema, with the reasons when it degrades."""
    if cfg.structured_output != "json_schema":
        return Decision(cfg.structured_output, False)
    dialect = cfg.schema_dialect or "full"
    for reason, gaps in (
        ("size", _size_gaps(cfg, compiled)),
        ("draft", meaning_changes(subschemas(compiled.schema, compiled.draft), compiled.draft)),
    ):
        if gaps:
            return Decision("json_object", False, reason, tuple(clip(g) for g in gaps[:MAX_GAPS]))
    if gaps := dialect_gaps(compiled.schema, dialect):
        # a grammar can still hold the structure when only value rules it lacks (multipleOf, uniqueItems, a
        # format) are in the way: those are left to validation and re-ask rather than the whole schema
        loose, dropped = relaxed(compiled.schema, dialect)
        if not dropped or dialect_gaps(loose, dialect):
            return Decision("json_object", False, "engine", tuple(clip(g) for g in gaps[:MAX_GAPS]))
        return Decision("json_schema", False, send=loose, relaxed=tuple(clip(d) for d in dropped[:MAX_GAPS]))
    return Decision("json_schema", dialect == "openai_strict")


def _size_gaps(cfg: BackendConfig, compiled: CompiledSchema) -> list[str]:
    limits, shape = cfg.structured_limits, compiled.shape
    return [
        f"{what} {measured} over backends.{cfg.name}.structured_limits.{key} ({limit})"
        for what, measured, limit, key in (
            ("size", shape.bytes, limits.max_bytes, "max_bytes"),
            ("subschemas", shape.nodes, limits.max_nodes, "max_nodes"),
            ("bounded repetition", shape.max_repeat, limits.max_repeat, "max_repeat"),
        )
        if limit is not None and measured > limit
    ]


class StructuredModes:
    """Decides the mode per (schema, backend) once, and counts degraded requests."""

    def __init__(self, metrics: Metrics, backends: Mapping[str, BackendConfig]) -> None:
        self.metrics = metrics
        self.backends = backends
        self.clock = time.monotonic  # when a slow-probe verdict expires (tests move it)

    def prepare(self, compiled: CompiledSchema, task: str = ADHOC) -> None:
        """Decide for every backend now (a new ad-hoc schema: in the worker thread that compiled it)."""
        for cfg in self.backends.values():
            self._decision(cfg, compiled, task)

    async def mode(
        self, cfg: BackendConfig, task: Task, backend: Backend | None = None
    ) -> tuple[StructuredMode, bool, dict[str, Any]]:
        """(mode, strict, the schema to send) for this backend and task's schema: the task's own, or relaxed
        where the grammar lacks a value rule; with `backend`, a schema new to it is probed first (see the
        module's docstring)."""
        decision = self._decision(cfg, task.compiled, task.name)
        budget = cfg.structured_limits.probe_budget(cfg.kind)
        if decision.mode == "json_schema" and backend is not None and budget > 0:
            decision = await self._probed(cfg, task, backend, budget, decision)
        if decision.reason is not None:
            self.metrics.structured_degraded.labels(cfg.name, task.name).inc()
        return decision.mode, decision.strict, decision.send if decision.send is not None else task.json_schema

    def _decision(self, cfg: BackendConfig, compiled: CompiledSchema, task: str) -> Decision:
        key = f"structured:{cfg.name}"
        decision: Decision | None = compiled.memo.get(key)
        if decision is None:
            try:
                decision = decide(cfg, compiled)
            except Exception as e:  # a schema shape no check foresaw: never a 500, enforce by validation instead
                log.exception("structured_output_check_failed", backend=cfg.name, task=task)
                decision = Decision("json_object", False, "error", (f"{type(e).__name__} while checking",))
            compiled.memo[key] = decision
            if decision.relaxed:
                log.info("structured_output_relaxed", backend=cfg.name, task=task,
                         not_in_grammar=list(decision.relaxed[:5]), enforced_by="validation + re-ask")  # fmt: skip
            if decision.reason is not None:
                log.warning(
                    "structured_output_degraded",
                    backend=cfg.name,
                    task=task,
                    reason=decision.reason,
                    gaps=list(decision.gaps[:5]),
                    fallback="json_object + validation + re-ask",
                )
        return decision

    async def _probed(
        self, cfg: BackendConfig, task: Task, backend: Backend, budget: float, static: Decision
    ) -> Decision:
        key = f"probe:{cfg.name}"
        memo = task.compiled.memo
        known = memo.get(key)
        if isinstance(known, Decision) and self.clock() < known.until:
            return known
        loop = asyncio.get_running_loop()
        if isinstance(known, asyncio.Task) and known.get_loop() is loop:
            probe: asyncio.Task[Decision | None] = known
        else:
            probe = loop.create_task(self._probe(cfg, task, backend, budget, static))
            memo[key] = probe
        try:
            result = await asyncio.shield(probe)
        finally:
            if probe.done() and memo.get(key) is probe:
                outcome = None if probe.cancelled() or probe.exception() else probe.result()
                if outcome is None:
                    memo.pop(key, None)  # undecided: the next request probes again
                else:
                    memo[key] = outcome
        return result or static

    async def _probe(
        self, cfg: BackendConfig, task: Task, backend: Backend, budget: float, static: Decision
    ) -> Decision | None:
        request = BackendRequest(
            messages=[{"role": "user", "content": "{}"}],
            schema=static.send if static.send is not None else task.json_schema,
            schema_name=task.name,
            mode="json_schema",
            strict=static.strict,
            max_output_tokens=1,
            temperature=0.0,
            timeout_s=budget,
            purpose="probe",
        )
        started = time.monotonic()
        decision: Decision | None = static
        try:
            async with asyncio.timeout(budget):
                await backend.complete(request)
            outcome = "ok"
        except (TimeoutError, UpstreamTimeout):
            outcome = "slow"
            decision = Decision(
                "json_object",
                False,
                "compile_time",
                (f"no answer to a one-token probe with the schema's grammar within "
                 f"backends.{cfg.name}.structured_limits.compile_budget_s ({budget:g} s)",),
                until=self.clock() + cfg.structured_limits.reprobe_after_s,
            )  # fmt: skip
        except BackendError as e:
            if e.status_code in (400, 422):
                outcome = "rejected"
                decision = Decision(
                    "json_object", False, "rejected", (clip(f"the engine refused the grammar: {e.message}"),)
                )
            else:
                outcome, decision = "error", None
        except Exception:  # never a 500 from a probe: decide nothing, the request goes on
            log.exception("grammar_probe_failed", backend=cfg.name, task=task.name)
            outcome, decision = "error", None
        self.metrics.grammar_probes.labels(cfg.name, outcome).inc()
        (log.info if outcome == "ok" else log.warning)(
            "grammar_probe",
            backend=cfg.name,
            task=task.name,
            outcome=outcome,
            seconds=round(time.monotonic() - started, 3),
            **({"fallback": "json_object + validation + re-ask"} if decision and decision.reason else {}),
            **({"probe_again_in_s": cfg.structured_limits.reprobe_after_s} if outcome == "slow" else {}),
        )
        return decision
