"""Shipping an adapter: bf16 weights, its card and config, never over the size budget, never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra")


def adapter(folder: Path, numel: int = 64) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"base_model.model.q_proj.lora_A.weight": torch.ones(numel, dtype=torch.float32)},
              str(folder / "adapter_model.safetensors"))  # fmt: skip
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "training_card.json").write_text(json.dumps({"task": "support_intent"}))
    return folder


def test_ship_casts_to_bf16_and_records_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from training.ship import ship

    out = ship(adapter(tmp_path / "src"), tmp_path / "shipped")
    assert load_file(str(out))["base_model.model.q_proj.lora_A.weight"].dtype == torch.bfloat16
    card = json.loads((tmp_path / "shipped" / "training_card.json").read_text())
    assert card["shipped"]["dtype"] == "bfloat16" and card["task"] == "support_intent"
    assert (tmp_path / "shipped" / "adapter_config.json").is_file()


def test_ship_refuses_an_adapter_over_the_budget_and_leaves_nothing(tmp_path: Path) -> None:
    from training.ship import ship

    with pytest.raises(SystemExit, match="over the 100-byte budget"):
        ship(adapter(tmp_path / "src", numel=4096), tmp_path / "shipped", max_bytes=100)
    assert not (tmp_path / "shipped").exists() and not (tmp_path / "shipped.partial").exists()


def test_ship_names_what_is_missing(tmp_path: Path) -> None:
    from training.ship import ship

    with pytest.raises(SystemExit, match="not a trained adapter folder"):
        ship(tmp_path, tmp_path / "shipped")
