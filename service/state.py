"""Everything a running app holds: settings, tasks, backend clients, metrics, the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from backends import Backend, Endpoint, create_backend
from service.auth import Authenticator, load_keys
from service.config import ConfigError, Settings
from service.lifecycle import Drain
from service.metrics import Metrics
from service.pipeline.extractor import Extractor
from service.request_log import RequestLog
from service.routing import routes_in_effect
from service.tasks import Task, load_tasks

log = structlog.get_logger("extraction")
BackendFactory = Callable[[Endpoint], Backend]


@dataclass
class AppState:
    settings: Settings
    tasks: dict[str, Task]
    backends: dict[str, Backend]
    metrics: Metrics
    extractor: Extractor
    request_log: RequestLog | None = None
    authenticator: Authenticator = field(default_factory=lambda: Authenticator([]))
    drain: Drain = field(default_factory=Drain)

    @classmethod
    def build(
        cls,
        settings: Settings,
        backend_factory: BackendFactory = create_backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> AppState:
        """Load tasks and create backend clients; a bad task or reference raises ConfigError naming it."""
        tasks = load_tasks(settings.tasks_dir)
        for name in settings.routes:
            if name not in tasks:
                raise ConfigError(f"routes.{name}: no such task; tasks: {sorted(tasks)}")
        routes, dropped = routes_in_effect(settings)
        if dropped:
            for name, why in dropped.items():
                log.info("route_skipped", task=name, backend=settings.routes[name], reason=why)
            settings = settings.model_copy(update={"routes": routes})
        for task in tasks.values():
            if task.backend is not None and task.backend not in settings.backends:
                raise ConfigError(
                    f"task {task.name!r}: backend {task.backend!r} is not among backends: {sorted(settings.backends)}"
                )
        try:
            authenticator = Authenticator(load_keys(settings.auth, settings.api_keys, settings.config.parent))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        backends = {name: backend_factory(cfg.endpoint) for name, cfg in settings.backends.items()}
        metrics = Metrics()
        try:
            request_log = RequestLog(settings.request_log.path) if settings.request_log.enabled else None
        except OSError as e:
            raise ConfigError(
                f"request_log.path {settings.request_log.path}: cannot be opened ({e.strerror})"
            ) from None
        try:
            extractor = Extractor(settings, backends, metrics, tasks, clock=clock, request_log=request_log)
        except ValueError as e:  # an explicitly configured tokenizer that cannot be loaded
            raise ConfigError(str(e)) from None
        return cls(settings, tasks, backends, metrics, extractor, request_log, authenticator)

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()
        self.extractor.close()
        if self.request_log is not None:
            self.request_log.close()
