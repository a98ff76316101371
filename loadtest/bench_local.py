"""Benchmarks of the local stack on this machine (numbers for the README, not a test).

    python -m loadtest.bench_local --out var/bench/local.json

Measures: vLLM cold start; per-task single-request latency and output tokens of `local-prompted` through the
service; output tok/s and requests/s at 1, 8 and 32 concurrent requests for the base model, an unmerged LoRA
adapter and the merged adapter; and output tokens with grammar-compact JSON on versus off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from backends.local.base_model import prepare
from backends.local.config import VllmServer
from backends.local.merge import merge_adapter
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.machine import describe, machine
from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.demo import SAMPLES
from service.terminal import console as make_console
from training.lora import tiny_adapter

console = make_console(stderr=True)
TASKS = DEFAULT_CONFIG.parent / "tasks"
PROMPT = [
    {"role": "system", "content": "Extract invoice as JSON."},
    {"role": "user", "content": "<document>\n" + SAMPLES["invoice"] + "\n</document>"},
]


def start(cfg: VllmServer) -> tuple[VllmProcess, float]:
    server = VllmProcess(cfg)
    server.stop()
    t0 = time.monotonic()
    server.start(ensure_vllm(cfg), log=console.print)
    return server, time.monotonic() - t0


async def throughput(url: str, model: str, concurrency: int, max_tokens: int = 64) -> dict[str, float]:
    """`concurrency` workers, each sending requests back to back; fixed output length (ignore_eos)."""
    total = max(8, concurrency * 3)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    tokens = 0
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json={
                "model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True,
            })  # fmt: skip
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await worker_warmup(client, model)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": total,
        "output_tok_per_s": round(tokens / elapsed, 1),
        "requests_per_s": round(total / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000),
    }


async def worker_warmup(client: httpx.AsyncClient, model: str) -> None:
    r = await client.post("/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 4})
    r.raise_for_status()


def per_task(vllm_url: str, tmp: Path, repeats: int = 3) -> list[dict[str, Any]]:
    """Single requests through the real service (`local-prompted`, few-shot prompt), sequential."""
    backend = {"kind": "vllm", "base_url": f"{vllm_url}/v1", "model": "smollm2-135m", "timeout_s": 300,
               "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002}}  # fmt: skip
    config = tmp / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "default_backend": "local-prompted",
                "tasks_dir": str(TASKS),
                "backends": {"local-prompted": backend},
                "retry": {"deadline_s": 600},
            }
        )
    )  # fmt: skip  (JSON is YAML)
    app = create_app(Settings(config=config))
    rows = []
    with ServerThread(app) as api, httpx.Client(base_url=api.url, timeout=600) as client:
        for task, text in SAMPLES.items():
            runs = [client.post("/v1/extract", json={"task": task, "text": text}).json() for _ in range(repeats)]
            ok = [r for r in runs if "data" in r]
            rows.append({
                "task": task,
                "ok": len(ok),
                "latency_ms_median": round(statistics.median(r["latency_ms"] for r in ok)) if ok else None,
                "input_tokens": ok[0]["usage"]["input_tokens"] if ok else None,
                "output_tokens": ok[0]["usage"]["output_tokens"] if ok else None,
                "attempts": [r.get("attempts") for r in ok],
            })  # fmt: skip
    return rows


def output_tokens(vllm_url: str) -> dict[str, int]:
    """Output tokens of each sample's few-shot extraction, straight from vLLM with the task's schema."""
    from service.prompts import build_messages
    from service.tasks import load_tasks

    tasks = load_tasks(TASKS)
    out = {}
    for name, text in SAMPLES.items():
        task = tasks[name]
        r = httpx.post(f"{vllm_url}/v1/chat/completions", timeout=300, json={
            "model": "smollm2-135m", "messages": build_messages(task, text, "few_shot"), "max_tokens": 384,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": task.json_schema}},
        })  # fmt: skip
        r.raise_for_status()
        out[name] = r.json()["usage"]["completion_tokens"]
    return out


def make_adapter_and_merged(base: Path, tmp: Path) -> tuple[Path, Path]:
    adapter = tiny_adapter(base, tmp / "bench-lora", steps=2)
    merge_adapter(adapter, tmp / "merged", base)
    return adapter, tmp / "merged"


def main() -> None:
    parser = argparse.ArgumentParser(description="Local-stack benchmarks")
    parser.add_argument("--out", type=Path, default=Path("var/bench/local.json"))
    parser.add_argument("--port", type=int, default=8077)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--skip-whitespace", action="store_true", help="Skip the any-whitespace grammar run.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-local-"))
    base = prepare()
    adapter, merged = make_adapter_and_merged(base, tmp)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage, so a failure late in the run keeps what was measured
        args.out.write_text(json.dumps(results, indent=2))

    cfg = VllmServer(port=args.port, adapters={"bench-lora": str(adapter)}, compact_json=True)
    server, results["cold_start_s"] = start(cfg)
    try:
        results["per_task"] = per_task(server.url, tmp)
        results["output_tokens_compact"] = output_tokens(server.url)
        for label, model in (("base", "smollm2-135m"), ("unmerged_adapter", "bench-lora")):
            results[label] = [asyncio.run(throughput(server.url, model, c)) for c in args.concurrency]
            console.print(label, results[label])
            save()
    finally:
        server.stop()
    if not args.skip_whitespace:
        server, _ = start(VllmServer(port=args.port, compact_json=False))
        try:
            results["output_tokens_any_whitespace"] = output_tokens(server.url)
            save()
        finally:
            server.stop()
    # the merged model served alone, as deploy/configs/merged-receipt.yaml does: no LoRA machinery
    server, _ = start(VllmServer(port=args.port, model=str(merged), compact_json=True, enable_lora=False))
    try:
        results["merged_adapter"] = [asyncio.run(throughput(server.url, "smollm2-135m", c)) for c in args.concurrency]
    finally:
        server.stop()
    save()
    report(results)


def report(results: dict[str, Any]) -> None:
    out = make_console()
    out.print(describe(results["machine"]) if isinstance(results.get("machine"), dict) else "")
    out.print(f"cold start: {results['cold_start_s']:.1f} s")
    table = Table(title="local-prompted, single requests through the service")
    for column in ("task", "median latency ms", "input tokens", "output tokens"):
        table.add_column(column)
    for row in results["per_task"]:
        table.add_row(row["task"], str(row["latency_ms_median"]), str(row["input_tokens"]), str(row["output_tokens"]))
    out.print(table)
    table = Table(title="throughput (64 output tokens per request)")
    for column in ("model", "concurrency", "output tok/s", "requests/s", "p50 ms", "p95 ms"):
        table.add_column(column)
    for label in ("base", "unmerged_adapter", "merged_adapter"):
        for row in results[label]:
            table.add_row(label, str(row["concurrency"]), str(row["output_tok_per_s"]), str(row["requests_per_s"]),
                          str(row["p50_ms"]), str(row["p95_ms"]))  # fmt: skip
    out.print(table)
    if "output_tokens_any_whitespace" not in results:
        return
    compact, loose = results["output_tokens_compact"], results["output_tokens_any_whitespace"]
    out.print(f"output tokens, compact grammar vs any whitespace: {compact} vs {loose} "
              f"(total {sum(compact.values())} vs {sum(loose.values())})")  # fmt: skip


if __name__ == "__main__":
    main()
