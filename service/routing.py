"""Which backend answers: request override > task's backend > default backend."""

from __future__ import annotations

from backends.config import BackendConfig
from service.config import Settings
from service.errors import UnknownBackend
from service.tasks import Task


def route(settings: Settings, task: Task, override: str | None = None) -> BackendConfig:
    """The backend config for this request; 400 unknown_backend for a name not configured."""
    name = override or task.backend or settings.default_backend
    try:
        return settings.backends[name]
    except KeyError:
        raise UnknownBackend(
            f"unknown backend {name!r}; configured: {', '.join(sorted(settings.backends))}",
            details={"backend": name, "available": sorted(settings.backends)},
        ) from None
