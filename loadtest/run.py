"""Run Locust headless against the service and summarise: `extraction loadtest`.

    extraction loadtest --host http://127.0.0.1:8080 --users 20 --spawn-rate 5 --duration 60s \\
        --slo-p95-ms 3000 --slo-error-rate 0.01 --out var/loadtest
    extraction loadtest --host ... --step-users 1,2,4,8,16 --duration 30s --slo-p95-ms 3000   # capacity search

Writes Locust's CSV and HTML reports and DIR/summary.json (requests_per_s, p50/p95/p99 in ms, error_rate,
requests; then per task and backend; server-side P95 from our Prometheus histogram, which Locust's rounding
does not blur). Exits 1 when an SLO is missed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class LoadArgs:
    host: str
    users: int = 10
    spawn_rate: float = 5
    duration: str = "60s"
    backend: str | None = None
    slo_p95_ms: float | None = None
    slo_error_rate: float | None = None
    out: Path = Path("var/loadtest")
    workers: int = 0
    tasks: str | None = None
    batch_share: float = 0.1
    think: str = "0.5,2"
    api_key: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def server_histogram(host: str) -> dict[float, float]:
    """Cumulative bucket counts of extraction_request_duration_seconds, summed over labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{host}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "extraction_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus-style quantile (linear within a bucket) of the requests between two scrapes, in seconds."""
    delta = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    if not delta or delta[-1][1] <= 0:
        return None
    rank = q * delta[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            width = le - lower_le
            return lower_le + width * ((rank - lower_count) / (count - lower_count) if count > lower_count else 1)
        lower_le, lower_count = le, count
    return None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def read_stats(prefix: Path) -> dict[str, Any]:
    """summary.json's shape from Locust's `<prefix>_stats.csv`."""
    with prefix.with_name(prefix.name + "_stats.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))

    def shape(row: dict[str, str]) -> dict[str, Any]:
        requests = int(_number(row["Request Count"]))
        return {
            "requests": requests,
            "failures": int(_number(row["Failure Count"])),
            "error_rate": round(_number(row["Failure Count"]) / requests, 4) if requests else 0.0,
            "requests_per_s": round(_number(row["Requests/s"]), 3),
            "p50_ms": _number(row["50%"]),
            "p95_ms": _number(row["95%"]),
            "p99_ms": _number(row["99%"]),
        }

    total = next(r for r in rows if r["Name"] == "Aggregated")
    by_name: dict[str, Any] = {}
    for row in rows:
        if row["Name"] != "Aggregated":
            task, _, backend = row["Name"].partition("@")
            by_name.setdefault(task, {})[backend] = shape(row)
    return {**shape(total), "by_task": by_name}


def run_once(args: LoadArgs, prefix: Path) -> tuple[int, dict[str, Any]]:
    """One headless Locust run (master + workers when asked); returns (exit code, summary)."""
    env = {**os.environ, **args.extra_env, "LOADTEST_BATCH_SHARE": str(args.batch_share), "LOADTEST_THINK": args.think}
    for key, value in (("LOADTEST_BACKEND", args.backend), ("LOADTEST_TASKS", args.tasks),
                       ("LOADTEST_SLO_P95_MS", args.slo_p95_ms), ("LOADTEST_SLO_ERROR_RATE", args.slo_error_rate),
                       ("LOADTEST_API_KEY", args.api_key)):  # fmt: skip
        if value is not None:
            env[key] = str(value)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    command = [*common, "--headless", "--host", args.host, "-u", str(args.users), "-r", str(args.spawn_rate),
               "-t", args.duration, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary",
               "--stop-timeout", "30"]  # fmt: skip
    workers = []
    if args.workers > 0:
        command += ["--master", "--expect-workers", str(args.workers), "--master-bind-host", "127.0.0.1"]
        workers = [subprocess.Popen([*common, "--worker", "--master-host", "127.0.0.1"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(args.workers)]  # fmt: skip
    before = server_histogram(args.host)
    try:
        code = subprocess.run(command, env=env).returncode
    finally:
        for worker in workers:
            worker.wait(timeout=60)
    after = server_histogram(args.host)
    summary = read_stats(prefix)
    p95 = histogram_quantile(0.95, before, after)
    summary["server_p95_ms"] = round(p95 * 1000, 1) if p95 is not None else None
    summary["users"] = args.users
    return code, summary


def slo_missed(summary: dict[str, Any], args: LoadArgs) -> list[str]:
    missed = []
    if args.slo_p95_ms is not None and summary["requests"] and summary["p95_ms"] > args.slo_p95_ms:
        missed.append(f"P95 {summary['p95_ms']:.0f} ms > {args.slo_p95_ms:g} ms")
    if args.slo_error_rate is not None and summary["error_rate"] > args.slo_error_rate:
        missed.append(f"error rate {summary['error_rate']:.2%} > {args.slo_error_rate:.2%}")
    return missed


def run(args: LoadArgs) -> tuple[int, dict[str, Any]]:
    code, summary = run_once(args, args.out / "locust")
    summary["slo"] = {"p95_ms": args.slo_p95_ms, "error_rate": args.slo_error_rate,
                      "missed": slo_missed(summary, args)}  # fmt: skip
    summary["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return (1 if summary["slo"]["missed"] or code else 0), summary


def step(args: LoadArgs, levels: list[int]) -> dict[str, Any]:
    """Run each user level in turn; the capacity is the highest requests/s whose P95 stays within the SLO."""
    steps = []
    for users in levels:
        level = LoadArgs(**{**args.__dict__, "users": users, "spawn_rate": max(args.spawn_rate, users)})
        _, summary = run_once(level, args.out / f"step-{users:03d}" / "locust")
        summary["within_slo"] = not slo_missed(summary, args)
        steps.append(summary)
    passing = [s for s in steps if s["within_slo"] and s["requests"]]
    capacity = max(passing, key=lambda s: s["requests_per_s"]) if passing else None
    result = {"steps": steps, "slo_p95_ms": args.slo_p95_ms,
              "capacity_requests_per_s": capacity["requests_per_s"] if capacity else None,
              "capacity_users": capacity["users"] if capacity else None}  # fmt: skip
    (args.out / "steps.json").write_text(json.dumps(result, indent=2))
    plot_steps(steps, args.slo_p95_ms, args.out / "latency_vs_load.png")
    return result


def plot_steps(steps: list[dict[str, Any]], slo_ms: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rps = [s["requests_per_s"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_ms", "P50"), ("p95_ms", "P95"), ("p99_ms", "P99")):
        ax.plot(rps, [s[key] for s in steps], "o-", label=label)
    if slo_ms:
        ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    for s in steps:
        ax.annotate(f"{s['users']}u", (s["requests_per_s"], s["p95_ms"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)  # fmt: skip
    ax.set_xlabel("achieved requests/s")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency percentiles against offered load")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
