"""Which backend answers: the request's override > the config's `routes` for the task > the task YAML's
`backend` > `default_backend`. The one rule."""

from __future__ import annotations

from pathlib import Path

from backends.local.vllm import resolve_adapters
from service.config import BackendConfig, Settings
from service.errors import UnknownBackend
from service.schemas.problems import NAME_ECHO, clip
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
            f"unknown backend {clip(name, NAME_ECHO)!r}; configured: {', '.join(sorted(settings.backends))}",
            details={"backend": clip(name, NAME_ECHO), "available": sorted(settings.backends)},
        ) from None


def on_managed_server(settings: Settings, cfg: BackendConfig) -> bool:
    """Does this backend talk to a local server `extraction vllm up` / `llamacpp up` manages (the `vllm:` or
    `llamacpp:` section)?"""
    if cfg.kind == "vllm":
        return settings.vllm.serves(cfg.base_url)
    return cfg.kind == "llamacpp" and settings.llamacpp.serves(cfg.base_url)


def missing_adapters(settings: Settings, kind: str) -> dict[str, Path]:
    """Adapters the managed server of `kind` is configured with but cannot find: {name: path}."""
    if kind == "vllm":
        _, missing = resolve_adapters(settings.vllm, settings.config.parent)
        return {a.name: a.path for a in missing}
    from backends.local.llamacpp import LlamaCppProcess

    process = LlamaCppProcess(settings.llamacpp, settings.config.parent)
    _, names = process.adapters()
    return {name: Path(settings.llamacpp.adapters.get(name, "")) for name in names}


def routes_in_effect(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """The config's routes, less those to an adapter of a managed server whose folder is missing
    (its task goes to the default instead, until the adapter is trained). Returns (routes, {task: why})."""
    absent = {kind: missing_adapters(settings, kind) for kind in ("vllm", "llamacpp")}
    kept: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for task, name in settings.routes.items():
        cfg = settings.backends[name]
        if on_managed_server(settings, cfg) and cfg.model in absent[cfg.kind]:
            dropped[task] = f"adapter {cfg.model!r} not found at {absent[cfg.kind][cfg.model]}"
        else:
            kept[task] = name
    return kept, dropped
