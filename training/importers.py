"""Importers for public sets: BANKING77 (intents) and WNUT-17 (entities), into the dataset format.

Both are CC BY 4.0 (see the attribution in their README); keep it wherever they are redistributed.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import Any

from training.datasets import Record
from training.split import split_records

# WNUT-17 types -> the `entities` task's fields (creative-work and product have no field there).
WNUT_FIELDS = {"person": "persons", "location": "locations", "corporation": "organizations", "group": "organizations"}
ENTITY_FIELDS = ("persons", "organizations", "locations", "dates")


def banking77(src: Path, *, val: float = 0.05, test_limit: int | None = None, seed: int = 0) -> dict[str, list[Record]]:
    """{'train', 'val', 'test'}: val is a seeded slice of the train split; test is the official test split
    (or a seeded subset of `test_limit` items)."""

    def read(name: str) -> list[Record]:
        with (src / f"{name}.csv").open(newline="", encoding="utf-8") as f:
            return [Record(f"b77-{name}-{i}", row["text"], {"intent": row["category"]})
                    for i, row in enumerate(csv.DictReader(f))]  # fmt: skip

    train, validation, _ = split_records(read("train"), val=val, test=0.0, seed=seed)
    test = read("test")
    if test_limit is not None and test_limit < len(test):
        test = sorted(random.Random(seed).sample(test, test_limit), key=lambda r: int(r.id.rsplit("-", 1)[1]))
    return {"train": train, "val": validation, "test": test}


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    """Sentences of (token, BIO tag); blank (or whitespace-only) lines separate sentences."""
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        token, _, tag = line.partition("\t")
        current.append((token.strip(), tag.strip() or "O"))
    if current:
        sentences.append(current)
    return sentences


def spans(sentence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(type, surface text) of each BIO span; an I- without a B- starts a span too."""
    found: list[tuple[str, list[str]]] = []
    previous = "O"
    for token, tag in sentence:
        if tag == "O":
            previous = tag
            continue
        prefix, _, kind = tag.partition("-")
        if prefix == "B" or not found or found[-1][0] != kind or previous == "O":
            found.append((kind, [token]))
        else:
            found[-1][1].append(token)
        previous = tag
    return [(kind, " ".join(tokens)) for kind, tokens in found]


def wnut_output(sentence: list[tuple[str, str]]) -> dict[str, Any]:
    output: dict[str, list[str]] = {name: [] for name in ENTITY_FIELDS}
    for kind, surface in spans(sentence):
        field = WNUT_FIELDS.get(kind)
        if field and surface not in output[field]:
            output[field].append(surface)
    return output


def wnut17(src: Path) -> dict[str, list[Record]]:
    """{'train', 'val', 'test'} from the shared WNUT-17 files; the text is the tokens joined by spaces."""
    files = {"train": "wnut17train.conll", "val": "emerging.dev.conll", "test": "emerging.test.annotated"}
    out = {}
    for part, name in files.items():
        out[part] = [
            Record(f"wnut-{part}-{i}", " ".join(token for token, _ in sentence), wnut_output(sentence))
            for i, sentence in enumerate(read_conll(src / name))
        ]
    return out


def cap_empty(records: list[Record], max_share: float, seed: int = 0) -> list[Record]:
    """All records with something to extract, plus a seeded sample of empty ones (every field null or empty)
    making up at most `max_share` of the result; order kept. Trained on data that is mostly empty (two thirds
    of WNUT-17's sentences), a small model learns to answer empty lists every time."""
    if not 0 <= max_share < 1:
        raise ValueError(f"max_share must be in [0, 1), not {max_share}")
    empty = [r for r in records if not any(r.output.values())]
    keep = math.floor((len(records) - len(empty)) * max_share / (1 - max_share) + 1e-9)
    chosen = {id(r) for r in random.Random(seed).sample(empty, min(keep, len(empty)))}
    return [r for r in records if any(r.output.values()) or id(r) in chosen]
