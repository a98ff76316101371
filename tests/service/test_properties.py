"""Property tests (hypothesis): any model text ends in valid data or a typed error, never anything else."""

from __future__ import annotations

import asyncio
import json
from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from service.errors import SchemaValidationFailed
from service.parsing import OutputNotJSON, parse_output
from service.state import AppState
from tests.fakes import FakeBackend, fake_state

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.text(max_size=8), JSON, min_size=1, max_size=5)
PROSE = st.text(alphabet=st.characters(blacklist_characters="{}[]`"), max_size=40)


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_any_text_parses_or_raises_output_not_json(text: str) -> None:
    try:
        parsed = parse_output(text)
    except OutputNotJSON:
        return
    json.dumps(parsed.value)  # whatever came back is plain JSON


@given(OBJECTS, PROSE, PROSE, st.booleans())
@settings(max_examples=200)
def test_objects_survive_prose_and_fences(value: dict[str, Any], before: str, after: str, fenced: bool) -> None:
    body = json.dumps(value)
    text = f"{before}\n```json\n{body}\n```\n{after}" if fenced else f"{before} {body} {after}"
    parsed = parse_output(text)
    assert parsed.value == value and not parsed.repaired


MODEL_TEXT = st.one_of(
    st.text(max_size=120),
    OBJECTS.map(json.dumps),
    st.fixed_dictionaries({
        "company": st.one_of(st.text(max_size=20), st.none(), st.integers()),
        "invoice_date": st.one_of(st.dates().map(str), st.text(max_size=12), st.none()),
        "total_amount": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5), st.none()),
        "currency": st.one_of(st.sampled_from(["EUR", "USD", "eur", "EURO"]), st.none()),
    }).map(json.dumps),
)  # fmt: skip


@cache
def pipeline() -> AppState:
    return fake_state(max_attempts=3)  # type: ignore[no-any-return]


@given(st.lists(MODEL_TEXT, min_size=3, max_size=3))
@settings(max_examples=150, deadline=None)
def test_pipeline_returns_valid_data_or_a_typed_error(answers: list[str]) -> None:
    state = pipeline()
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.queue.clear()
    backend.requests.clear()
    backend.enqueue(*answers)
    schema = state.tasks["invoice"].json_schema
    try:
        result = asyncio.run(state.extractor.extract("Invoice ...", task="invoice"))
    except SchemaValidationFailed as e:
        assert e.details["attempts"] == 3 and len(backend.requests) == 3
        return
    assert not list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(result.data))
    assert result.attempts == len(backend.requests) <= 3
