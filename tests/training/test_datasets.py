"""Dataset loading/validation errors, import with column mapping, split determinism and the frozen-test guard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest

from service.config import DEFAULT_CONFIG
from service.tasks import Task, load_tasks
from training.datasets import (
    ColumnMap,
    DatasetError,
    OutputError,
    Record,
    import_records,
    load_dataset,
    write_dataset,
)
from training.split import FrozenTestError, check_frozen, split_records, write_split

TASKS = load_tasks(DEFAULT_CONFIG.parent / "tasks")
INVOICE = TASKS["invoice"]
GOOD = {"company": "ACME", "invoice_date": "2024-01-02", "total_amount": 10.5, "currency": "EUR"}


def lines(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_reports_every_bad_line_with_its_number(tmp_path: Path) -> None:
    path = lines(
        tmp_path / "d.jsonl",
        {"id": "1", "text": "ok", "output": GOOD},
        "{not json",
        {"id": "2", "text": "", "output": GOOD},
        {"id": "1", "text": "dup", "output": GOOD},
        {"id": "3", "text": "x", "output": {**GOOD, "currency": "euro"}},
        {"id": "4", "text": "x", "output": GOOD, "extra": 1},
        [1, 2],
    )
    with pytest.raises(DatasetError) as info:
        load_dataset(path, INVOICE)
    problems = info.value.problems
    assert any(p.startswith("line 2: not JSON") for p in problems)
    assert "line 3: `text` must be a non-empty string" in problems
    assert "line 4: duplicate id '1'" in problems
    assert any(p.startswith("line 5: output $.currency") for p in problems)
    assert "line 6: unknown keys ['extra']" in problems
    assert "line 7: not a JSON object" in problems
    assert not any(p.startswith("line 1:") for p in problems)


def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    records = [Record("a", "Rechnung ü", GOOD), Record("b", "x", {**GOOD, "company": None})]
    sha = write_dataset(tmp_path / "out" / "d.jsonl", records)
    assert load_dataset(tmp_path / "out" / "d.jsonl", INVOICE) == records
    assert len(sha) == 64 and [p.name for p in (tmp_path / "out").iterdir()] == ["d.jsonl"]


def test_csv_import_with_column_mapping_and_type_coercion(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("ref,body,seller,day,amount,cur\nA1,Invoice one,ACME,2024-01-02,\"1,190.50\",EUR\n"
                   "A2,Invoice two,,,,\n")  # fmt: skip
    mapping = ColumnMap(
        text="body",
        id="ref",
        fields={"company": "seller", "invoice_date": "day", "total_amount": "amount", "currency": "cur"},
    )
    records = import_records(src, INVOICE, mapping)
    assert records[0] == Record("A1", "Invoice one", {**GOOD, "total_amount": 1190.5})
    assert records[1].output == {"company": None, "invoice_date": None, "total_amount": None, "currency": None}


def test_import_rejects_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text,category\nhello,card_arrival\nbye,not_an_intent\n")
    with pytest.raises(DatasetError, match="line 3: output"):
        import_records(src, TASKS["support_intent"], ColumnMap(fields={"intent": "category"}))
    with pytest.raises(DatasetError, match="no column 'missing'"):
        import_records(src, TASKS["support_intent"], ColumnMap(text="missing", fields={"intent": "category"}))


def test_jsonl_import_with_output_column(tmp_path: Path) -> None:
    src = lines(tmp_path / "in.jsonl", {"msg": "hi", "label": {"intent": "card_arrival"}, "key": 7})
    records = import_records(src, TASKS["support_intent"], ColumnMap(text="msg", id="key", output="label"))
    assert records == [Record("7", "hi", {"intent": "card_arrival"})]


def test_split_is_deterministic_and_order_independent() -> None:
    records = [Record(str(i), f"t{i}", GOOD) for i in range(100)]
    a = split_records(records, 0.1, 0.2, seed=3)
    b = split_records(list(reversed(records)), 0.1, 0.2, seed=3)
    assert a == b
    assert [len(p) for p in a] == [70, 10, 20]
    assert {r.id for p in a for r in p} == {r.id for r in records}
    assert split_records(records, 0.1, 0.2, seed=4)[2] != a[2]
    with pytest.raises(ValueError):
        split_records(records, 0.6, 0.5, seed=0)


def test_frozen_test_is_written_once_and_guarded(tmp_path: Path) -> None:
    records = [Record(str(i), f"t{i}", GOOD) for i in range(20)]
    train, val, test = split_records(records, 0.1, 0.2, seed=0)
    manifest = write_split({"train": train, "val": val, "test": test}, tmp_path, meta={"seed": 0})
    assert manifest["files"]["test"]["records"] == 4
    assert check_frozen(tmp_path / "test.jsonl") == {"sha256": manifest["files"]["test"]["sha256"],
                                                     "frozen": True, "matches_manifest": True}  # fmt: skip
    with pytest.raises(FrozenTestError, match="written once"):
        write_split({"test": test}, tmp_path, meta={})
    with (tmp_path / "test.jsonl").open("a") as f:
        f.write(Record("new", "sneaked in", GOOD).as_json() + "\n")
    with pytest.raises(FrozenTestError, match="changed since it was frozen"):
        check_frozen(tmp_path / "test.jsonl")
    assert check_frozen(tmp_path / "test.jsonl", allow_changed=True)["matches_manifest"] is False


def test_csv_rows_with_a_quote_left_open_or_the_wrong_cell_count_are_bad_lines_not_merged(tmp_path: Path) -> None:
    mapping = ColumnMap(text="body", id="ref", fields={"company": "seller", "invoice_date": "day",
                                                       "total_amount": "amount", "currency": "cur"})  # fmt: skip
    header = "ref,body,seller,day,amount,cur\n"
    cases = {
        # the open quote swallowed r2 into r1's text, r1 took r2's labels and r2 was gone, exit 0
        'r1,"ACME GmbH,ACME,,1,EUR\nr2,"Foo",Foo Ltd,,2,GBP\n': "line 2 (to line 3): malformed CSV",
        "r1,text,ACME,,1\n": "line 2: 5 cells where the header has 6",  # was: currency silently null
        "r1,text,ACME,,1,EUR,extra\n": "line 2: 7 cells where the header has 6",  # was: the cell dropped
    }
    src = tmp_path / "in.csv"
    for body, message in cases.items():
        src.write_text(header + body)
        with pytest.raises(DatasetError, match=re.escape(message)):
            import_records(src, INVOICE, mapping)
    src.write_text(header + 'r1,"two\nlines, quoted",ACME,,1,EUR\n\nr2,x,B,,2,USD\n')  # a quoted newline is fine
    records = import_records(src, INVOICE, mapping)
    assert [r.text for r in records] == ["two\nlines, quoted", "x"]
    src.write_bytes(("\ufeff" + header + "r1,t,ACME,,1,EUR,,\n   \nr2,u,B,,2,USD\n").encode())  # BOM, trailing commas
    assert [r.id for r in import_records(src, INVOICE, mapping)] == ["r1", "r2"]
    src.write_text(header + "r1,t,S,,1,EUR,EXTRA\n")
    with pytest.raises(DatasetError, match="line 2: 7 cells"):  # was a TypeError (sorting a None key)
        import_records(src, INVOICE, ColumnMap(text="body", id="nope"))


def test_cells_are_coerced_to_the_schema_type_or_refused(tmp_path: Path) -> None:
    task = Task.model_validate({"name": "t", "instructions": "x", "schema": {
        "type": "object", "additionalProperties": False, "required": ["n", "flag", "score"],
        "properties": {"n": {"type": ["integer", "null"]}, "flag": {"type": ["boolean", "null"]},
                       "score": {"type": ["number", "null"]}}}})  # fmt: skip
    src = tmp_path / "in.csv"
    mapping = ColumnMap(text="text", fields={"n": "n", "flag": "flag", "score": "score"})
    src.write_text('text,n,flag,score\na,3,yes,"1,234.5"\nb,4.0,F,2\n')
    assert [r.output for r in import_records(src, task, mapping)] == [
        {"n": 3, "flag": True, "score": 1234.5}, {"n": 4, "flag": False, "score": 2.0}]  # fmt: skip
    src.write_text('text,n,flag,score\na,9007199254740993,1,"1,234,567"\n')
    assert import_records(src, task, mapping)[0].output == {"n": 9007199254740993, "flag": True, "score": 1234567}
    refused = [("a,\"1,5\",yes,1", "'1,5' is not a finite number"),
               ("a,1.9,yes,1", "'1.9' is not an integer"), ("a,1,maybe,1", "'maybe' is not a boolean"),
               ("a,1,yes,1e400", "'1e400' is not a finite number"), ("a,1,yes,NaN", "is not a finite")]  # fmt: skip
    for row, message in refused:
        src.write_text("text,n,flag,score\n" + row + "\n")
        with pytest.raises(DatasetError, match=re.escape(message)):
            import_records(src, task, mapping)


def test_nan_infinity_and_overflowing_numbers_are_no_json(tmp_path: Path) -> None:
    path = lines(tmp_path / "d.jsonl", '{"id": "1", "text": "x", "output": {"company": "A", "invoice_date": null, '
                 '"total_amount": NaN, "currency": null}}', '{"id": "2", "text": "x", "output": {"company": "A", '
                 '"invoice_date": null, "total_amount": 1e400, "currency": null}}')  # fmt: skip
    with pytest.raises(DatasetError) as info:
        load_dataset(path, INVOICE)
    assert info.value.problems == ["line 1: not JSON (NaN is not JSON)",
                                   "line 2: not JSON (1e400 is too large for a JSON number)"]  # fmt: skip
    with pytest.raises(ValueError):  # and never written: strict readers downstream could not read it
        write_dataset(tmp_path / "o.jsonl", [Record("a", "x", {**GOOD, "total_amount": float("nan")})])
    assert not (tmp_path / "o.jsonl").exists() and [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


def test_writing_a_dataset_to_a_folder_or_nowhere_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder"):
        write_dataset(tmp_path, [Record("a", "x", GOOD)])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        write_dataset(tmp_path / "file" / "d.jsonl", [Record("a", "x", GOOD)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_writing_a_dataset_onto_a_fifo_is_refused_a_symlink_followed_and_a_mode_kept(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"  # stands in for /dev/null: renaming over it replaced the device node, as root
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"cannot write .*fifo: it is a FIFO") as info:
        write_dataset(fifo, [Record("a", "x", GOOD)])
    assert "\n" not in str(info.value) and stat.S_ISFIFO(fifo.stat().st_mode)
    target = tmp_path / "target.jsonl"
    target.write_text("old\n")
    target.chmod(0o644)
    (tmp_path / "link.jsonl").symlink_to(target.name)
    sha = write_dataset(tmp_path / "link.jsonl", [Record("a", "x", GOOD)])
    assert (tmp_path / "link.jsonl").is_symlink() and load_dataset(target, INVOICE) == [Record("a", "x", GOOD)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and sha == hashlib.sha256(target.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.jsonl", "target.jsonl"]


@pytest.mark.parametrize(
    "line",
    ["[" * 100_000, '{"id": "a", "text": "x", "output": {"company": ' + "[" * 3000 + "]" * 3000 + "}}"],
    ids=["unclosed-100000", "3000-inside-output"],
)
def test_a_line_nested_too_deeply_is_a_bad_line_not_a_recursion_error(tmp_path: Path, line: str) -> None:
    path = lines(tmp_path / "d.jsonl", {"id": "ok", "text": "x", "output": GOOD}, line)
    with pytest.raises(DatasetError) as info:
        load_dataset(path, INVOICE)
    assert info.value.problems == ["line 2: nested too deeply (more than 100 levels of objects and arrays)"]
    csv = tmp_path / "d.csv"
    csv.write_text('text,output\nx,"' + "[" * 5000 + "]" * 5000 + '"\n')
    with pytest.raises(DatasetError, match="line 2: nested too deeply"):
        import_records(csv, INVOICE, ColumnMap(output="output"))


def test_a_split_whose_test_share_rounds_to_no_record_is_refused_saying_how_many_it_needs() -> None:
    one = [Record("a", "x", GOOD)]
    with pytest.raises(ValueError, match=r"--test 0.2 of 1 record\(s\) is no test record: .* at least 3 records"):
        split_records(one, 0.1, 0.2, seed=0)
    assert split_records(one, 0.0, 0.0, seed=0) == (one, [], [])  # no test set asked for: none made
    three = [Record(str(i), "x", GOOD) for i in range(3)]
    assert len(split_records(three, 0.0, 0.2, seed=0)[2]) == 1
    five = [Record(str(i), "x", GOOD) for i in range(5)]
    with pytest.raises(ValueError, match="at least 6 records"):  # round(5 x 0.1) is 0: halves round to even
        split_records(five, 0.0, 0.1, seed=0)


def test_a_split_never_writes_over_its_source_file(tmp_path: Path) -> None:
    records = [Record(str(i), f"t{i}", GOOD) for i in range(10)]
    source = lines(tmp_path / "train.jsonl", *[json.loads(r.as_json()) for r in records])
    before = source.read_bytes()
    with pytest.raises(OutputError, match="is the input file"):
        write_split({"train": records[:8], "test": records[8:]}, tmp_path, meta={}, inputs=[source])
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_eval_data_that_is_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(FrozenTestError, match="is a folder; give the test JSONL file in it"):
        check_frozen(tmp_path)
