"""Counting input tokens for length limits, with the backend's own tokenizer.

A backend's `tokenizer` names a Hugging Face tokenizer folder (or its `tokenizer.json`), or `remote`: the
serving engine's `/tokenize` endpoint (vLLM). Unset, a `kind: vllm` backend on the managed local server uses
that server's model folder, and one elsewhere (a vLLM Service in Kubernetes) its `/tokenize`. Otherwise (a
hosted API whose tokenizer is not available offline) the count is an estimate: 1 token per 4 characters,
marked as such in the error. Counting is skipped when the text's UTF-8 length is already within the limit: byte-level
tokenizers never make more tokens than bytes, so the common case costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from backends.errors import BackendError
from backends.local.config import VllmServer
from service.config import BackendConfig

log = structlog.get_logger("extraction.tokens")
CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 8  # a chat template's role markers and separators, per message (a safe upper bound)


@dataclass(frozen=True)
class Count:
    tokens: int
    counted_with: str
    exact: bool


class TokenCounter(Protocol):
    name: str

    async def count(self, text: str) -> Count: ...

    async def count_messages(self, messages: list[dict[str, str]]) -> Count:
        """The whole prompt, chat template included (or bounded: PER_MESSAGE_TOKENS per message)."""
        ...


class Estimate:
    """No tokenizer at hand: ceil(characters / 4), the usual rule of thumb for English with BPE vocabularies."""

    name = "estimate (4 characters per token)"

    async def count(self, text: str) -> Count:
        return Count(math.ceil(len(text) / CHARS_PER_TOKEN), self.name, exact=False)

    async def count_messages(self, messages: list[dict[str, str]]) -> Count:
        tokens = sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) for m in messages)
        return Count(tokens + PER_MESSAGE_TOKENS * len(messages), self.name, exact=False)


class HfTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` library (no special tokens added)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        self.tokenizer = Tokenizer.from_file(str(file))
        self.name = f"tokenizer {file.parent.name}"

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    async def count(self, text: str) -> Count:
        return Count(self._tokens(text), self.name, exact=True)

    async def count_messages(self, messages: list[dict[str, str]]) -> Count:
        tokens = sum(self._tokens(m["content"]) for m in messages) + PER_MESSAGE_TOKENS * len(messages)
        return Count(tokens, self.name, exact=True)


class RemoteTokenizer:
    """The serving engine's own tokenizer over HTTP (vLLM's `POST /tokenize`): exact, chat template included,
    one extra round trip, only for texts long enough to need counting. If the call fails, the estimate."""

    def __init__(self, backend: Tokenizing, model: str) -> None:
        self.backend = backend
        self.name = f"vLLM /tokenize ({model})"

    async def _remote(self, payload: dict[str, Any]) -> int | None:
        try:
            return await self.backend.count_tokens(payload)
        except BackendError as e:
            log.warning("tokenize_failed", backend=self.backend.name, error=e.message[:200])
            return None

    async def count(self, text: str) -> Count:
        tokens = await self._remote({"prompt": text, "add_special_tokens": False})
        return Count(tokens, self.name, exact=True) if tokens is not None else await Estimate().count(text)

    async def count_messages(self, messages: list[dict[str, str]]) -> Count:
        tokens = await self._remote({"messages": messages, "add_generation_prompt": True})
        if tokens is None:
            return await Estimate().count_messages(messages)
        return Count(tokens, self.name, exact=True)


@runtime_checkable
class Tokenizing(Protocol):
    name: str

    async def count_tokens(self, payload: dict[str, Any]) -> int: ...


def managed_model_dir(vllm: VllmServer) -> Path:
    if vllm.model:
        return Path(vllm.model).expanduser()
    from backends.local.base_model import default_model_dir  # no heavy imports: paths only

    return default_model_dir()


def counter_for(cfg: BackendConfig, vllm: VllmServer, backend: object | None = None) -> TokenCounter:
    """`tokenizer: PATH` -> that file; `tokenizer: remote` or a kind vllm backend elsewhere -> its /tokenize;
    kind vllm on the managed server -> its model's tokenizer.json; else (hosted APIs) the estimate."""
    if cfg.tokenizer and cfg.tokenizer != "remote":  # a path: a missing one is a config error, not an estimate
        try:
            return _load(Path(cfg.tokenizer).expanduser())
        except Exception as e:
            raise ValueError(f"backend {cfg.name!r}: tokenizer {cfg.tokenizer!r} cannot be loaded: {e}") from None
    remote = RemoteTokenizer(backend, cfg.model) if isinstance(backend, Tokenizing) else None
    if cfg.tokenizer == "remote":
        if remote is None:
            raise ValueError(f"backend {cfg.name!r}: tokenizer 'remote' needs an OpenAI-compatible vLLM backend")
        return remote
    if cfg.kind == "llamacpp":  # llama-server's /tokenize takes text, not chat messages: the base's own file
        try:
            from backends.local.base_model import default_model_dir  # paths only

            return _load(default_model_dir())  # the prepared SmolLM2: the packaged GGUF's own tokenizer
        except Exception:
            return Estimate()
    if cfg.kind != "vllm":
        return Estimate()
    if vllm.serves(cfg.base_url):
        path = managed_model_dir(vllm)
        try:
            return _load(path)  # on disk: no round trip
        except Exception as e:  # the local model not prepared yet (expected before `model prepare`)
            log.debug("tokenizer_not_on_disk", backend=cfg.name, path=str(path), error=str(e)[:200])
    return remote or Estimate()


@lru_cache(maxsize=16)
def _load(path: Path) -> HfTokenizer:
    return HfTokenizer(path)
