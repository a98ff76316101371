"""The whole loop on a tiny scale: synthetic data -> train (few steps) -> serve in vLLM -> eval -> report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.vllm.conftest import Stack
from training.evaluate import EvalArgs, run_eval
from training.report import build_report
from training.split import split_records, write_split
from training.synthetic import generate
from training.train import TrainArgs, main

pytestmark = [pytest.mark.vllm, pytest.mark.integration]


def test_tiny_train_serve_eval_report_produces_every_artefact(stack: Stack, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from backends.local.base_model import prepare

    train, val, test = split_records(generate("invoice", 40, seed=11), val=0.1, test=0.1, seed=0)
    write_split({"train": train, "val": val, "test": test}, tmp_path / "data", meta={"task": "invoice"})
    base_before = load_file(str(prepare() / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"].clone()
    card = main(
        TrainArgs(
            task="invoice",
            train=tmp_path / "data" / "train.jsonl",
            val=tmp_path / "data" / "val.jsonl",
            out=tmp_path / "adapter",
            max_steps=2,
            batch_size=4,
            eval_samples=2,
            r=8,
            alpha=16,
        )
    )
    adapter = tmp_path / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_card.json", "training_card.md",
                 "loss.png"):  # fmt: skip
        assert (adapter / name).is_file(), name
    assert card["steps"] == 2 and card["data"]["train"]["records"] == len(train)
    assert card["validation"] and "field_f1" in card["validation"][-1]
    assert not (adapter / "checkpoints").exists()
    # base weights untouched, adapter weights trained (B starts at zero in LoRA)
    base_after = load_file(str(prepare() / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert bool((base_before == base_after).all())
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())

    stack.vllm.load_adapter("e2e-lora", adapter)
    runs = []
    for backend in ("local-prompted", "e2e"):
        args = EvalArgs("invoice", tmp_path / "data" / "test.jsonl", backend, stack.service_url,
                        tmp_path / "runs" / f"{backend}.json", concurrency=2)  # fmt: skip
        runs.append(asyncio.run(run_eval(args)))
        assert (tmp_path / "runs" / f"{backend}.disagreements.jsonl").is_file()
    assert runs[1]["meta"]["prompt_style"] == "finetuned"
    assert runs[1]["summary"]["items"] == len(test)
    assert runs[1]["summary"]["input_tokens_per_request"] * 3 <= runs[0]["summary"]["input_tokens_per_request"]
    report = build_report(runs, requests_per_day=1000, training_cost=1.0, horizon_days=30, out=tmp_path / "report")
    assert report["recommendation"] in {"prompting", "fine-tuning", "hybrid"}
    for name in ("report.md", "report.html", "report.json", "cost_vs_accuracy.png", "latency.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert json.loads((tmp_path / "report" / "report.json").read_text())["same_test_set"] is True
    stack.vllm.unload_adapter("e2e-lora")
