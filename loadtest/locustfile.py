"""Realistic extraction traffic for Locust; run it with `extraction loadtest` (or `locust -f` this file).

A weighted mix of tasks and text lengths (texts from the seeded synthetic generators, or your own JSONL datasets
in LOADTEST_DATA_DIR), single and batch calls, think time between calls. Every response is checked: status 200
and `data` valid against the task's schema, or it is marked failed, not only on HTTP errors.

Environment: LOADTEST_BACKEND (sent as X-Extraction-Backend), LOADTEST_TASKS ("invoice=3,receipt=2,..."),
LOADTEST_BATCH_SHARE (0..1, default 0.1), LOADTEST_THINK ("0.5,2" seconds), LOADTEST_DATA_DIR,
LOADTEST_API_KEY (Bearer), LOADTEST_SEED.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import gevent
from jsonschema.protocols import Validator
from locust import HttpUser, between, events, task

from service.schemas.compiled import compile_schema
from training.synthetic import GENERATORS, generate

BACKEND = os.environ.get("LOADTEST_BACKEND") or None
BATCH_SHARE = float(os.environ.get("LOADTEST_BATCH_SHARE", "0.1"))
THINK = [float(x) for x in os.environ.get("LOADTEST_THINK", "0.5,2").split(",")]
SEED = int(os.environ.get("LOADTEST_SEED", "0"))
DEFAULT_MIX = {"invoice": 3, "receipt": 2, "email_triage": 3, "contract_clause": 1, "entities": 1}


def task_weights() -> dict[str, float]:
    raw = os.environ.get("LOADTEST_TASKS")
    if not raw:
        return dict(DEFAULT_MIX)
    # "invoice=3,receipt=1"; a bare name weighs 1 ("receipt" alone: only receipts)
    parts = (part.strip().partition("=") for part in raw.split(",") if part.strip())
    return {name: float(weight) if weight else 1.0 for name, _, weight in parts}


def load_texts(tasks: list[str]) -> dict[str, list[str]]:
    """Texts per task, short and long alike: LOADTEST_DATA_DIR/<task>.jsonl if present, else synthetic."""
    folder = Path(os.environ["LOADTEST_DATA_DIR"]) if os.environ.get("LOADTEST_DATA_DIR") else None
    texts = {}
    for name in tasks:
        path = folder / f"{name}.jsonl" if folder else None
        if path and path.is_file():
            texts[name] = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
        elif name in GENERATORS:
            texts[name] = [r.text for r in generate(name, 200, seed=SEED)]
        else:
            raise SystemExit(f"no texts for task {name!r}: put {name}.jsonl in LOADTEST_DATA_DIR")
    return texts


WEIGHTS = task_weights()
TEXTS = load_texts(list(WEIGHTS))
# gevent's loop caches "now": after seconds of loading above (a busy machine), Locust's --run-time timer
# would be armed from a stale clock and fire at once, ending the run before a single request.
gevent.get_hub().loop.update_now()
VALIDATORS: dict[str, Validator] = {}


@events.test_start.add_listener
def fetch_schemas(environment: Any, **_: Any) -> None:
    """Compile each task's schema once, from the service itself, so checks match what it enforces."""
    import httpx

    headers = (
        {"Authorization": f"Bearer {os.environ['LOADTEST_API_KEY']}"} if os.environ.get("LOADTEST_API_KEY") else {}
    )
    for name in WEIGHTS:
        r = httpx.get(f"{environment.host}/v1/tasks/{name}", headers=headers, timeout=30)
        r.raise_for_status()
        VALIDATORS[name] = compile_schema(r.json()["schema"]).validator  # by its declared draft, as the service


def problem_with(task_name: str, result: dict[str, Any]) -> str | None:
    """Why a successful-looking answer is wrong, or None."""
    if "data" not in result:
        return "no data in the response"
    validator = VALIDATORS.get(task_name)
    if validator is not None:
        error = next(iter(validator.iter_errors(result["data"])), None)
        if error is not None:
            return f"data does not validate: {error.json_path}: {error.message}"
    return None


class ExtractionUser(HttpUser):  # type: ignore[misc]
    wait_time = between(THINK[0], THINK[-1])

    def on_start(self) -> None:
        self.rng = random.Random(SEED + id(self))
        self.headers = {"X-Extraction-Backend": BACKEND} if BACKEND else {}
        if os.environ.get("LOADTEST_API_KEY"):
            self.headers["Authorization"] = f"Bearer {os.environ['LOADTEST_API_KEY']}"
        self.label = BACKEND or "default"

    def pick(self) -> tuple[str, str]:
        name = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        return name, self.rng.choice(TEXTS[name])

    @task
    def extract(self) -> None:
        if self.rng.random() < BATCH_SHARE:
            self.batch()
            return
        name, text = self.pick()
        with self.client.post("/v1/extract", json={"task": name, "text": text}, headers=self.headers,
                              name=f"{name}@{self.label}", catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif problem := problem_with(name, response.json()):
                response.failure(problem)

    def batch(self) -> None:
        items = [self.pick() for _ in range(self.rng.randint(2, 5))]
        body = {"items": [{"task": name, "text": text} for name, text in items]}
        with self.client.post("/v1/extract/batch", json=body, headers=self.headers, name=f"batch@{self.label}",
                              catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            for (name, _), item in zip(items, response.json()["results"], strict=True):
                problem = item["error"]["code"] if not item["ok"] else problem_with(name, item["result"])
                if problem:
                    response.failure(f"item {item['index']} ({name}): {problem}")
                    return


@events.quitting.add_listener
def slo_gate(environment: Any, **_: Any) -> None:
    """Exit non-zero when the run missed LOADTEST_SLO_P95_MS or LOADTEST_SLO_ERROR_RATE (master's totals)."""
    total = environment.stats.total
    p95_limit = os.environ.get("LOADTEST_SLO_P95_MS")
    error_limit = os.environ.get("LOADTEST_SLO_ERROR_RATE")
    if p95_limit and total.num_requests and total.get_response_time_percentile(0.95) > float(p95_limit):
        environment.process_exit_code = 1
    if error_limit and total.fail_ratio > float(error_limit):
        environment.process_exit_code = 1
