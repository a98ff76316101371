"""Issue 17: every schema is validated by the draft it declares, through the HTTP API.

For each keyword whose meaning changed between drafts, a valid and an invalid answer: 200 only for the valid
one (the cases follow the drafts' specifications; no conformance suite for them is published on PyPI). Then
what goes upstream as `response_format`, and a property test: any 200's `data` validates under the schema's
own draft.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for

from service.api_models import ExtractOptions
from service.config import Settings
from service.errors import InvalidSchema, SchemaValidationFailed
from service.state import AppState
from tests.fakes import FakeBackend, fake_state
from tests.service.schemas.conftest import Service

pytestmark = pytest.mark.integration

D4 = "http://json-schema.org/draft-04/schema#"
D6 = "http://json-schema.org/draft-06/schema#"
D7 = "http://json-schema.org/draft-07/schema#"
D2019 = "https://json-schema.org/draft/2019-09/schema"
D2020 = "https://json-schema.org/draft/2020-12/schema"
DRAFT_URIS = [D4, D6, D7, D2019, D2020, None]


def _spec_additional_items(original: Any) -> Any:
    # jsonschema raises TypeError on a boolean `items` beside `additionalItems` (len(False)); the drafts say
    # additionalItems applies only where items is an array. The reference follows the drafts there.
    def keyword(validator: Any, ai: Any, instance: Any, schema: dict[str, Any]) -> Any:
        return original(validator, ai, instance, schema) if isinstance(schema.get("items", []), list) else iter(())

    return keyword


def oracle(schema: dict[str, Any]) -> Validator:
    """jsonschema's own pick of the draft, with that draft's formats: the reference the service must agree with."""
    cls = validator_for(schema, default=Draft202012Validator)
    if "additionalItems" in cls.VALIDATORS:
        cls = extend(cls, {"additionalItems": _spec_additional_items(cls.VALIDATORS["additionalItems"])})
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # type: ignore[call-arg]


@pytest.mark.parametrize("draft", ["draft-06", "draft-07", "2019-09"])
def test_additional_items_beside_a_boolean_items_is_ignored_as_the_drafts_say(draft: str) -> None:
    uri = {"2019-09": "https://json-schema.org/draft/2019-09/schema"}.get(
        draft, f"http://json-schema.org/{draft}/schema#"
    )
    schema = {"$schema": uri, "items": False, "additionalItems": {"type": "string"}}
    state = pipeline()
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.queue.clear()
    backend.enqueue("[]")
    assert asyncio.run(state.extractor.extract("x", schema=schema)).data == []  # was a 422: TypeError inside
    backend.queue.clear()
    backend.enqueue('["a"]')
    with pytest.raises(SchemaValidationFailed):  # `items: false` refuses every item
        asyncio.run(state.extractor.extract("x", schema=schema))


@pytest.mark.parametrize("uri", [D4, D7, D2020])
@pytest.mark.parametrize(
    ("divisor", "answer", "ok"),
    [(0.01, 19.99, True), (0.01, 0.07, True), (0.1, 0.3, True), (0.01, 1e300, True), (0.05, 2, True),
     (3, 9.0, True), (0.01, 19.995, False), (0.1, 0.35, False), (3, 10, False), (2.5, 1e-3, False)],
)  # fmt: skip
def test_multiple_of_a_decimal_is_judged_on_the_numbers_as_json_writes_them(
    uri: str, divisor: Any, answer: Any, ok: bool
) -> None:
    # jsonschema divides binary floats: 19.99 / 0.01 = 1998.9999999999998, and every price to the cent but a few
    # came back 422 after three billed attempts
    schema = prop(uri, type="number", multipleOf=divisor)
    state = pipeline()
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.queue.clear()
    for _ in range(3):
        backend.enqueue(json.dumps({"p": answer}))
    if ok:
        assert asyncio.run(state.extractor.extract("x", schema=schema)).data == {"p": answer}
    else:
        with pytest.raises(SchemaValidationFailed) as failed:
            asyncio.run(state.extractor.extract("x", schema=schema))
        assert "not a multiple of" in json.dumps(failed.value.details)


ADDRESS = {"street_address": {"type": "string"}, "extended_address": {"type": "string"}}
NEEDS = {"extended_address": ["street_address"]}
BOTH = {"street_address": "1 Main St", "extended_address": "Suite 5"}
ONLY_EXTENDED = {"extended_address": "Suite 5"}
TUPLE = [{"type": "string"}, {"type": "integer"}]
IF_US = {
    "properties": {"country": {"type": "string"}, "zip": {"type": "string"}},
    "if": {"properties": {"country": {"const": "US"}}, "required": ["country"]},
    "then": {"properties": {"zip": {"pattern": "^[0-9]{5}$"}}},
}
REF_SIBLING = {"properties": {"a": {"$ref": "#/definitions/s", "maxLength": 2}},
               "definitions": {"s": {"type": "string"}}}  # fmt: skip
TREE_2019 = {"$recursiveAnchor": True, "properties": {"v": {"type": "integer"},
             "kids": {"type": "array", "items": {"$recursiveRef": "#"}}}}  # fmt: skip
TREE_2020 = {"$dynamicAnchor": "node", "properties": {"v": {"type": "integer"},
             "kids": {"type": "array", "items": {"$dynamicRef": "#node"}}}}  # fmt: skip


def obj(draft: str | None, **keywords: Any) -> dict[str, Any]:
    return {**({"$schema": draft} if draft else {}), "type": "object", **keywords}


def prop(draft: str | None, **subschema: Any) -> dict[str, Any]:
    """An object schema whose property `p` has `subschema`."""
    return obj(draft, properties={"p": subschema})


# (case, schema, valid answer, invalid answer); None: under this draft there is no invalid answer to show.
CASES: list[tuple[str, dict[str, Any], Any, Any]] = [
    # draft-04 (the issue's URI, without the fragment)
    ("04 dependencies (the issue)",
     obj("http://json-schema.org/draft-04/schema", properties=ADDRESS, dependencies=NEEDS), BOTH, ONLY_EXTENDED),
    ("04 dependencies, schema form",
     obj(D4, properties=ADDRESS, dependencies={"extended_address": {"required": ["street_address"]}}),
     BOTH, ONLY_EXTENDED),
    ("04 boolean exclusiveMaximum", prop(D4, type="number", maximum=10, exclusiveMaximum=True), {"p": 9.5}, {"p": 10}),
    ("04 array-form items", prop(D4, type="array", items=TUPLE, additionalItems=False),
     {"p": ["a", 1]}, {"p": ["a", 1, 2]}),
    ("04 integer excludes 1.0", prop(D4, type="integer"), {"p": 3}, {"p": 1.0}),
    ("04 keywords beside $ref ignored", obj(D4, **REF_SIBLING), {"a": "abcdef"}, {"a": 5}),
    ("04 id as anchor",
     obj(D4, properties={"x": {"$ref": "#int"}}, definitions={"i": {"id": "#int", "type": "integer"}}),
     {"x": 1}, {"x": "one"}),
    ("04 const is no keyword", prop(D4, const="x"), {"p": "y"}, None),
    # draft-06
    ("06 numeric exclusiveMaximum", prop(D6, exclusiveMaximum=10), {"p": 9.5}, {"p": 10}),
    ("06 const", prop(D6, const="x"), {"p": "x"}, {"p": "y"}),
    ("06 contains", prop(D6, type="array", contains={"const": 3}), {"p": [1, 3]}, {"p": [1, 2]}),
    ("06 propertyNames", obj(D6, propertyNames={"maxLength": 3}), {"abc": 1}, {"abcd": 1}),
    ("06 integer includes 1.0", prop(D6, type="integer"), {"p": 1.0}, {"p": 1.5}),
    ("06 if is no keyword", obj(D6, **IF_US), {"country": "US", "zip": "AB1"}, None),
    # draft-07
    ("07 if/then", obj(D7, **IF_US), {"country": "US", "zip": "12345"}, {"country": "US", "zip": "AB1"}),
    ("07 keywords beside $ref ignored", obj(D7, **REF_SIBLING), {"a": "abcdef"}, {"a": 5}),
    ("07 dependencies", obj(D7, properties=ADDRESS, dependencies=NEEDS), {"street_address": "1 Main"}, ONLY_EXTENDED),
    # 2019-09
    ("2019 dependentRequired", obj(D2019, properties=ADDRESS, dependentRequired=NEEDS), BOTH, ONLY_EXTENDED),
    ("2019 dependencies is no keyword", obj(D2019, properties=ADDRESS, dependencies=NEEDS), ONLY_EXTENDED, None),
    ("2019 keywords beside $ref apply",
     obj(D2019, properties={"a": {"$ref": "#/$defs/s", "maxLength": 2}}, **{"$defs": {"s": {"type": "string"}}}),
     {"a": "ab"}, {"a": "abcdef"}),
    ("2019 array-form items", prop(D2019, type="array", items=TUPLE, additionalItems=False),
     {"p": ["a", 1]}, {"p": ["a", 1, 2]}),
    ("2019 unevaluatedProperties", obj(D2019, allOf=[{"properties": {"a": {}}}], unevaluatedProperties=False),
     {"a": 1}, {"a": 1, "b": 2}),
    ("2019 $recursiveRef", obj(D2019, **TREE_2019), {"v": 1, "kids": [{"v": 2}]}, {"v": 1, "kids": [{"v": "two"}]}),
    # 2020-12, declared and by default
    ("2020 prefixItems + items", prop(D2020, type="array", prefixItems=TUPLE, items=False),
     {"p": ["a", 1]}, {"p": ["a", 1, 2]}),
    ("2020 dependentRequired", obj(None, properties=ADDRESS, dependentRequired=NEEDS), BOTH, ONLY_EXTENDED),
    ("2020 dependencies is no keyword", obj(None, properties=ADDRESS, dependencies=NEEDS),
     ONLY_EXTENDED, {"extended_address": 5}),
    ("2020 $dynamicRef", obj(D2020, **TREE_2020), {"v": 1, "kids": [{"v": 2}]}, {"v": 1, "kids": [{"v": "two"}]}),
    ("2020 format date", prop(None, type="string", format="date"), {"p": "2024-02-29"}, {"p": "2023-02-30"}),
]  # fmt: skip


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service(backend={"schema_dialect": "full"})


@pytest.mark.parametrize(("schema", "valid", "invalid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_draft_by_its_own_rules(service: Service, schema: dict[str, Any], valid: Any, invalid: Any) -> None:
    assert oracle(schema).is_valid(valid)  # the cases are what the drafts say
    r = service.adhoc(schema, valid, options={"max_attempts": 1})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == valid
    if invalid is None:
        return
    assert not oracle(schema).is_valid(invalid)
    r = service.adhoc(schema, invalid, options={"max_attempts": 1})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "schema_validation_failed"


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (obj("http://json-schema.org/draft-03/schema#"), "supported drafts: draft-04"),
        (obj("https://json-schema.org/draft/2021-01/schema"), "2020-12 when `$schema` is left out"),
        (prop(D6, maximum=3, exclusiveMaximum=True), "not a valid draft-06"),
        (prop(D2020, items=TUPLE), "not a valid 2020-12"),
        (obj(D4, properties={"p": True}), "not a valid draft-04"),  # boolean schemas came with draft-06
    ],
)
def test_unknown_drafts_and_what_a_draft_forbids_are_400(service: Service, schema: dict[str, Any], words: str) -> None:
    r = service.adhoc(schema)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_schema" and words in error["message"]
    assert service.upstream.requests == []  # nothing called, nothing billed


@pytest.mark.parametrize(
    ("schema", "sent"),
    [
        (obj(D4, properties=ADDRESS, dependencies=NEEDS), "json_object"),
        (prop(D4, maximum=10, exclusiveMaximum=True), "json_object"),
        (prop(D4, const="x"), "json_object"),  # draft-04 ignores what an engine would enforce
        (obj(D7, **REF_SIBLING), "json_object"),
        (prop(D2019, type="array", items=TUPLE), "json_object"),
        (prop(D4, type="string"), "json_schema"),  # means the same in 2020-12
        (prop(D6, const="x"), "json_schema"),
        (obj(D7, **IF_US), "json_schema"),
        (prop(D2020, type="array", prefixItems=TUPLE), "json_schema"),
    ],
)
def test_response_format_only_where_the_engine_reads_the_same_rules(
    service: Service, schema: dict[str, Any], sent: str
) -> None:
    before = service.metric("extraction_structured_output_degraded_total", backend="mock", task="adhoc")
    r = service.adhoc(schema, "{}")
    assert r.status_code in (200, 422), r.text
    assert service.upstream.requests[-1]["response_format"]["type"] == sent
    degraded = service.metric("extraction_structured_output_degraded_total", backend="mock", task="adhoc") - before
    assert degraded == (1 if sent == "json_object" else 0)
    if r.status_code == 200:
        assert r.json()["structured_output"] == sent


def test_task_files_may_declare_a_draft(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    schema = obj(D4, properties=ADDRESS, dependencies=NEEDS)
    (tasks / "address.yaml").write_text(json.dumps({"schema": schema, "examples": [{"text": "x", "output": BOTH}]}))
    state = AppState.build(make_settings({"m": {"kind": "vllm", "model": "m"}}, tasks_dir=str(tasks)), FakeBackend)
    assert state.tasks["address"].compiled.draft.name == "draft-04"
    backend = state.backends["m"]
    assert isinstance(backend, FakeBackend)
    backend.enqueue(json.dumps(ONLY_EXTENDED))
    with pytest.raises(SchemaValidationFailed):
        asyncio.run(state.extractor.extract("x", task="address", options=ExtractOptions(max_attempts=1)))
    (tasks / "address.yaml").write_text(json.dumps({"schema": {"$schema": "http://example.com/s"}}))
    from service.tasks import TaskLoadError, load_tasks

    with pytest.raises(TaskLoadError, match="address.yaml: schema: invalid JSON Schema: unsupported"):
        load_tasks(tasks)


# --- property: for any schema the service accepts, a 200's data validates under that schema's own draft -----

NAMES = st.sampled_from(["a", "b", "c"])
SMALL_INT = st.integers(-2, 12)
TYPES = st.sampled_from(["string", "integer", "number", "boolean", "null", "object", "array"])
NAME_LISTS = st.lists(NAMES, max_size=2, unique=True)
LEAF = st.one_of(
    st.fixed_dictionaries({"type": TYPES | st.lists(TYPES, min_size=1, max_size=2, unique=True)}),
    st.fixed_dictionaries({"maximum": SMALL_INT, "exclusiveMaximum": st.booleans()}),
    st.fixed_dictionaries({"minimum": SMALL_INT, "exclusiveMinimum": st.booleans() | SMALL_INT}),
    st.fixed_dictionaries({"exclusiveMaximum": SMALL_INT}),
    st.fixed_dictionaries({"multipleOf": st.sampled_from([1, 2, 0.5])}),
    st.fixed_dictionaries({"maxLength": st.integers(0, 3)}),
    st.fixed_dictionaries({"pattern": st.sampled_from(["^a", "b$", "^[0-9]+$", "^(a|b)*$"])}),
    st.fixed_dictionaries({"format": st.sampled_from(["date", "email", "date-time"])}),
    st.fixed_dictionaries({"const": st.sampled_from(["x", 1, None])}),
    st.fixed_dictionaries({"enum": st.lists(st.sampled_from(["x", "y", 1, 1.0, None]), min_size=1, max_size=3)}),
    st.booleans(),
)


def _compound(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    some = st.lists(inner, min_size=1, max_size=2)
    one = st.fixed_dictionaries
    return st.one_of(
        one({"properties": st.dictionaries(NAMES, inner, max_size=3)},
            optional={"required": NAME_LISTS, "additionalProperties": st.booleans() | inner}),
        one({"dependencies": st.dictionaries(NAMES, NAME_LISTS | inner, max_size=2)}),
        one({"dependentRequired": st.dictionaries(NAMES, NAME_LISTS, max_size=2)}),
        one({"items": inner | some}, optional={"additionalItems": inner, "minItems": st.integers(0, 2)}),
        one({"prefixItems": some}, optional={"items": inner}),
        one({"contains": inner}),
        one({"propertyNames": inner}),
        one({"allOf": some}, optional={"unevaluatedProperties": st.booleans()}),
        one({"anyOf": some}),
        one({"oneOf": some}),
        one({"not": inner}),
        one({"if": inner}, optional={"then": inner, "else": inner}),
        one({"$ref": st.just("#/definitions/d")}),
    )  # fmt: skip


def _schema(parts: tuple[str | None, Any, Any]) -> dict[str, Any]:
    draft, body, definition = parts
    body = body if isinstance(body, dict) else {"not": {"not": body}}
    return {**({"$schema": draft} if draft else {}), **body, "definitions": {"d": definition}}


TREES = st.recursive(LEAF, _compound, max_leaves=6)
SCHEMAS = st.tuples(st.sampled_from(DRAFT_URIS), TREES, st.recursive(LEAF, _compound, max_leaves=3)).map(_schema)
VALUES = st.recursive(
    st.sampled_from([None, True, False, 0, 1, 1.0, 1.5, -1, 10, 12, "", "a", "ab", "b", "12", "x", "y", "2024-01-01",
                     "x@y.z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@cache
def pipeline() -> AppState:
    return fake_state(max_attempts=1)  # type: ignore[no-any-return]


@given(SCHEMAS, VALUES)
@settings(max_examples=400, deadline=None)
def test_a_200_is_valid_under_the_schemas_own_draft(schema: dict[str, Any], answer: Any) -> None:
    state = pipeline()
    backend = state.backends["main"]
    assert isinstance(backend, FakeBackend)
    backend.queue.clear()
    backend.enqueue(json.dumps(answer))
    try:
        result = asyncio.run(state.extractor.extract("x", schema=schema))
    except InvalidSchema:
        return  # refused before any call: fine whatever the draft
    except SchemaValidationFailed:
        assert not oracle(schema).is_valid(answer)
        return
    assert oracle(schema).is_valid(result.data)
