"""An endpoint: what a client needs to reach a model (where, which model, which key, how long to wait),
and what its tokens cost. What the service does with it (prompts, retries, limits) is its policy, in service/."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: Any) -> Any:
        # `local` is resolved to an engine before validation; a typo should list it with the others
        if value not in ("openai", "vllm", "llamacpp"):
            raise ValueError(f"kind must be openai, vllm, llamacpp or local, not {str(value)[:40]!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # "not a url" passed check-config, then every request retried 4 times and answered 502
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"base_url must be an http:// or https:// URL with a host, not {value[:80]!r}")
        return value
