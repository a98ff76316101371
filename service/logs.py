"""structlog set-up: one JSON line per event, with the request id bound from asgi-correlation-id."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from asgi_correlation_id import correlation_id


def _add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event.get("request_id") is None and (rid := correlation_id.get()):
        event["request_id"] = rid
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and stdlib logging to stderr; JSON for machines, console for people."""
    renderer: Any
    if fmt == "json":  # orjson: a log line per request is on the hot path
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Any = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
