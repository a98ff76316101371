"""The one routing rule: request override > config routes > task YAML > default backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import ConfigError, Settings
from service.routing import backend_name, route
from service.state import AppState
from service.tasks import Task
from tests.conftest import SHIPPED_TASKS, write_config
from tests.fakes import FakeBackend

BACKENDS = {"a": {"model": "m"}, "b": {"model": "m"}, "c": {"model": "m"}}


def task(backend: str | None = None) -> Task:
    return Task.model_validate({"name": "receipt", "schema": {"type": "object"}, "backend": backend})


def test_precedence(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(BACKENDS, default_backend="a", routes={"receipt": "b"})
    assert backend_name(settings, task("c")) == "b"  # the config's route over the task file's backend
    assert backend_name(settings, task("c"), override="c") == "c"  # the request wins
    assert route(settings, task()).name == "b"
    other = Task.model_validate({"name": "invoice", "schema": {"type": "object"}, "backend": "c"})
    assert backend_name(settings, other) == "c" and backend_name(settings, None) == "a"


def test_routes_must_name_configured_backends_and_tasks(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="routes.receipt names 'nope'"):
        make_settings(BACKENDS, default_backend="a", routes={"receipt": "nope"})
    config = write_config(tmp_path / "c.yaml", BACKENDS, default_backend="a", routes={"no_such_task": "b"})
    assert SHIPPED_TASKS.is_dir()
    with pytest.raises(ConfigError, match="routes.no_such_task: no such task"):
        AppState.build(Settings(config=config), FakeBackend)  # type: ignore[call-arg]


def test_a_route_to_an_adapter_not_on_disk_waits_for_it(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text('{"r": 8}')
    local = {"kind": "vllm", "base_url": "http://127.0.0.1:8000/v1", "prompt_style": "finetuned"}
    backends = {"prompted": {"kind": "vllm", "base_url": "http://127.0.0.1:8000/v1", "model": "base"},
                "ft-a": {**local, "model": "a-lora"}, "ft-b": {**local, "model": "b-lora"}}  # fmt: skip
    config = write_config(tmp_path / "c.yaml", backends, default_backend="prompted",
                          routes={"invoice": "ft-a", "receipt": "ft-b"},
                          vllm={"adapters": {"a-lora": "a", "b-lora": "b"}})  # fmt: skip
    state = AppState.build(Settings(config=config), FakeBackend)  # type: ignore[call-arg]
    assert route(state.settings, state.tasks["receipt"]).name == "ft-b"
    assert route(state.settings, state.tasks["invoice"]).name == "prompted"  # a-lora is not trained yet


def test_the_adhoc_name_is_reserved(tmp_path: Path) -> None:
    from service.tasks import TaskLoadError, load_tasks

    (tmp_path / "adhoc.yaml").write_text("name: adhoc\nschema: {type: object}\n")
    with pytest.raises(TaskLoadError, match="reserved for ad-hoc schemas"):
        load_tasks(tmp_path)
