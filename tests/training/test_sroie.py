"""SROIE task 3 -> `receipt`: the label normalisers, the import with its report, the frozen validation split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.config import DEFAULT_CONFIG
from service.tasks import load_tasks
from training.datasets import load_dataset, validator_for
from training.split import FrozenTestError
from training.sroie import (
    LabelError,
    import_sroie,
    normalise_date,
    normalise_text,
    normalise_total,
    parse_date,
    parse_total,
    receipt_output,
    write_sroie,
)

RECEIPT = load_tasks(DEFAULT_CONFIG.parent / "tasks")["receipt"]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
runner = CliRunner()


@pytest.mark.parametrize(
    ("printed", "iso"),
    [
        ("15/01/2019", "2019-01-15"),  # dd/mm/yyyy, the common form
        ("05/01/2019", "2019-01-05"),  # ambiguous: Malaysia is day-first
        ("5/1/2019", "2019-01-05"),
        ("15-01-19", "2019-01-15"),  # dd-mm-yy
        ("12-01-19", "2019-01-12"),
        ("15.01.2019", "2019-01-15"),  # dd.mm.yyyy
        ("11.02.18", "2018-02-11"),  # not a time
        ("2019-01-15", "2019-01-15"),  # ISO stays ISO (dateutil's dayfirst would read 2019-15-01)
        ("2018-01-05", "2018-01-05"),
        ("2019/01/15", "2019-01-15"),  # yyyy/mm/dd
        ("20180304", "2018-03-04"),  # yyyymmdd
        ("25032018", "2018-03-25"),  # ddmmyyyy
        ("150119", "2019-01-15"),  # ddmmyy
        ("15 JAN 2019", "2019-01-15"),
        ("15 Jan 19", "2019-01-15"),
        ("15-JAN-2019", "2019-01-15"),
        ("15/FEB/2018", "2018-02-15"),
        ("15JAN2019", "2019-01-15"),
        ("OCT 3, 2016", "2016-10-03"),
        ("Jan. 15, 2019", "2019-01-15"),
        ("2019 JAN 15", "2019-01-15"),
        ("15 January 2019", "2019-01-15"),
        ("15 MAC 2019", "2019-03-15"),  # Malay month names
        ("2 OGOS 2019", "2019-08-02"),
        ("1 DIS 18", "2018-12-01"),
        ("(06/12/2016)", "2016-12-06"),
        ("DATE: 25/12/2018", "2018-12-25"),
        ("25/12/2018 8:13:39 PM", "2018-12-25"),
        ("Sat, 15 Jan 2019 14:32", "2019-01-15"),
        ("15 January 2019 10.30 AM", "2019-01-15"),
        ("January 15th, 2019", "2019-01-15"),  # left to dateutil
    ],
)
def test_dates_to_iso(printed: str, iso: str) -> None:
    assert normalise_date(printed) == iso


def test_month_first_only_when_day_first_is_impossible_and_then_noted() -> None:
    assert parse_date("12/28/2017") == ("2017-12-28", "read month-first (no month 28): '12/28/2017'")
    assert parse_date("12/11/2017") == ("2017-11-12", None)


@pytest.mark.parametrize(
    ("printed", "why"),
    [
        ("", "no date"),
        ("31/02/2019", "not a calendar date"),
        ("13/13/2019", "not a calendar date"),
        ("1/1/1850", "out of range"),
        ("15 JAN", "incomplete date"),  # no year: dateutil would invent one
        ("15 FOO 2019", "not a month"),
        ("hello", "not a date"),
        ("15/01/219", "neither 2 nor 4 digits"),
    ],
)
def test_dates_that_cannot_be_normalised_say_why(printed: str, why: str) -> None:
    with pytest.raises(LabelError, match=why):
        normalise_date(printed)


@pytest.mark.parametrize(
    ("printed", "amount"),
    [
        ("9.00", 9.0),
        ("RM 9.00", 9.0),
        ("RM9", 9.0),
        ("rm9.90", 9.9),
        ("$8.20", 8.2),
        ("MYR 12.5", 12.5),
        ("1,234.50", 1234.5),
        ("RM1,007.50", 1007.5),
        ("12,345,678.90", 12345678.9),
        ("9.000", 9.0),
        (".50", 0.5),
        ("-1.73", -1.73),
        ("-RM 0.02", -0.02),
        ("RM -0.02", -0.02),
        ("(1.73)", -1.73),
        ("-0.00", 0.0),
        ("9. 00", 9.0),  # OCR space inside the number
    ],
)
def test_totals_to_numbers(printed: str, amount: float) -> None:
    assert normalise_total(printed) == amount


def test_a_lone_decimal_comma_is_read_as_a_point_and_noted() -> None:
    assert parse_total("1,60") == (1.6, "decimal comma read as a point: '1,60'")
    assert parse_total("1,600") == (1600.0, None)  # a thousands separator


@pytest.mark.parametrize("printed", ["", "RM", "-", "TOTAL 9.00", "9.00 10.00", "1,2345.00", "abc"])
def test_totals_that_are_not_one_amount_fail(printed: str) -> None:
    with pytest.raises(LabelError, match="not an amount"):
        normalise_total(printed)


def test_text_fields_collapse_whitespace_but_keep_case_and_punctuation() -> None:
    assert normalise_text("LOT 485, TMN LEMBAH\nKERAMAT,  54200 KL ") == "LOT 485, TMN LEMBAH KERAMAT, 54200 KL"
    assert normalise_text("Book Ta .K (Taman Daya)") == "Book Ta .K (Taman Daya)"
    assert normalise_text(" \n ") is None


def test_receipt_output_maps_the_four_labels_and_reports_the_rest() -> None:
    output, failures, notes = receipt_output(
        {"company": "ABC SDN BHD", "date": "15/01/2019", "address": "", "total": "RM 9.00", "tax": "0.54"}
    )
    assert output == {"company": "ABC SDN BHD", "date": "2019-01-15", "address": None, "total": 9.0}
    assert failures == [] and notes == [("address", "empty label -> null"), ("", "labels ['tax'] are not receipt "
                                                                             "fields, ignored")]  # fmt: skip
    output, failures, _ = receipt_output({"company": "X", "date": "soon", "total": 5})
    assert output["total"] == 5.0 and output["address"] is None
    assert failures == [("date", "not a date: 'soon'")]


def _sroie_file(path: Path) -> Path:
    """Six SROIE-like lines: four good (varied forms), one bad date, one bad total, one broken line."""
    rows = [
        {"id": "A1", "text": "KEDAI A SDN BHD\nNO 1, JALAN 2,\n81100 JOHOR\n15/01/2019\nTOTAL RM 9.00",
         "output": {"company": "KEDAI A SDN BHD", "date": "15/01/2019", "address": "NO 1, JALAN 2, 81100 JOHOR",
                    "total": "RM 9.00"}},
        {"id": "A2", "text": "KEDAI B\n12-01-19\nTOTAL 1,234.50", "output": {"company": "KEDAI B", "date": "12-01-19",
                                                                           "address": "JALAN B", "total": "1,234.50"}},
        {"id": "A3", "text": "KEDAI C\n05 MAR 2018\n$8.20", "output": {"company": "KEDAI C", "date": "05 MAR 2018",
                                                                      "address": "JALAN C", "total": "$8.20"}},
        {"id": "A4", "text": "KEDAI D\n2018/02/22\nRM39", "output": {"company": "KEDAI D", "date": "2018/02/22",
                                                                    "address": "JALAN D", "total": "RM39"}},
        {"id": "B1", "text": "KEDAI E\n31/02/2019", "output": {"company": "KEDAI E", "date": "31/02/2019",
                                                               "address": "JALAN E", "total": "5.00"}},
        {"id": "B2", "text": "KEDAI F", "output": {"company": "KEDAI F", "date": "01/01/2019", "address": "JALAN F",
                                                   "total": "RM 5.00 RM 6.00"}},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path


def test_import_normalises_checks_and_reports_what_failed(tmp_path: Path) -> None:
    imported = import_sroie(_sroie_file(tmp_path / "sroie.jsonl"), RECEIPT)
    assert [r.id for r in imported.records] == ["A1", "A2", "A3", "A4"]
    assert [r.output["date"] for r in imported.records] == ["2019-01-15", "2019-01-12", "2018-03-05", "2018-02-22"]
    assert [r.output["total"] for r in imported.records] == [9.0, 1234.5, 8.2, 39.0]
    validator = validator_for(RECEIPT)
    assert all(not list(validator.iter_errors(r.output)) for r in imported.records)
    report = imported.report()
    assert (report["lines"], report["imported"], report["rejected_receipts"]) == (7, 4, 3)
    assert [(i["line"], i["id"], i["field"]) for i in report["rejected"]] == [(5, "B1", "date"), (6, "B2", "total"),
                                                                              (7, "", "")]  # fmt: skip
    assert "not a calendar date" in report["rejected"][0]["reason"] and report["rejected"][0]["value"] == "31/02/2019"
    assert report["rejected"][2]["reason"].startswith("not JSON")


def test_duplicate_ids_and_missing_text_are_rejected_not_dropped(tmp_path: Path) -> None:
    labels = {"company": "X", "date": "01/01/2019", "address": "Y", "total": "1.00"}
    src = tmp_path / "dup.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "a", "text": "t", "output": labels},
                                                          {"id": "a", "text": "t", "output": labels},
                                                          {"id": "b", "text": "", "output": labels}]))  # fmt: skip
    imported = import_sroie(src, RECEIPT)
    assert [r.id for r in imported.records] == ["a"]
    assert [(i.line, i.reason) for i in imported.rejected] == [(2, "duplicate id 'a'"),
                                                               (3, "`text` must be a non-empty string")]  # fmt: skip


def test_cli_writes_a_deterministic_frozen_split_with_hashes(tmp_path: Path) -> None:
    src, out = _sroie_file(tmp_path / "sroie.jsonl"), tmp_path / "out"
    args = ["data", "sroie", "--src", str(src), "--out", str(out), "--val", "0.25", "--seed", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "7 lines, 4 receipts imported, 3 rejected" in result.output
    assert "line 5 (B1) date: not a calendar date" in result.output
    assert "line 6 (B2) total: not an amount" in result.output
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(files) == ["manifest.json", "train.jsonl", "val.jsonl"]
    manifest = json.loads(files["manifest.json"])
    assert {k: v["records"] for k, v in manifest["files"].items()} == {"train": 3, "val": 1}
    for info in manifest["files"].values():
        assert hashlib.sha256(files[info["file"]]).hexdigest() == info["sha256"]
    assert manifest["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and manifest["seed"] == 0
    assert manifest["report"]["rejected_receipts"] == 3
    for name in ("train.jsonl", "val.jsonl"):
        assert len(load_dataset(out / name, RECEIPT)) == manifest["files"][name.split(".")[0]]["records"]
    assert runner.invoke(app, args).exit_code == 0  # the same split again: byte-identical, manifest included
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    changed = runner.invoke(app, [*args[:-1], "7"])  # another seed would change the frozen val split
    assert changed.exit_code == 1 and "different frozen val split" in changed.output
    assert (out / "val.jsonl").read_bytes() == files["val.jsonl"]
    assert runner.invoke(app, [*args[:-1], "7", "--force"]).exit_code == 0


def test_held_out_receipts_become_a_frozen_test_set(tmp_path: Path) -> None:
    imported = import_sroie(_sroie_file(tmp_path / "sroie.jsonl"), RECEIPT)
    manifest = write_sroie(imported, tmp_path / "t", val=0.15, seed=0, as_test=True)
    assert list(manifest["files"]) == ["test"] and manifest["files"]["test"]["records"] == 4
    assert write_sroie(imported, tmp_path / "t", val=0.15, seed=0, as_test=True) == manifest  # identical: allowed
    imported.records.pop()
    with pytest.raises(FrozenTestError, match="different frozen test split"):
        write_sroie(imported, tmp_path / "t", val=0.15, seed=0, as_test=True)


def test_a_test_set_and_a_train_val_split_do_not_share_a_folder(tmp_path: Path) -> None:
    imported = import_sroie(_sroie_file(tmp_path / "sroie.jsonl"), RECEIPT)
    split = write_sroie(imported, tmp_path / "s", val=0.25, seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    # was: test.jsonl = the receipts trained on, and a manifest without train/val's hashes
    with pytest.raises(FrozenTestError, match="already holds a train/val split"):
        write_sroie(imported, tmp_path / "s", val=0.15, seed=0, as_test=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before and "test" not in split["files"]
    write_sroie(imported, tmp_path / "t", val=0.15, seed=0, as_test=True)
    with pytest.raises(FrozenTestError, match="already holds a frozen test set"):
        write_sroie(imported, tmp_path / "t", val=0.25, seed=0)


@pytest.mark.skipif(not (SHARED / "sroie").is_dir(), reason="shared/data not beside the checkout")
def test_real_sroie_receipts_import_into_valid_records(tmp_path: Path) -> None:
    src = SHARED / "sroie" / "train.jsonl"
    imported = import_sroie(src, RECEIPT)
    assert imported.lines == 624 and len(imported.records) + len({i.line for i in imported.rejected}) == 624
    assert len(imported.records) >= 620  # every printed form there is handled; the rest would be listed
    manifest = write_sroie(imported, tmp_path / "s", val=0.15, seed=0)
    assert {k: v["records"] for k, v in manifest["files"].items()} == {"train": 530, "val": 94}
    validator, ids = validator_for(RECEIPT), set()
    for name, info in manifest["files"].items():
        path = tmp_path / "s" / info["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
        records = load_dataset(path, RECEIPT)
        assert all(not list(validator.iter_errors(r.output)) for r in records)
        assert all(r.output["date"][:2] == "20" and isinstance(r.output["total"], float) for r in records), name
        ids |= {r.id for r in records}
    assert len(ids) == len(imported.records)  # no receipt in both files
    again = write_sroie(import_sroie(src, RECEIPT), tmp_path / "again", val=0.15, seed=0)
    assert again["files"] == manifest["files"]
