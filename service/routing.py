"""Which backend answers: the request's override > the task's backend > the default backend. The one rule."""

from __future__ import annotations

from service.config import BackendConfig, Settings
from service.errors import UnknownBackend
from service.tasks import Task


def backend_name(settings: Settings, task: Task | None, override: str | None = None) -> str:
    """The name the rule picks (not checked: a key's permissions are checked against it first)."""
    return override or (task.backend if task else None) or settings.default_backend


def route(settings: Settings, task: Task | None, override: str | None = None) -> BackendConfig:
    """The backend config for this request; 400 unknown_backend for a name not configured."""
    name = backend_name(settings, task, override)
    try:
        return settings.backends[name]
    except KeyError:
        raise UnknownBackend(
            f"unknown backend {name!r}; configured: {', '.join(sorted(settings.backends))}",
            details={"backend": name, "available": sorted(settings.backends)},
        ) from None
