"""The SROIE task-3 metric on hand-computed cases, and `extraction eval --metric sroie` through the service."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.cli import app
from service.config import Settings
from tests.conftest import backend_entry
from training.datasets import Record
from training.metrics import sroie_item, sroie_key, sroie_summary, worst_disagreements
from training.split import write_split
from training.sroie import SROIE_FIELDS

runner = CliRunner()
GOLD = {"company": "KEDAI A SDN BHD", "date": "2019-01-15", "address": "NO 1, JALAN 2, 81100 JOHOR", "total": 9.0}


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("company", "  KEDAI   A\nSDN BHD ", "KEDAI A SDN BHD"),  # whitespace runs collapse
        ("company", "Kedai A Sdn Bhd", "Kedai A Sdn Bhd"),  # case is kept, as the official comparison keeps it
        ("address", "NO 1,JALAN 2", "NO 1,JALAN 2"),  # punctuation too
        ("company", "", None),
        ("company", None, None),
        ("date", "2019-01-15", "2019-01-15"),
        ("total", 9, "9.00"),
        ("total", 9.0, "9.00"),
        ("total", "RM 9.00", "9.00"),  # an amount, whatever its printed form
        ("total", 1234.5, "1234.50"),
        ("total", -0.0, "0.00"),
        ("total", "n/a", "n/a"),  # not an amount: compared as it is (never equal to a number)
        ("total", None, None),
    ],
)
def test_sroie_key(name: str, value: object, key: str | None) -> None:
    assert sroie_key(name, value) == key


def test_sroie_item_counts() -> None:
    pred = {"company": "kedai a sdn bhd", "date": "2019-01-15", "address": "NO 1,  JALAN 2, 81100 JOHOR", "total": 9}
    assert sroie_item(GOLD, pred, SROIE_FIELDS) == {"company": [0, 1, 1], "date": [1, 0, 0], "address": [1, 0, 0],
                                                    "total": [1, 0, 0]}  # fmt: skip
    assert sroie_item(GOLD, None, SROIE_FIELDS) == {f: [0, 0, 1] for f in SROIE_FIELDS}  # no answer: all FN
    assert sroie_item({**GOLD, "company": None}, {**GOLD, "company": "X"}, ["company"]) == {"company": [0, 1, 0]}
    assert sroie_item({**GOLD, "company": None}, {**GOLD, "company": None}, ["company"]) == {"company": [0, 0, 0]}
    assert sroie_item(GOLD, {**GOLD, "total": None}, ["total"]) == {"total": [0, 0, 1]}
    assert sroie_item(GOLD, {**GOLD, "date": "2019-01-16"}, ["date"]) == {"date": [0, 1, 1]}


def _items() -> list[dict[str, object]]:
    """Three receipts: one wrong company (case), one failed request, one spurious company."""
    answers = [
        {**GOLD, "company": "Kedai A Sdn Bhd"},
        None,
        {**GOLD, "company": "OTHER"},
    ]
    golds = [GOLD, GOLD, {**GOLD, "company": None}]
    return [{"id": f"r{k}", "gold": gold, "output": answer, "error_kind": None if answer else "schema_invalid",
             "sroie": sroie_item(gold, answer, SROIE_FIELDS)}
            for k, (gold, answer) in enumerate(zip(golds, answers, strict=True))]  # fmt: skip


def test_sroie_summary_hand_computed() -> None:
    summary = sroie_summary(_items(), SROIE_FIELDS)  # type: ignore[arg-type]
    # TP: 3 (r0) + 0 (r1) + 3 (r2) = 6; FP: 1 (r0) + 1 (r2) = 2; FN: 1 (r0) + 4 (r1) = 5
    assert summary["micro"] == {"tp": 6, "fp": 2, "fn": 5, "precision": 0.75, "recall": round(6 / 11, 4),
                                "f1": round(12 / 19, 4)}  # fmt: skip
    assert summary["fields"]["company"] == {"tp": 0, "fp": 2, "fn": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert summary["fields"]["date"] == {"tp": 2, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.6667, "f1": 0.8}
    assert list(summary["fields"]) == list(SROIE_FIELDS)


def test_worst_disagreements_put_the_most_wrong_receipts_first() -> None:
    rows = worst_disagreements(_items(), n=6)  # type: ignore[arg-type]
    assert [(r["id"], r["field"], r["kind"]) for r in rows] == [
        ("r1", "company", "missed"), ("r1", "date", "missed"), ("r1", "address", "missed"), ("r1", "total", "missed"),
        ("r2", "company", "spurious"), ("r0", "company", "wrong"),
    ]  # fmt: skip
    assert rows[0]["error"] == "schema_invalid" and rows[3]["gold"] == "9.00" and rows[3]["predicted"] is None
    assert rows[5]["gold"] == "KEDAI A SDN BHD" and rows[5]["predicted"] == "Kedai A Sdn Bhd"
    assert rows[4]["similarity"] == 0.0 < rows[5]["similarity"]  # least like the gold first
    assert len(worst_disagreements(_items(), n=2)) == 2  # type: ignore[arg-type]


def test_unknown_metric_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--task", "receipt", "--data", str(tmp_path / "none.jsonl"), "--backend",
                                 "x", "--out", str(tmp_path / "run.json"), "--metric", "bleu"])  # fmt: skip
    assert result.exit_code == 1 and "unknown metric" in result.output


@pytest.mark.integration
def test_eval_metric_sroie_through_the_service(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1", max_attempts=1)})
    golds = [GOLD, {**GOLD, "total": 12.5}, GOLD]
    write_split({"test": [Record(f"r{k}", f"receipt {k}", g) for k, g in enumerate(golds)]}, tmp_path / "d", meta={})
    upstream.enqueue(
        Reply(content=json.dumps(GOLD)),  # all four right
        Reply(content=json.dumps({**GOLD, "total": 12.5, "company": "kedai a sdn bhd"})),  # field F1 right, SROIE not
        Reply(content="not json"),  # no answer: four FN
    )
    with ServerThread(create_app(settings)) as api:
        result = runner.invoke(app, ["eval", "--task", "receipt", "--data", str(tmp_path / "d" / "test.jsonl"),
                                     "--backend", "mock", "--url", api.url, "--out", str(tmp_path / "run.json"),
                                     "--concurrency", "1", "--metric", "sroie"])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run.json").read_text())
    s = run["summary"]
    assert s["sroie"]["micro"]["tp"] == 7 and s["sroie"]["micro"]["fp"] == 1 and s["sroie"]["micro"]["fn"] == 5
    assert s["field_micro"]["tp"] == 8 and s["field_micro"]["fn"] == 4  # case-folded: the company counts there
    assert s["sroie"]["fields"]["company"]["f1"] == 0.4 and s["fields"]["company"]["f1"] == 0.8
    items = {i["id"]: i for i in run["items"]}
    assert items["r1"]["sroie"]["company"] == [0, 1, 1] and items["r1"]["scores"]["company"] == [1, 0, 0]
    assert items["r2"]["sroie"] == {f: [0, 0, 1] for f in SROIE_FIELDS} and run["meta"]["metrics"] == ["field", "sroie"]
    disagreements = [json.loads(x) for x in (tmp_path / "run.disagreements.jsonl").read_text().splitlines()]
    assert [(d["id"], d["field_errors"], d["sroie_errors"]) for d in disagreements] == [
        ("r1", {}, ["company"]), ("r2", {}, list(SROIE_FIELDS))]  # fmt: skip
    assert "SROIE task-3 metric" in result.output and "worst disagreements" in result.output
    assert "kedai a sdn bhd" in result.output and "(none: invalid_json)" in result.output
    company_row = next(line for line in result.output.splitlines() if "company" in line and "0.400" in line)
    assert "0.800" in company_row  # SROIE F1 next to field F1


def test_ungrounded_undoes_the_services_changes_by_path() -> None:
    from training.evaluate import ungrounded

    output = {"date": "2019-01-15", "items": [{"amount": 1.0}, {"amount": 2.5}], "meta": {"n": 3}}
    changes = [{"path": "date", "model_value": "2019-01-51", "value": "2019-01-15"},
               {"path": "items[1].amount", "model_value": 2.0, "value": 2.5},
               {"path": "meta.n", "model_value": 4, "value": 3},
               {"path": "gone[7].x", "model_value": 1, "value": 2}]  # fmt: skip
    assert ungrounded(output, changes) == {"date": "2019-01-51", "items": [{"amount": 1.0}, {"amount": 2.0}],
                                           "meta": {"n": 4}}  # fmt: skip
    assert output["date"] == "2019-01-15" and ungrounded(None, changes) is None


@pytest.mark.integration
def test_eval_reports_what_grounding_changed_and_the_score_as_answered(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1", max_attempts=1)})
    text = "KEDAI A SDN BHD\nNO 1, JALAN 2, 81100 JOHOR\n15/01/2019 10:02\nTOTAL RM 9.00"
    write_split({"test": [Record("r0", text, GOLD), Record("r1", text, GOLD)]}, tmp_path / "d", meta={})
    upstream.enqueue(Reply(content=json.dumps({**GOLD, "date": "2019-05-15"})), Reply(content=json.dumps(GOLD)))
    with ServerThread(create_app(settings)) as api:
        result = runner.invoke(app, ["eval", "--task", "receipt", "--data", str(tmp_path / "d" / "test.jsonl"),
                                     "--backend", "mock", "--url", api.url, "--out", str(tmp_path / "run.json"),
                                     "--concurrency", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run.json").read_text())
    g = run["summary"]["grounding"]
    assert (g["values_snapped"], g["requests_with_snaps"]) == (1, 1)
    assert run["summary"]["fields"]["date"]["f1"] == 1.0 and g["as_answered"]["fields"]["date"]["f1"] == 0.5
    assert {i["id"]: i["grounding"] for i in run["items"]} == {
        "r0": [{"path": "date", "model_value": "2019-05-15", "value": "2019-01-15"}], "r1": []}  # fmt: skip
    assert "1 value(s) in 1 answer(s) snapped" in result.output
