from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.mock_upstream import MockUpstream, ServerThread
from service.config import DEFAULT_CONFIG, Settings

SHIPPED_TASKS = DEFAULT_CONFIG.parent / "tasks"


def free_port() -> int:
    """A loopback port nothing listens on (for servers started as processes, and refused connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, backends: dict[str, dict[str, Any]], **top: Any) -> Path:
    """A config file for tests: the shipped tasks, the given backends, fast retries."""
    config = {
        "default_backend": next(iter(backends)),
        "tasks_dir": str(SHIPPED_TASKS),
        "backends": backends,
        "retry": {"deadline_s": 20, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "retry_after_cap_s": 5},
        "log_format": "json",
        **top,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def backend_entry(base_url: str, **overrides: Any) -> dict[str, Any]:
    entry = {
        "kind": "openai",
        "base_url": base_url,
        "model": "mock-model",
        "api_key_env": "MOCK_UPSTREAM_KEY",
        "pricing": {"input_per_1k": 0.003, "output_per_1k": 0.006},
        "timeout_s": 5,
        "max_attempts": 3,
        "max_retries": 3,
    }
    entry.update(overrides)
    return entry


@pytest.fixture(autouse=True)
def _config_env_restored() -> Iterator[None]:
    """`--config` makes a CLI command set EXTRACTION_CONFIG for the process (its own, in real use): in the test
    process it would leak into every later test's Settings()."""
    before = os.environ.get("EXTRACTION_CONFIG")
    yield
    if before is None:
        os.environ.pop("EXTRACTION_CONFIG", None)
    else:
        os.environ["EXTRACTION_CONFIG"] = before


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", "sk-test-secret-123")
    monkeypatch.delenv("EXTRACTION_CONFIG", raising=False)
    monkeypatch.delenv("EXTRACTION_DEFAULT_BACKEND", raising=False)

    def make(backends: dict[str, dict[str, Any]], **top: Any) -> Settings:
        path = write_config(tmp_path / "config.yaml", backends, **top)
        return Settings(config=path)  # type: ignore[call-arg]

    return make


@pytest.fixture
def upstream() -> Iterator[MockUpstream]:
    mock = MockUpstream()
    with ServerThread(mock.app) as server:
        mock.url = server.url  # type: ignore[attr-defined]
        yield mock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first (fast feedback), then the tests that start real engines (vLLM, llama.cpp)."""
    engines = ("vllm", "llamacpp")
    items.sort(key=lambda item: any(item.get_closest_marker(m) for m in engines))
