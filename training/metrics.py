"""Scoring extractions against gold outputs: normalised field-level precision/recall/F1 and exact match.

Scalars: a predicted value equal to a non-null gold value is a true positive; a wrong value counts as a false
positive and a false negative; a value where gold is null is a false positive; null where gold has a value is a
false negative. Lists (entities) are compared as sets of normalised items. Normalisation: strings case-folded
with whitespace collapsed, dates to ISO 8601, numeric strings and numbers to rounded floats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

_SPACE = re.compile(r"\s+")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?$")


def normalise(value: Any) -> Any:
    """A comparable form of a scalar value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return round(float(value), 2)
    if isinstance(value, str):
        text = _SPACE.sub(" ", value).strip()
        if _NUMBER.match(text):
            return round(float(text), 2)
        if parsed := _as_iso_date(text):
            return parsed
        return text.casefold() or None
    return value


def _as_iso_date(text: str) -> str | None:
    if _ISO_DATE.match(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            return None
    if not any(ch.isdigit() for ch in text) or len(text) > 40:
        return None
    from dateutil import parser

    try:
        return parser.parse(text, dayfirst=False, fuzzy=False).date().isoformat()
    except (ValueError, OverflowError):
        return None


def _is_empty(value: Any) -> bool:
    return value is None or value == [] or value == ""


@dataclass
class FieldScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: FieldScore) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4)}  # fmt: skip


def score_field(gold: Any, pred: Any) -> FieldScore:
    """TP/FP/FN of one field of one item."""
    if isinstance(gold, list) or isinstance(pred, list):
        gold_set = {normalise(v) for v in (gold or []) if not isinstance(v, dict | list)}
        pred_set = {normalise(v) for v in (pred if isinstance(pred, list) else []) if not isinstance(v, dict | list)}
        gold_set.discard(None)
        pred_set.discard(None)
        return FieldScore(len(gold_set & pred_set), len(pred_set - gold_set), len(gold_set - pred_set))
    g, p = normalise(gold), normalise(pred)
    if g is None and p is None:
        return FieldScore()
    if g is None:
        return FieldScore(fp=1)
    if p is None:
        return FieldScore(fn=1)
    return FieldScore(tp=1) if g == p else FieldScore(fp=1, fn=1)


def item_matches(gold: dict[str, Any], pred: dict[str, Any] | None, fields: Iterable[str]) -> bool:
    """Exact match of the whole object (after normalisation) on the scored fields."""
    if pred is None:
        return False
    scores = [score_field(gold.get(f), pred.get(f)) for f in fields]
    return all(s.fp == 0 and s.fn == 0 for s in scores)


def error_kind(gold: Any, pred: Any, present: bool) -> str | None:
    """Why one field is wrong: missing_field, wrong_type or wrong_value; None when it is right."""
    score = score_field(gold, pred)
    if score.fp == 0 and score.fn == 0:
        return None
    if not present or (_is_empty(pred) and not _is_empty(gold)):
        return "missing_field"
    if gold is not None and pred is not None and _kind(gold) != _kind(pred):
        return "wrong_type"
    return "wrong_value"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


@dataclass
class Scores:
    """Field-level and whole-object scores over a set of items."""

    fields: dict[str, FieldScore] = field(default_factory=dict)
    items: int = 0
    exact: int = 0

    def add(self, gold: dict[str, Any], pred: dict[str, Any] | None, fields: list[str]) -> None:
        self.items += 1
        for name in fields:
            self.fields.setdefault(name, FieldScore()).add(score_field(gold.get(name), (pred or {}).get(name)))
        self.exact += item_matches(gold, pred, fields)

    @property
    def micro(self) -> FieldScore:
        total = FieldScore()
        for score in self.fields.values():
            total.add(score)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "exact_match": round(self.exact / self.items, 4) if self.items else 0.0,
            "field_micro": self.micro.as_dict(),
            "fields": {name: score.as_dict() for name, score in sorted(self.fields.items())},
        }


# SROIE task 3: the leaderboard's metric, entity-level exact match per field (the official scorer compares each
# field's string as a whole: right only if identical). Our gold and answers are in the schema's typed form, so
# the compared string is the normalised one: company and address with whitespace runs collapsed (OCR boxes
# joined by a space or a newline) but case and punctuation kept, as the official comparison keeps them; date as
# the ISO string; total as the amount to the cent ("9.00"), so RM marks and number formatting do not count
# (the official script counted them: leaders re-scored after fixing the "RM" labels). Empty strings are null.
# A missing answer for a gold value is a FN, an answer where gold is null a FP, a wrong answer both.


def sroie_key(name: str, value: Any) -> str | None:
    """The string the SROIE metric compares for one field (None: no value)."""
    from training.sroie import LabelError, collapse, normalise_total

    if value is None:
        return None
    if name == "total" and not isinstance(value, bool):
        try:
            amount = float(value) if isinstance(value, int | float) else normalise_total(str(value))
            return f"{round(amount, 2) or 0.0:.2f}"
        except LabelError:
            pass
    return collapse(str(value)) or None


def sroie_item(gold: dict[str, Any], pred: dict[str, Any] | None, fields: Iterable[str]) -> dict[str, list[int]]:
    """[TP, FP, FN] of each field of one receipt under the SROIE metric."""
    out = {}
    for name in fields:
        g, p = sroie_key(name, gold.get(name)), sroie_key(name, (pred or {}).get(name))
        if g is None:
            out[name] = [0, int(p is not None), 0]
        elif p is None:
            out[name] = [0, 0, 1]
        else:
            out[name] = [1, 0, 0] if g == p else [0, 1, 1]
    return out


def sroie_summary(items: list[dict[str, Any]], fields: Iterable[str], worst: int = 20) -> dict[str, Any]:
    """Per-field and micro (the leaderboard's figure) precision/recall/F1 from the items' `sroie` counts, and the
    worst disagreements."""
    totals = {name: FieldScore() for name in fields}
    for item in items:
        for name, (tp, fp, fn) in item["sroie"].items():
            totals.setdefault(name, FieldScore()).add(FieldScore(tp, fp, fn))
    micro = FieldScore()
    for score in totals.values():
        micro.add(score)
    return {"micro": micro.as_dict(), "fields": {n: s.as_dict() for n, s in totals.items()},
            "worst": worst_disagreements(items, worst)}  # fmt: skip


def worst_disagreements(items: list[dict[str, Any]], n: int = 20) -> list[dict[str, Any]]:
    """Fields the SROIE metric counts wrong, worst first: receipts with more wrong fields first, then the
    answers least like the gold (difflib ratio of the compared strings); `n` rows at most."""
    from difflib import SequenceMatcher

    ranked = []
    for item in items:
        wrong = [name for name, (_, fp, fn) in item["sroie"].items() if fp or fn]
        output = item["output"] if isinstance(item.get("output"), dict) else {}
        for order, name in enumerate(wrong):
            gold, pred = sroie_key(name, item["gold"].get(name)), sroie_key(name, output.get(name))
            kind = "missed" if pred is None else "spurious" if gold is None else "wrong"
            similarity = SequenceMatcher(None, gold or "", pred or "").ratio()
            row = {"id": item["id"], "field": name, "gold": gold, "predicted": pred, "kind": kind,
                   "error": item.get("error_kind"), "similarity": round(similarity, 3)}  # fmt: skip
            ranked.append(((-len(wrong), similarity, item["id"], order), row))
    ranked.sort(key=lambda pair: pair[0])
    return [row for _, row in ranked[:n]]
