"""Decode efficiency against this machine's limits, and the vLLM-CPU serving levers that move it.

    python -m loadtest.bench_decode --out var/bench/decode.json

1. Measures the machine once: memory read bandwidth (a large torch tensor summed on all cores) and the
   matmul rate in the dtype the engine computes in here (square torch.mm, all cores).
2. Ceilings for the served model: batch 1 decode is bandwidth-bound (every weight is read once per token):
   tokens/s <= bandwidth / weight bytes; large-batch decode is compute-bound: tokens/s <= matmul FLOP/s /
   (2 x parameters). Attention and sampling are ignored, so the true ceilings are lower still.
3. Starts vLLM once per lever setting (thread binding, KV-cache space, max-num-seqs, chunked prefill;
   dtype float32 vs bfloat16, eager vs compiled, a freshly merged model compiled vs eager (its first start);
   merged vs unmerged adapters: `bench_e2e` and `bench_local`;
   compact JSON: `bench_json_tokens`), records its start-up time to /health, measures output tokens/s at
   concurrency 1 and 32 (64 output tokens per request, straight to vLLM), then reports measured / ceiling.
   The result names the CPU (model, flags) and the dtype of each row. Numbers, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from backends.local.base_model import prepare
from backends.local.config import VllmServer
from backends.local.hardware import choose_dtype
from backends.local.vllm import VllmProcess, ensure_vllm
from loadtest.bench_local import throughput
from loadtest.machine import describe, machine
from service.terminal import console as make_console

console = make_console(stderr=True)

# (name, extra vLLM args, VllmServer fields): each on top of the shipped defaults (cpu_threads_bind "all").
LEVERS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("default", [], {}),
    ("bind-auto", [], {"cpu_threads_bind": "auto"}),  # vLLM's own default: leaves a core to the frontend
    ("bind-none", [], {"cpu_threads_bind": "nobind"}),
    ("kv-cache-8g", [], {"kv_cache_gib": 8}),
    ("max-num-seqs-64", ["--max-num-seqs", "64"], {}),
    ("no-chunked-prefill", ["--no-enable-chunked-prefill"], {}),
    # dtype and start-up: bf16 is emulated on CPUs without AVX512-BF16/AMX; eager skips graph compilation
    ("float32", [], {"dtype": "float32", "enforce_eager": False}),
    ("bfloat16", [], {"dtype": "bfloat16", "enforce_eager": False}),
    ("float32-eager", [], {"dtype": "float32", "enforce_eager": True}),
    ("bfloat16-eager", [], {"dtype": "bfloat16", "enforce_eager": True}),
    # a merged model served alone (enable_lora false), freshly merged each run: the first start of a new model,
    # as after `extraction model merge`, so the compiled lever pays its graph compilation (cached afterwards)
    ("merged", [], {"merged": True, "enforce_eager": False}),
    ("merged-eager", [], {"merged": True, "enforce_eager": True}),
]


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    import torch

    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    x.sum()  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def matmul_tflops(n: int = 2048, repeats: int = 5, dtype: str = "bfloat16") -> float:
    """Square matmul rate in `dtype` on all cores (the dtype the engine computes in on this machine)."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def model_size(folder: Path) -> tuple[int, int]:
    """(parameters, bytes) of the safetensors weights in `folder`."""
    from safetensors import safe_open

    params = nbytes = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                t = f.get_slice(key)
                count = 1
                for d in t.get_shape():
                    count *= d
                params += count
                nbytes += count * {"BF16": 2, "F16": 2, "F32": 4}.get(t.get_dtype(), 2)
    return params, nbytes


