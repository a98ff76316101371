"""Engine profiles: which schemas each structured-output engine can enforce."""

from backends.profiles import default_dialect, dialect_gaps

SCHEMA = {
    "type": "object",
    "properties": {"d": {"type": "string", "format": "date"}, "n": {"type": "number"}},
    "required": ["d", "n"],
    "additionalProperties": False,
}


def test_openai_strict_dialect_gaps() -> None:
    assert dialect_gaps(SCHEMA, "openai_strict") == []
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"oneOf": [{"type": "string"}]}}}
    gaps = dialect_gaps(loose, "openai_strict")
    assert any("additionalProperties" in g for g in gaps)
    assert any("every property must be required" in g for g in gaps)
    assert any("'oneOf'" in g for g in gaps)
    assert dialect_gaps({"type": "array"}, "openai_strict") == ["root must be an object"]


def test_openai_strict_closes_every_object_one_without_properties_too() -> None:
    # Strict mode needs additionalProperties: false on every object; a bare {"type": "object"} was sent strict.
    assert dialect_gaps({"type": "object"}, "openai_strict") == ["/: additionalProperties must be false"]
    nested = {**SCHEMA, "properties": {**SCHEMA["properties"], "o": {"type": ["object", "null"]}},
              "required": ["d", "n", "o"]}  # fmt: skip
    assert dialect_gaps(nested, "openai_strict") == ["/properties/o: additionalProperties must be false"]
    closed = {"type": "object", "additionalProperties": False}  # an empty object: strict mode takes it
    assert dialect_gaps(closed, "openai_strict") == []
    assert dialect_gaps({"type": "object"}, "vllm") == []


def test_vllm_dialect_accepts_optional_properties_but_not_conditionals() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert dialect_gaps(schema, "vllm") == []
    conditional = {**schema, "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    assert dialect_gaps(conditional, "vllm") == ["/: keyword 'if'", "/: keyword 'then'"]
    assert dialect_gaps(conditional, "full") == []


def test_enum_values_are_not_mistaken_for_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {"k": {"enum": ["not", "if"]}},
        "required": ["k"],
        "additionalProperties": False,
    }
    assert dialect_gaps(schema, "openai_strict") == []


def test_kinds_get_their_engine_profile() -> None:
    assert default_dialect("openai") == "openai_strict" and default_dialect("vllm") == "vllm"


def test_vllm_xgrammar_gaps_follow_what_vllm_itself_refuses() -> None:
    for keyword, value in (("multipleOf", 2), ("uniqueItems", True), ("contains", {}), ("patternProperties", {})):
        assert dialect_gaps({"type": "object", keyword: value}, "vllm") == [f"/: keyword {keyword!r}"]
    assert dialect_gaps({"type": "string", "format": "iri"}, "vllm") == ["/: format 'iri'"]
    assert dialect_gaps({"type": "string", "format": "date"}, "vllm") == []
    bounded = {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5}
    assert dialect_gaps(bounded, "vllm") == ["/: a pattern or format with length bounds (xgrammar drops the bounds)"]


def test_openai_strict_limits_and_formats() -> None:
    def strict(properties: dict[str, object]) -> dict[str, object]:
        return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}

    deep: dict[str, object] = strict({"v": {"type": "string"}})
    for _ in range(10):
        deep = strict({"child": deep})
    assert dialect_gaps(deep, "openai_strict") == ["11 object levels over OpenAI's 10"]
    enums = strict({f"p{i}": {"enum": list(range(100))} for i in range(11)})
    assert dialect_gaps(enums, "openai_strict") == ["1100 enum values over OpenAI's 1000"]
    assert dialect_gaps(strict({"u": {"type": "string", "format": "uri"}}), "openai_strict") == [
        "/properties/u: format 'uri'"
    ]


def test_unknown_keywords_holding_schema_like_values_do_not_break_the_check() -> None:
    odd = {"type": "object", "x-note": {"properties": 1, "required": "a"}, "properties": {"a": {"type": "string"}},
           "required": "a", "additionalProperties": False}  # fmt: skip
    for dialect in ("openai_strict", "vllm", "full"):
        assert isinstance(dialect_gaps(odd, dialect), list)
    assert any("every property must be required" in g for g in dialect_gaps(odd, "openai_strict"))


def test_relaxed_drops_only_the_widening_rules_a_grammar_lacks_and_accepts_a_superset() -> None:
    from jsonschema import Draft202012Validator

    from backends.profiles import relaxed

    schema = {
        "type": "object", "required": ["price", "tags", "not"],
        "properties": {
            "price": {"type": "number", "multipleOf": 0.01},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "not": {"type": "string", "format": "email", "enum": ["a@b.c", "multipleOf"]},  # a property named `not`
        },
        "additionalProperties": False,
    }  # fmt: skip
    loose, dropped = relaxed(schema, "llamacpp")
    assert dropped == ["/properties/price: multipleOf", "/properties/tags: uniqueItems",
                       "/properties/not: format 'email'"]  # fmt: skip
    assert loose["properties"]["not"] == {"type": "string", "enum": ["a@b.c", "multipleOf"]}
    assert loose["required"] == ["price", "tags", "not"] and loose["additionalProperties"] is False
    assert dialect_gaps(loose, "llamacpp") == [] and dialect_gaps(schema, "llamacpp") != []
    for answer in ({"price": 19.999, "tags": ["a", "a"], "not": "a@b.c"}, {"price": 1, "tags": [], "not": "a@b.c"}):
        if Draft202012Validator(schema).is_valid(answer):
            assert Draft202012Validator(loose).is_valid(answer)  # never narrower
    assert Draft202012Validator(loose).is_valid({"price": 19.999, "tags": ["a", "a"], "not": "a@b.c"})
    # not for a hosted API, and not where dropping would narrow (patternProperties beside additionalProperties)
    assert relaxed(schema, "openai_strict") == (schema, [])
    pattern = {"type": "object", "patternProperties": {"^x": {"type": "string"}}, "additionalProperties": False}
    assert relaxed(pattern, "vllm")[1] == [] and dialect_gaps(relaxed(pattern, "vllm")[0], "vllm") != []
