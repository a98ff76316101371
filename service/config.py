"""Settings: a YAML file (path in EXTRACTION_CONFIG) overlaid by EXTRACTION_* environment variables.

A backend's entry is flat in YAML but two things in code: the `Endpoint` a client reads (backends/) and the
`BackendPolicy` the pipeline applies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidatorFunctionWrapHandler, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from backends.config import LOCAL_KINDS, Endpoint, Pricing
from backends.local.config import LlamaCppServer, VllmServer
from backends.local.engine import Engine, EngineSetting, resolve_local_backends
from backends.profiles import SchemaDialect, default_dialect
from service.auth import AuthConfig
from service.lifecycle import ShutdownConfig
from service.pii import PiiPolicy

DEFAULT_CONFIG = Path(__file__).parent / "default_config.yaml"


PromptStyle = Literal["few_shot", "finetuned"]


class CircuitConfig(BaseModel):
    """Per-backend circuit breaker: open after `failure_threshold` consecutive failed calls, or when the share
    of failed calls among the last `window` reaches `error_rate` (0: off); probe after reset_after_s."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1)
    error_rate: float = Field(0.5, ge=0, le=1, description="Open at this share of failures in the window; 0: off.")
    window: int = Field(20, ge=2, description="Calls the error rate is computed over.")
    reset_after_s: float = Field(30.0, gt=0)


class AdaptiveConcurrency(BaseModel):
    """AIMD on latency: the backend's concurrency limit grows while calls finish within `target_latency_s`
    and shrinks when they do not, between `min_concurrency` and the backend's `max_concurrency`."""

    model_config = ConfigDict(extra="forbid")

    initial: int = Field(4, ge=1, description="The limit at start.")
    min_concurrency: int = Field(1, ge=1)
    target_latency_s: float = Field(
        20.0, gt=0, description="A call slower than this (or a timeout) cuts the limit; faster ones grow it."
    )
    backoff: float = Field(0.7, gt=0, lt=1, description="Factor the limit is cut by.")


