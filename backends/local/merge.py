"""Fold a LoRA adapter into its base model: one plain model to serve under its own name, no LoRA at run time.

    extraction model merge ADAPTER_DIR --out DIR [--base BASE_DIR]

Merged is the fast path for one fine-tuned task on a CPU: every token skips the adapter's extra matmuls
(measured on vLLM-CPU: see README, Performance). Many tasks on one server keep their adapters unmerged: one
base in memory, adapters picked per request by name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from backends.local.base_model import default_model_dir

MERGE_CARD = "merge_card.json"


class MergeError(Exception):
    """The adapter cannot be merged; the message says why."""


def merge_adapter(adapter: Path, out: Path, base: Path | str | None = None) -> dict[str, Any]:
    """Write base + adapter as one bf16 model (with tokenizer) to `out`; returns the merge card.

    Merged in fp32 (no rounding of the sum), stored in bf16 like the base: half the bytes, the same weights.
    Written to a sibling folder first and renamed, so `out` is never half-written.
    """
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MergeError(f"merging needs the training extra: pip install 'extraction-service[train]' ({e})") from e
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise MergeError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = base or json.loads(config_file.read_text()).get("base_model_name_or_path") or default_model_dir()
    looks_local = isinstance(base, Path) or str(base).startswith((".", "/", "~")) or Path(str(base)).exists()
    if looks_local and not (Path(str(base)).expanduser() / "config.json").is_file():
        raise MergeError(f"base model not found at {base}: run `extraction model prepare` or pass --base")
    # anything else is a Hugging Face id: loaded from the local cache (hub downloads are off at run time)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.to(torch.bfloat16).save_pretrained(partial, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(partial)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise MergeError(f"cannot merge {adapter} into {base}: {e}") from e
    card = {
        "base_model": str(base),
        "adapter": str(adapter.resolve()),
        "adapter_sha256": _sha256(adapter / "adapter_model.safetensors"),
        "dtype": "bfloat16",
    }
    (partial / MERGE_CARD).write_text(json.dumps(card, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return card


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()
