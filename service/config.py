"""Settings: a YAML file (path in EXTRACTION_CONFIG) overlaid by EXTRACTION_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from backends.config import BackendConfig
from backends.local.hardware import DtypeSetting
from service.auth import AuthConfig
from service.lifecycle import ShutdownConfig
from service.pii import PiiPolicy

DEFAULT_CONFIG = Path(__file__).parent / "default_config.yaml"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_text_chars: int = Field(50_000, ge=1, description="Longer texts get 400 text_too_long.")
    max_text_tokens: int = Field(
        16_000, ge=1, description="Texts with more tokens (the backend's tokenizer) get 400 text_too_long."
    )
    max_batch_items: int = Field(64, ge=1)
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Larger bodies get 413.")
    max_inflight: int = Field(512, ge=1, description="Extractions running at once in one worker process.")
    max_queue: int = Field(1024, ge=0, description="Extractions waiting for a slot; more get 503 overloaded.")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deadline_s: float = Field(60.0, gt=0, description="Overall budget of one request, re-asks included.")
    backoff_initial_s: float = Field(0.25, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    retry_after_cap_s: float = Field(60.0, ge=0, description="Longest Retry-After we honour.")


class RequestLogConfig(BaseModel):
    """Off by default: when on, every extraction's text and output are appended to `path` (JSONL)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    path: Path = Field(Path("var/requests.jsonl"), description="Relative paths start at the working directory.")
    redact_pii: bool = Field(True, description="Replace e-mails, phones, IBANs, card numbers before writing.")


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXTRACTION_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    config: Path = Field(DEFAULT_CONFIG, description="The YAML file these settings came from.")
    default_backend: str
    tasks_dir: Path = Field(
        DEFAULT_CONFIG.parent / "tasks",
        description="Task YAML folder; relative paths start at the config file's folder. Default: the shipped tasks.",
    )
    backends: dict[str, BackendConfig]
    limits: Limits = Field(default_factory=Limits)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    vllm: VllmServer = Field(default_factory=VllmServer)
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    pii: PiiPolicy = Field(default_factory=PiiPolicy, description="PII policy for outputs of tasks without one.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys with no restrictions (EXTRACTION_API_KEYS), for quick setups."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        path = Path(init_kwargs.get("config") or os.environ.get("EXTRACTION_CONFIG") or DEFAULT_CONFIG)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (EXTRACTION_CONFIG or --config)")
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=path)
        # Priority: explicit arguments > environment > the YAML file. `config` records the file used.
        return (init_settings, env_settings, _Fixed(settings_cls, {"config": path}), yaml_source)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for key, backend in self.backends.items():
            if backend.name and backend.name != key:
                raise ValueError(f"backends.{key}.name is {backend.name!r}; leave it out or make it {key!r}")
            backend.name = key
        for key, backend in self.backends.items():
            for name in backend.fallback:
                if name not in self.backends or name == key:
                    raise ValueError(
                        f"backends.{key}.fallback names {name!r}: "
                        f"use other configured backends: {sorted(self.backends)}"
                    )
            if len(set(backend.fallback)) != len(backend.fallback):
                raise ValueError(f"backends.{key}.fallback repeats a backend: {backend.fallback}")
        if self.default_backend not in self.backends:
            raise ValueError(f"default_backend {self.default_backend!r} is not among backends: {sorted(self.backends)}")
        if not self.tasks_dir.is_absolute():
            self.tasks_dir = (self.config.parent / self.tasks_dir).resolve()
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field or file."""


class _Fixed(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests override this dependency instead of the environment."""
    return Settings()  # values come from the YAML and environment sources
