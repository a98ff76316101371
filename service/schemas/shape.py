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
    max_repeat: int  # the largest length/count bound, or {m,n} quantifier in a pattern


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
    bounds = [int(n) for m in _QUANTIFIER.finditer(pattern) for n in m.groups() if n]
    return max(bounds, default=0)


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
