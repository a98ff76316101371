"""The shipped default config as a user runs it, on the engine it chooses on this machine (`local_engine:
auto`: vLLM on a GPU; on a CPU llama.cpp when built (make test builds it)), with the adapters that ship in
training/adapters. One server for these tests, on a free port; only the engine's address and the tasks folder
are moved."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from backends.local.vllm import resolve_adapters
from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from tests.conftest import SHIPPED_TASKS, free_port

# Either engine may be the chosen one: these tests run last, with the other local-engine tests.
pytestmark = [pytest.mark.vllm, pytest.mark.llamacpp, pytest.mark.integration]


@dataclass
class DefaultService:
    url: str
    app: object
    settings: Settings
    engine: str


def shipped_adapters() -> dict[str, str]:
    """The default config's adapters whose folders exist (the shipped ones; a user's own is not there in CI)."""
    settings = Settings(config=DEFAULT_CONFIG)  # type: ignore[call-arg]
    present, _ = resolve_adapters(settings.vllm, DEFAULT_CONFIG.parent)
    return {a.name: str(a.path) for a in present}


def start_engine(engine: str, port: int, adapters: dict[str, str]) -> Any:
    from backends.local.base_model import prepare

    prepare()  # a no-op when the cache holds the verified model; the GGUF LoRA converter reads it
    if engine == "llamacpp":
        from backends.local.llamacpp import LlamaCppProcess

        shipped = Settings(config=DEFAULT_CONFIG).llamacpp  # type: ignore[call-arg]
        cfg = shipped.model_copy(update={"port": port, "adapters": adapters, "parallel": 2})
        llama = LlamaCppProcess(cfg)  # the shipped section (its model and quant), on a free port
        llama.start()
        return llama
    from backends.local.config import VllmServer
    from backends.local.vllm import VllmProcess, ensure_vllm

    cfg = VllmServer(port=port, adapters=adapters, kv_cache_gib=1, max_model_len=2048, max_loras=len(adapters))
    vllm = VllmProcess(cfg)
    vllm.start(ensure_vllm(cfg))
    return vllm


@pytest.fixture(scope="session")
def default_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultService]:
    engine = Settings(config=DEFAULT_CONFIG).engine  # type: ignore[call-arg]
    adapters = shipped_adapters()
    port = free_port()
    server = start_engine(engine, port, adapters)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw[engine] = {**raw.get(engine, {}), "port": port, "adapters": adapters}
    raw["tasks_dir"] = str(SHIPPED_TASKS)
    path = tmp_path_factory.mktemp("default") / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = Settings(config=path)  # type: ignore[call-arg]
    assert {b.kind for n, b in settings.backends.items() if n.startswith("local")} == {engine}
    app = create_app(settings)
    try:
        with ServerThread(app) as api:
            yield DefaultService(api.url, app, settings, engine)
    finally:
        server.stop()
