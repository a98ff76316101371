"""API keys: who may call, which tasks and backends they may use, and how much (requests and tokens per
minute, USD per day).

Off until a key is configured: in `auth.keys`, in a key file (`auth.key_file`, written by
`extraction keys create`), or as comma-separated keys in `EXTRACTION_API_KEYS` (quick setups; such keys
may do everything). Files and config hold only the SHA-256 of each key; callers send
`Authorization: Bearer KEY`. Limits are kept per worker process (with N workers a key gets up to N times
its per-minute rate; size the limits or run one worker per pod behind the HPA).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from service.errors import BadRequest, Forbidden, QuotaExceeded, RateLimited, Unauthorized
from service.files import WriteError, atomic_write, write_target
from service.tasks import ADHOC  # a key that lists tasks may send ad-hoc schemas when it lists this name

KEY_PREFIX = "sk-ex-"


class ApiKeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Shown in logs and errors; never the key itself.")
    key_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    key_env: str | None = Field(None, description="Or: the environment variable that holds the key.")
    tasks: list[str] | None = Field(None, description=f"Allowed tasks (None: all; '{ADHOC}': ad-hoc schemas).")
    backends: list[str] | None = Field(None, description="Allowed backends (None: all).")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="Input + output tokens, every attempt.")
    daily_budget_usd: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="USD per UTC day, every attempt (omit it for no budget)."
    )

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("a key needs a name (for logs and errors), not an empty one")
        return name

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeyConfig:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"api key {self.name!r}: give exactly one of key_sha256 or key_env")
        return self


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKeyConfig] = Field(default_factory=list)
    key_file: Path | None = Field(None, description="YAML with a `keys:` list (hashes only).")
    protect_metrics: bool = Field(False, description="Require a key for /metrics.")
    protect_health: bool = Field(False, description="Require a key for /healthz and /readyz.")
    show_base_urls: bool = Field(
        False, description="With keys off, show backends' base_url in GET /v1/backends (with keys on, never)."
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class TokenBucket:
    """`rate_per_min` per minute, bursts up to one minute's worth; the level may go negative (debt)."""

    def __init__(self, rate_per_min: float, clock: Callable[[], float]) -> None:
        self.capacity = rate_per_min
        self.rate = rate_per_min / 60.0
        self.level = rate_per_min
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: available now)."""
        self._refill()
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


@dataclass
class Principal:
    """An authenticated caller and its limits' state."""

    config: ApiKeyConfig
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    spent_day: str = ""
    spent_usd: float = 0.0

    def __post_init__(self) -> None:
        c = self.config
        self.requests = TokenBucket(c.requests_per_minute, self.clock) if c.requests_per_minute else None
        self.tokens = TokenBucket(c.tokens_per_minute, self.clock) if c.tokens_per_minute else None

    @property
    def name(self) -> str:
        return self.config.name

    def allows_task(self, task: str | None) -> bool:
        """Whether this key may use the task (None: an ad-hoc schema)."""
        return self.config.tasks is None or (task or ADHOC) in self.config.tasks

    def allows_backend(self, backend: str) -> bool:
        return self.config.backends is None or backend in self.config.backends

    def authorize(self, task: str | None, backend: str | None) -> None:
        """403 unless this key may use the task (None: an ad-hoc schema) and the backend."""
        c = self.config
        if not self.allows_task(task):
            what = f"task {task!r}" if task else "ad-hoc schemas"
            raise Forbidden(f"key {c.name!r} may not use {what}", details={"key": c.name, "allowed_tasks": c.tasks})
        if backend is not None and not self.allows_backend(backend):
            raise Forbidden(
                f"key {c.name!r} may not use backend {backend!r}",
                details={"key": c.name, "allowed_backends": c.backends},
            )

    def admit(self, items: int = 1) -> None:
        """429 when the key is over its request rate, token rate or daily budget; else count the requests."""
        c = self.config
        if c.daily_budget_usd is not None and self._spent_today() >= c.daily_budget_usd:
            now = self.now()
            midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            raise QuotaExceeded(
                f"key {c.name!r} has spent its daily budget of ${c.daily_budget_usd:g}",
                details={"key": c.name, "daily_budget_usd": c.daily_budget_usd, "spent_usd": round(self.spent_usd, 6)},
                headers={"Retry-After": str(max(1, math.ceil((midnight - now).total_seconds())))},
            )
        if self.requests is not None and items > self.requests.capacity:
            # no wait would admit it: a Retry-After would send a well-behaved client round for ever
            raise BadRequest(
                f"a batch of {items} items is more than key {c.name!r} may ever send at once (its requests per "
                f"minute limit is {c.requests_per_minute:g}); send at most {math.floor(self.requests.capacity)} "
                "items per batch",
                details={"reason": "batch_over_rate_limit", "items": items, "key": c.name,
                         "max_items": math.floor(self.requests.capacity)},
            )  # fmt: skip
        waits = {}
        if self.requests is not None:
            waits["requests_per_minute"] = self.requests.wait_for(items)
        if self.tokens is not None:
            waits["tokens_per_minute"] = self.tokens.wait_for(1)  # spent after the call; debt blocks the next
        limit, wait = max(waits.items(), key=lambda kv: kv[1], default=("", 0.0))
        if wait > 0:
            raise RateLimited(
                f"key {c.name!r} is over its {limit.replace('_', ' ')} limit of {getattr(c, limit)}",
                details={"key": c.name, "limit": limit, "value": getattr(c, limit)},
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if self.requests is not None:
            self.requests.take(items)

    def charge(self, tokens: int, cost_usd: float) -> None:
        if self.tokens is not None:
            self.tokens.take(tokens)
        self._spent_today()
        self.spent_usd += cost_usd

    def _spent_today(self) -> float:
        day = self.now().date().isoformat()
        if day != self.spent_day:
            self.spent_day, self.spent_usd = day, 0.0
        return self.spent_usd


class Authenticator:
    """Looks keys up by hash, in constant time per candidate."""

    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self.principals: dict[str, Principal] = {}
        for k in keys:
            digest = k.key_sha256 or _hash_env(k)
            if digest in self.principals:
                raise ValueError(f"api keys {self.principals[digest].name!r} and {k.name!r} are the same key")
            self.principals[digest] = Principal(k)

    @property
    def enabled(self) -> bool:
        return bool(self.principals)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """None when auth is off; the caller's Principal; else 401."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as `Authorization: Bearer KEY`", headers={"WWW-Authenticate": "Bearer"})
        digest = hash_key(token.strip())
        for known, principal in self.principals.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthorized("unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _hash_env(k: ApiKeyConfig) -> str:
    assert k.key_env is not None
    value = os.environ.get(k.key_env)
    if not value:
        raise ValueError(f"api key {k.name!r}: environment variable {k.key_env} is unset or empty")
    return hash_key(value)


def load_keys(auth: AuthConfig, env_keys: SecretStr | None, base: Path) -> list[ApiKeyConfig]:
    """Every configured key: config, key file, then EXTRACTION_API_KEYS."""
    keys = list(auth.keys)
    if auth.key_file is not None:
        path = auth.key_file if auth.key_file.is_absolute() else base / auth.key_file
        keys += read_key_file(path)
    if env_keys is not None:
        raw = [k.strip() for k in env_keys.get_secret_value().split(",") if k.strip()]
        if not raw:  # `EXTRACTION_API_KEYS="$SECRET"` with the secret missing must not mean "no auth"
            raise ValueError(
                "EXTRACTION_API_KEYS is set but holds no key: "
                "unset it to run without keys or list keys, comma-separated"
            )
        keys += [ApiKeyConfig(name=f"env-{i}", key_sha256=hash_key(k)) for i, k in enumerate(raw, 1)]
    return keys


def read_key_file(path: Path) -> list[ApiKeyConfig]:
    if not path.exists():
        raise ValueError(f"auth.key_file {path} does not exist (create it with `extraction keys create`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]
        raise ValueError(f"auth.key_file {path} cannot be read as YAML: {reason}") from None
    entries = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(
            f"auth.key_file {path} must hold a mapping with a `keys` list (as `extraction keys create` writes)"
        )
    keys = []
    for i, entry in enumerate(entries):
        try:
            keys.append(ApiKeyConfig.model_validate(entry))
        except ValidationError as e:
            problem = e.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "entry"
            raise ValueError(f"auth.key_file {path}: keys[{i}].{where}: {problem['msg']}") from None
    return keys


def add_key_to_file(path: Path, entry: ApiKeyConfig) -> None:
    """Append a hashed key; written atomically (service/files.py), so a failure leaves the old file whole. A new
    file is 0600 (owner only), an existing one keeps its mode; a symlink is followed, a device or FIFO refused."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the key file's path")
    try:
        _, mode = write_target(path)  # before reading it: a FIFO would block the read for ever
    except WriteError as e:
        raise ValueError(f"cannot write the key file {path}: {e.reason}") from None
    existing = read_key_file(path) if mode is not None else []
    if any(k.name == entry.name for k in existing):
        raise ValueError(f"{path} already has a key named {entry.name!r}")
    body = {"keys": [k.model_dump(exclude_none=True) for k in [*existing, entry]]}
    try:
        atomic_write(path, yaml.safe_dump(body, sort_keys=False), new_mode=0o600)
    except WriteError as e:
        raise ValueError(f"cannot write the key file {path}: {e.reason}") from None
