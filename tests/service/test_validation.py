from service.validation import ValidatorCache, schema_errors, validate

SCHEMA = {
    "type": "object",
    "properties": {"d": {"type": "string", "format": "date"}, "n": {"type": "number"}},
    "required": ["d", "n"],
    "additionalProperties": False,
}


def test_schema_errors_accepts_valid_and_names_the_problem() -> None:
    assert schema_errors(SCHEMA) is None
    problem = schema_errors({"type": "object", "properties": {"a": {"type": "strnig"}}})
    assert problem is not None and "properties/a/type" in problem
    assert schema_errors(["not", "an", "object"]) == "schema must be a JSON object"


def test_validate_reports_paths_and_checks_formats() -> None:
    validator = ValidatorCache().get(SCHEMA)
    assert validate({"d": "2024-02-29", "n": 1}, validator) == []
    issues = validate({"d": "2023-02-30", "n": "12", "x": 1}, validator)
    paths = {i.path for i in issues}
    assert paths == {"$", "$.d", "$.n"}
    assert any("is not a 'date'" in i.message for i in issues)


def test_validator_cache_compiles_each_schema_once_and_is_bounded() -> None:
    cache = ValidatorCache(max_size=2)
    first = cache.get(SCHEMA)
    assert cache.get(dict(SCHEMA)) is first  # same content, same compiled validator
    cache.get({"type": "object"})
    cache.get({"type": "array"})
    assert cache.get(SCHEMA) is not first  # evicted, recompiled
