"""How big a schema is, in the measures the limits use; and the limits an ad-hoc schema must keep.

Measured on the JSON document, before any draft-aware work, in one pass without recursion, so a schema
that is too big or too deep costs a few milliseconds to refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.schemas.problems import SchemaProblem

# Bounds that grammar engines unroll (and that size a generated value).
REPEAT_KEYWORDS = frozenset({
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains",
})  # fmt: skip
_QUANTIFIER = re.compile(r"\{(\d{1,12})(?:,(\d{0,12}))?\}")


@dataclass(frozen=True, slots=True)
class Shape:
    bytes: int  # compact JSON, UTF-8
    depth: int  # objects and arrays nested (a flat object is 1)
    properties: int  # entries of every `properties` object, all levels
    nodes: int  # objects in the document
    max_repeat: int  # the largest length/count bound, or a pattern's unrolled size (nested {m,n} multiply)


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    """What an ad-hoc schema may be (`limits.max_schema_*` in the config)."""

    max_bytes: int
    max_depth: int
    max_properties: int


def measure(schema: Any, size_bytes: int) -> Shape:
    depth = properties = nodes = max_repeat = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            nodes += 1
            depth = max(depth, level)
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    properties += len(value)
                elif key in REPEAT_KEYWORDS and isinstance(value, int):
                    max_repeat = max(max_repeat, value)
                elif key == "pattern" and isinstance(value, str):
                    max_repeat = max(max_repeat, _largest_quantifier(value))
                elif key == "patternProperties" and isinstance(value, dict):
                    max_repeat = max([max_repeat, *(_largest_quantifier(p) for p in value if isinstance(p, str))])
                if isinstance(value, dict | list):
                    stack.append((value, level + 1))
        elif isinstance(node, list):
            depth = max(depth, level)
            stack.extend((item, level + 1) for item in node if isinstance(item, dict | list))
    return Shape(size_bytes, depth, properties, nodes, max_repeat)


def _largest_quantifier(pattern: str) -> int:
    """The pattern's size once a grammar engine unrolls its bounded repetitions: `x{m,n}` is n copies of x, so
    nested bounds multiply (`((a{1,100}b{1,100}){1,100})` is 20,000 where its largest bound is 100). Measured on
    this EPYC, xgrammar's compile time grows with it (about 0.6 ms a unit: 3,000 took 1.0 s, 20,000 took 12 s).
    An estimate in one linear pass: atoms count 1, a group the sum of its branches' largest, `*`/`+`/`?` add
    nothing (a loop, not copies). Returns 0 for a pattern without bounded repetition."""
    frames: list[list[int]] = [[0, 0]]  # per open group: [largest branch so far, current branch]
    last = 0  # the size of the atom a quantifier would apply to
    bounded = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            last = 1
            frames[-1][1] += 1
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            last = 1
            frames[-1][1] += 1
            continue
        if c == "(":
            frames.append([0, 0])
            if pattern.startswith("?", i + 1):  # (?:, (?=, (?<name> ...: skip the marker up to ':' or '>'
                j = i + 2
                while j < n and pattern[j] not in ":>=!)":
                    j += 1
                i = j
            i += 1
            last = 0
            continue
        if c == "|":
            top = frames[-1]
            top[0], top[1] = max(top[0], top[1]), 0
            i += 1
            last = 0
            continue
        if c == ")" and len(frames) > 1:
            best, cur = frames.pop()
            last = max(best, cur, 1)
            frames[-1][1] += last
            i += 1
            continue
        if c == "{":
            m = _QUANTIFIER.match(pattern, i)
            if m is not None:
                low, high = int(m.group(1)), m.group(2)
                times = int(high) if high else low
                times = max(times, 1)
                frames[-1][1] += last * (times - 1)
                last *= times
                bounded = True
                i = m.end()
                continue
        if c in "*+?":
            i += 1
            continue
        last = 1
        frames[-1][1] += 1
        i += 1
    while len(frames) > 1:  # unbalanced: close what is open (the validator reports the syntax error)
        best, cur = frames.pop()
        frames[-1][1] += max(best, cur)
    return max(frames[0]) if bounded else 0


def check_shape(shape: Shape, limits: SchemaLimits) -> None:
    """SchemaProblem naming the first limit `shape` passes."""
    for measured, limit, what, key in (
        (shape.bytes, limits.max_bytes, "bytes of JSON", "max_schema_bytes"),
        (shape.depth, limits.max_depth, "levels of nesting", "max_schema_depth"),
        (shape.properties, limits.max_properties, "property definitions", "max_schema_properties"),
    ):
        if measured > limit:
            raise SchemaProblem(
                f"the schema has {measured} {what}; the limit is {limit} (limits.{key}): send a smaller schema",
                limit=key,
                measured=measured,
                allowed=limit,
            )
