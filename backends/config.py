"""Configuration of one backend: everything that differs between a hosted API and a vLLM server."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PromptStyle = Literal["few_shot", "finetuned"]
SchemaDialect = Literal["openai_strict", "vllm", "full"]


class Pricing(BaseModel):
    """USD per 1,000 tokens. Self-hosted backends price compute per 1k tokens (both fields alike)."""

    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(0.0, ge=0)
    output_per_1k: float = Field(0.0, ge=0)


class CircuitConfig(BaseModel):
    """Per-backend circuit breaker: open after `failure_threshold` consecutive failed calls, or when the share
    of failed calls among the last `window` reaches `error_rate` (0: off); probe after reset_after_s."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1)
    error_rate: float = Field(0.5, ge=0, le=1, description="Open at this share of failures in the window; 0: off.")
    window: int = Field(20, ge=2, description="Calls the error rate is computed over.")
    reset_after_s: float = Field(30.0, gt=0)


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="Filled from the key under `backends:`.")
    kind: Literal["openai", "vllm"] = "openai"
    base_url: str | None = Field(
        None, description="None: OPENAI_BASE_URL for kind openai, http://127.0.0.1:8000/v1 for vllm."
    )
    model: str
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the key (kind openai: OPENAI_API_KEY)."
    )
    prompt_style: PromptStyle = "few_shot"
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    schema_dialect: SchemaDialect | None = Field(
        None, description="What the structured-output engine enforces; None: by kind."
    )
    pricing: Pricing = Field(default_factory=Pricing)
    timeout_s: float = Field(30.0, gt=0, description="Read timeout of one call.")
    connect_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10, description="Answers asked for (first try + re-asks).")
    max_retries: int = Field(4, ge=0, le=20, description="Transport retries (429/5xx/timeouts) per answer.")
    max_concurrency: int = Field(32, ge=1)
    max_queue: int = Field(
        256, ge=0, description="Calls waiting for a max_concurrency slot; more get 503 overloaded at once."
    )
    fallback: list[str] = Field(
        default_factory=list,
        description="Backends tried in order when this one fails (upstream error, open circuit, or no valid "
        "answer after its re-asks). The response's `backend` says who answered.",
    )
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    max_output_tokens: int = Field(512, ge=1)
    context_window: int | None = Field(
        None, ge=16, description="Model context in tokens; prompt + text + max output beyond it gets 400 text_too_long."
    )
    tokenizer: str | None = Field(
        None,
        description="Counts input tokens for limits: an HF tokenizer folder or tokenizer.json, or 'remote' (the "
        "server's /tokenize, vLLM); None: for kind vllm the managed model's file or else /tokenize, for hosted "
        "APIs an estimate of 4 characters per token.",
    )
    temperature: float = Field(0.0, ge=0, le=2)

    @model_validator(mode="after")
    def _dialect_by_kind(self) -> BackendConfig:
        if self.schema_dialect is None:
            self.schema_dialect = "openai_strict" if self.kind == "openai" else "vllm"
        return self