class StructuredLimits(BaseModel):
    """The largest schema still sent as `response_format`. An engine compiles a grammar from each new schema
    before it decodes (vLLM per request, on its scheduler's path), and size, subschemas and bounded repetition
    (which grammars unroll) drive that time; above a limit the request degrades to JSON mode + validation +
    re-ask, counted in extraction_structured_output_degraded_total. None: no limit."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int | None = Field(32_768, ge=1, description="Compact JSON, UTF-8.")
    max_nodes: int | None = Field(1_000, ge=1, description="Objects in the schema document.")
    max_repeat: int | None = Field(
        1_000,
        ge=1,
        description="Largest minLength/maxLength/minItems/maxItems/..., or a pattern's unrolled size (nested "
        "{m,n} bounds multiply: `(a{1,100}b{1,100}){1,100}` is 20,000).",
    )
    compile_budget_s: float | None = Field(
        None,
        ge=0,
        description="The first request with a schema new to this backend first sends a one-token probe with the "
        "grammar; when the engine has not answered it within this budget (or refuses the grammar), the schema "
        "degrades to JSON mode + validation for this backend from then on, counted. None: 10 s for kind vllm, "
        "off for hosted APIs; 0: off.",
    )

    reprobe_after_s: float = Field(
        300.0,
        gt=0,
        description="How long a probe's `compile_time` verdict holds; then the next request with that schema "
        "probes again. A probe's time includes its wait behind other work on a busy engine, so one slow probe "
        "must not demote a schema for good. A refused grammar (400) stays refused.",
    )

    def probe_budget(self, kind: str) -> float:
        """Seconds the grammar probe may take for a backend of this kind (0: no probe)."""
        if self.compile_budget_s is None:
            return 10.0 if kind in LOCAL_KINDS else 0.0
        return self.compile_budget_s


class BackendPolicy(BaseModel):
    """What the service does with an endpoint: prompt, constrain, retry, limit, fall back, price."""

    model_config = ConfigDict(extra="forbid")

    prompt_style: PromptStyle = "few_shot"
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    schema_dialect: SchemaDialect | None = Field(
        None, description="What the structured-output engine enforces (its profile); None: by kind."
    )
    structured_limits: StructuredLimits = Field(default_factory=StructuredLimits)
    pricing: Pricing = Field(default_factory=Pricing)
    max_attempts: int = Field(3, ge=1, le=10, description="Answers asked for (first try + re-asks).")
    max_retries: int = Field(4, ge=0, le=20, description="Transport retries (429/5xx/timeouts) per answer.")
    max_concurrency: int = Field(32, ge=1)
    max_queue: int = Field(
        256, ge=0, description="Calls waiting for a max_concurrency slot; more get 503 overloaded at once."
    )
    max_queue_wait_s: float | None = Field(
        None, gt=0, description="Longest wait for a slot before 503 overloaded; None: until the deadline."
    )
    adaptive_concurrency: AdaptiveConcurrency | None = Field(
        None, description="Size the concurrency limit to what the engine finishes in time (AIMD); None: fixed."
    )
    retry_timeouts: bool | None = Field(
        None,
        description="Retry a call that timed out. None: yes for hosted APIs, no for kind vllm (a local engine "
        "that timed out is saturated: another call only adds to its queue).",
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
    reask_temperature: float | None = Field(
        0.7,
        ge=0,
        le=2,
        description="Sampling temperature of a re-ask after an answer that ran into the output-token limit or "
        "repeated an earlier one: at temperature 0 the model would decode the same loop again. None: re-asks keep "
        "`temperature`.",
    )
    loop_repetition_penalty: float | None = Field(
        1.1,
        ge=1,
        le=2,
        description="On an engine with a repetition penalty (vLLM `repetition_penalty`, llama.cpp `repeat_penalty`), "
        "the attempt after an answer that ran into the output-token limit or repeated an earlier one asks afresh "
        "with this penalty instead of re-asking: a small model shown its own loop copies it again, and sampling "
        "alone does not leave it. A penalised answer that loops again is asked afresh at `reask_temperature`. "
        "None, or an API without such a penalty (OpenAI's): the re-ask at `reask_temperature`.",
    )


class BackendConfig(Endpoint, BackendPolicy):
    """One entry under `backends:`: the endpoint and the policy, flat in YAML as users write it."""

    model_config = ConfigDict(extra="forbid")

    @property
    def endpoint(self) -> Endpoint:
        """Just the endpoint: what the client is built from."""
        return Endpoint.model_validate({k: getattr(self, k) for k in Endpoint.model_fields})

    @model_validator(mode="after")
    def _defaults_by_kind(self) -> BackendConfig:
        if self.schema_dialect is None:
            self.schema_dialect = default_dialect(self.kind)
        if self.retry_timeouts is None:
            self.retry_timeouts = self.kind not in LOCAL_KINDS
        adaptive = self.adaptive_concurrency
        if adaptive and max(adaptive.initial, adaptive.min_concurrency) > self.max_concurrency:
            raise ValueError("adaptive_concurrency.initial and min_concurrency must not exceed max_concurrency")
        if adaptive and adaptive.min_concurrency > adaptive.initial:
            raise ValueError("adaptive_concurrency.min_concurrency is above its initial limit")
        return self


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_text_chars: int = Field(50_000, ge=1, description="Longer texts get 400 text_too_long.")
    max_text_tokens: int = Field(
        16_000, ge=1, description="Texts with more tokens (the backend's tokenizer) get 400 text_too_long."
    )
    max_instructions_chars: int = Field(
        10_000, ge=1, description="Longer `instructions` with an ad-hoc schema get 400 text_too_long."
    )
    max_batch_items: int = Field(64, ge=1)
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Larger bodies get 413.")
    max_header_bytes: int = Field(
        65_536,
        ge=1024,
        description="A request line and headers larger than this get 431 headers_too_large (`extraction serve`).",
    )
    header_timeout_s: float = Field(
        30.0, gt=0, description="A request line and headers not complete this long after they began: 408."
    )
    body_timeout_s: float = Field(30.0, gt=0, description="A request body that sends nothing this long: 408.")
    max_inflight: int = Field(512, ge=1, description="Extractions running at once in one worker process.")
    max_queue: int = Field(1024, ge=0, description="Extractions waiting for a slot; more get 503 overloaded.")
    # Ad-hoc schemas (task files are trusted configuration: only the checks of their meaning apply to them).
    max_schema_bytes: int = Field(
        65_536, ge=256, description="Ad-hoc schemas larger than this (compact JSON, UTF-8) get 400 invalid_schema."
    )
    max_schema_depth: int = Field(
        32, ge=2, description="Objects and arrays nested deeper than this in an ad-hoc schema: 400 invalid_schema."
    )
    max_schema_properties: int = Field(
        500, ge=1, description="Property definitions in an ad-hoc schema, all levels together; more: 400."
    )
    schema_check_budget_s: float = Field(
        2.0, gt=0, description="Time to check and compile a new ad-hoc schema (off the event loop); over it: 400."
    )
    schema_cache_bytes: int = Field(
        16 * 2**20, ge=0, description="Compiled ad-hoc schemas kept for reuse, by size; least recently used go first."
    )
    validation_budget_s: float = Field(
        1.0,
        gt=0,
        description="Time to parse and validate one answer (off the event loop); over it: 422 "
        "validation_timeout, and no further attempt.",
    )
    validation_threads: int = Field(4, ge=1, description="Worker threads for schema checks and validation.")
    max_repair_chars: int = Field(
        32_768,
        ge=0,
        description="Longer answers that are not valid JSON are not given to json-repair (it is "
        "pure Python and superlinear): a failed attempt instead.",
    )


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
    routes: dict[str, str] = Field(
        default_factory=dict,
        description="Task name -> backend, over the task YAML's own `backend` (a request's override still wins).",
    )
    limits: Limits = Field(default_factory=Limits)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    local_engine: EngineSetting = Field(
        "auto",
        description="The engine for backends of `kind: local`: vllm, llamacpp, or auto (vLLM on a GPU, llama.cpp "
        "on a CPU: measured faster there). Such a backend without base_url talks to that engine's managed server.",
    )
    vllm: VllmServer = Field(default_factory=VllmServer)
    llamacpp: LlamaCppServer = Field(default_factory=LlamaCppServer)
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
        _check_yaml(path)
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=path)
        # Priority: explicit arguments > environment > the YAML file. `config` records the file used.
        return (init_settings, env_settings, _Fixed(settings_cls, {"config": path}), yaml_source)

    _engine_choice: tuple[Engine, str] = PrivateAttr(("vllm", "not resolved"))

    @property
    def engine(self) -> Engine:
        """The engine `local_engine` chose on this machine when the config was loaded (what `kind: local`
        backends became)."""
        return self._engine_choice[0]

    @property
    def engine_reason(self) -> str:
        """Why that engine: the setting, or what `auto` found (a GPU, a llama.cpp build)."""
        return self._engine_choice[1]

    @model_validator(mode="wrap")
    @classmethod
    def _local_engine(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Settings:
        if not isinstance(data, dict):
            return handler(data)  # type: ignore[no-any-return]
        resolved, choice = resolve_local_backends(data)
        settings: Settings = handler(resolved)
        settings._engine_choice = choice
        return settings

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
        for task, name in self.routes.items():
            if name not in self.backends:
                raise ValueError(
                    f"routes.{task} names {name!r}: use one of the configured backends {sorted(self.backends)}"
                )
        if self.default_backend not in self.backends:
            raise ValueError(f"default_backend {self.default_backend!r} is not among backends: {sorted(self.backends)}")
        if not self.tasks_dir.is_absolute():
            self.tasks_dir = (self.config.parent / self.tasks_dir).resolve()
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field or file."""