def fresh_merged_model(base: Path) -> Path:
    """A tiny random adapter merged into the base, in a new folder (vLLM's compile cache has not seen it)."""
    from loadtest.bench_local import make_adapter_and_merged

    return make_adapter_and_merged(base, Path(tempfile.mkdtemp(prefix="bench-decode-")))[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("var/bench/decode.json"))
    p.add_argument("--port", type=int, default=8078)
    p.add_argument("--levers", default=",".join(name for name, *_ in LEVERS))
    args = p.parse_args()
    base = prepare()
    params, _ = model_size(base)
    nbytes = params * (4 if choose_dtype() == "float32" else 2)  # the weights as served, not as stored
    compute_dtype = choose_dtype()  # bf16 only where the CPU computes it natively
    bw, tflops = memory_bandwidth_gbs(), matmul_tflops(dtype=compute_dtype)
    ceiling_b1 = bw * 1e9 / nbytes
    ceiling_big = tflops * 1e12 / (2 * params)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "cores": os.cpu_count(),
        "memory_read_gb_s": round(bw, 1),
        "matmul_dtype": compute_dtype,
        "matmul_tflops": round(tflops, 3),
        "model_parameters": params,
        "model_weight_bytes": nbytes,
        "ceiling_tok_s_batch1": round(ceiling_b1, 1),
        "ceiling_tok_s_compute": round(ceiling_big, 1),
        "levers": [],
    }
    console.print({k: v for k, v in result.items() if k != "levers"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = set(args.levers.split(","))
    if args.out.exists():  # a run of some levers keeps the other levers' rows from the last run
        result["levers"] = [r for r in json.loads(args.out.read_text())["levers"] if r["lever"] not in wanted]
    for name, extra, fields in LEVERS:
        if name not in wanted:
            continue
        if fields.get("merged"):
            merged = fresh_merged_model(base)
            fields = {**{k: v for k, v in fields.items() if k != "merged"}, "model": str(merged), "enable_lora": False}
        cfg = VllmServer(port=args.port, extra_args=extra, **fields)
        server = VllmProcess(cfg)
        server.stop()
        try:
            python = ensure_vllm(cfg)
            t0 = time.monotonic()
            server.start(python, log=console.print)
            startup_s = time.monotonic() - t0
            b1 = asyncio.run(throughput(server.url, cfg.served_model_name, 1))
            b32 = asyncio.run(throughput(server.url, cfg.served_model_name, 32))
        except Exception as e:  # a lever this vLLM build rejects is a result too
            console.print(f"[red]{name}: {e}[/red]")
            result["levers"].append({"lever": name, "error": str(e)[:300]})
            continue
        finally:
            server.stop()
        row = {
            "lever": name,
            "dtype": server.dtype(),
            "startup_s": round(startup_s, 1),
            "tok_s_batch1": b1["output_tok_per_s"],
            "tok_s_conc32": b32["output_tok_per_s"],
            "p95_ms_conc32": b32["p95_ms"],
            "share_of_bandwidth_ceiling_batch1": round(b1["output_tok_per_s"] / ceiling_b1, 3),
            "share_of_compute_ceiling_conc32": round(b32["output_tok_per_s"] / ceiling_big, 4),
        }
        console.print(row)
        result["levers"].append(row)
        args.out.write_text(json.dumps(result, indent=2))
    show(result)


def show(result: dict[str, Any]) -> None:
    out = make_console()
    out.print(describe(result["machine"]) if "machine" in result else "")
    out.print(
        f"memory read {result['memory_read_gb_s']} GB/s, {result.get('matmul_dtype', 'bf16')} matmul "
        f"{result.get('matmul_tflops', result.get('bf16_matmul_tflops'))} TFLOP/s; "
        f"model {result['model_parameters'] / 1e6:.0f} M parameters, {result['model_weight_bytes'] / 1e6:.0f} MB; "
        f"ceilings: {result['ceiling_tok_s_batch1']} tok/s at batch 1 (bandwidth), "
        f"{result['ceiling_tok_s_compute']} tok/s at large batch (compute)"
    )
    table = Table(title="vLLM-CPU levers (64 output tokens per request)")
    cols = ("lever", "dtype", "start s", "tok/s, 1 request", "of ceiling", "tok/s, 32 concurrent", "of ceiling",
            "P95 ms at 32")  # fmt: skip
    for col in cols:
        table.add_column(col)
    for r in result["levers"]:
        if "error" in r:
            table.add_row(r["lever"], "", "", "failed: " + r["error"][:60], "", "", "", "")
            continue
        table.add_row(r["lever"], r.get("dtype", "?"), str(r.get("startup_s", "?")), str(r["tok_s_batch1"]),
                      f"{r['share_of_bandwidth_ceiling_batch1']:.0%}",
                      str(r["tok_s_conc32"]), f"{r['share_of_compute_ceiling_conc32']:.1%}",
                      str(r["p95_ms_conc32"]))  # fmt: skip
    out.print(table)


if __name__ == "__main__":
    main()
