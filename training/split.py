"""Deterministic train / validation / frozen-test split; the test set's hash guards every later evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.files import atomic_write
from training.datasets import Record, file_sha256, refuse_overwriting_inputs, write_dataset

MANIFEST = "manifest.json"


class FrozenTestError(Exception):
    """The frozen test set is missing, would be overwritten, or changed since it was written."""


def _rank(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def split_records(
    records: Sequence[Record], val: float, test: float, seed: int
) -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test) by a seeded hash of each id: the same input gives the same split in any order."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ValueError("val and test are fractions with val + test < 1")
    ordered = sorted(records, key=lambda r: _rank(seed, r.id))
    n_test, n_val = round(len(ordered) * test), round(len(ordered) * val)
    if test > 0 and n_test == 0:  # no test.jsonl, no manifest entry: the frozen test set would be silently missing
        needed = max(1, math.ceil(0.5 / test))
        while round(needed * test) < 1:  # round() halves to even: 0.5 is 0
            needed += 1
        raise ValueError(
            f"--test {test:g} of {len(ordered)} record(s) is no test record: a frozen test set at --test {test:g} "
            f"needs at least {needed} records (or pass --test 0 for none); nothing written"
        )
    return ordered[n_test + n_val :], ordered[n_test : n_test + n_val], ordered[:n_test]


def write_split(
    parts: dict[str, Sequence[Record]],
    out_dir: Path,
    *,
    meta: dict[str, Any],
    force: bool = False,
    stamp: bool = True,
    inputs: Sequence[Path] = (),
) -> dict[str, Any]:
    """Write train/val/test JSONL and a manifest with their hashes. A frozen test set is written once.
    `stamp=False` leaves out the creation time, so that re-running writes a byte-identical manifest. A file to
    write that is one of `inputs` (the files the parts were read from) is refused before anything is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file; give a folder")
    for target in [out_dir / f"{name}.jsonl" for name, records in parts.items() if records] + [out_dir / MANIFEST]:
        refuse_overwriting_inputs(target, *inputs)
    test_path = out_dir / "test.jsonl"
    if test_path.exists() and not force:
        raise FrozenTestError(
            f"{test_path} already holds a frozen test set; it is written once so results stay comparable. "
            "Pass --force to replace it (earlier runs then no longer compare)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out-dir {out_dir}: cannot be made ({e.strerror})") from None
    files = {}
    for name, records in parts.items():
        if records:
            sha = write_dataset(out_dir / f"{name}.jsonl", records)
            files[name] = {"file": f"{name}.jsonl", "records": len(records), "sha256": sha}
    created = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} if stamp else {}
    manifest = {**created, **meta, "files": files}
    atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def check_frozen(test_file: Path, allow_changed: bool = False) -> dict[str, Any]:
    """The test file's hash, checked against the manifest beside it; FrozenTestError if it changed."""
    if test_file.is_dir():
        example = test_file / "test.jsonl"
        raise FrozenTestError(f"{test_file} is a folder; give the test JSONL file in it (e.g. {example})")
    if not test_file.exists():
        raise FrozenTestError(f"{test_file}: no such file")
    if not test_file.is_file():
        raise FrozenTestError(f"{test_file} is not a regular file; give the test JSONL file")
    sha = file_sha256(test_file)
    manifest_path = test_file.parent / MANIFEST
    recorded = None
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
            recorded = next((f["sha256"] for f in files.values() if f.get("file") == test_file.name), None)
        except (ValueError, AttributeError, TypeError, KeyError) as e:  # not the manifest `data split` writes
            raise FrozenTestError(
                f"{manifest_path}: not a split manifest ({type(e).__name__}: {e}); fix or remove it"
            ) from None
    if recorded is not None and recorded != sha and not allow_changed:
        raise FrozenTestError(
            f"{test_file} changed since it was frozen (sha256 {sha[:12]}... != recorded {recorded[:12]}...); "
            "results would not compare with earlier runs. Pass --allow-changed-test to evaluate anyway"
        )
    return {"sha256": sha, "frozen": recorded is not None, "matches_manifest": recorded == sha}