def _check_yaml(path: Path) -> None:
    """The config file reads as UTF-8 YAML holding a mapping, or a ConfigError saying why (not a traceback from
    deep inside the settings source)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:  # PyYAML's parser and composer recurse per level: `[[[[...` 10,000 deep
        raise ConfigError(f"{path}: not valid YAML: nested too deeply for the parser") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of settings, not a {type(data).__name__}")


# EXTRACTION_* variables that are no settings but read elsewhere (the CLI, the engines, the Makefile)
OTHER_ENV = frozenset({
    "EXTRACTION_CONFIG", "EXTRACTION_CACHE_DIR", "EXTRACTION_LOCAL_ENGINE", "EXTRACTION_LLAMACPP_FULL_OPT",
    "EXTRACTION_EARLY_BUILD_PID", "EXTRACTION_API_KEY", "EXTRACTION_TIP", "EXTRACTION_SAMPLE", "EXTRACTION_CACHE",
})  # fmt: skip


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """`EXTRACTION_*` variables that set nothing, each with the setting it may have meant: the environment
    source ignores a misspelt top-level name (`EXTRACTION_DEFALT_BACKEND`) silently, so say so."""
    import difflib

    environ = os.environ if environ is None else environ
    fields = {f"EXTRACTION_{name.upper()}" for name in Settings.model_fields}
    known = sorted(fields | OTHER_ENV)
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("EXTRACTION_") or upper in OTHER_ENV or upper.split("__")[0] in fields:
            continue
        guess = difflib.get_close_matches(upper.split("__")[0], known, n=1, cutoff=0.75)
        found.append(f"{name} sets nothing" + (f" (did you mean {guess[0]}?)" if guess else ""))
    return found


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
