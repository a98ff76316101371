"""Metric computation on hand-checked cases."""

import pytest

from training.metrics import FieldScore, Scores, error_kind, item_matches, normalise, score_field


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  ACME   GmbH ", "acme gmbh"),
        ("1190.00", 1190.0),
        (1190, 1190.0),
        ("2024-03-14", "2024-03-14"),
        ("March 14, 2024", "2024-03-14"),
        ("", None),
        (None, None),
        (True, True),
    ],
)
def test_normalise(raw: object, normal: object) -> None:
    assert normalise(raw) == normal


def test_scalar_field_cases() -> None:
    assert score_field("ACME", "acme ") == FieldScore(tp=1)
    assert score_field("ACME", "Other") == FieldScore(fp=1, fn=1)
    assert score_field("ACME", None) == FieldScore(fn=1)
    assert score_field(None, "ACME") == FieldScore(fp=1)
    assert score_field(None, None) == FieldScore()
    assert score_field(12.5, "12.50") == FieldScore(tp=1)


def test_list_fields_are_sets() -> None:
    assert score_field(["Paris", "London"], ["london", "Berlin"]) == FieldScore(tp=1, fp=1, fn=1)
    assert score_field([], []) == FieldScore()
    assert score_field(["A"], None) == FieldScore(fn=1)


def test_scores_aggregate_hand_checked() -> None:
    scores = Scores()
    fields = ["company", "total"]
    scores.add({"company": "ACME", "total": 10}, {"company": "acme", "total": 10.0}, fields)  # all right
    scores.add({"company": "Beta", "total": 5}, {"company": "Beta", "total": 6}, fields)  # total wrong
    scores.add({"company": "Gamma", "total": None}, None, fields)  # no answer
    out = scores.as_dict()
    assert out["items"] == 3 and out["exact_match"] == round(1 / 3, 4)
    assert out["fields"]["company"] == {"tp": 2, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.6667, "f1": 0.8}
    assert out["fields"]["total"]["tp"] == 1 and out["fields"]["total"]["fp"] == 1 and out["fields"]["total"]["fn"] == 1
    micro = out["field_micro"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (3, 1, 2)
    assert micro["f1"] == round(2 * 0.75 * 0.6 / 1.35, 4)


def test_exact_match_and_error_kinds() -> None:
    gold = {"a": "x", "b": [1, 2]}
    assert item_matches(gold, {"a": "X", "b": [2, 1]}, ["a", "b"])
    assert not item_matches(gold, {"a": "x", "b": [1]}, ["a", "b"])
    assert not item_matches(gold, None, ["a"])
    assert error_kind("x", None, present=False) == "missing_field"
    assert error_kind("x", None, present=True) == "missing_field"
    assert error_kind(12.0, "twelve", present=True) == "wrong_type"
    assert error_kind("x", "y", present=True) == "wrong_value"
    assert error_kind("x", "X", present=True) is None
