"""Two llama-server builds against each other on the same receipts (numbers for the README, not a test).

    EXTRACTION_CACHE_DIR=/tmp/fast extraction llamacpp install
    EXTRACTION_LLAMACPP_FULL_OPT=1 extraction llamacpp install
    python -m loadtest.bench_llamacpp_build --data var/recipes/receipt/sroie/val.jsonl --limit 10 --runs 3 \\
        fast=/tmp/fast/llamacpp/KEY/bin/llama-server \\
        full=~/.cache/extraction-service/llamacpp/KEY-fullopt/bin/llama-server

Each build serves the same model (the default's Q8_0 conversion unless `--model`) with the same GGUF LoRA
(`--lora`, default: the shipped receipt adapter's conversion) on the service's own llama-server command line,
one slot, 2 threads, no prompt cache; each
receipt goes in greedy with the receipt schema as its grammar. The builds take turns (`--runs` rounds), so a
slower minute of the machine does not land on one build only. Reported per run: wall time for all receipts,
llama-server's own prefill and decode times (its `timings`), decode tokens/s, and whether every answer is the
same text as the first build's first run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx

from backends.local.base_model import cache_dir
from backends.local.config import LlamaCppServer
from backends.local.llamacpp import LlamaCppProcess, tool_env

SCHEMA = {
    "type": "object",
    "properties": {"company": {"type": "string"}, "date": {"type": "string"}, "address": {"type": "string"},
                   "total": {"type": "number"}},
    "required": ["company", "date", "address", "total"],
    "additionalProperties": False,
}  # fmt: skip


def newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"nothing matches {folder / pattern}: start the default stack once (make demo) or pass it")
    return found[-1]


def serve_and_ask(binary: Path, model: Path, lora: Path, port: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = LlamaCppServer(model=str(model), port=port, parallel=1, ctx_size=4096, threads=2, cache_prompt=False)
    server = LlamaCppProcess(cfg)  # the service's own command line and health wait, another build's binary
    server.stop()
    server.launch(server.command(binary, {"receipt-lora": lora}), tool_env(binary.parent.parent))
    try:
        texts, wall, prefill, decode, decoded = [], 0.0, 0.0, 0.0, 0
        for row in rows:
            body = {
                "messages": [{"role": "system", "content": "Extract the receipt as JSON."},
                             {"role": "user", "content": row["text"]}],
                "temperature": 0, "max_tokens": 200, "lora": [{"id": 0, "scale": 1.0}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "receipt", "schema": SCHEMA}},
            }  # fmt: skip
            started = time.perf_counter()
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300).json()
            wall += time.perf_counter() - started
            timings = answer["timings"]
            prefill += timings["prompt_ms"] / 1000
            decode += timings["predicted_ms"] / 1000
            decoded += timings["predicted_n"]
            texts.append(answer["choices"][0]["message"]["content"])
        return {"wall_s": round(wall, 2), "prefill_s": round(prefill, 2), "decode_s": round(decode, 2),
                "decode_tok_s": round(decoded / decode, 1), "texts": texts}  # fmt: skip
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs=2, metavar="NAME=LLAMA_SERVER", help="two builds to compare")
    parser.add_argument("--data", type=Path, required=True, help="JSONL with a `text` per line (receipts)")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, help="GGUF (default: the newest Q8_0 conversion in the cache)")
    parser.add_argument("--lora", type=Path, help="GGUF LoRA (default: the receipt adapter's conversion)")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--out", type=Path, default=Path("var/bench/llamacpp-build.json"))
    args = parser.parse_args()
    builds = {name: Path(path).expanduser() for name, _, path in (b.partition("=") for b in args.builds)}
    for name, binary in builds.items():
        if not name or not binary.is_file():
            parser.error(f"{name}={binary}: expected NAME=PATH of a built llama-server")
    model = args.model or newest(cache_dir() / "llamacpp" / "models", "*.Q8_0.gguf")
    lora = args.lora or newest(cache_dir() / "llamacpp" / "lora", "receipt-lora-*.gguf")
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.limit]
    results: list[dict[str, Any]] = []
    reference: list[str] | None = None
    for run in range(args.runs):
        for name, binary in builds.items():
            result = serve_and_ask(binary, model, lora, args.port, rows)
            reference = reference or result["texts"]
            result |= {"build": name, "run": run + 1, "same_answers": result.pop("texts") == reference}
            results.append(result)
            print(json.dumps(result))  # noqa: T201
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model), "lora": str(lora), "receipts": len(rows),
                                    "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
