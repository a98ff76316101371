"""Paired bootstrap over evaluation items: figures with intervals, differences between runs, a power estimate.

Every run is reduced to per-item arrays on the same items in the same order (an `ItemTable`). One resample
draws n item indices with replacement, once for all runs, so each run's figure and the difference between two
runs come from the same items (paired): how hard an item is, which dominates the spread, cancels out of the
difference. A resample is kept as a row of counts (how often each item was drawn), so every figure is a matrix
product, and micro F1 is recomputed from the resample's summed TP/FP/FN, never averaged over items.

Intervals are percentile intervals: for 95%, the 2.5th and 97.5th percentile of the resampled figure. A
difference is significant when its interval excludes zero.

Power: the bootstrap standard error `se` of a difference observed on n items shrinks as 1/sqrt(n), so a true
difference of the observed size |d| is found (two-sided 5%, 80% power) with about
n' = n * ((1.96 + 0.84) * se / |d|)^2 items; for a per-item mean (exact match, schema-valid rate) this is the
textbook ((z_a + z_b) * sd / |d|)^2 with sd the standard deviation of the paired per-item differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
Z_ALPHA = 1.96  # two-sided 5%
Z_POWER = 0.84  # 80% power
FIELD = "field_f1."  # per-field F1 figures are named field_f1.<field>
# Figures where a higher value is better (latency: lower is better); the report words verdicts with it.
HIGHER_IS_BETTER = ("exact_match", "field_f1", "schema_valid", "schema_valid_first")


@dataclass(frozen=True)
class ItemTable:
    """One run's per-item results, rows in the same item order for every run that is compared."""

    fields: tuple[str, ...]
    counts: np.ndarray  # (items, fields, 3) TP, FP, FN of each item and field
    valid: np.ndarray  # (items,) bool: schema-valid output after re-asks
    valid_first: np.ndarray  # (items,) bool: schema-valid at the first attempt
    latency_ms: np.ndarray  # (items,) float

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def exact(self) -> np.ndarray:
        """Whole-object match: a valid output with no false positive or negative on any scored field."""
        return np.asarray(self.valid & (self.counts[:, :, 1:].sum(axis=(1, 2)) == 0))

    def rows(self, index: np.ndarray) -> ItemTable:
        """The same table restricted to some items (a slice)."""
        return ItemTable(self.fields, self.counts[index], self.valid[index], self.valid_first[index],
                         self.latency_ms[index])  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


@dataclass(frozen=True)
class Difference(Estimate):
    """b - a with its interval; items_needed: a power estimate for a difference of this size (None if 0)."""

    significant: bool
    items_needed: int | None

    def as_dict(self) -> dict[str, float | bool | int | None]:  # type: ignore[override]
        return {**super().as_dict(), "significant": self.significant, "items_needed": self.items_needed}


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int | Sequence[int] = 0) -> np.ndarray:
    """(resamples, n) counts: row r says how often each item was drawn in resample r (each row sums to n)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n)


def f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 as `metrics.FieldScore` defines it (precision or recall 1.0 on an empty denominator), elementwise."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.ones_like(tp), where=tp + fn > 0)
    total = precision + recall
    return np.asarray(np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0))


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Nearest-rank percentile (as `evaluate.percentile`) of each resample, without building the resample."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[:, order], axis=1)
    rank = np.maximum(1, np.ceil(q / 100 * cumulative[:, -1]))
    return np.asarray(np.asarray(values)[order][(cumulative < rank[:, None]).sum(axis=1)])


def figures(table: ItemTable, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure of one run on each resample; a single row of ones gives the figures of the run as it is."""
    n = weights.sum(axis=1).astype(float)
    summed = (weights @ table.counts.reshape(len(table), -1)).reshape(len(weights), len(table.fields), 3)
    micro = summed.sum(axis=1)
    out = {
        "exact_match": weights @ table.exact / n,
        "field_f1": f1(micro[:, 0], micro[:, 1], micro[:, 2]),
        "schema_valid": weights @ table.valid / n,
        "schema_valid_first": weights @ table.valid_first / n,
    }
    for k, name in enumerate(table.fields):
        out[FIELD + name] = f1(summed[:, k, 0], summed[:, k, 1], summed[:, k, 2])
    out["latency_p50_ms"] = weighted_percentile(table.latency_ms, weights, 50)
    out["latency_p95_ms"] = weighted_percentile(table.latency_ms, weights, 95)
    return out


def point_figures(table: ItemTable) -> dict[str, float]:
    """The figures of the run as it is (every item once)."""
    return {k: float(v[0]) for k, v in figures(table, np.ones((1, len(table)), dtype=int)).items()}


def interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of resampled figures."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def items_needed(difference: float, se: float, n: int) -> int | None:
    """Items that would resolve a true difference of this size (two-sided 5%, 80% power); None for 0."""
    if difference == 0:
        return None
    return math.ceil(n * ((Z_ALPHA + Z_POWER) * se / abs(difference)) ** 2)


def differ(value: float, samples: np.ndarray, n: int, confidence: float = CONFIDENCE) -> Difference:
    """A paired difference: its interval, whether the interval excludes zero, and the power estimate."""
    low, high = interval(samples, confidence)
    se = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
    return Difference(value, low, high, low > 0 or high < 0, items_needed(value, se, n))


@dataclass(frozen=True)
class Comparison:
    """Each run's figures with intervals, and run b minus run a for every figure."""

    items: int
    runs: list[dict[str, Estimate]]
    differences: dict[str, Difference]

    def as_dict(self) -> dict[str, object]:
        return {
            "items": self.items,
            "runs": [{k: e.as_dict() for k, e in run.items()} for run in self.runs],
            "differences": {k: d.as_dict() for k, d in self.differences.items()},
        }


def compare(tables: Sequence[ItemTable], a: int, b: int, resamples: int = RESAMPLES,
            seed: int | Sequence[int] = 0, confidence: float = CONFIDENCE) -> Comparison:  # fmt: skip
    """Paired bootstrap of every run's figures on the same resamples, and of the difference b - a."""
    n = len(tables[0])
    if n == 0 or any(len(t) != n for t in tables):
        raise ValueError("paired comparison needs the same, non-empty, items in every run")
    weights = resample_weights(n, resamples, seed)
    point = [point_figures(t) for t in tables]
    boot = [figures(t, weights) for t in tables]
    runs = [{k: Estimate(point[i][k], *interval(boot[i][k], confidence)) for k in point[i]} for i in range(len(tables))]
    differences = {k: differ(point[b][k] - point[a][k], boot[b][k] - boot[a][k], n, confidence) for k in point[a]}
    return Comparison(n, runs, differences)
