"""The report compares runs on the items they share, with intervals, per field and per difficulty slice."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.training.fake_runs import make_run
from training.pairing import pair_runs, slices
from training.report import build_report, decide
from training.stats import Difference

FIELDS = ("company", "total", "currency")


def drawn(p: float, n: int, seed: int, fields: tuple[str, ...] = FIELDS) -> list[list[bool]]:
    """Each field of each item right with probability p (seeded)."""
    rng = random.Random(seed)
    return [[rng.random() < p for _ in fields] for _ in range(n)]


def report_of(runs: list[dict[str, Any]], out: Path, **kw: Any) -> dict[str, Any]:
    return build_report(runs, requests_per_day=1000, training_cost=1.0, horizon_days=30, out=out, **kw)


def test_runs_on_different_test_files_are_refused(tmp_path: Path) -> None:
    a = make_run("prompted", "few_shot", [[True]] * 5, sha="aaaa1111")
    b = make_run("ft", "finetuned", [[True]] * 5, sha="bbbb2222")
    b["meta"]["file"] = "runs/ft.json"
    with pytest.raises(ValueError, match=r"different test files .*aaaa1111.*ft \(runs/ft.json\): bbbb2222"):
        report_of([a, b], tmp_path)
    assert not (tmp_path / "report.json").exists()
    del b["meta"]["test_sha256"]
    with pytest.raises(ValueError, match="no test file hash"):
        report_of([a, b], tmp_path)


def test_runs_without_per_item_ids_are_refused_with_the_fix(tmp_path: Path) -> None:
    a, b = make_run("prompted", "few_shot", [[True]] * 5), make_run("ft", "finetuned", [[True]] * 5)
    for item in b["items"]:
        del item["id"]
    with pytest.raises(ValueError, match=r"ft has no per-item results with ids; re-run `extraction eval`"):
        report_of([a, b], tmp_path)
    b = make_run("ft", "finetuned", [[True]] * 5, ids=["r0", "r1", "r1", "r2", "r3"])
    with pytest.raises(ValueError, match="repeated item ids"):
        report_of([a, b], tmp_path)
    b = make_run("ft", "finetuned", [[True]] * 5, ids=[f"x{k}" for k in range(5)])
    with pytest.raises(ValueError, match="share no item ids"):
        report_of([a, b], tmp_path)


def test_a_limited_run_is_compared_on_the_shared_items_only(tmp_path: Path) -> None:
    # `eval --limit 40` beside a full 120-item run: the fine-tuned run is right on its first 40 items only
    ids = [f"r{k}" for k in range(120)]
    prompted = make_run("prompted", "few_shot", [[k % 2 == 0] for k in range(40)], ids=ids[:40])
    finetuned = make_run("ft", "finetuned", [[k < 40] for k in range(120)], ids=ids)
    finetuned["meta"]["file"] = "runs/ft.json"
    report = report_of([prompted, finetuned], tmp_path)
    p = report["pairing"]
    assert p["shared_items"] == 40
    assert [(r["items"], r["dropped"]) for r in p["runs"]] == [(40, 0), (120, 80)]
    ft_row = report["rows"][1]
    assert (ft_row["items"], ft_row["run_items"]) == (40, 120)
    assert ft_row["field_f1"] == 1.0  # on the shared 40, not 40/120 of the full run
    assert report["differences"]["field_f1"]["value"] == pytest.approx(0.5)
    text = (tmp_path / "report.md").read_text()
    assert "Compared on 40 items" in text and "dropped 80 of 120 from ft (runs/ft.json)" in text


def test_overlapping_subsets_are_reduced_to_their_intersection_in_the_first_runs_order() -> None:
    a = make_run("a", "few_shot", [[True]] * 60, ids=[f"r{k}" for k in range(60)])
    b = make_run("b", "finetuned", [[True]] * 60, ids=[f"r{k}" for k in reversed(range(20, 80))])
    pairing = pair_runs([a, b])
    assert pairing.ids == [f"r{k}" for k in range(20, 60)] and pairing.dropped == [20, 20]
    assert [i["id"] for i in pairing.items[1]] == pairing.ids


def test_two_runs_drawn_from_the_same_distribution_show_no_significant_difference(tmp_path: Path) -> None:
    runs = [make_run("prompted", "few_shot", drawn(0.8, 60, seed=1), fields=FIELDS),
            make_run("ft", "finetuned", drawn(0.8, 60, seed=2), fields=FIELDS)]  # fmt: skip
    report = report_of(runs, tmp_path)
    d = report["differences"]["field_f1"]
    assert d["low"] < 0 < d["high"] and not d["significant"]
    assert report["verdict"] == "no significant difference in field F1" and report["significant"] is False
    assert d["items_needed"] > 60  # a difference this small needs more items than the test set has
    assert any(f"no significant difference; about {d['items_needed']:,} items" in f for f in report["factors"])
    assert "(no significant difference in field F1)" in (tmp_path / "report.md").read_text()


def test_a_clear_difference_is_significant_and_named(tmp_path: Path) -> None:
    runs = [make_run("prompted", "few_shot", drawn(0.3, 60, seed=1), fields=FIELDS),
            make_run("ft", "finetuned", drawn(0.9, 60, seed=2), fields=FIELDS)]  # fmt: skip
    report = report_of(runs, tmp_path)
    assert report["significant"] and report["differences"]["field_f1"]["low"] > 0
    assert report["verdict"] == "ft is better than prompted in field F1"
    for name in FIELDS:  # per field, with its interval, in the JSON for machines
        e = report["rows"][1]["intervals"][f"field_f1.{name}"]
        assert e["low"] <= e["value"] <= e["high"]
        assert report["differences"][f"field_f1.{name}"]["significant"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["differences"] == report["differences"] and saved["pairing"]["resamples"] == 2000
    assert (tmp_path / "intervals.png").read_bytes()[:4] == b"\x89PNG"


def test_the_bootstrap_is_seeded(tmp_path: Path) -> None:
    runs = [make_run("a", "few_shot", drawn(0.6, 30, 1), fields=FIELDS),
            make_run("b", "finetuned", drawn(0.7, 30, 2), fields=FIELDS)]  # fmt: skip
    first = report_of(runs, tmp_path / "1", resamples=500, seed=7)["differences"]
    assert report_of(runs, tmp_path / "2", resamples=500, seed=7)["differences"] == first
    assert report_of(runs, tmp_path / "3", resamples=500, seed=8)["differences"] != first


def test_older_runs_without_recorded_scores_are_scored_from_gold_and_output(tmp_path: Path) -> None:
    runs = [make_run("a", "few_shot", drawn(0.6, 30, seed=1), fields=FIELDS),
            make_run("b", "finetuned", drawn(0.7, 30, seed=2), fields=FIELDS)]  # fmt: skip
    recorded = report_of(runs, tmp_path / "new")
    for run in runs:
        for item in run["items"]:
            del item["scores"]
    assert report_of(runs, tmp_path / "old")["differences"] == recorded["differences"]


def test_difficulty_slices_show_where_an_adapter_wins_and_loses(tmp_path: Path) -> None:
    ids = [f"invoice-{d}-0-{k}" for d in ("easy", "hard") for k in range(30)]
    easy = [k < 30 for k in range(60)]
    prompted = make_run("prompted", "few_shot", [[not e] for e in easy], ids=ids)  # right on hard only
    finetuned = make_run("ft", "finetuned", [[e] for e in easy], ids=ids)  # right on easy only
    assert {name: len(rows) for name, rows in slices(ids).items()} == {"easy": 30, "hard": 30}
    report = report_of([prompted, finetuned], tmp_path)
    by_slice = {name: c["differences"]["field_f1"] for name, c in report["slices"].items()}
    assert by_slice["easy"]["value"] == 1.0 and by_slice["easy"]["significant"]
    assert by_slice["hard"]["value"] == -1.0 and by_slice["hard"]["significant"]
    assert report["slices"]["easy"]["items"] == 30
    text = (tmp_path / "report.md").read_text()
    assert "Field F1 per difficulty slice" in text and "| easy (30 items) |" in text
    assert "ft better" in text and "prompted better" in text


def test_ids_without_a_difficulty_have_no_slices() -> None:
    assert slices(["r1", "invoice-7", "invoice-easy"]) == {}


def test_quality_outweighs_cost_only_when_the_difference_is_significant() -> None:
    prompted = {"field_f1": 0.80, "cost_per_request": 0.001, "p95_ms": 1000, "schema_valid": 1.0}
    finetuned = {"field_f1": 0.90, "cost_per_request": 0.002, "p95_ms": 900, "schema_valid": 1.0}  # dearer
    unsure = Difference(0.10, -0.02, 0.22, significant=False, items_needed=170)
    sure = Difference(0.10, 0.04, 0.16, significant=True, items_needed=20)
    assert decide(prompted, finetuned, -10.0, None, 30, unsure, 40)[0] == "prompting"
    assert decide(prompted, finetuned, -10.0, None, 30, sure, 400)[0] == "fine-tuning"
    factors = decide(prompted, finetuned, -10.0, None, 30, unsure, 40)[1]
    assert "+0.100 (95% interval -0.020 to +0.220, 40 shared items): no significant difference; about 170" in factors[1]


def test_two_adapters_are_compared_with_each_other(tmp_path: Path) -> None:
    runs = [make_run("ft-v1", "finetuned", drawn(0.9, 40, 1), fields=FIELDS),
            make_run("ft-v2", "finetuned", drawn(0.5, 40, 2), fields=FIELDS)]  # fmt: skip
    report = report_of(runs, tmp_path)
    assert {report["prompted"], report["finetuned"]} == {"ft-v1", "ft-v2"}
    assert report["differences"]["field_f1"]["value"] != 0


def test_the_report_command_takes_resamples_and_seed_and_refuses_other_test_files(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from service.cli import app

    a = make_run("prompted", "few_shot", [[k % 3 != 0] for k in range(30)])
    b = make_run("ft", "finetuned", [[k % 4 != 0] for k in range(30)])
    paths = []
    for name, run in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    args = ["report", *map(str, paths), "--requests-per-day", "1000"]
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r1"), "--resamples", "300", "--seed", "7"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r2"), "--resamples", "300", "--seed", "7"])
    assert again.exit_code == 0
    one, two = (json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2"))
    assert one["differences"] == two["differences"]  # same seed, same intervals
    b["meta"]["test_sha256"] = "other"
    paths[1].write_text(json.dumps(b))
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r3")])
    assert refused.exit_code != 0 and "different test files" in refused.output


def test_a_report_row_counts_the_values_grounding_snapped_per_item() -> None:
    from training.report import row

    items = [{"attempts": 1, "cost_usd": 0.0, "grounding": [{"path": "date"}, {"path": "total"}]},
             {"attempts": 1, "cost_usd": 0.0, "grounding": []}, {"attempts": 1, "cost_usd": 0.0}]  # fmt: skip
    run = {"meta": {"backend": "b", "model": "m", "prompt_style": "finetuned"}, "items": items, "summary": {}}
    figures = dict.fromkeys(("exact_match", "field_f1", "schema_valid_first", "schema_valid", "latency_p50_ms",
                             "latency_p95_ms"), 0.0)  # fmt: skip
    assert row(run, items, figures, 1000)["grounded"] == round(2 / 3, 3)
