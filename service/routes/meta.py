"""GET /v1/tasks, /v1/tasks/{name}, /v1/backends: behind the same keys as extraction.

A key sees only the tasks and backends it may use, and never a backend's base_url (those of vLLM servers are
internal addresses). With keys off, base URLs are shown only when `auth.show_base_urls` says so.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api_models import BackendInfo, ErrorResponse, TaskDetail, TaskSummary
from service.auth import Principal
from service.deps import PrincipalDep, StateDep
from service.errors import TaskNotFound
from service.routing import route
from service.schemas.problems import NAME_ECHO, clip
from service.state import AppState

router = APIRouter(prefix="/v1", tags=["catalogue"])
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized: no API key, or an unknown one (when keys are on)"}
}


def _summary(state: AppState, name: str) -> dict[str, str]:
    task = state.tasks[name]
    return {"name": task.name, "description": task.description, "backend": route(state.settings, task).name}


def _visible_tasks(state: AppState, principal: Principal | None) -> list[str]:
    return sorted(name for name in state.tasks if principal is None or principal.allows_task(name))


@router.get("/tasks", response_model=list[TaskSummary], responses=UNAUTHORIZED)
async def list_tasks(state: StateDep, principal: PrincipalDep) -> list[TaskSummary]:
    """The tasks this key may use and the backend each routes to now."""
    return [TaskSummary(**_summary(state, name)) for name in _visible_tasks(state, principal)]


@router.get(
    "/tasks/{name}",
    response_model=TaskDetail,
    responses={404: {"model": ErrorResponse, "description": "unknown_task (or not this key's)"}, **UNAUTHORIZED},
)
async def get_task(name: str, state: StateDep, principal: PrincipalDep) -> TaskDetail:
    """One task: schema, instructions, few-shot examples, routed backend."""
    visible = _visible_tasks(state, principal)
    if name not in visible:  # another key's task is as unknown as a missing one: its name is not confirmed
        raise TaskNotFound(f"unknown task {clip(name, NAME_ECHO)!r}", details={"available": visible})
    task = state.tasks[name]
    return TaskDetail(
        **_summary(state, name),
        schema=task.json_schema,
        instructions=task.instructions,
        examples=[e.model_dump() for e in task.examples],
        eval_ignore=task.eval_ignore,
        grounding=task.grounding,
    )


@router.get("/backends", response_model=list[BackendInfo], responses=UNAUTHORIZED)
async def list_backends(state: StateDep, principal: PrincipalDep) -> list[BackendInfo]:
    """The backends this key may use, with models and pricing. Never keys; base URLs only with keys off and
    `auth.show_base_urls`."""
    show_urls = not state.authenticator.enabled and state.settings.auth.show_base_urls
    out = []
    for name, cfg in sorted(state.settings.backends.items()):
        if principal is not None and not principal.allows_backend(name):
            continue
        out.append(
            BackendInfo(
                name=name,
                kind=cfg.kind,
                model=cfg.model,
                base_url=cfg.base_url if show_urls else None,
                prompt_style=cfg.prompt_style,
                structured_output=cfg.structured_output,
                pricing=cfg.pricing,
                max_attempts=cfg.max_attempts,
                max_concurrency=cfg.max_concurrency,
                timeout_s=cfg.timeout_s,
                default=name == state.settings.default_backend,
                configured=state.backends[name].configured(),
            )
        )
    return out
