"""Which JSON Schema draft a schema declares, and what in it would mean something else in draft 2020-12.

A schema is validated by the draft its `$schema` names (2020-12 when it names none); an unknown `$schema` is
refused rather than guessed. Structured-output engines read every schema as (a subset of) 2020-12, so
`meaning_changes` lists what an engine would enforce differently from the declared draft: such a schema is
not sent as `response_format` (the pipeline degrades to JSON mode + validation + re-ask).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import referencing.jsonschema
from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    FormatChecker,
)
from jsonschema.protocols import Validator
from referencing import Specification

from service.schemas import patterns
from service.schemas.problems import SchemaProblem, clip


def _is_regex(value: object) -> bool:
    return not isinstance(value, str) or patterns.pattern_error(value) is None


@functools.cache
def _format_checker(validator: type[Validator]) -> FormatChecker:
    """`validator`'s formats, with `regex` checked as `pattern` is matched (ECMA-262, the `regex` module)."""
    checker = FormatChecker(formats=())
    checker.checkers = dict(validator.FORMAT_CHECKER.checkers)
    if "regex" in checker.checkers:
        checker.checks("regex")(_is_regex)
    return checker


@dataclass(frozen=True, slots=True)
class Draft:
    name: str
    uri: str
    validator: type[Validator]
    specification: Specification[Any]

    @property
    def format_checker(self) -> FormatChecker:
        """The formats this draft defines (draft-04 has no `date`; 2019-09 added `duration`, `uuid`), with
        `regex` read as ECMA-262 (as `pattern` is): jsonschema's own asks Python's `re`, which refuses `\\p{L}`."""
        return _format_checker(self.validator)

    def knows(self, keyword: str) -> bool:
        """Whether `keyword` means anything to this draft's validator (`then`/`else` live under `if`)."""
        if keyword in ("then", "else"):
            keyword = "if"
        return keyword in self.validator.VALIDATORS


rj = referencing.jsonschema
DRAFT4 = Draft("draft-04", "http://json-schema.org/draft-04/schema#", Draft4Validator, rj.DRAFT4)
DRAFT6 = Draft("draft-06", "http://json-schema.org/draft-06/schema#", Draft6Validator, rj.DRAFT6)
DRAFT7 = Draft("draft-07", "http://json-schema.org/draft-07/schema#", Draft7Validator, rj.DRAFT7)
DRAFT201909 = Draft("2019-09", "https://json-schema.org/draft/2019-09/schema", Draft201909Validator, rj.DRAFT201909)
DRAFT202012 = Draft("2020-12", "https://json-schema.org/draft/2020-12/schema", Draft202012Validator, rj.DRAFT202012)
DRAFTS = (DRAFT4, DRAFT6, DRAFT7, DRAFT201909, DRAFT202012)
DEFAULT = DRAFT202012


def _normal(uri: str) -> str:
    # Real schemas write the same meta-schema with and without the empty fragment, over http and https.
    uri = uri.strip().rstrip("#")
    return "http://" + uri[len("https://") :] if uri.startswith("https://") else uri


_BY_URI = {_normal(d.uri): d for d in DRAFTS}


def supported() -> str:
    """The drafts, for messages."""
    return ", ".join(f"{d.name} ({d.uri})" for d in DRAFTS) + "; 2020-12 when `$schema` is left out"


def draft_of(schema: dict[str, Any]) -> Draft:
    """The draft `schema` declares; SchemaProblem for a `$schema` we do not validate by."""
    declared = schema.get("$schema")
    if declared is None:
        return DEFAULT
    draft = _BY_URI.get(_normal(declared)) if isinstance(declared, str) else None
    if draft is None:
        raise SchemaProblem(
            f"unsupported $schema {clip(repr(declared))}; supported drafts: {supported()}",
            supported=[d.uri for d in DRAFTS],
        )
    return draft


# Keywords 2020-12 does not have whose meaning an engine would therefore drop.
_GONE = {"dependencies", "additionalItems", "$recursiveRef", "$recursiveAnchor"}
# Keywords that may stand beside `$ref` in draft-04..07 without changing anything (there siblings are ignored).
_REF_NEIGHBOURS = {"$ref", "$schema", "$id", "id", "$comment", "title", "description", "definitions", "$defs"}


def meaning_changes(nodes: Iterable[tuple[str, dict[str, Any]]], draft: Draft) -> list[str]:
    """Where an engine reading 2020-12 would enforce something else than `draft` says, given the schema's
    subschemas as (path, node); empty for 2020-12 itself."""
    if draft is DRAFT202012:
        return []
    later = {k for k in (*DRAFT202012.validator.VALIDATORS, "then", "else") if not draft.knows(k)}
    old_refs = draft in (DRAFT4, DRAFT6, DRAFT7)
    changes: list[str] = []
    identifiers: list[str] = []  # `id`/`$id` changes: they matter only to references that are not JSON pointers
    pointer_refs_only = True
    for path, node in nodes:
        for key in sorted(node.keys() & later):
            if draft is DRAFT4 and key in ("exclusiveMaximum", "exclusiveMinimum"):
                changes.append(f"{path}: {key!r} is a boolean modifier in draft-04, a bound in 2020-12")
            else:
                changes.append(f"{path}: {key!r} is a 2020-12 keyword that {draft.name} ignores")
        for key in sorted(node.keys() & _GONE):
            if draft.knows(key) or (key == "$recursiveAnchor" and draft is DRAFT201909):
                changes.append(f"{path}: {key!r} means nothing in 2020-12")
        if isinstance(node.get("items"), list):
            changes.append(f"{path}: array-form 'items' is 'prefixItems' in 2020-12")
        if old_refs and "$ref" in node and node.keys() - _REF_NEIGHBOURS:
            changes.append(f"{path}: keywords beside '$ref' are ignored in {draft.name}, applied in 2020-12")
        if old_refs and isinstance(node.get("$id"), str) and node["$id"].startswith("#"):
            identifiers.append(f"{path}: '$id' {clip(node['$id'], 40)!r} is an anchor in {draft.name}")
        if draft is DRAFT4 and isinstance(node.get("id"), str):
            identifiers.append(f"{path}: 'id' is '$id' in 2020-12")
        ref = node.get("$ref")
        if isinstance(ref, str) and ref != "#" and not ref.startswith("#/"):
            pointer_refs_only = False
    return changes if pointer_refs_only else changes + identifiers
