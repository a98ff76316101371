"""LoRA building blocks shared by training, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def local_dtype(setting: str = "auto") -> str:
    """The dtype to train in on this machine (bf16 on GPUs and bf16-native CPUs, float32 elsewhere)."""
    import torch

    from backends.local.hardware import choose_dtype

    return choose_dtype(setting, "cuda" if torch.cuda.is_available() else "cpu")


def build_lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
) -> Any:
    """The peft `LoraConfig` we train with: plain LoRA, no `modules_to_save` and no DoRA (vLLM rejects both)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable (adapter) parameters by name: the tensors themselves, not copies."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def all_finite(tensors: Iterable[Any]) -> bool:
    """True when no tensor holds a NaN or an infinity."""
    import torch

    return all(bool(torch.isfinite(t).all()) for t in tensors)


def upcast_trainable(model: Any) -> int:
    """Keep the adapter weights (and so the optimizer's moments) in fp32 whatever the base dtype; returns how many
    were cast.

    peft already upcasts adapters of a bf16/fp16 base (`autocast_adapter_dtype`); this makes it a checked property
    here: bf16 Adam moments lose small updates and overflow where fp32 does not.
    """
    import torch

    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast


def tiny_adapter(base: Path, out: Path, steps: int = 3, seed: int = 0) -> Path:
    """A deliberately tiny adapter (rank 8 on q/v, a few steps on one example) for smoke tests and benchmarks."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, local_dtype()))
    model = get_peft_model(model, build_lora_config(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj")))
    messages = [
        {"role": "system", "content": "Extract invoice as JSON."},
        {"role": "user", "content": "<document>\nACME Ltd, 2024-01-05, total 12.50 EUR\n</document>"},
        {
            "role": "assistant",
            "content": '{"company":"ACME Ltd","invoice_date":"2024-01-05","total_amount":12.5,"currency":"EUR"}',
        },
    ]
    batch = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(out)
    return out
