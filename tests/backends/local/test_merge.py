"""Merging folds the adapter into the base: W' = W + scale * B @ A, saved whole, never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="merging needs the [train] extra")


def tiny_base(path: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backends.local.base_model import prepare

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(prepare()).save_pretrained(path)
    return path


def test_merge_writes_base_plus_adapter_and_a_card(tmp_path: Path) -> None:
    from peft import get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from backends.local.merge import MERGE_CARD, merge_adapter
    from training.lora import build_lora_config

    base = tiny_base(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           build_lora_config(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"]))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # B starts at zero: make the adapter do something
    model.save_pretrained(tmp_path / "adapter")
    card = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base)
    assert not (tmp_path / "merged.partial").exists()
    assert json.loads((tmp_path / "merged" / MERGE_CARD).read_text()) == card and card["dtype"] == "bfloat16"
    key = "model.layers.0.self_attn.q_proj.weight"
    w = load_file(str(base / "model.safetensors"))[key].float()
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    lora = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    a = next(v for k, v in lora.items() if "q_proj.lora_A" in k).float()
    b = next(v for k, v in lora.items() if "q_proj.lora_B" in k).float()
    expected = w + (8 / 4) * b @ a
    assert merged[key].dtype == torch.bfloat16 and not any("lora" in k for k in merged)
    assert torch.allclose(merged[key].float(), expected, atol=1e-2)
    assert not torch.allclose(merged[key].float(), w, atol=1e-2)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_merge_refuses_what_is_not_an_adapter(tmp_path: Path) -> None:
    from backends.local.merge import MergeError, merge_adapter

    with pytest.raises(MergeError, match="not a LoRA adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")
