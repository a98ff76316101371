"""Counting input tokens for length limits, with the backend's own tokenizer where one is on disk.

A backend's `tokenizer` names a Hugging Face tokenizer folder (or its `tokenizer.json`); a `kind: vllm`
backend on the managed local server uses that server's model folder. Otherwise (a hosted API whose
tokenizer is not available offline) the count is an estimate: 1 token per 4 characters, marked as such in
the error. Counting is skipped when the text's UTF-8 length is already within the limit: byte-level
tokenizers never make more tokens than bytes, so the common case costs nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import structlog

from backends.config import BackendConfig
from service.config import VllmServer

log = structlog.get_logger("extraction.tokens")
CHARS_PER_TOKEN = 4


class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, text: str) -> int: ...


class Estimate:
    """No tokenizer at hand: ceil(characters / 4), the usual rule of thumb for English with BPE vocabularies."""

    name = "estimate (4 characters per token)"
    exact = False

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)


class HfTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` library (no special tokens added)."""

    exact = True

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        self.tokenizer = Tokenizer.from_file(str(file))
        self.name = f"tokenizer {file.parent.name}"

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


def managed_model_dir(vllm: VllmServer) -> Path:
    if vllm.model:
        return Path(vllm.model).expanduser()
    from training.base_model import default_model_dir  # no heavy imports: paths only

    return default_model_dir()


def counter_for(cfg: BackendConfig, vllm: VllmServer) -> TokenCounter:
    """The backend's tokenizer if configured or managed locally and present on disk; else an estimate."""
    if cfg.tokenizer:  # configured explicitly: a missing one is a config error, not a silent estimate
        try:
            return _load(Path(cfg.tokenizer).expanduser())
        except Exception as e:
            raise ValueError(f"backend {cfg.name!r}: tokenizer {cfg.tokenizer!r} cannot be loaded: {e}") from None
    if cfg.kind == "vllm" and (cfg.base_url or "").rstrip("/").endswith(f"{vllm.host}:{vllm.port}/v1"):
        path = managed_model_dir(vllm)
    else:
        return Estimate()
    try:
        return _load(path)
    except Exception as e:  # the local model not prepared yet: the estimate, with a warning
        log.warning("tokenizer_unavailable", backend=cfg.name, path=str(path), error=str(e)[:200])
        return Estimate()


@lru_cache(maxsize=16)
def _load(path: Path) -> HfTokenizer:
    return HfTokenizer(path)
