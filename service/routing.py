"""Which backend answers: the request's override > the config's `routes` for the task > the task YAML's
`backend` > `default_backend`. The one rule."""

from __future__ import annotations

from backends.local.vllm import resolve_adapters
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


def on_managed_server(settings: Settings, cfg: BackendConfig) -> bool:
    """Does this backend talk to the vLLM server `extraction vllm up` manages (the `vllm:` section)?"""
    return cfg.kind == "vllm" and settings.vllm.serves(cfg.base_url)


def routes_in_effect(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """The config's routes, less those to an adapter of the managed server whose folder is missing
    (its task goes to the default instead, until the adapter is trained). Returns (routes, {task: why})."""
    _, missing = resolve_adapters(settings.vllm, settings.config.parent)
    absent = {a.name: a.path for a in missing}
    kept: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for task, name in settings.routes.items():
        cfg = settings.backends[name]
        if on_managed_server(settings, cfg) and cfg.model in absent:
            dropped[task] = f"adapter {cfg.model!r} not found at {absent[cfg.model]}"
        else:
            kept[task] = name
    return kept, dropped
