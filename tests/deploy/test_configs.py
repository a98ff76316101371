"""The example configs under deploy/configs load, and start vLLM the way their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from backends.local.vllm import VllmError, VllmProcess
from service.cli import app
from service.config import Settings
from service.routing import route
from service.state import AppState
from tests.fakes import FakeBackend

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_passes_check_config(config: Path) -> None:
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output


def test_merged_receipt_serves_one_model_under_its_own_name_without_lora(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXTRACTION_DEFAULT_BACKEND", raising=False)
    settings = Settings(config=CONFIGS / "merged-receipt.yaml")  # type: ignore[call-arg]
    state = AppState.build(settings, FakeBackend)
    assert route(settings, state.tasks["receipt"]).name == "local-receipt"
    assert route(settings, state.tasks["invoice"]).name == "openai"
    local = settings.backends["local-receipt"]
    assert local.model == settings.vllm.served_model_name == "receipt-merged"
    assert local.retry_timeouts is False and local.adaptive_concurrency is not None
    cmd = VllmProcess(settings.vllm, settings.config.parent).command(Path("/venv/bin/python"), [])
    joined = " ".join(cmd)
    assert "--served-model-name receipt-merged" in joined and "merged/receipt" in joined
    assert "--enable-lora" not in cmd and "--lora-modules" not in cmd


def test_adapters_without_lora_are_refused_before_start(tmp_path: Path) -> None:
    from backends.local.config import VllmServer

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text('{"r": 8}')
    server = VllmProcess(VllmServer(model=str(tmp_path), enable_lora=False, adapters={"a": "a"}, port=1), tmp_path)
    with pytest.raises(VllmError, match="enable_lora is false"):
        server.start(Path("/nonexistent/python"))
