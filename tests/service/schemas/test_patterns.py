"""Patterns and branches cannot run away: every place jsonschema matches a pattern, and every keyword, stops at
the thread's budget. Each case would run for days without it (2^40 steps), so finishing at all is the proof."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

from service.schemas import patterns
from service.schemas.budget import TooSlow, remaining, time_budget
from service.schemas.compiled import compile_schema, validate

EVIL = "^(a|a)*$"  # backtracks 2^n on n `a`s before a character it cannot match, in `re` and in `regex`
BAD = "a" * 40 + "!"


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"type": "string", "pattern": EVIL}, BAD),
        ({"type": "object", "patternProperties": {EVIL: {}}}, {BAD: 1}),
        ({"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False}, {BAD: 1}),
        ({"type": "object", "allOf": [{"patternProperties": {EVIL: {}}}], "unevaluatedProperties": False}, {BAD: 1}),
        ({"$schema": "https://json-schema.org/draft/2019-09/schema", "allOf": [{"patternProperties": {EVIL: {}}}],
          "unevaluatedProperties": False}, {BAD: 1}),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "patternProperties": {EVIL: {}}}, {BAD: 1}),
    ],
    ids=["pattern", "patternProperties", "additionalProperties", "unevaluatedProperties",
         "unevaluatedProperties-2019-09", "draft-04"],
)  # fmt: skip
def test_every_pattern_site_stops_at_the_budget(schema: dict[str, Any], instance: Any) -> None:
    compiled = compile_schema(schema)
    with time_budget(0.05), pytest.raises(TooSlow, match="ran out of time"):
        validate(instance, compiled)


def test_branches_that_multiply_stop_at_the_budget() -> None:
    # oneOf evaluates both branches at every level: 2^30 evaluations for 30 nested arrays.
    branch = {"type": "array", "items": {"$ref": "#/$defs/n"}}
    node = {"oneOf": [branch, dict(branch)]}
    compiled = compile_schema({"$defs": {"n": node}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}})
    value: Any = []
    for _ in range(30):
        value = [value]
    with time_budget(0.05), pytest.raises(TooSlow):
        validate({"a": value}, compiled)
    assert remaining() is None  # the budget ends with its block
    assert validate({"a": [[]]}, compiled)  # small: answers (both branches match: not exactly one)


def test_a_declared_schema_keeps_the_guard_through_references() -> None:
    # `$ref: "#"` to a root that declares $schema: jsonschema would switch to the unguarded class.
    node = {"oneOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "array", "items": {"$ref": "#"}}]}
    compiled = compile_schema({"$schema": "https://json-schema.org/draft/2020-12/schema", **node})
    value: Any = []
    for _ in range(30):
        value = [value]
    with time_budget(0.05), pytest.raises(TooSlow):
        validate(value, compiled)
    assert compiled.schema["$schema"]  # the schema as given is untouched


def test_outside_a_budget_matching_is_what_re_does() -> None:
    module = importlib.import_module("jsonschema._keywords")
    assert module.re is patterns.TIMED_RE
    assert module.re.search("b+", "abbc").group() == re.search("b+", "abbc").group()  # type: ignore[union-attr]
    assert module.re.compile is re.compile


def test_installing_over_a_changed_jsonschema_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("jsonschema._utils")
    monkeypatch.setattr(module, "re", object())
    with pytest.raises(RuntimeError, match="no longer uses the `re` module"):
        patterns.install()


def test_patterns_the_matcher_cannot_compile_are_named() -> None:
    assert patterns.pattern_error("^[a-z]+$") is None
    assert patterns.pattern_error("(") is not None


@pytest.mark.parametrize(
    ("pattern", "value", "valid"),
    [
        ("^[A-Z]{3}$", "EUR", True),
        ("^[A-Z]{3}$", "EUR\n", False),  # Python's `$` also matches before a final newline, ECMA's does not
        (r"^\d+$", "123", True),
        (r"^\d+$", "١٢٣", False),  # ECMA's \d is ASCII; Python's takes every script's digits
        (r"^[\d.]+$", "1.5", True),
        (r"^[\d.]+$", "١.٥", False),
        (r"^\w+$", "abc_1", True),
        (r"^\w+$", "ab\u00e7", False),
        (r"^\W$", "é", True),
        (r"^\p{L}+$", "café", True),  # Unicode property classes, as ECMA with the u flag reads them
        (r"^\p{L}+$", "caf3", False),
        (r"^a\$$", "a$", True),  # an escaped `$` stays a dollar sign
        ("^[$]+$", "$$", True),  # so does one in a class
        (r"^[^\]a]$", "b", True),
        (r"^[\w-\.]+@([\w-]+\.)+[\w-]{2,4}$", "a.b-c@x-y.com", True),  # a `-` after \w in a class stays literal
        (r"^[\w-z]$", "-", True),
        (r"^[\w-~]$", "{", False),
        (r"^[^[]+\d$", "ab5", True),  # a `[` inside a class is a literal and the class still ends at `]`
        (r"^[a[]\d$", "[5", True),
        (r"^[a[]$", "a\n", False),
        (r"^a[]b$", "ab", False),  # ECMA's empty class matches nothing
        (r"^a[^]b$", "a\nb", True),  # and its negation any character
    ],
)
def test_patterns_match_as_ecma_262_reads_them(pattern: str, value: str, valid: bool) -> None:
    compiled = compile_schema({"type": "string", "pattern": pattern})
    with time_budget(1):
        assert (validate(value, compiled) == []) is valid


def test_a_regex_format_is_checked_as_ecma_262_too() -> None:
    compile_schema({"type": "string", "pattern": r"^\p{Lu}"})  # not refused as "not a 'regex'"
    compiled = compile_schema({"type": "string", "format": "regex"})
    with time_budget(1):
        assert validate(r"\p{L}+", compiled) == []
        assert validate("(", compiled)
