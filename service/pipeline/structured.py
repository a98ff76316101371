"""What goes upstream as `response_format`: the schema where the backend's engine enforces it with the meaning
we validate by, else JSON mode.

A schema is sent only when (1) it means in 2020-12 what it means in its own draft (engines read every schema
as 2020-12: a draft-04 `dependencies` or boolean `exclusiveMaximum` would be dropped or misread), (2) the
engine's profile (`backends.profiles`) enforces every keyword in it, and (3) it is within the backend's
`structured_limits` (a big grammar is slow to compile, and vLLM compiles it on its scheduler's path).
Otherwise the request degrades explicitly to JSON mode + validation + re-ask: logged once per schema and
backend, counted per request in extraction_structured_output_degraded_total. The decision is made once per
schema and backend and kept with the compiled schema, so it is evicted with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from backends.base import StructuredMode
from backends.profiles import dialect_gaps
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
    reason: str | None = None  # why it degraded: "draft", "engine", "size" or "error"
    gaps: tuple[str, ...] = ()


def decide(cfg: BackendConfig, compiled: CompiledSchema) -> Decision:
    """The mode for this backend and schema, with the reasons when it degrades."""
    if cfg.structured_output != "json_schema":
        return Decision(cfg.structured_output, False)
    dialect = cfg.schema_dialect or "full"
    for reason, gaps in (
        ("size", _size_gaps(cfg, compiled)),
        ("draft", meaning_changes(subschemas(compiled.schema, compiled.draft), compiled.draft)),
        ("engine", dialect_gaps(compiled.schema, dialect)),
    ):
        if gaps:
            return Decision("json_object", False, reason, tuple(clip(g) for g in gaps[:MAX_GAPS]))
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

    def prepare(self, compiled: CompiledSchema, task: str = ADHOC) -> None:
        """Decide for every backend now (a new ad-hoc schema: in the worker thread that compiled it)."""
        for cfg in self.backends.values():
            self._decision(cfg, compiled, task)

    def mode(self, cfg: BackendConfig, task: Task) -> tuple[StructuredMode, bool]:
        """(mode, strict) for this backend and task's schema."""
        decision = self._decision(cfg, task.compiled, task.name)
        if decision.reason is not None:
            self.metrics.structured_degraded.labels(cfg.name, task.name).inc()
        return decision.mode, decision.strict

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
