"""An endpoint: what a client needs to reach a model (where, which model, which key, how long to wait),
and what its tokens cost. What the service does with it (prompts, retries, limits) is its policy, in service/."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["openai", "vllm", "llamacpp"]
LOCAL_KINDS = frozenset({"vllm", "llamacpp"})  # engines on this machine: no key, no retry of a timeout


class Pricing(BaseModel):
    """USD per 1,000 tokens. Self-hosted backends price compute per 1k tokens (both fields alike)."""

    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(0.0, ge=0)
    output_per_1k: float = Field(0.0, ge=0)


class Endpoint(BaseModel):
    """The fields a backend client reads: nothing of prompts, retries or limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="Filled from the key under `backends:`.")
    kind: Kind = "openai"
    base_url: str | None = Field(
        None,
        description="None: OPENAI_BASE_URL for kind openai, http://127.0.0.1:8000/v1 for vllm, "
        "http://127.0.0.1:8001/v1 for llamacpp.",
    )
    model: str
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the key (kind openai: OPENAI_API_KEY)."
    )
    timeout_s: float = Field(30.0, gt=0, description="Read timeout of one call.")
    connect_timeout_s: float = Field(5.0, gt=0)
