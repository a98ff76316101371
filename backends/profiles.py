"""Engine profiles: what each structured-output engine enforces of a JSON Schema.

A backend's `schema_dialect` names its profile. A schema that uses something the engine drops or rejects
is not sent as `response_format`: the pipeline degrades it to JSON mode and enforces it by validation and
re-ask instead (pydantic-ai keeps the same knowledge per model as `ModelProfile`).
"""

from __future__ import annotations

from typing import Any, Literal

SchemaDialect = Literal["openai_strict", "vllm", "full"]


def default_dialect(kind: str) -> SchemaDialect:
    """The profile a backend kind gets unless configured: OpenAI's strict mode, or vLLM's grammars."""
    return "openai_strict" if kind == "openai" else "vllm"


# Keywords each structured-output engine rejects or cannot enforce, so a request carrying them would fail
# at the upstream. A schema using one is sent in JSON mode and enforced by our validation + re-ask instead.
UNSUPPORTED: dict[str, frozenset[str]] = {
    "openai_strict": frozenset(
        {
            "allOf",
            "oneOf",
            "not",
            "if",
            "then",
            "else",
            "dependentRequired",
            "dependentSchemas",
            "patternProperties",
            "unevaluatedProperties",
            "unevaluatedItems",
            "propertyNames",
            "contains",
            "$dynamicRef",
            "prefixItems",
        }
    ),
    "vllm": frozenset(
        {
            "not",
            "if",
            "then",
            "else",
            "dependentSchemas",
            "unevaluatedProperties",
            "unevaluatedItems",
            "$dynamicRef",
            "propertyNames",
        }
    ),
    "full": frozenset(),
}


def dialect_gaps(schema: dict[str, Any], dialect: str) -> list[str]:
    """Why `dialect`'s engine cannot enforce `schema` (empty list: it can)."""
    unsupported = UNSUPPORTED.get(dialect, frozenset())
    gaps: list[str] = []
    if dialect == "openai_strict" and schema.get("type") != "object":
        gaps.append("root must be an object")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}/{i}")
            return
        if not isinstance(node, dict):
            return
        for key in sorted(unsupported & node.keys()):
            gaps.append(f"{path or '/'}: keyword {key!r}")
        if dialect == "openai_strict" and "properties" in node:
            if node.get("additionalProperties") is not False:
                gaps.append(f"{path or '/'}: additionalProperties must be false")
            missing = set(node["properties"]) - set(node.get("required", []))
            if missing:
                gaps.append(f"{path or '/'}: every property must be required ({', '.join(sorted(missing))})")
        for key, value in node.items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    walk(sub, f"{path}/{key}/{name}")
            elif key not in ("enum", "const", "examples", "default"):
                walk(value, f"{path}/{key}")

    walk(schema, "")
    return gaps
