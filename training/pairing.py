"""Pairing runs item by item: the items that runs of one test file share, and each run's per-item table on them.

Runs on different test files (their sha256 differ) are refused: their figures describe different questions.
Runs on different subsets of one file (`eval --limit 40` beside a full run) are compared on the ids they share,
in the first run's order, and the pairing says how many items each run lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.metrics import score_field
from training.stats import ItemTable
from training.synthetic import DIFFICULTIES

# Synthetic ids are `{task}-{difficulty}-{seed}-{index}` (training/synthetic.py).
_SLICE = re.compile(rf"-({'|'.join(DIFFICULTIES)})-\d+-\d+$")


@dataclass(frozen=True)
class Pairing:
    """The shared items, the fields scored in every run, and per run: its items and table on them."""

    test_sha256: str
    ids: list[str]
    fields: list[str]
    items: list[list[dict[str, Any]]]  # each run's item records, in `ids` order
    tables: list[ItemTable]
    run_items: list[int]  # how many items each run had before pairing

    @property
    def dropped(self) -> list[int]:
        return [total - len(self.ids) for total in self.run_items]


def label(run: dict[str, Any]) -> str:
    """How messages name a run: backend and file."""
    meta = run["meta"]
    return f"{meta['backend']} ({meta['file']})" if meta.get("file") else str(meta["backend"])


def pair_runs(runs: list[dict[str, Any]]) -> Pairing:
    """The runs reduced to the items they all share; ValueError when they cannot be compared item by item."""
    hashes = {label(r): r["meta"].get("test_sha256") for r in runs}
    if missing := [name for name, sha in hashes.items() if not sha]:
        raise ValueError(f"{', '.join(missing)}: no test file hash in the run; re-run `extraction eval`")
    if len(set(hashes.values())) > 1:
        listed = "; ".join(f"{name}: {sha[:12]}" for name, sha in hashes.items())
        raise ValueError(f"runs used different test files (sha256 {listed}); compare runs of one test file")
    by_id = [_items_by_id(r) for r in runs]
    shared = [i for i in by_id[0] if all(i in other for other in by_id[1:])]
    if not shared:
        raise ValueError("the runs share no item ids; compare runs of the same test items")
    fields = [f for f in _fields(runs[0]) if all(f in _fields(r) for r in runs[1:])]
    if not fields:
        raise ValueError("the runs score no field in common; evaluate with the same --fields")
    items = [[items[i] for i in shared] for items in by_id]
    return Pairing(
        test_sha256=str(next(iter(hashes.values()))),
        ids=shared,
        fields=fields,
        items=items,
        tables=[table(run_items, fields) for run_items in items],
        run_items=[len(r["items"]) for r in runs],
    )


def _items_by_id(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = run.get("items") or []
    if not items or any("id" not in i for i in items):
        raise ValueError(f"{label(run)} has no per-item results with ids; re-run `extraction eval`")
    by_id = {str(i["id"]): i for i in items}
    if len(by_id) != len(items):
        raise ValueError(f"{label(run)} has repeated item ids; pairing needs one result per test item")
    return by_id


def _fields(run: dict[str, Any]) -> list[str]:
    fields = run["summary"].get("fields_scored")
    if fields is None:
        raise ValueError(f"{label(run)} does not say which fields it scored; re-run `extraction eval`")
    return list(fields)


def item_counts(item: dict[str, Any], fields: list[str]) -> list[list[int]]:
    """[TP, FP, FN] per field: as recorded by `eval`, or recomputed from gold and output for older runs."""
    if "scores" in item:
        return [list(item["scores"][f]) for f in fields]
    if "gold" not in item:
        raise ValueError(f"item {item['id']} has neither scores nor gold output; re-run `extraction eval`")
    output = item.get("output")
    if not isinstance(output, dict):  # no valid answer: every gold value is missed
        output = {}
    return [[(s := score_field(item["gold"].get(f), output.get(f))).tp, s.fp, s.fn] for f in fields]


def table(items: list[dict[str, Any]], fields: list[str]) -> ItemTable:
    """The per-item arrays the bootstrap resamples."""
    valid = np.array([i.get("status") == 200 and isinstance(i.get("output"), dict) for i in items], dtype=bool)
    return ItemTable(
        fields=tuple(fields),
        counts=np.array([item_counts(i, fields) for i in items], dtype=np.int64).reshape(len(items), len(fields), 3),
        valid=valid,
        valid_first=valid & np.array([i.get("attempts") == 1 for i in items], dtype=bool),
        latency_ms=np.array([float(i["latency_ms"]) for i in items]),
    )


def slices(ids: list[str]) -> dict[str, np.ndarray]:
    """Row indices per difficulty slice, for ids that carry one (synthetic sets); empty when none do."""
    found: dict[str, list[int]] = {}
    for k, item_id in enumerate(ids):
        if match := _SLICE.search(item_id):
            found.setdefault(match.group(1), []).append(k)
    return {name: np.array(found[name]) for name in DIFFICULTIES if name in found}
