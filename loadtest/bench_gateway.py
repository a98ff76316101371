"""Gateway overhead: one loopback upstream hit directly, through this service and through LiteLLM's proxy.

    python -m loadtest.bench_gateway --out var/bench/gateway          # one run, all three, same machine

The upstream is `loadtest.mock_upstream` (zero think time, answers with a schema-valid object). Targets:

- `direct`: the upstream itself, sent the exact chat-completions body this service sends for task `invoice`;
- `service`: `POST /v1/extract` through this service (parse + JSON Schema validation on, metrics, JSON logs);
- `litellm`: `POST /v1/chat/completions` through LiteLLM's proxy (`litellm[proxy]<1.109`, installed into its
  own venv on first use), with one model routed to the same upstream and the same body as `direct`.

Each target gets a warm-up, a latency run with one connection (added latency = target minus direct, at
P50 and P99) and a saturation run with many connections (max requests/s). The load generator is `wrk`
(`apt-get install wrk`): a C client, so the Python under test, not the client, is what is measured.
Writes `OUT/gateway.json` and `OUT/gateway.png`; prints the table. Numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from backends.base import BackendRequest
from backends.openai_compat import OpenAIBackend
from loadtest.machine import machine
from service.config import DEFAULT_CONFIG, BackendConfig
from service.demo import SAMPLES
from service.prompts import build_messages
from service.tasks import load_tasks
from service.terminal import console as make_console

console = make_console(stderr=True)
CACHE = Path(os.environ.get("EXTRACTION_CACHE", Path.home() / ".cache" / "extraction-service"))
LITELLM_SPEC = "litellm[proxy]<1.109"
MASTER_KEY = "sk-bench-master"
TASK = "invoice"

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers 200; fail early with the log tail if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} before it became ready")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a child process's readiness, not synchronising tests
    raise SystemExit(f"{url} not ready after {timeout_s:.0f} s")


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def litellm_binary(explicit: str | None) -> Path:
    """LiteLLM in its own venv (its pins clash with ours); created on first use."""
    if explicit:
        return Path(explicit)
    venv = CACHE / "litellm-venv"
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        console.print(f"installing {LITELLM_SPEC} into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True)
    return binary


def upstream_body() -> dict[str, Any]:
    """The exact chat-completions body this service sends upstream for the benchmark request."""
    task = load_tasks(DEFAULT_CONFIG.parent / "tasks")[TASK]
    cfg = BackendConfig(name="mock", kind="openai", model="mock-model")
    request = BackendRequest(
        messages=build_messages(task, SAMPLES[TASK], "few_shot"),
        schema=task.json_schema,
        schema_name=task.name,
        mode="json_schema",
        strict=True,
        max_output_tokens=cfg.max_output_tokens,
        temperature=0.0,
        timeout_s=cfg.timeout_s,
    )
    return OpenAIBackend(cfg)._body(request)


def wrk(url: str, body: dict[str, Any], connections: int, duration_s: float, threads: int, key: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT.format(body=json.dumps(body), key=key))
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration_s)}s", "--timeout", "10s", "-s", f.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    r: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    seconds = r["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": r["requests"],
        "requests_per_s": round(r["requests"] / seconds, 1),
        "errors": r["non2xx"] + r["socket_errors"],
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "mean_ms": round(r["mean_us"] / 1000, 3),
        "max_ms": r["max_us"] / 1000,
    }


def check_answer(name: str, url: str, body: dict[str, Any], key: str) -> None:
    """One request by hand: a 200 whose content is the upstream's schema-valid object."""
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"{name}: {r.status_code} {r.text[:300]}")
    reply = r.json()
    data = reply["data"] if "data" in reply else json.loads(reply["choices"][0]["message"]["content"])
    if not isinstance(data, dict) or "total_amount" not in data:
        raise SystemExit(f"{name}: unexpected answer {reply!r:.300}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    body = upstream_body()
    up_port, svc_port, llm_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    config = {
        "default_backend": "mock",
        "backends": {
            "mock": {
                "kind": "openai",
                "base_url": f"{upstream}/v1",
                "model": "mock-model",
                "api_key_env": "BENCH_UPSTREAM_KEY",
                "max_concurrency": 1024,
            }
        },
        "tasks_dir": str(DEFAULT_CONFIG.parent / "tasks"),
    }
    (work / "service.yaml").write_text(yaml.safe_dump(config))
    (work / "litellm.yaml").write_text(
        yaml.safe_dump({
            "model_list": [{
                "model_name": "mock-model",
                "litellm_params": {"model": "openai/mock-model", "api_base": f"{upstream}/v1", "api_key": "sk-none"},
            }],
            "litellm_settings": {"drop_params": True, "telemetry": False},
            "general_settings": {"master_key": MASTER_KEY},
        })
    )  # fmt: skip
    targets: dict[str, tuple[str, dict[str, Any]]] = {
        "direct": (f"{upstream}/v1/chat/completions", body),
        "service": (f"http://127.0.0.1:{svc_port}/v1/extract", {"task": TASK, "text": SAMPLES[TASK]}),
        "litellm": (f"http://127.0.0.1:{llm_port}/v1/chat/completions", body),
    }
    if args.skip_litellm:
        del targets["litellm"]
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        up = stack.enter_context(
            process([sys.executable, "-m", "loadtest.mock_upstream", "--port", str(up_port)], out / "upstream.log")
        )
        wait_http(f"{upstream}/health", up, 30)
        for name, (url, payload) in targets.items():
            # Only the gateway under test runs beside the upstream: an idle peer still takes CPU (LiteLLM's
            # background loops put 150-380 ms outliers into the direct runs when all three were up at once).
            with ExitStack() as gateway:
                if name == "service":
                    svc = gateway.enter_context(
                        process(
                            [sys.executable, "-m", "service.cli", "serve", "--config", str(work / "service.yaml"),
                             "--port", str(svc_port), "--workers", str(args.workers)],
                            out / "service.log",
                            env={"BENCH_UPSTREAM_KEY": "sk-none"},
                        )
                    )  # fmt: skip
                    wait_http(f"http://127.0.0.1:{svc_port}/healthz", svc, 60)
                elif name == "litellm":
                    llm = gateway.enter_context(
                        process(
                            [str(litellm_binary(args.litellm)), "--config", str(work / "litellm.yaml"),
                             "--port", str(llm_port), "--num_workers", str(args.workers)],
                            out / "litellm.log",
                            env={"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR",
                                 "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                        )
                    )  # fmt: skip
                    wait_http(f"http://127.0.0.1:{llm_port}/health/liveliness", llm, 180)
                check_answer(name, url, payload, MASTER_KEY)
                console.print(f"[bold]{name}[/]: warm-up, latency (1 connection), saturation ({args.connections})")
                wrk(url, payload, 8, 3, 1, MASTER_KEY)
                results[name] = {
                    "latency": wrk(url, payload, 1, args.duration, 1, MASTER_KEY),
                    "saturation": wrk(url, payload, args.connections, args.duration, args.wrk_threads, MASTER_KEY),
                }
    summary = summarise(results)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),  # CPU model, flags, dtype
        "workers": args.workers,
        "duration_s": args.duration,
        "connections": args.connections,
        "litellm": litellm_version(args) if "litellm" in targets else None,
        "targets": results,
        "summary": summary,
    }
    (out / "gateway.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "gateway.png")
    show(results, summary)
    console.print(f"wrote {out / 'gateway.json'} and {out / 'gateway.png'}")
    return report


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    direct = results["direct"]["latency"]
    s: dict[str, Any] = {}
    for name in ("service", "litellm"):
        if name not in results:
            continue
        lat = results[name]["latency"]
        s[name] = {
            "added_p50_ms": round(lat["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(lat["p99_ms"] - direct["p99_ms"], 3),
            "max_requests_per_s": results[name]["saturation"]["requests_per_s"],
        }
    if "service" in s and "litellm" in s:
        a, b = s["service"], s["litellm"]
        s["service_vs_litellm"] = {
            "added_p50_ratio": round(a["added_p50_ms"] / b["added_p50_ms"], 3) if b["added_p50_ms"] > 0 else None,
            "added_p99_ratio": round(a["added_p99_ms"] / b["added_p99_ms"], 3) if b["added_p99_ms"] > 0 else None,
            "max_rps_ratio": round(a["max_requests_per_s"] / b["max_requests_per_s"], 2),
        }
    return s


def show(results: dict[str, Any], summary: dict[str, Any]) -> None:
    table = Table(title="gateway overhead (loopback upstream, same machine, same run)")
    for col in ("target", "P50 ms (1 conn)", "P99 ms (1 conn)", "added P50", "added P99", "max req/s", "P99 at max",
                "errors"):  # fmt: skip
        table.add_column(col, justify="right" if col != "target" else "left")
    for name, r in results.items():
        lat, sat, s = r["latency"], r["saturation"], summary.get(name, {})
        table.add_row(
            name, f"{lat['p50_ms']:.3f}", f"{lat['p99_ms']:.3f}",
            f"{s['added_p50_ms']:.3f}" if s else "-", f"{s['added_p99_ms']:.3f}" if s else "-",
            f"{sat['requests_per_s']:.0f}", f"{sat['p99_ms']:.1f}", str(lat["errors"] + sat["errors"]),
        )  # fmt: skip
    make_console().print(table)
    if ratio := summary.get("service_vs_litellm"):
        make_console().print(f"service / litellm: added P50 x{ratio['added_p50_ratio']}, added P99 "
                        f"x{ratio['added_p99_ratio']}, max requests/s x{ratio['max_rps_ratio']}")  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], [results[n]["latency"]["p50_ms"] for n in names], 0.4, label="P50")
    ax1.bar([i + 0.2 for i in x], [results[n]["latency"]["p99_ms"] for n in names], 0.4, label="P99")
    ax1.set_xticks(list(x), names)
    ax1.set_ylabel("ms, one connection")
    ax1.set_title("latency")
    ax1.legend()
    ax2.bar(names, [results[n]["saturation"]["requests_per_s"] for n in names], color="tab:green")
    ax2.set_ylabel("requests/s")
    ax2.set_title("max throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def litellm_version(args: argparse.Namespace) -> str:
    pip = litellm_binary(args.litellm).parent / "pip"
    show_out = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in show_out.splitlines() if ln.startswith("Version:")), "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("var/bench/gateway"))
    p.add_argument("--duration", type=int, default=10, help="Seconds per measured run.")
    p.add_argument("--connections", type=int, default=64, help="Connections of the saturation run.")
    p.add_argument("--workers", type=int, default=1, help="Worker processes of each gateway.")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--litellm", help="Path of a `litellm` binary (default: a managed venv).")
    p.add_argument("--skip-litellm", action="store_true")
    run(p.parse_args())


if __name__ == "__main__":
    main()
