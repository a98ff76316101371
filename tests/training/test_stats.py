"""The paired bootstrap on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import percentile
from training.metrics import FieldScore
from training.stats import (
    ItemTable,
    compare,
    differ,
    f1,
    figures,
    interval,
    items_needed,
    resample_weights,
    weighted_percentile,
)


def table(counts: list[list[list[int]]], valid: list[bool] | None = None, latency: list[float] | None = None,
          fields: tuple[str, ...] = ("total",)) -> ItemTable:  # fmt: skip
    n = len(counts)
    ok = np.array(valid if valid is not None else [True] * n)
    return ItemTable(fields, np.array(counts), ok, ok.copy(), np.array(latency or [100.0] * n))


def test_micro_f1_on_a_resample_is_recomputed_from_summed_counts() -> None:
    # item 0 right (TP), item 1 a wrong value (FP + FN), item 2 missed (FN)
    t = table([[[1, 0, 0]], [[0, 1, 1]], [[0, 0, 1]]])
    weights = np.array([[1, 1, 1], [2, 0, 1], [0, 0, 3], [3, 0, 0]])
    got = figures(t, weights)
    # by hand: (tp, fp, fn) = (1,1,2) -> 2/5; (2,0,1) -> 4/5; (0,0,3) -> precision 1, recall 0 -> 0; (3,0,0) -> 1
    assert got["field_f1"] == pytest.approx([0.4, 0.8, 0.0, 1.0])
    assert got["field_f1.total"] == pytest.approx([0.4, 0.8, 0.0, 1.0])
    assert got["exact_match"] == pytest.approx([1 / 3, 2 / 3, 0.0, 1.0])
    # averaging the items' own F1 (1, 0, 0) would have said 1/3 for the first resample
    assert got["field_f1"][0] != pytest.approx(1 / 3)


def test_f1_agrees_with_field_score_including_empty_denominators() -> None:
    cases = [(0, 0, 0), (0, 0, 3), (0, 2, 0), (3, 1, 2), (5, 0, 0)]
    expected = [FieldScore(*c).f1 for c in cases]
    assert f1(*np.array(cases).T) == pytest.approx(expected)


def test_percentiles_of_a_resample_match_nearest_rank_of_the_expanded_items() -> None:
    values = np.array([120.0, 80.0, 300.0, 80.0, 95.0, 1000.0])
    weights = resample_weights(len(values), resamples=50, seed=3)
    for q in (50, 95, 99):
        got = weighted_percentile(values, weights, q)
        assert list(got) == [percentile(list(np.repeat(values, w)), q) for w in weights]


def test_resamples_are_seeded_and_draw_n_items_each() -> None:
    a, b = resample_weights(7, 200, seed=1), resample_weights(7, 200, seed=1)
    assert (a == b).all() and (a.sum(axis=1) == 7).all()
    assert not (a == resample_weights(7, 200, seed=2)).all()


def test_bootstrap_of_two_items_has_the_hand_computed_distribution() -> None:
    # exact match [1, 0]: a resample is {1,1} (1/4), {1,0} (1/2) or {0,0} (1/4), so its mean is 1, 0.5 or 0
    t = table([[[1, 0, 0]], [[0, 1, 1]]])
    means = figures(t, resample_weights(2, 4000, seed=0))["exact_match"]
    for value, probability in ((1.0, 0.25), (0.5, 0.5), (0.0, 0.25)):
        assert np.mean(means == value) == pytest.approx(probability, abs=0.03)
    assert interval(means) == (0.0, 1.0)


def test_identical_runs_differ_by_exactly_nothing() -> None:
    t = table([[[1, 0, 0]], [[0, 1, 1]], [[0, 0, 1]], [[1, 0, 0]]], latency=[50, 60, 70, 80])
    c = compare([t, t], 0, 1, resamples=300)
    for d in c.differences.values():
        assert (d.value, d.low, d.high, d.significant, d.items_needed) == (0.0, 0.0, 0.0, False, None)
    # TP 2, FP 1, FN 2: F1 = 2*2 / (2*2 + 1 + 2)
    run = c.runs[0]["field_f1"]
    assert run.value == pytest.approx(4 / 7) and run.low <= 4 / 7 <= run.high and run.low < run.high


def test_pairing_resolves_a_small_difference_on_the_same_items() -> None:
    # b repeats a's answers on 50 items and also gets 5 of a's 25 misses right
    a_right = [k % 2 == 0 for k in range(50)]
    b_right = [r or k in (1, 3, 5, 7, 9) for k, r in enumerate(a_right)]
    a, b = (table([[[1, 0, 0] if r else [0, 1, 1]] for r in right]) for right in (a_right, b_right))
    d = compare([a, b], 0, 1, resamples=2000, seed=0).differences["exact_match"]
    assert d.value == pytest.approx(0.1)
    assert d.low > 0 and d.significant  # paired: every resample's difference counts b's extra right answers
    # the same two runs resampled independently cannot tell 0.5 from 0.6 on 50 items
    unpaired = (
        figures(b, resample_weights(50, 2000, 1))["exact_match"]
        - figures(a, resample_weights(50, 2000, 2))["exact_match"]
    )
    assert interval(unpaired)[0] < 0


def test_power_estimate_by_hand() -> None:
    assert items_needed(0.05, 0.05, 40) == 314  # 40 * (2.8 * 0.05 / 0.05)^2 = 313.6
    assert items_needed(-0.05, 0.05, 40) == 314
    assert items_needed(0.0, 0.05, 40) is None
    # resampled differences -0.1 and 0.3: sd 0.2828; 95% interval -0.09..0.29 crosses 0
    d = differ(0.1, np.array([-0.1, 0.3]), 10)
    assert not d.significant and d.low == pytest.approx(-0.09) and d.high == pytest.approx(0.29)
    assert d.items_needed == 628  # 10 * (2.8 * 0.28284 / 0.1)^2 = 627.2


def test_compare_needs_the_same_items_in_every_run() -> None:
    with pytest.raises(ValueError, match="same, non-empty"):
        compare([table([[[1, 0, 0]]]), table([[[1, 0, 0]], [[1, 0, 0]]])], 0, 1)
