"""`extraction eval` through the real service (loopback upstream) and the decision report."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from loadtest.mock_upstream import MockUpstream, Reply, ServerThread
from service.app import create_app
from service.auth import hash_key
from service.cli import app as cli
from service.config import DEFAULT_CONFIG, Settings
from service.tasks import load_tasks
from tests.conftest import backend_entry
from tests.training.fake_runs import run_file
from training.datasets import Record
from training.evaluate import EvalArgs, percentile, run_eval
from training.report import build_report, decide
from training.split import FrozenTestError, write_split

GOLD = [
    {"company": "ACME", "invoice_date": "2024-01-02", "total_amount": 10.0, "currency": "EUR"},
    {"company": "Beta", "invoice_date": "2024-02-03", "total_amount": 20.0, "currency": "USD"},
    {"company": "Gamma", "invoice_date": None, "total_amount": 30.0, "currency": "GBP"},
]


def test_percentile_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([], 50) is None


@pytest.mark.integration
def test_eval_run_scores_items_through_the_service(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1", max_attempts=2)})  # type: ignore[attr-defined]
    records = [Record(f"r{i}", f"invoice {i}", gold) for i, gold in enumerate(GOLD)]
    write_split({"test": records}, tmp_path / "data", meta={})
    upstream.enqueue(
        Reply(content=json.dumps(GOLD[0]), usage=(100, 10)),  # exact
        Reply(content=json.dumps({**GOLD[1], "total_amount": 21.0}), usage=(100, 10)),  # one wrong value
        Reply(content="not json", usage=(100, 5)),
        Reply(content="still not", usage=(120, 5)),  # 422
    )
    with ServerThread(create_app(settings)) as api:
        args = EvalArgs("invoice", tmp_path / "data" / "test.jsonl", "mock", api.url, tmp_path / "run.json", 1)
        run = asyncio.run(run_eval(args))
    s = run["summary"]
    assert s["items"] == 3 and s["exact_match"] == round(1 / 3, 4)
    assert s["field_micro"]["tp"] == 7 and s["field_micro"]["fp"] == 1 and s["field_micro"]["fn"] == 1 + 3
    assert s["schema_valid_first_attempt"] == round(2 / 3, 4) and s["schema_valid_after_reasks"] == round(2 / 3, 4)
    assert s["error_buckets"]["invalid_json"] == 1 and s["error_buckets"]["wrong_value"] == 1
    assert s["attempts_per_request"] == pytest.approx(4 / 3, abs=1e-4)
    assert s["input_tokens_per_request"] == pytest.approx((100 + 100 + 220) / 3, abs=1e-3)
    assert s["cost_total_usd"] == pytest.approx((420 * 0.003 + 30 * 0.006) / 1000)
    assert run["meta"]["test_frozen"] and run["meta"]["prompt_style"] == "few_shot"
    assert json.loads((tmp_path / "run.json").read_text())["summary"] == s
    disagreements = [json.loads(x) for x in (tmp_path / "run.disagreements.jsonl").read_text().splitlines()]
    assert [d["id"] for d in disagreements] == ["r1", "r2"]
    assert disagreements[0]["field_errors"] == {"total_amount": "wrong_value"}
    # per-item TP/FP/FN, so `report` can recompute field F1 on any subset or resample of the items
    items = {i["id"]: i for i in run["items"]}
    assert items["r1"]["scores"]["total_amount"] == [0, 1, 1] and items["r1"]["scores"]["company"] == [1, 0, 0]
    assert items["r2"]["scores"]["company"] == [0, 0, 1] and items["r2"]["scores"]["invoice_date"] == [0, 0, 0]


def test_eval_refuses_a_changed_frozen_test(tmp_path: Path) -> None:
    write_split({"test": [Record("a", "x", GOLD[0])]}, tmp_path, meta={})
    (tmp_path / "test.jsonl").write_text(Record("b", "y", GOLD[1]).as_json() + "\n")
    with pytest.raises(FrozenTestError):
        asyncio.run(run_eval(EvalArgs("invoice", tmp_path / "test.jsonl", "mock", "http://127.0.0.1:9")))


@pytest.mark.integration
def test_eval_refuses_what_would_fail_before_sending_anything(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")})  # type: ignore[attr-defined]
    write_split({"test": [Record("a", "invoice a", GOLD[0])]}, tmp_path / "data", meta={})
    data = tmp_path / "data" / "test.jsonl"
    folder = tmp_path / "taken"
    folder.mkdir()
    with ServerThread(create_app(settings)) as api:
        cases = [
            (EvalArgs("invoice", data, "mock", api.url, folder), "is a folder"),  # found after a billed run before
            (EvalArgs("invoice", data, "mock", api.url, tmp_path / "f" / "x.json", fields=["bogus"]), "--fields bogus"),
            (EvalArgs("invoice", data, "mock", api.url, limit=-3), "--limit must be at least 1"),
            (EvalArgs("nope", data, "mock", api.url), "unknown task 'nope'; the service has: "),
            (EvalArgs("invoice", tmp_path / "missing.jsonl", "mock", api.url), "no such file"),
            (EvalArgs("invoice", data, "mock", "localhost:8080"), "give the service's http:// or https:// URL"),
            (EvalArgs("nope", data, "mock", api.url + "/v1"), "has no /v1/tasks catalogue"),  # was a TypeError
        ]
        for args, message in cases:
            with pytest.raises((ValueError, FrozenTestError), match=re.escape(message)):
                asyncio.run(run_eval(args))
    assert upstream.requests == []  # type: ignore[attr-defined]
    assert not (tmp_path / "f").exists() and list(folder.iterdir()) == []  # no folder made for a refused run
    (tmp_path / "data" / "manifest.json").write_text("[]")
    with pytest.raises(FrozenTestError, match="not a split manifest"):
        asyncio.run(run_eval(EvalArgs("invoice", data, "mock", api.url)))
    (tmp_path / "data" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="cannot reach the service at"):  # the server is gone now
        asyncio.run(run_eval(EvalArgs("invoice", data, "mock", api.url)))


def test_report_of_two_prompted_runs_says_whose_roles_it_assumed_and_refuses_a_run_twice(tmp_path: Path) -> None:
    big, small = run_file("gpt-big", "few_shot", 0.90, 0.0030, 700), run_file("gpt-small", "few_shot", 0.88, 0.001, 700)
    report = build_report([big, small], requests_per_day=1000, training_cost=0.0, horizon_days=30, out=tmp_path)
    assert report["roles_assumed"] and report["factors"][0].startswith("no prompted vs fine-tuned pair")
    assert "gpt-small (few_shot) the fine-tuned side" in (tmp_path / "report.md").read_text()
    assert report["recommended_run"] in ("gpt-big", "gpt-small", "gpt-small, falling back to gpt-big")
    assert f"## Recommendation: **{report['recommended_run']}**" in (tmp_path / "report.md").read_text()
    ft = run_file("local-ft", "finetuned", 0.91, 0.0007, 120)
    assert not build_report([big, ft], 1000, 0.0, 30, tmp_path / "r2")["roles_assumed"]
    with pytest.raises(ValueError, match="the same run is given twice"):
        build_report([big, big], 1000, 0.0, 30, tmp_path / "r3")
    with pytest.raises(ValueError, match="--training-cost must be a finite"):
        build_report([big, ft], 1000, float("inf"), 30, tmp_path / "r4")


def test_report_numbers_plots_and_recommendation(tmp_path: Path) -> None:
    runs = [run_file("openai", "few_shot", 0.90, 0.0030, 700), run_file("local-ft", "finetuned", 0.91, 0.00068, 120)]
    report = build_report(runs, requests_per_day=12_000, training_cost=417.60, horizon_days=30, out=tmp_path)
    assert report["saving_per_day_usd"] == pytest.approx(27.84)
    assert report["break_even_training_budget_usd"] == pytest.approx(835.20)
    assert report["payback_days"] == pytest.approx(15.0)
    assert report["input_token_ratio"] == pytest.approx(5.83)
    assert report["recommendation"] == "fine-tuning"
    for name in ("report.md", "report.html", "report.json", "cost_vs_accuracy.png", "latency.png", "intervals.png"):
        assert (tmp_path / name).stat().st_size > 200, name
    assert "$835.20" in (tmp_path / "report.md").read_text()
    for png in ("cost_vs_accuracy.png", "intervals.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    # 0.90 vs 0.91 on 100 items: the recommendation stands on cost, and the report says accuracy is a tie
    assert report["verdict"] == "no significant difference in field F1" and not report["significant"]


@pytest.mark.parametrize(
    ("ft_f1", "ft_cost", "training_cost", "expected"),
    [
        (0.91, 0.0007, 100, "fine-tuning"),  # as accurate, cheaper, pays back
        (0.70, 0.0007, 100, "prompting"),  # much less accurate
        (0.87, 0.0007, 100, "hybrid"),  # a little less accurate, much cheaper
        (0.91, 0.0007, 1e9, "prompting"),  # never pays back within the horizon
        (0.91, 0.0040, 100, "prompting"),  # costs more per request
        (0.99, 0.0040, 100, "fine-tuning"),  # clearly more accurate: quality wins
    ],
)
def test_decision_rules(ft_f1: float, ft_cost: float, training_cost: float, expected: str) -> None:
    prompted = {"field_f1": 0.90, "cost_per_request": 0.003, "p95_ms": 1000, "schema_valid": 1.0}
    finetuned = {"field_f1": ft_f1, "cost_per_request": ft_cost, "p95_ms": 500, "schema_valid": 1.0}
    saving = (0.003 - ft_cost) * 10_000
    payback = training_cost / saving if saving > 0 else None
    assert decide(prompted, finetuned, saving, payback, 30)[0] == expected


def test_a_significant_gain_at_no_extra_cost_needs_no_payback() -> None:
    from training.stats import Difference

    prompted = {"field_f1": 0.82, "cost_per_request": 0.0001, "p95_ms": 1000, "schema_valid": 1.0}
    better = {**prompted, "field_f1": 0.845}  # +0.025: under the 0.05 that outweighs a higher cost
    significant = Difference(0.025, 0.001, 0.05, True, 100)
    assert decide(prompted, better, 0.0, None, 30, significant, 94)[0] == "fine-tuning"  # was "prompting"
    noise = Difference(0.025, -0.01, 0.06, False, 400)
    assert decide(prompted, better, 0.0, None, 30, noise, 94)[0] == "prompting"
    dearer = {**better, "cost_per_request": 0.0002}
    assert decide(prompted, dearer, -1.0, None, 30, significant, 94)[0] == "prompting"


def test_report_refuses_runs_of_different_tasks(tmp_path: Path) -> None:
    a, b = run_file("a", "few_shot", 0.9, 0.001, 100), run_file("b", "finetuned", 0.9, 0.001, 100)
    b["meta"]["task"] = "receipt"
    with pytest.raises(ValueError, match="different tasks"):
        build_report([a, b], 1, 0, 30, tmp_path)


def test_report_with_several_runs_decides_on_the_best_of_each_kind(tmp_path: Path) -> None:
    runs = [
        run_file("local-prompted", "few_shot", 0.09, 0.000214, 1058),
        run_file("ft-v1", "finetuned", 0.39, 0.000011, 43),
        run_file("ft-v2", "finetuned", 0.85, 0.000011, 43),
    ]
    report = build_report(runs, requests_per_day=12_000, training_cost=0.07, horizon_days=30, out=tmp_path)
    assert (report["prompted"], report["finetuned"]) == ("local-prompted", "ft-v2")
    assert [r["backend"] for r in report["rows"]] == ["local-prompted", "ft-v1", "ft-v2"]


def test_runs_of_one_backend_are_told_apart_by_their_files(tmp_path: Path) -> None:
    # Two adapters served one after the other under the same backend name: the report names each by its file.
    runs = [
        run_file("local-receipt", "finetuned", 0.80, 0.0001, 490),
        run_file("local-receipt", "finetuned", 0.83, 0.0001, 490),
    ]
    runs[0]["meta"]["file"], runs[1]["meta"]["file"] = "var/eval/stage2.json", "var/eval/stage3.json"
    runs.append(run_file("local-prompted", "few_shot", 0.3, 0.0003, 1300))
    report = build_report(runs, requests_per_day=1000, training_cost=0, horizon_days=30, out=tmp_path)
    names = [r["backend"] for r in report["rows"]]
    assert names == ["local-receipt (stage2)", "local-receipt (stage3)", "local-prompted"]
    assert report["finetuned"] == "local-receipt (stage3)"
    assert "local-receipt (stage3)" in (tmp_path / "report.md").read_text()


def test_a_collapsed_adapter_is_not_a_hybrid_candidate() -> None:
    prompted = {"field_f1": 0.045, "cost_per_request": 0.000156, "p95_ms": 7000, "schema_valid": 0.98}
    finetuned = {"field_f1": 0.0, "cost_per_request": 0.000016, "p95_ms": 15000, "schema_valid": 1.0}
    recommendation, factors = decide(prompted, finetuned, 1.68, 0.01, 30)
    assert recommendation == "prompting"
    assert any("neither is ready" in f for f in factors)


def test_a_better_but_weak_adapter_wins_with_the_caveat_said() -> None:
    prompted = {"field_f1": 0.045, "cost_per_request": 0.000156, "p95_ms": 7368, "schema_valid": 0.984}
    finetuned = {"field_f1": 0.325, "cost_per_request": 0.000016, "p95_ms": 7800, "schema_valid": 1.0}
    recommendation, factors = decide(prompted, finetuned, 1.68, 0.01, 30)
    assert recommendation == "fine-tuning"
    assert any("neither is ready" in f for f in factors)  # better than prompting is not good enough yet
    strong = {**finetuned, "field_f1": 0.8}
    assert not any("neither is ready" in f for f in decide(prompted, strong, 1.68, 0.01, 30)[1])


def test_a_shed_request_is_sent_again_after_its_retry_after_not_scored_as_a_failure(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    entry = backend_entry(f"{upstream.url}/v1", max_attempts=1, max_retries=0)
    settings = make_settings({"mock": entry})  # type: ignore[attr-defined]
    write_split({"test": [Record("r0", "invoice 0", GOLD[0])]}, tmp_path / "data", meta={})
    upstream.enqueue(
        Reply(status=429, headers={"Retry-After": "0"}),  # the service answers 503 with Retry-After: 0
        Reply(content=json.dumps(GOLD[0]), usage=(100, 10)),
    )
    with ServerThread(create_app(settings)) as api:
        args = EvalArgs("invoice", tmp_path / "data" / "test.jsonl", "mock", api.url, None, 1)
        run = asyncio.run(run_eval(args))
        no_retry = EvalArgs("invoice", tmp_path / "data" / "test.jsonl", "mock", api.url, None, 1, shed_retries=0)
        upstream.enqueue(Reply(status=429, headers={"Retry-After": "0"}))
        refused = asyncio.run(run_eval(no_retry))
    assert run["summary"]["exact_match"] == 1.0 and run["summary"]["shed_retries"] == 1
    assert run["items"][0]["status"] == 200 and run["items"][0]["shed_retries"] == 1
    assert refused["items"][0]["status"] == 503 and refused["summary"]["shed_retries"] == 0


def not_the_service(extract: list[Any], catalogue_ok: bool = True) -> Starlette:
    """A server that is no extraction-service (or answers /v1/extract in another shape): 200 JSON throughout."""
    invoice = load_tasks(DEFAULT_CONFIG.parent / "tasks")["invoice"]
    listing = {"object": "list", "data": [{"id": "gpt-x", "object": "model"}]}  # an OpenAI-style server's answer
    detail = {"name": "invoice", "schema": invoice.json_schema, "instructions": invoice.instructions}
    backends = [{"name": "mock", "model": "m", "kind": "openai", "prompt_style": "few_shot", "pricing": {}}]
    answers = iter(extract)

    async def get(request: Request) -> JSONResponse:
        if not catalogue_ok:
            return JSONResponse(listing)
        return JSONResponse(detail if request.url.path.startswith("/v1/tasks/") else backends)

    async def post(request: Request) -> JSONResponse:
        return JSONResponse(next(answers))

    return Starlette(routes=[Route("/v1/tasks/invoice", get), Route("/v1/backends", get),
                             Route("/v1/extract", post, methods=["POST"])])  # fmt: skip


def test_eval_against_a_server_of_another_shape_stops_in_one_line_naming_it(tmp_path: Path) -> None:
    write_split({"test": [Record("a", "invoice a", GOLD[0])]}, tmp_path / "data", meta={})
    data = tmp_path / "data" / "test.jsonl"
    with ServerThread(not_the_service([], catalogue_ok=False)) as other:
        with pytest.raises(ValueError, match=r"/v1/tasks/invoice answered HTTP 200 but not with a task's detail "
                                             r"\(\{\"object\": \"list\".*is .* an extraction-service"):  # fmt: skip
            asyncio.run(run_eval(EvalArgs("invoice", data, "mock", other.url, tmp_path / "run.json")))
    assert not (tmp_path / "run.json").exists()


def test_a_200_that_is_no_extraction_response_is_a_failed_item_not_a_traceback(tmp_path: Path) -> None:
    records = [Record(f"r{i}", f"invoice {i}", gold) for i, gold in enumerate(GOLD)]
    write_split({"test": records}, tmp_path / "data", meta={})
    good = {"data": GOLD[2], "task": "invoice", "attempts": 1, "usage": {"input_tokens": 1, "output_tokens": 1}}
    app = not_the_service([{"object": "list", "data": []}, [1, 2], good])
    with ServerThread(app) as other:
        args = EvalArgs("invoice", tmp_path / "data" / "test.jsonl", "mock", other.url, tmp_path / "run.json", 1)
        run = asyncio.run(run_eval(args))  # was TypeError: string indices must be integers
    bad = [i for i in run["items"] if i["error"]]
    assert len(bad) == 2 and {i["error"]["code"] for i in bad} == {"invalid_response"}
    assert all(i["status"] == 599 and "HTTP 200 but not an extraction-service response" in i["error"]["message"]
               for i in bad)  # fmt: skip
    assert run["summary"]["schema_valid_after_reasks"] == round(1 / 3, 4)
    assert run["summary"]["error_buckets"]["upstream_error"] == 2 and (tmp_path / "run.json").exists()


@pytest.mark.integration
def test_eval_with_a_refused_key_says_the_key_was_refused_not_to_give_one(
    upstream: MockUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({"mock": backend_entry(f"{upstream.url}/v1")},  # type: ignore[attr-defined]
                             auth={"keys": [{"name": "t", "key_sha256": hash_key("sk-good")}]})  # fmt: skip
    write_split({"test": [Record("a", "invoice a", GOLD[0])]}, tmp_path / "data", meta={})
    data = tmp_path / "data" / "test.jsonl"
    with ServerThread(create_app(settings)) as api:
        with pytest.raises(ValueError, match=r"the service refused the API key \(unknown API key\)"):
            asyncio.run(run_eval(EvalArgs("invoice", data, "mock", api.url, api_key="sk-wrong")))
        with pytest.raises(ValueError, match="give an API key"):  # none given: then asking for one is right
            asyncio.run(run_eval(EvalArgs("invoice", data, "mock", api.url)))
    assert upstream.requests == []  # type: ignore[attr-defined]


def test_eval_never_writes_over_its_test_set_or_onto_a_fifo(tmp_path: Path) -> None:
    write_split({"test": [Record("a", "invoice a", GOLD[0])]}, tmp_path / "data", meta={})
    data = tmp_path / "data" / "test.jsonl"
    before = data.read_bytes()
    fifo = tmp_path / "run.json"
    os.mkfifo(fifo)
    cases = [(data, "is the input file"), (tmp_path / "data" / "manifest.json", "is the input file"),
             (fifo, "it is a FIFO")]  # fmt: skip
    for out, message in cases:  # refused before the service is asked anything (none runs at this URL)
        with pytest.raises(ValueError, match=message):
            asyncio.run(run_eval(EvalArgs("invoice", data, "mock", "http://127.0.0.1:9", out)))
    assert data.read_bytes() == before and stat.S_ISFIFO(fifo.stat().st_mode)
    r = CliRunner().invoke(cli, ["eval", "--task", "invoice", "--data", str(tmp_path), "--backend", "mock",
                                 "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert r.exit_code == 1 and "is a folder; give the test JSONL file" in r.output, r.output  # was "no such file"


def test_report_on_a_run_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps(run_file("gpt", "few_shot", 0.9, 0.003, 700)))
    broken = {"meta": [1, 2], "summary": {}, "items": []}
    cases = [(broken, "`meta` is a list, not an object"), ([], "the file holds a JSON list, not an object"),
             ({**run_file("ft", "finetuned", 0.9, 0.001, 100), "items": [{"id": "r0", "latency_ms": "slow"}]},
              "`items[0].latency_ms` is not a number"),
             ({**run_file("ft", "finetuned", 0.9, 0.001, 100), "items": [{"id": "r0", "latency_ms": 1, "scores": 1}]},
              "`items[0].scores` is not an object")]  # fmt: skip
    for k, (content, message) in enumerate(cases):
        bad = tmp_path / f"b{k}.json"
        bad.write_text(json.dumps(content))
        r = CliRunner().invoke(cli, ["report", str(good), str(bad), "--out", str(tmp_path / "r")])
        assert r.exit_code == 1 and f"{bad} is not a run file from `extraction eval`: {message}" in r.output, r.output
        assert "Traceback" not in r.output
    (tmp_path / "deep.json").write_text("[" * 100_000)
    r = CliRunner().invoke(cli, ["report", str(good), str(tmp_path / "deep.json"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "nested too deeply" in r.output and not (tmp_path / "r").exists()
    r = CliRunner().invoke(cli, ["report", str(good), str(tmp_path / "b0.json"), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "is the input file" not in r.output  # report.json etc. are not the runs here
    (tmp_path / "r").mkdir()
    run_in_out = tmp_path / "r" / "report.json"  # the report would write its own report.json over this run
    shutil.copy(good, run_in_out)
    before = run_in_out.read_bytes()
    r = CliRunner().invoke(cli, ["report", str(good), str(run_in_out), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "is the input file" in r.output and run_in_out.read_bytes() == before
