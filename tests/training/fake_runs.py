"""Run files as `extraction eval` writes them, built from per-item right/wrong answers (no service needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def make_run(backend: str, style: str, correct: Sequence[Sequence[bool]], ids: Sequence[str] | None = None,
             sha: str = "abc", cost: float = 0.001, in_tokens: float = 100, latency_ms: float = 800,
             fields: Sequence[str] = ("total",)) -> dict[str, Any]:  # fmt: skip
    """One item per entry of `correct`: each field right (TP) or a wrong value (FP + FN)."""
    ids = list(ids) if ids is not None else [f"r{k}" for k in range(len(correct))]
    items = []
    for k, (item_id, right) in enumerate(zip(ids, correct, strict=True)):
        gold = {f: f"value {item_id} {f}" for f in fields}
        output = {f: gold[f] if ok else "wrong" for f, ok in zip(fields, right, strict=True)}
        items.append({
            "id": item_id, "status": 200, "output": output, "gold": gold,
            "scores": {f: [1, 0, 0] if ok else [0, 1, 1] for f, ok in zip(fields, right, strict=True)},
            "attempts": 1, "input_tokens": in_tokens, "output_tokens": 40.0, "cost_usd": cost,
            "latency_ms": latency_ms + k,
        })  # fmt: skip
    return {
        "meta": {"task": "invoice", "backend": backend, "model": "m", "prompt_style": style, "test_sha256": sha},
        "summary": {"items": len(items), "fields_scored": list(fields), "requests_per_s": 2.0},
        "items": items,
    }


def run_file(backend: str, style: str, f1: float, cost: float, in_tokens: float, sha: str = "abc") -> dict[str, Any]:
    """100 items, one field, the first round(f1 * 100) right: field F1 is exactly `f1`."""
    right = round(f1 * 100)
    return make_run(backend, style, [[k < right] for k in range(100)], sha=sha, cost=cost, in_tokens=in_tokens)
