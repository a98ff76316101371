"""The subschemas of a schema, as its draft defines them (only keywords the draft knows are followed).

Paths are URI fragments with JSON pointers (`#/properties/a/items`), as in validation errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from service.schemas.drafts import Draft

ONE = frozenset({
    "additionalItems", "additionalProperties", "contains", "else", "if", "not", "propertyNames", "then",
    "unevaluatedItems", "unevaluatedProperties",
})  # fmt: skip
MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
BY_NAME = frozenset({"properties", "patternProperties", "dependentSchemas", "dependencies", "$defs", "definitions"})
CONTAINERS = frozenset({"$defs", "definitions"})  # hold subschemas without applying them; in every draft
# Applied to the very value being validated (not to a part of it): a cycle of these never ends.
IN_PLACE = frozenset({"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies"})


class Child(NamedTuple):
    path: str
    schema: Any
    in_place: bool


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def children(node: dict[str, Any], draft: Draft, path: str) -> Iterator[Child]:
    """The subschemas directly under `node` (at `path`)."""
    for key, value in node.items():
        if key not in CONTAINERS and not draft.knows(key):
            continue
        here = f"{path}/{escape(key)}"
        in_place = key in IN_PLACE
        if key in ONE or (key == "items" and not isinstance(value, list)):
            yield Child(here, value, in_place)
        elif (key in MANY or key == "items") and isinstance(value, list):
            for i, sub in enumerate(value):
                yield Child(f"{here}/{i}", sub, in_place)
        elif key in BY_NAME and isinstance(value, dict):
            for name, sub in value.items():
                if not (key == "dependencies" and isinstance(sub, list)):  # a list names required properties
                    yield Child(f"{here}/{escape(str(name))}", sub, in_place)


def subschemas(schema: dict[str, Any], draft: Draft) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, node) for the root and every object subschema below it, references not followed."""
    stack: list[tuple[str, Any]] = [("#", schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            yield path, node
            stack.extend(reversed([(c.path, c.schema) for c in children(node, draft, path)]))
