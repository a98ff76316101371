"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from backends.errors import BackendError, BackendNotConfigured
from service.deps import StateDep, protect_health, protect_metrics

router = APIRouter(tags=["operations"])


@router.get("/healthz", dependencies=[Depends(protect_health)])
@router.head("/healthz", dependencies=[Depends(protect_health)], include_in_schema=False)  # probes that send HEAD
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.head("/readyz", dependencies=[Depends(protect_health)], include_in_schema=False)
@router.get(
    "/readyz",
    dependencies=[Depends(protect_health)],
    responses={503: {"description": "the default backend is unreachable, or the server is draining"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Pings every configured backend; ready when the default backend answers and no shutdown has begun."""
    if state.drain.draining:
        body = {"status": "draining", "in_flight": state.drain.inflight}
        return JSONResponse(body, status_code=503)

    async def probe(name: str) -> tuple[str, dict[str, Any]]:
        try:
            await state.backends[name].ping(timeout_s=2.0)
        except BackendNotConfigured as e:
            return name, {"status": "unconfigured", "error": e.message}
        except BackendError as e:
            return name, {"status": "unreachable", "error": e.message}
        return name, {"status": "ok"}

    results = dict(await asyncio.gather(*(probe(name) for name in state.backends)))
    ready = results[state.settings.default_backend]["status"] == "ok"
    body = {
        "status": "ready" if ready else "not_ready",
        "default_backend": state.settings.default_backend,
        "backends": results,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(protect_metrics)])
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition: extraction_* and http_* metrics."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
