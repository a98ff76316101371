"""Which backend answers: the request's override > the config's `routes` for the task > the task YAML's
`backend` > `default_backend`. The one rule."""

from __future__ import annotations

from service.config import BackendConfig, Settings
from service.errors import UnknownBackend
from service.tasks import Task


def backend_name(settings: Settings, task: Task | None, override: str | None = None) -> str:
    """The name the rule picks (not checked: a key's permissions are checked against it first)."""
    if override:
        return override
    if task is not None:
        return settings.routes.get(task.name) or task.backend or settings.default_backend
    return settings.default_backend


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
