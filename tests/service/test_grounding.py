"""Grounding: dates and numbers the text prints, found in their printed forms; answers snapped to them; and the
pipeline reporting, counting and revalidating what it changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from loadtest.mock_upstream import Reply, ServerThread
from service.app import create_app
from service.config import Settings
from service.grounding import check_paths, check_rules, find_dates, ground, keys_of, number_candidates, replaced
from service.metrics import sample
from service.schemas.budget import TooSlow, time_budget
from service.tasks import Task
from tests.conftest import backend_entry

RECEIPT = """B & BEST RESTAURANT
NO.12,JALAN SS4C/5,PETALING JAYA
BIZDATE: 10/02/2017
PRINTED: 10/02/2017 01:09:47 PM
FISHBALL NOODLE 7.00
GST 6% 0.42
ROUNDING ADJ -0.02
NET TOTAL RM7.40
CASH 50.00 CHANGE 42.60"""
RULES = {"date": "date", "total": "number"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BIZDATE: 10/02/2017", ["2017-02-10", "2017-10-02"]),  # day-first first; month-first also possible
        ("13/06/2018 and 05/06/2018", ["2018-06-13", "2018-06-05", "2018-05-06"]),
        ("12/28/2017 then 05/06/2017", ["2017-12-28", "2017-05-06", "2017-06-05"]),  # the text is month-first
        ("18-10-17 11:02", ["2017-10-18"]),
        ("Datum: 02.02.2020", ["2020-02-02"]),
        ("2018-04-06 17:36:35", ["2018-04-06"]),
        ("18 JUN 2018", ["2018-06-18"]),
        ("15 JUN 18 / 5-Mar-23", ["2018-06-15", "2023-03-05"]),
        ("March 5th, 2023", ["2023-03-05"]),
        ("issued the 14th of March 2024", ["2024-03-14"]),
        ("19 OGOS 2018 (Malay) and 3 DIS 2017", ["2018-08-19", "2017-12-03"]),
        ("2024年4月13日", ["2024-04-13"]),
        ("31/02/2018 is no date; 12:30:45 is a time; 1.234.567 a number", []),
        ("TOTAL 7.40 RM 10.02", []),
        ("5 März 2018, 15 août 2018, 1 décembre 2018", ["2018-03-05", "2018-08-15", "2018-12-01"]),
        # a version string is no date, and a two-digit year is no evidence of month-first order
        ("BIZDATE: 05/10/2017 POS v1.13.20", ["2017-10-05", "2017-05-10"]),
        ("05/10/2017 at 12.30.45", ["2017-10-05", "2045-12-30", "2017-05-10"]),
    ],
)
def test_finds_the_dates_a_text_prints_in_their_possible_readings(text: str, expected: list[str]) -> None:
    assert find_dates(text).readings == expected


def test_reads_numbers_in_their_printed_forms() -> None:
    found = number_candidates("RM9.00 1,234.50 1.234,50 12,50 2.200 -0.02 10.02.2017 TOTAL: 7.40.")
    assert found == [Decimal(v) for v in ("9.00", "1234.50", "12.50", "2.200", "2200", "-0.02", "7.40")]
    assert number_candidates("TOTAL,12.50;CASH\u2212 3.10 \u22124.20 1'234.50") == [
        Decimal(v) for v in ("12.50", "3.10", "-4.20", "1234.50")]  # fmt: skip
    # space-grouped: one number, or the numbers it could also be
    assert number_candidates("1 234,50") == [Decimal("1"), Decimal("234.50"), Decimal("1234.50")]


def test_a_value_the_text_prints_is_kept_and_nulls_are_left_alone() -> None:
    data = {"date": "2017-02-10", "total": 7.4, "company": "B & BEST"}
    kept = ground(data, RULES, RECEIPT)
    assert kept.data is data and kept.changes == []
    assert [(o.rule, o.outcome) for o in kept.outcomes] == [("date", "printed"), ("total", "printed")]
    assert ground({"date": None, "total": None}, RULES, RECEIPT).outcomes == []


def test_a_miscopied_date_and_total_are_snapped_to_the_printed_ones() -> None:
    data = {"date": "2017-02-01", "total": 7.42}
    grounded = ground(data, RULES, RECEIPT)
    assert grounded.data == {"date": "2017-02-10", "total": 7.4}
    assert [c.as_dict() for c in grounded.changes] == [
        {"path": "date", "model_value": "2017-02-01", "value": "2017-02-10"},
        {"path": "total", "model_value": 7.42, "value": 7.4},
    ]
    assert data == {"date": "2017-02-01", "total": 7.42}  # the caller's answer is not changed in place


def test_date_ties_go_to_the_likelier_reading_then_to_the_one_printed_first() -> None:
    rule = {"d": "date"}
    # 2017-06-10: one edit from 05/10/2017 read month-first and from 11/06/2017 read day-first (the likelier)
    assert ground({"d": "2017-06-10"}, rule, "Invoice 05/10/2017 Delivered 11/06/2017").data == {"d": "2017-06-11"}
    assert ground({"d": "2018-06-18"}, rule, "Due 28/06/2018 Date 19/06/2018").data == {"d": "2018-06-28"}


def test_the_one_date_fallback_replaces_dates_only_and_counts_dates_not_printed_forms() -> None:
    rule = {"d": "date"}
    for value in ("unknown", "", "2018-06-19T10:00:00"):
        assert ground({"d": value}, rule, "PAID 05/10/2017").outcomes[0].outcome == "not_found", value
    assert ground({"d": "2022-01-20"}, rule, "05/10/2017 (5 Oct 2017)").data == {"d": "2017-10-05"}


def test_a_date_written_as_iso_with_day_and_month_swapped_is_snapped() -> None:
    assert ground({"date": "2018-09-18"}, {"date": "date"}, "18 JUN 2018").data == {"date": "2018-06-18"}
    # the one date printed wins whatever the distance (in its likelier reading); among several only a near one
    assert ground({"date": "2022-01-20"}, {"date": "date"}, "01/11/2017").data == {"date": "2017-11-01"}
    far = ground({"date": "2022-01-20"}, {"date": "date"}, "01/11/2017, due 01/12/2017")
    assert far.data == {"date": "2022-01-20"} and far.outcomes[0].outcome == "not_found"


def test_a_number_is_snapped_only_to_one_near_candidate_of_the_same_magnitude() -> None:
    assert ground({"total": 51.4}, {"total": "number"}, "TOTAL 51.42 ITEM 514").data == {"total": 51.42}
    assert ground({"total": 51.4}, {"total": "number"}, "ITEM 514").outcomes[0].outcome == "not_found"
    ambiguous = ground({"total": 7.4}, {"total": "number"}, "7.41 7.43")  # two at one edit: keep the model's
    assert ambiguous.data == {"total": 7.4} and ambiguous.outcomes[0].outcome == "not_found"
    assert ground({"n": 12}, {"n": "number"}, "qty 13 of 40").data == {"n": 13}  # an integer stays an integer
    assert ground({"n": 12.0}, {"n": "number"}, "qty 13.00").data == {"n": 13.0}
    assert ground({"total": 12.5}, {"total": "number"}, "TOTAL,12.50\nCASH 12.60").outcomes[0].outcome == "printed"
    # no digit gained or lost before the point (5 is not 15), no sign flipped, and a zero is meant
    for value, text in ((9.8, "total 19.80"), (5, "15 items"), (-7.4, "7.40"), (0.0, "GST 0.05"), (0, "1")):
        assert ground({"v": value}, {"v": "number"}, text).outcomes[0].outcome == "not_found", (value, text)


def test_paths_reach_into_objects_and_arrays() -> None:
    data = {"items": [{"amount": 3.5}, {"amount": 12.0}, {"amount": None}], "meta": {"issued": "2024-03-41"}}
    grounded = ground(data, {"items[].amount": "number", "meta.issued": "date"}, "3.50 12.90 14.03.2024")
    assert grounded.data == {"items": [{"amount": 3.5}, {"amount": 12.9}, {"amount": None}],
                             "meta": {"issued": "2024-03-14"}}  # fmt: skip
    assert [c.path for c in grounded.changes] == ["items[1].amount", "meta.issued"]
    assert ground({"items": "none"}, {"items[].amount": "number"}, "3.50").outcomes == []  # shape mismatch: skip


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"date": "currency"}, "one of date, number"),
        ({"a..b": "date"}, "property names joined"),
        ({"items[0].x": "number"}, "property names joined"),
        ({f"f{i}": "date" for i in range(65)}, "at most 64"),
    ],
)
def test_malformed_rules_are_refused(rules: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_rules(rules)


def test_a_task_with_a_bad_rule_does_not_load() -> None:
    schema = {"type": "object", "properties": {"d": {"type": "string"}}}
    for rules in ({"d": "colour"}, {"e": "date"}):
        with pytest.raises(ValueError, match="grounding"):
            Task.model_validate({"name": "t", "schema": schema, "grounding": rules})


def test_the_scan_of_the_text_itself_keeps_to_the_time_budget() -> None:
    text = " ".join(f"{i}.{i % 100:02d} {i % 28 + 1}/03/2020" for i in range(2000))
    for data, rules in (({"total": 1.01}, {"total": "number"}), ({"d": "2020-03-02"}, {"d": "date"})):
        assert ground(data, rules, text).outcomes[0].outcome == "printed"  # printed: no distance is computed...
        with pytest.raises(TooSlow), time_budget(0.0):
            ground(data, rules, text)  # ...so only the scan can have stopped it


def test_a_changes_path_reads_back_as_the_keys_it_was_made_from() -> None:
    data = {"items": [{"amount": 11}, {"amount": 22}], "12": {"x": 0}}
    grounded = ground(data, {"items[].amount": "number", "12.x": "number"}, "11 23")  # 22 -> 23, 0 left alone
    assert [c.path for c in grounded.changes] == ["items[1].amount"]
    assert keys_of("items[1].amount") == ["items", 1, "amount"] and keys_of("12.x") == ["12", "x"]
    assert replaced(grounded.data, keys_of("items[1].amount"), 22) == data


def test_a_deeply_nested_answer_is_grounded_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    data = {"d": "2017-02-01", "deep": deep}
    grounded = ground(data, {"d": "date"}, RECEIPT)
    assert grounded.data["d"] == "2017-02-10" and grounded.data["deep"] is deep and data["d"] == "2017-02-01"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"totl": "number"}, "no property 'totl'"),
        ({"date": "number"}, "a number rule on a value of type"),
        ({"total[].x": "number"}, "not an array"),
        ({"items[].amount": "date"}, "a date rule"),
    ],
)
def test_rules_must_name_a_value_of_their_kind_in_the_schema(rules: dict[str, str], message: str) -> None:
    schema = {"type": "object", "properties": {
        "date": {"type": ["string", "null"]}, "total": {"type": "number"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"amount": {"type": "number"}}}},
        "free": {"type": "object"}, "ref": {"$ref": "#/$defs/x"}}}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        check_paths(rules, schema)
    check_paths({"date": "date", "items[].amount": "number", "free.anything": "date", "ref.x": "number"}, schema)


def _app(upstream: Any, make_settings: Callable[..., Settings]) -> Any:
    return create_app(make_settings({"mock": backend_entry(f"{upstream.url}/v1")}))


@pytest.mark.integration
def test_the_receipt_task_snaps_over_http_and_says_so(upstream: Any, make_settings: Callable[..., Settings]) -> None:
    answer = {"company": "B & BEST RESTAURANT", "date": "2017-10-02", "address": "NO.12", "total": 7.42}
    upstream.enqueue(Reply(content=json.dumps(answer)))
    app = _app(upstream, make_settings)
    with ServerThread(app) as api:
        r = httpx.post(f"{api.url}/v1/extract", json={"task": "receipt", "text": RECEIPT})
        task = httpx.get(f"{api.url}/v1/tasks/receipt").json()
    assert r.status_code == 200, r.text
    body = r.json()
    # 2017-10-02 is a reading 10/02/2017 allows (month-first): printed, kept; 7.42 is not printed: 7.40 is
    assert body["data"] == {**answer, "total": 7.4}
    assert body["grounding"] == [{"path": "total", "model_value": 7.42, "value": 7.4}]
    assert task["grounding"] == {"date": "date", "total": "number"}
    registry = app.state.extraction.metrics.registry
    count = lambda field, outcome: sample(  # noqa: E731
        registry, "extraction_grounding_total", task="receipt", backend="mock", field=field, outcome=outcome
    )
    assert (count("date", "printed"), count("total", "snapped")) == (1, 1)


@pytest.mark.integration
def test_an_adhoc_request_brings_its_own_rules_and_a_snap_that_breaks_the_schema_is_reverted(
    upstream: Any, make_settings: Callable[..., Settings]
) -> None:
    schema = {
        "type": "object",
        "properties": {"paid": {"type": "number", "maximum": 99.6}, "on": {"type": "string"}},
        "required": ["paid", "on"],
    }
    upstream.enqueue(Reply(content=json.dumps({"paid": 99.5, "on": "2024-03-41"})))
    app = _app(upstream, make_settings)
    with ServerThread(app) as api:
        body = {"schema": schema, "text": "Paid 99.8 on 14.03.2024", "grounding": {"paid": "number", "on": "date"}}
        r = httpx.post(f"{api.url}/v1/extract", json=body)
        both = httpx.post(f"{api.url}/v1/extract", json={**body, "task": "receipt", "schema": None})
        bad = httpx.post(f"{api.url}/v1/extract", json={**body, "grounding": {"paid": "money"}})
        typo = httpx.post(f"{api.url}/v1/extract", json={**body, "grounding": {"payd": "number"}})
    assert r.status_code == 200, r.text
    # 99.8 is one edit from 99.5 but breaks `maximum`: the whole answer goes out as the model gave it
    assert r.json()["data"] == {"paid": 99.5, "on": "2024-03-41"} and r.json()["grounding"] == []
    registry = app.state.extraction.metrics.registry
    assert sample(registry, "extraction_grounding_total", task="adhoc", backend="mock", field="-",
                  outcome="reverted") == 2  # fmt: skip
    assert both.status_code == 400 and "task brings its own" in both.text
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    assert typo.status_code == 400 and "no property 'payd'" in typo.json()["error"]["message"]


@pytest.mark.integration
def test_a_fault_in_grounding_costs_no_answer(
    upstream: Any, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.pipeline import checks

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(checks, "ground", broken)
    answer = {"company": "B & BEST", "date": "2017-10-01", "address": None, "total": 7.42}
    upstream.enqueue(Reply(content=json.dumps(answer)))
    app = _app(upstream, make_settings)
    with ServerThread(app) as api:
        r = httpx.post(f"{api.url}/v1/extract", json={"task": "receipt", "text": RECEIPT})
    assert r.status_code == 200 and r.json()["data"] == answer and r.json()["grounding"] == []
    registry = app.state.extraction.metrics.registry
    assert sample(registry, "extraction_grounding_total", task="receipt", backend="mock", field="total",
                  outcome="error") == 1  # fmt: skip
