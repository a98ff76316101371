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


def test_rank_cut_keeps_the_best_low_rank_update_and_serves_it_at_scale_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from training.ship import ship

    torch.manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    r, alpha, k = 8, 16, 3
    # An update of rank 3 spread over 8 LoRA directions (the cut must find it exactly), and a full-rank one.
    low_b, low_a = torch.randn(20, k) @ torch.randn(k, r), torch.randn(r, 12)
    full_b, full_a = torch.randn(20, r), torch.randn(r, 12)
    names = {"low": (low_b, low_a), "full": (full_b, full_a)}
    tensors = {
        f"base_model.model.{n}.lora_{x}.weight": t for n, (b, a) in names.items() for x, t in (("A", a), ("B", b))
    }
    save_file(tensors, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA"}))
    (src / "training_card.json").write_text(json.dumps({"task": "receipt"}))
    out = ship(src, tmp_path / "shipped", rank=k)
    cut = {key: v.double() for key, v in load_file(str(out)).items()}
    config = json.loads((tmp_path / "shipped" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (k, k, "LORA")
    for name, (b, a) in names.items():
        new_b, new_a = cut[f"base_model.model.{name}.lora_B.weight"], cut[f"base_model.model.{name}.lora_A.weight"]
        assert new_b.shape == (20, k) and new_a.shape == (k, 12)
        update = (alpha / r) * (b @ a).double()
        u, sv, vh = torch.linalg.svd(update)
        best = (u[:, :k] * sv[:k]) @ vh[:k]  # Eckart-Young: no rank-k matrix is closer
        tol = 2e-2 * float(update.norm())  # bf16 on disk
        assert float((new_b @ new_a - best).norm()) < tol
        if name == "low":
            assert float((new_b @ new_a - update).norm()) < tol  # nothing lost: the update was rank 3
    card = json.loads((tmp_path / "shipped" / "training_card.json").read_text())
    assert card["shipped"]["rank"]["from_rank"] == r and card["shipped"]["rank"]["rank"] == k
    assert card["shipped"]["rank"]["norm_kept_min"] < 1.0  # the full-rank update lost some
    with pytest.raises(SystemExit, match="between 1 and the adapter's r"):
        ship(src, tmp_path / "again", rank=r + 1)


def test_rank_cut_of_an_adapter_without_its_config_or_pairs_is_a_clear_error(tmp_path: Path) -> None:
    from training.ship import ship

    src = adapter(tmp_path / "src")  # one lora_A, no lora_B; config {"r": 8} without lora_alpha
    with pytest.raises(SystemExit, match="no integer r and numeric lora_alpha"):
        ship(src, tmp_path / "a", rank=2)
    (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    with pytest.raises(SystemExit, match="has no base_model.model.q_proj.lora_B.weight"):
        ship(src, tmp_path / "b", rank=2)
    (src / "adapter_config.json").unlink()
    with pytest.raises(SystemExit, match="no adapter_config.json"):
        ship(src, tmp_path / "c", rank=2)
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))
