"""GET /v1/tasks, /v1/tasks/{name}, /v1/backends."""

from __future__ import annotations

from fastapi import APIRouter

from service.api_models import BackendInfo, ErrorResponse, TaskDetail, TaskSummary
from service.deps import StateDep
from service.errors import TaskNotFound
from service.routing import route
from service.state import AppState

router = APIRouter(prefix="/v1", tags=["catalogue"])


def _summary(state: AppState, name: str) -> dict[str, str]:
    task = state.tasks[name]
    return {"name": task.name, "description": task.description, "backend": route(state.settings, task).name}


@router.get("/tasks", response_model=list[TaskSummary])
async def list_tasks(state: StateDep) -> list[TaskSummary]:
    """The configured tasks and the backend each routes to now."""
    return [TaskSummary(**_summary(state, name)) for name in sorted(state.tasks)]


@router.get("/tasks/{name}", response_model=TaskDetail, responses={404: {"model": ErrorResponse}})
async def get_task(name: str, state: StateDep) -> TaskDetail:
    """One task: schema, instructions, few-shot examples, routed backend."""
    if name not in state.tasks:
        raise TaskNotFound(f"unknown task {name!r}", details={"available": sorted(state.tasks)})
    task = state.tasks[name]
    return TaskDetail(
        **_summary(state, name),
        schema=task.json_schema,
        instructions=task.instructions,
        examples=[e.model_dump() for e in task.examples],
        eval_ignore=task.eval_ignore,
    )


@router.get("/backends", response_model=list[BackendInfo])
async def list_backends(state: StateDep) -> list[BackendInfo]:
    """Configured backends with models and pricing. Never keys."""
    out = []
    for name, cfg in sorted(state.settings.backends.items()):
        out.append(
            BackendInfo(
                name=name,
                kind=cfg.kind,
                model=cfg.model,
                base_url=cfg.base_url,
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
