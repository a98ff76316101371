"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from asgi_correlation_id import correlation_id
from fastapi import Depends, Request

from service.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.extraction
    return state


def get_request_id() -> str | None:
    return correlation_id.get()


StateDep = Annotated[AppState, Depends(get_state)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]
