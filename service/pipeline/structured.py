"""What goes upstream as `response_format`: the schema where the backend's engine enforces it, else JSON mode.

The engine's profile (`backends.profiles`) says what it cannot enforce; such a request degrades explicitly to
JSON mode + validation + re-ask, logged once per schema and counted per request.
"""

from __future__ import annotations

import structlog

from backends.base import StructuredMode
from backends.profiles import dialect_gaps
from service.config import BackendConfig
from service.metrics import Metrics
from service.tasks import Task
from service.validation import schema_key

log = structlog.get_logger("extraction")


class StructuredModes:
    """Decides the mode per (schema, engine profile), remembering each decision (bounded)."""

    def __init__(self, metrics: Metrics, max_entries: int = 4096) -> None:
        self.metrics = metrics
        self._gaps: dict[tuple[str, str], list[str]] = {}
        self._max = max_entries

    def mode(self, cfg: BackendConfig, task: Task) -> tuple[StructuredMode, bool]:
        """(mode, strict) for this backend and task's schema."""
        if cfg.structured_output != "json_schema":
            return cfg.structured_output, False
        dialect = cfg.schema_dialect or "full"
        gaps = self._gaps_for(cfg, task, dialect)
        if gaps:
            self.metrics.structured_degraded.labels(cfg.name, task.name).inc()
            return "json_object", False
        return "json_schema", dialect == "openai_strict"

    def _gaps_for(self, cfg: BackendConfig, task: Task, dialect: str) -> list[str]:
        key = (schema_key(task.json_schema), dialect)
        gaps = self._gaps.get(key)
        if gaps is None:
            gaps = dialect_gaps(task.json_schema, dialect)
            if len(self._gaps) >= self._max:  # ad-hoc schemas must not grow it without bound
                self._gaps.pop(next(iter(self._gaps)))
            self._gaps[key] = gaps
            if gaps:
                log.warning(
                    "structured_output_degraded",
                    backend=cfg.name,
                    task=task.name,
                    dialect=dialect,
                    gaps=gaps[:5],
                    fallback="json_object + validation + re-ask",
                )
        return gaps
