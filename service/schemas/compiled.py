"""A schema checked once and compiled once; validation of answers against it; the cache of ad-hoc schemas.

`compile_schema` is the one gate, for task files and requests alike: the draft `$schema` declares, the
limits (ad-hoc schemas), that draft's meta-schema, patterns the matcher can run, references resolved
inside the document. What passes validates answers by its own draft, with its own formats, guarded by
the thread's time budget, and with no way to fetch anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from service.schemas import budget, patterns
from service.schemas.drafts import Draft, draft_of
from service.schemas.problems import SchemaProblem, clip
from service.schemas.refs import REF_KEYWORDS, REGISTRY, check_references
from service.schemas.shape import SchemaLimits, Shape, check_shape, measure
from service.schemas.walk import subschemas

log = structlog.get_logger("extraction")
MAX_ISSUES = 20
# Keywords whose evaluation cost can grow faster than the answer (branches, references, regexes); a schema
# without them validates in time linear in schema x answer, cheap enough to run on the event loop.
_COSTLY = frozenset({
    "allOf", "anyOf", "oneOf", "not", "if", "dependentSchemas", "dependencies", "unevaluatedProperties",
    "unevaluatedItems", "contains", "pattern", "patternProperties", "propertyNames", "uniqueItems", *REF_KEYWORDS,
})  # fmt: skip
_CHEAP_FORMATS = frozenset({"date", "date-time", "time", "email", "ipv4", "ipv6", "uuid", "duration"})
_CHEAP_NODES = 256
# A pattern without groups, alternation, backreferences or unbounded repetition (`^[A-Z]{3}$`) cannot
# backtrack: its cost is bounded by its own length times the string's.
# Patterns with no alternation, group, backreference or variable repetition: only fixed counts `{n}`, so a
# match is linear in the text. `?` and `{m,n}` are variable: `\w{0,99}` repeated a dozen times backtracks
# polynomially with a huge exponent, so those count as costly.
_LINEAR_PATTERN = re.compile(r"^(?:[^()|*+?{\\]|\\[^1-9gkpP]|\{\d{1,2}\})*$")


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation error: where (JSON path) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True, eq=False)
class CompiledSchema:
    """`schema` as given (what prompts and `response_format` carry) and its validator. `memo` is for its
    users' derived facts (the pipeline's structured-output decision per backend), so they go with it."""

    schema: dict[str, Any]
    draft: Draft
    shape: Shape
    key: str
    validator: Validator
    cheap: bool  # validation time is linear: fine on the event loop for a small answer
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_bytes(self) -> int:
        """What it holds, in the cache's unit: the schema and the validator's copy of it."""
        return 2 * self.shape.bytes


def canonical(schema: Any) -> bytes:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def schema_key(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def compile_schema(schema: Any, limits: SchemaLimits | None = None, *, raw: bytes | None = None) -> CompiledSchema:
    """The schema checked and compiled, or SchemaProblem saying why not. `limits`: for ad-hoc schemas."""
    if not isinstance(schema, dict):
        raise SchemaProblem("the schema must be a JSON object")
    draft = draft_of(schema)
    raw = canonical(schema) if raw is None else raw
    shape = measure(schema, len(raw))
    if limits is not None:
        check_shape(shape, limits)
    try:
        _check_meta(schema, draft)
        if why := _unsatisfiable(schema, draft):
            raise SchemaProblem(f"no answer can satisfy this schema ({why})", at="(root)")
        budget.check()
        nodes = list(subschemas(schema, draft))
        _check_patterns(nodes)
        check_references(schema, draft)
        cheap = shape.nodes <= _CHEAP_NODES and all(_cheap(node) for _, node in nodes)
        validator = _validator(schema, draft, nodes, guard=not cheap)
    except RecursionError:
        raise SchemaProblem("the schema is nested too deeply to check") from None
    return CompiledSchema(schema, draft, shape, schema_key(raw), validator, cheap)


def _unsatisfiable(schema: dict[str, Any], draft: Draft) -> str | None:
    """Why no value can pass, for the obvious cases at the root or in a root `allOf`: `not: {}` / `not: true`,
    or a `false` member (each answer would be billed and re-asked for nothing); None otherwise. Where `$ref`
    overrides its siblings (draft-04..07) they are not looked at. Unsatisfiability in general is not decided."""
    if "$ref" in schema and draft.name in ("draft-04", "draft-06", "draft-07"):
        return None
    members = schema.get("allOf", [])
    members = members if isinstance(members, list) else []
    if any(p.get("not") is True or p.get("not") == {} for p in [schema, *members] if isinstance(p, dict)):
        return "`not` of a schema that allows everything"
    if any(p is False for p in members):
        return "`allOf` holds `false`"
    return None


def _cheap(node: dict[str, Any]) -> bool:
    costly = node.keys() & _COSTLY
    if costly == {"pattern"} and isinstance(node["pattern"], str) and _LINEAR_PATTERN.match(node["pattern"]):
        costly = set()
    return not costly and node.get("format", "date") in _CHEAP_FORMATS


def _check_meta(schema: dict[str, Any], draft: Draft) -> None:
    # Guarded: the meta-schema's own keywords run on the caller's schema (draft-04 says `enum` is uniqueItems:
    # 7,000 objects in an enum would be 25 million comparisons), so they too stop at the budget.
    meta = budget.guarded(draft.validator)(draft.validator.META_SCHEMA, format_checker=draft.format_checker)
    error = best_match(meta.iter_errors(schema))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise SchemaProblem(
            f"not a valid {draft.name} JSON Schema: at {clip(where, 120)}: {clip(error.message, 300)}",
            draft=draft.name,
            at=where,
        )


def _check_patterns(nodes: list[tuple[str, dict[str, Any]]]) -> None:
    for path, node in nodes:
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            found.extend(node["patternProperties"])
        for pattern in found:
            if problem := patterns.pattern_error(pattern):
                raise SchemaProblem(f"{path}: pattern {clip(pattern, 80)!r} is not a usable regular expression: "
                                    f"{problem}", at=path)  # fmt: skip


def _validator(
    schema: dict[str, Any], draft: Draft, nodes: list[tuple[str, dict[str, Any]]], *, guard: bool
) -> Validator:
    """The draft's validator; `guard`: its keywords check the deadline (a cheap schema, linear, needs none and
    is validated ~30% faster without). Built on a copy without `$schema` in its subschemas, so jsonschema keeps
    the guarded class all the way down."""
    declaring = [id(node) for _, node in nodes if "$schema" in node]
    memo: dict[int, Any] = {}
    bare = copy.deepcopy(schema, memo)
    for ident in declaring:
        memo[ident].pop("$schema", None)
    cls = budget.guarded(draft.validator) if guard else budget.fixed(draft.validator)
    return cls(bare, registry=REGISTRY, format_checker=draft.format_checker)


def validate(instance: Any, compiled: CompiledSchema) -> list[Issue]:
    """All errors (at most MAX_ISSUES, shallowest first); empty when valid. `TooSlow` past the thread's budget."""
    try:
        errors = []
        for error in compiled.validator.iter_errors(instance):
            errors.append(error)
            if len(errors) >= 10 * MAX_ISSUES:
                break
    except RecursionError:
        return [Issue("$", "the answer is nested too deeply to validate")]
    except (budget.TooSlow, MemoryError):
        raise
    except Exception as e:  # a validator bug must not pass an answer, nor 500 after the model was paid
        log.exception("validator_failed", error_type=type(e).__name__)
        return [Issue("$", f"the answer could not be validated ({type(e).__name__})")]
    errors.sort(key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    return [Issue(clip(e.json_path, 200), clip(e.message, 300)) for e in errors[:MAX_ISSUES]]


class SchemaCache:
    """Compiled ad-hoc schemas by content hash, bounded by the bytes they hold (least recently used go
    first); shared by the worker threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CompiledSchema] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CompiledSchema]:
        """The cached schemas, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def get(self, key: str) -> CompiledSchema | None:
        with self._lock:
            compiled = self._entries.get(key)
            if compiled is not None:
                self._entries.move_to_end(key)
            return compiled

    def put(self, compiled: CompiledSchema) -> None:
        if compiled.cost_bytes > self.max_bytes:
            return
        with self._lock:
            if compiled.key in self._entries:
                return
            self._entries[compiled.key] = compiled
            self.bytes += compiled.cost_bytes
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.cost_bytes
