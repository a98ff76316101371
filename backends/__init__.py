"""Backends: one protocol, a name-keyed registry of implementations imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from backends.base import Backend, BackendRequest, BackendResponse, Usage
from backends.config import Endpoint, Pricing

# kind -> "module:Class". The kinds share one implementation; they differ in config defaults (and llama.cpp in
# how an adapter is named: see OpenAIBackend).
_REGISTRY: dict[str, str] = {
    "openai": "backends.openai_compat:OpenAIBackend",
    "vllm": "backends.openai_compat:OpenAIBackend",
    "llamacpp": "backends.openai_compat:OpenAIBackend",
}
_EXTRAS = {"openai": "serve", "vllm": "serve", "llamacpp": "serve"}


def register(kind: str, target: str) -> None:
    """Register a backend implementation ("module:Class") under `kind`."""
    _REGISTRY[kind] = target


def create_backend(config: Endpoint, **kwargs: Any) -> Backend:
    """Instantiate the implementation registered for `config.kind` (a client reads only the endpoint)."""
    module_name, _, cls_name = _REGISTRY[config.kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = _EXTRAS.get(config.kind, "serve")
        raise ImportError(
            f"backend kind {config.kind!r} needs extra dependencies: pip install 'extraction-service[{extra}]'"
        ) from e
    backend: Backend = getattr(module, cls_name)(config, **kwargs)
    return backend


__all__ = [
    "Backend",
    "Endpoint",
    "BackendRequest",
    "BackendResponse",
    "Pricing",
    "Usage",
    "create_backend",
    "register",
]
