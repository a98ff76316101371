"""compile_schema as the one gate: drafts, meta-schemas, references, limits; validation; the byte-bounded cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.schemas.budget import time_budget
from service.schemas.compiled import SchemaCache, canonical, compile_schema, validate
from service.schemas.problems import SchemaProblem
from service.schemas.shape import SchemaLimits

SCHEMA = {
    "type": "object",
    "properties": {"d": {"type": "string", "format": "date"}, "n": {"type": "number"}},
    "required": ["d", "n"],
    "additionalProperties": False,
}
LIMITS = SchemaLimits(max_bytes=4096, max_depth=8, max_properties=20)


def problem(schema: Any, limits: SchemaLimits | None = None) -> SchemaProblem:
    with pytest.raises(SchemaProblem) as e:
        compile_schema(schema, limits)
    return e.value


def test_a_valid_schema_compiles_and_validates_with_paths_and_formats() -> None:
    compiled = compile_schema(SCHEMA)
    assert compiled.draft.name == "2020-12" and compiled.cheap
    assert validate({"d": "2024-02-29", "n": 1}, compiled) == []
    issues = validate({"d": "2023-02-30", "n": "12", "x": 1}, compiled)
    assert {i.path for i in issues} == {"$", "$.d", "$.n"}
    assert any("is not a 'date'" in i.message for i in issues)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (["not", "an", "object"], "must be a JSON object"),
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "properties/a/type"),
        ({"$schema": "http://json-schema.org/draft-03/schema#"}, "supported drafts: draft-04"),
        ({"$schema": "https://example.com/my-dialect"}, "unsupported $schema"),
        ({"$schema": 4}, "unsupported $schema"),
        ({"$ref": "#"}, "refers to itself without descending"),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
          "properties": {"x": {"$ref": "#/$defs/a"}}}, "#/$defs/a -> #/$defs/b"),
        ({"anyOf": [{"not": {"$ref": "#"}}]}, "refers to itself"),
        ({"$ref": "#/$defs/missing"}, "points to nothing"),
        ({"properties": {"a": {"$ref": "http://127.0.0.1:9/x"}}}, "names another document"),
        ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "nothing is ever fetched"),
        ({"properties": {"a": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}}, "names another document"),
        ({"$ref": "#/properties/a/enum", "properties": {"a": {"enum": [1]}}}, "not a schema"),
        ({"pattern": "(?<"}, "is not a 'regex'"),
        ({"properties": {"a": {"$schema": "http://json-schema.org/draft-07/schema#"}}}, "one draft per schema"),
    ],
)  # fmt: skip
def test_unusable_schemas_are_refused_with_the_reason(schema: Any, words: str) -> None:
    assert words in problem(schema).message


def test_references_inside_the_document_resolve_embedded_ids_and_anchors_included() -> None:
    schema = {
        "$id": "https://example.com/root.json",
        "type": "object",
        "properties": {"a": {"$ref": "item.json"}, "b": {"$ref": "#thing"}, "c": {"$ref": "#/$defs/tree"}},
        "$defs": {
            "item": {"$id": "item.json", "type": "integer"},
            "thing": {"$anchor": "thing", "type": "string"},
            "tree": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/tree"}}}},
        },
    }
    compiled = compile_schema(schema)
    assert validate({"a": 1, "b": "x", "c": {"kids": [{"kids": []}]}}, compiled) == []
    assert {i.path for i in validate({"a": "1", "b": 2, "c": {"kids": [{"kids": 3}]}}, compiled)} == {
        "$.a", "$.b", "$.c.kids[0].kids"
    }  # fmt: skip


def test_limits_apply_to_ad_hoc_schemas_and_name_the_setting() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(21)}}
    assert "limits.max_schema_properties" in problem(wide, LIMITS).message
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(8):  # 9 objects deep
        deep = {"type": "array", "items": deep}
    assert "limits.max_schema_depth" in problem(deep, LIMITS).message
    big = {"type": "object", "description": "x" * 5000}
    assert problem(big, LIMITS).details == {
        "limit": "max_schema_bytes", "measured": len(canonical(big)), "allowed": 4096
    }  # fmt: skip
    assert compile_schema(wide).shape.properties == 21  # task files: no size limits


def test_a_task_schema_nested_past_the_interpreter_is_refused_not_crashed() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(400):
        deep = {"type": "array", "items": deep}
    assert "nested too deeply" in problem(deep).message


def test_an_answer_nested_past_the_interpreter_is_an_issue() -> None:
    tree = compile_schema({"type": "array", "items": {"$ref": "#"}})
    value: Any = []
    for _ in range(5000):
        value = [value]
    assert validate(value, tree)[0].message == "the answer is nested too deeply to validate"


def test_messages_never_echo_at_length() -> None:
    compiled = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    [issue] = validate({"a": "y" * 100_000}, compiled)
    assert len(issue.message) <= 300
    assert len(problem({"properties": {"a": {"$ref": "http://x/" + "z" * 10_000}}}).message) < 600


def test_the_cache_is_bounded_by_bytes_and_evicts_least_recently_used() -> None:
    schemas = [{"type": "object", "description": str(i) * 400} for i in range(4)]
    compiled = [compile_schema(s) for s in schemas]
    cache = SchemaCache(max_bytes=3 * compiled[0].cost_bytes)
    for c in compiled[:3]:
        cache.put(c)
    assert cache.get(compiled[0].key) is compiled[0]  # now the most recently used
    cache.put(compiled[3])
    assert cache.get(compiled[1].key) is None and cache.get(compiled[0].key) is compiled[0]
    assert len(cache) == 3 and cache.bytes == sum(c.cost_bytes for c in (compiled[0], compiled[2], compiled[3]))
    assert cache.bytes <= cache.max_bytes
    huge = compile_schema({"type": "object", "description": "h" * 10_000})
    cache.put(huge)  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get(huge.key) is None and len(cache) == 3


def test_same_content_same_key() -> None:
    a = compile_schema(json.loads(json.dumps(SCHEMA)))
    b = compile_schema({k: SCHEMA[k] for k in reversed(list(SCHEMA))})
    assert a.key == b.key


@pytest.mark.parametrize(
    ("schema", "cheap"),
    [
        (SCHEMA, True),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^[A-Z]{3}$"}}}, True),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a+$"}}}, False),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a|b)$"}}}, False),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "\\w{0,99}" * 12 + "\\W"}}}, False),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^colou?r$"}}}, False),
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}, False),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {}}}, False),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}, False),
        ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}, False),
    ],
)
def test_only_schemas_whose_validation_is_linear_are_cheap(schema: dict[str, Any], cheap: bool) -> None:
    # cheap: validated on the event loop for a small answer; the rest always in a worker under the budget
    assert compile_schema(schema).cheap is cheap


def test_unique_items_of_many_objects_is_linear_and_exact() -> None:
    compiled = compile_schema({"type": "array", "uniqueItems": True})
    many = [{"a": i, "b": [i, {"c": None}]} for i in range(20_000)]  # jsonschema's own: 2e8 comparisons
    with time_budget(5):
        assert validate(many, compiled) == []
        assert validate([*many, {"b": [7, {"c": None}], "a": 7}], compiled)  # equal whatever the key order
        assert validate([1, 1.0], compiled)  # equal numbers
        assert validate([True, 1], compiled) == [] and validate([0, False], compiled) == []
        assert validate([[1, 2], [2, 1]], compiled) == []


def test_the_meta_schema_check_of_a_big_draft4_enum_is_linear_too() -> None:
    # draft-04's meta-schema makes `enum` uniqueItems: jsonschema's own pairwise check of 5,000 objects is 12.5
    # million comparisons, past any budget; the guarded meta-schema validator hashes them once.
    many = [{"a": i} for i in range(5_000)]
    declared = {"$schema": "http://json-schema.org/draft-04/schema#"}
    with time_budget(2):
        compile_schema({**declared, "enum": many})
        with pytest.raises(SchemaProblem, match="non-unique"):
            compile_schema({**declared, "enum": [*many, {"a": 7}]})
