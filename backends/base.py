"""The one contract every backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

StructuredMode = Literal["json_schema", "json_object", "none"]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # of input_tokens, served from the engine's prefix cache (when it says so)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
        )


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """One call: chat messages plus how strongly to constrain the output to `schema`."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    schema_name: str = "extraction"
    mode: StructuredMode = "json_schema"
    strict: bool = True
    max_output_tokens: int = 512
    temperature: float = 0.0
    timeout_s: float = 30.0
    # A multiplicative repetition penalty (1 = none), sent where the engine has one (backends.profiles); None: unset
    repetition_penalty: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    purpose: Literal["extract", "probe"] = "extract"  # probe: a one-token grammar check (service.pipeline.structured)


@dataclass(frozen=True, slots=True)
class BackendResponse:
    text: str
    usage: Usage
    model: str
    finish_reason: str | None
    latency_s: float


@runtime_checkable
class Backend(Protocol):
    """A model endpoint. Knows nothing of tasks, our HTTP API or metrics."""

    name: str

    async def complete(self, request: BackendRequest) -> BackendResponse:
        """Send one request; raise a `backends.errors.BackendError` on failure."""
        ...

    async def ping(self, timeout_s: float = 2.0) -> None:
        """Raise a `BackendError` unless the endpoint answers."""
        ...

    def configured(self) -> bool:
        """False when a call would fail for want of configuration (e.g. an unset API key variable)."""
        ...

    async def aclose(self) -> None: ...
