"""The `extraction data ...` commands and the service's opt-in request log feeding `from-logs`."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.cli import app
from service.config import Settings
from tests.conftest import backend_entry

runner = CliRunner()


def test_synth_split_validate_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "all.jsonl"
    result = runner.invoke(app, ["data", "synth", "--task", "receipt", "--n", "50", "--seed", "3", "--out", str(data)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "split", str(data), "--task", "receipt", "--out-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert {k: v["records"] for k, v in manifest["files"].items()} == {"train": 35, "val": 5, "test": 10}
    again = runner.invoke(app, ["data", "split", str(data), "--task", "receipt", "--out-dir", str(tmp_path / "s")])
    assert again.exit_code == 1 and "written once" in again.output
    ok = runner.invoke(app, ["data", "validate", str(tmp_path / "s" / "test.jsonl"), "--task", "receipt"])
    assert ok.exit_code == 0 and "10 records" in ok.output
    bad = runner.invoke(app, ["data", "validate", str(tmp_path / "s" / "test.jsonl"), "--task", "invoice"])
    assert bad.exit_code == 1 and "line 1:" in bad.output


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["data", "synth", "--task", "nope", "--n", "2", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2
    mix = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(tmp_path / "x"),
                              "--mix", "weird=1"])  # fmt: skip
    assert mix.exit_code == 2 and not (tmp_path / "x").exists()
    mix = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(tmp_path / "x"),
                              "--mix", "easy"])  # fmt: skip
    assert mix.exit_code == 2 and "--mix takes LEVEL=WEIGHT pairs" in mix.output  # was "not enough values to unpack"
    (tmp_path / "no-tasks").mkdir()
    empty = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(tmp_path / "x"),
                                "--tasks-dir", str(tmp_path / "no-tasks")])  # fmt: skip
    assert empty.exit_code == 2 and "no task YAML" in empty.output
    for out in (tmp_path, Path("/proc/x.jsonl")):  # a folder, or nowhere: one line, no traceback, nothing written
        bad = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(out)])
        assert bad.exit_code == 1, bad.output
        assert "Traceback" not in bad.output and ("is a folder" in bad.output or "cannot write" in bad.output)


@pytest.mark.integration
def test_request_log_to_anonymised_dataset(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")},
                             request_log={"enabled": True, "path": str(log), "redact_pii": False})  # fmt: skip
    people = {"persons": ["Jane Miller"], "organizations": ["ACME"], "locations": [], "dates": []}
    upstream.enqueue(Reply(content=json.dumps(people)), Reply(content="nope"), Reply(content="nope"),
                     Reply(content="nope"))  # fmt: skip
    with ServerThread(create_app(settings)) as api:
        text = "Jane Miller (jane@example.com) works at ACME."
        assert httpx.post(f"{api.url}/v1/extract", json={"task": "entities", "text": text}).status_code == 200
        assert httpx.post(f"{api.url}/v1/extract", json={"task": "entities", "text": "x"}).status_code == 422
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["outcome"] for e in entries] == ["ok", "schema_invalid"]
    assert entries[0]["text"] == text and entries[0]["output"] == people and entries[0]["request_id"]
    out = tmp_path / "from_logs.jsonl"
    result = runner.invoke(app, ["data", "from-logs", str(log), "--task", "entities", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "'email': 1" in result.output and "'person_name': 1" in result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "Jane Miller" not in record["text"] and "jane@example.com" not in record["text"]
    assert record["output"]["persons"][0] in record["text"] and record["output"]["organizations"] == ["ACME"]


def test_request_log_redacts_pii_unless_told_otherwise(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    settings = make_settings(
        {"mock": backend_entry(f"{upstream.url}/v1")}, request_log={"enabled": True, "path": str(log)}
    )
    answer = {"persons": ["Jane Miller"], "organizations": ["jane@example.com"], "locations": [], "dates": []}
    upstream.enqueue(Reply(content=json.dumps(answer)))
    with ServerThread(create_app(settings)) as api:
        text = "Jane Miller (jane@example.com, +1 415 555 0132) works at ACME."
        assert httpx.post(f"{api.url}/v1/extract", json={"task": "entities", "text": text}).status_code == 200
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["text"] == "Jane Miller ([EMAIL], [PHONE]) works at ACME."
    assert entry["output"]["organizations"] == ["[EMAIL]"]


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    source = tmp_path / "ok.csv"
    source.write_text("text,company,invoice_date,total_amount,currency\nInvoice ACME,ACME,2024-01-02,10.5,EUR\n")
    before = source.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(source.name)
    for out in (source, tmp_path / "link.jsonl", tmp_path / "." / "ok.csv"):
        r = runner.invoke(app, ["data", "import", str(source), "--task", "invoice", "--out", str(out)])
        assert r.exit_code == 1 and "is the input file" in r.output and "Traceback" not in r.output, r.output
    assert source.read_bytes() == before  # was: "wrote 1 records to ok.csv", the CSV gone
    log = tmp_path / "requests.jsonl"
    log.write_text(json.dumps({"task": "invoice", "outcome": "ok", "text": "x", "output": {}}) + "\n")
    r = runner.invoke(app, ["data", "from-logs", str(log), "--task", "invoice", "--out", str(log)])
    assert r.exit_code == 1 and "is the input file" in r.output and json.loads(log.read_text())["text"] == "x"
    data = tmp_path / "s" / "train.jsonl"
    assert runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "20", "--out", str(data)]).exit_code == 0
    before = data.read_bytes()
    r = runner.invoke(app, ["data", "split", str(data), "--task", "invoice", "--out-dir", str(data.parent), "--force"])
    assert r.exit_code == 1 and "is the input file" in r.output and data.read_bytes() == before, r.output
    assert sorted(p.name for p in data.parent.iterdir()) == ["train.jsonl"]


def test_bad_lines_that_were_tracebacks_are_reported_with_their_numbers(tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "\n")
    for command in (["validate", str(deep)], ["split", str(deep), "--out-dir", str(tmp_path / "s")],
                    ["import", str(deep), "--out", str(tmp_path / "x.jsonl")]):  # fmt: skip
        r = runner.invoke(app, ["data", *command, "--task", "invoice"])
        assert r.exit_code == 1 and "line 1: nested too deeply" in r.output, r.output  # was a RecursionError
    log = tmp_path / "requests.jsonl"
    deep_output = '{"task": "invoice", "outcome": "ok", "text": "x", "output": ' + "[" * 3000 + "]" * 3000 + "}"
    log.write_text(json.dumps({"task": "invoice", "outcome": "ok", "text": 5, "output": {}}) + "\n" + deep_output)
    r = runner.invoke(app, ["data", "from-logs", str(log), "--task", "invoice", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 1 and "line 1: `text` must be a string, not int" in r.output, r.output  # was a TypeError
    assert "line 2: nested too deeply" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x.jsonl").exists()


def test_synth_says_what_is_wrong_with_the_mix_and_bounds_n(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    zero = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(out), "--mix", "easy=0"])
    assert zero.exit_code == 2 and "must not all be zero" in zero.output, zero.output  # was "must be non-negative"
    nan = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(out), "--mix", "easy=nan"])
    assert nan.exit_code == 2 and "finite" in nan.output
    huge = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "99999999999999999999", "--out", str(out)])
    assert huge.exit_code == 2 and "between 1 and 1,000,000 records" in huge.output  # ran for ever
    assert not out.exists()


def test_synth_onto_a_fifo_is_refused_in_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "null"  # a FIFO stands in for /dev/null, which a root run turned into a regular file
    os.mkfifo(fifo)
    r = runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "2", "--out", str(fifo)])
    assert r.exit_code == 1 and "it is a FIFO (named pipe)" in r.output and "Traceback" not in r.output, r.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_split_of_too_few_records_for_a_test_set_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "one.jsonl"
    assert runner.invoke(app, ["data", "synth", "--task", "invoice", "--n", "1", "--out", str(data)]).exit_code == 0
    r = runner.invoke(app, ["data", "split", str(data), "--task", "invoice", "--out-dir", str(tmp_path / "s")])
    assert r.exit_code == 1 and "needs at least 3 records" in r.output, r.output  # was exit 0 with no test.jsonl
    assert not (tmp_path / "s").exists()
    r = runner.invoke(app, ["data", "split", str(data), "--task", "invoice", "--out-dir", str(tmp_path / "s"),
                            "--test", "0", "--val", "0"])  # fmt: skip
    assert r.exit_code == 0 and sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", "train.jsonl"]
