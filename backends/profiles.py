"""Engine profiles: what each structured-output engine enforces of a JSON Schema.

A backend's `schema_dialect` names its profile. A schema that uses something the engine drops or rejects
is not sent as `response_format`: the pipeline degrades it to JSON mode and enforces it by validation and
re-ask instead (pydantic-ai keeps the same knowledge per model as `ModelProfile`).
"""

from __future__ import annotations

from typing import Any, Literal

SchemaDialect = Literal["openai_strict", "vllm", "llamacpp", "full"]


# The multiplicative repetition penalty (CTRL's; 1 = none) each engine takes in a chat completion's body. OpenAI's
# API has only additive frequency/presence penalties, which did not stop a small model's loops (measured: README,
# request flow), and refuses unknown fields: hosted backends get none.
REPETITION_PENALTY_PARAM: dict[str, str] = {"vllm": "repetition_penalty", "llamacpp": "repeat_penalty"}


def repetition_penalty_param(kind: str) -> str | None:
    """The body field of a repetition penalty on a backend of `kind`; None where the API has none."""
    return REPETITION_PENALTY_PARAM.get(kind)


def default_dialect(kind: str) -> SchemaDialect:
    """The profile a backend kind gets unless configured: OpenAI's strict mode, vLLM's or llama.cpp's grammars."""
    return {"openai": "openai_strict", "llamacpp": "llamacpp"}.get(kind, "vllm")  # type: ignore[return-value]


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
    # vLLM with xgrammar (what `extraction vllm up` starts): its converter rejects or drops these (vLLM's own
    # `has_xgrammar_unsupported_json_features` lists multipleOf, uniqueItems, contains, min/maxContains,
    # patternProperties, propertyNames), and has no conditionals, negation or dependencies.
    "vllm": frozenset(
        {
            "not",
            "if",
            "then",
            "else",
            "dependentRequired",
            "dependentSchemas",
            "unevaluatedProperties",
            "unevaluatedItems",
            "$dynamicRef",
            "propertyNames",
            "patternProperties",
            "multipleOf",
            "uniqueItems",
            "contains",
            "minContains",
            "maxContains",
        }
    ),
    "full": frozenset(),
}


# llama.cpp's json-schema-to-grammar (common/json-schema-to-grammar.cpp) lacks the same keywords as xgrammar: no
# conditionals, negation, dependencies or property-name rules; `oneOf` becomes `anyOf` (validation enforces
# exactly one), an unsupported `pattern` is accepted as any string with a warning (validation enforces it).
UNSUPPORTED["llamacpp"] = UNSUPPORTED["vllm"]

# String formats each engine enforces; another `format` would be dropped (xgrammar) or rejected (OpenAI).
FORMATS: dict[str, frozenset[str]] = {
    "openai_strict": frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}),
    "vllm": frozenset(
        {
            "email",
            "date",
            "time",
            "date-time",
            "duration",
            "ipv4",
            "ipv6",
            "hostname",
            "uuid",
            "uri",
            "uri-reference",
            "uri-template",
            "json-pointer",
            "relative-json-pointer",
        }
    ),  # fmt: skip
    "llamacpp": frozenset({"date", "time", "date-time", "uuid"}),
}
# OpenAI's documented limits for strict schemas: object nesting, properties, enum values.
OPENAI_MAX_NESTING, OPENAI_MAX_PROPERTIES, OPENAI_MAX_ENUM_VALUES = 10, 5000, 1000


def _is_object(node: dict[str, Any]) -> bool:
    """A subschema that describes an object: `type: object` (alone or among others) or `properties`."""
    kind = node.get("type")
    return isinstance(node.get("properties"), dict) or kind == "object" or (isinstance(kind, list) and "object" in kind)


def dialect_gaps(schema: dict[str, Any], dialect: str) -> list[str]:
    """Why `dialect`'s engine cannot enforce `schema` (empty list: it can)."""
    unsupported = UNSUPPORTED.get(dialect, frozenset())
    formats = FORMATS.get(dialect)
    gaps: list[str] = []
    totals = {"properties": 0, "enum": 0, "nesting": 0}
    if dialect == "openai_strict" and schema.get("type") != "object":
        gaps.append("root must be an object")

    def walk(node: Any, path: str, objects: int = 0) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}/{i}", objects)
            return
        if not isinstance(node, dict):
            return
        for key in sorted(unsupported & node.keys()):
            gaps.append(f"{path or '/'}: keyword {key!r}")
        if formats is not None and isinstance(node.get("format"), str) and node["format"] not in formats:
            gaps.append(f"{path or '/'}: format {node['format'][:40]!r}")
        if dialect == "vllm" and ("pattern" in node or "format" in node) and node.keys() & {"minLength", "maxLength"}:
            gaps.append(f"{path or '/'}: a pattern or format with length bounds (xgrammar drops the bounds)")
        if isinstance(node.get("properties"), dict):
            objects += 1
            totals["properties"] += len(node["properties"])
            totals["nesting"] = max(totals["nesting"], objects)
        if isinstance(node.get("enum"), list):
            totals["enum"] += len(node["enum"])
        if dialect == "openai_strict" and _is_object(node):
            # Every object, one without `properties` too: strict mode needs its keys closed and all required.
            if node.get("additionalProperties") is not False:
                gaps.append(f"{path or '/'}: additionalProperties must be false")
            required = node.get("required")
            named = {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
            properties = node.get("properties")
            missing = set(properties if isinstance(properties, dict) else ()) - named
            if missing:
                gaps.append(f"{path or '/'}: every property must be required ({', '.join(sorted(missing))})")
        for key, value in node.items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    walk(sub, f"{path}/{key}/{name}", objects)
            elif key not in ("enum", "const", "examples", "default"):
                walk(value, f"{path}/{key}", objects)

    walk(schema, "")
    if dialect == "openai_strict":
        for what, limit in (
            ("nesting", OPENAI_MAX_NESTING), ("properties", OPENAI_MAX_PROPERTIES), ("enum", OPENAI_MAX_ENUM_VALUES)
        ):  # fmt: skip
            if totals[what] > limit:
                label = {"nesting": "object levels", "enum": "enum values"}.get(what, what)
                gaps.append(f"{totals[what]} {label} over OpenAI's {limit}")
    return gaps


# Keywords whose absence only widens what a schema accepts. A grammar engine that cannot enforce one can still
# enforce the rest (the structure: keys, types, enums, required); validation and re-ask enforce the dropped
# ones. Not `patternProperties` (beside `additionalProperties: false`, dropping it narrows) nor `$dynamicRef`.
WIDENING = frozenset({
    "multipleOf", "uniqueItems", "contains", "minContains", "maxContains", "propertyNames", "not", "if", "then",
    "else", "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems",
})  # fmt: skip
GRAMMAR_DIALECTS = frozenset({"vllm", "llamacpp"})
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def relaxed(schema: dict[str, Any], dialect: str) -> tuple[dict[str, Any], list[str]]:
    """`schema` without the widening keywords (and string formats) `dialect`'s grammar engine cannot enforce,
    and what was dropped ("/path: keyword"). The result accepts everything `schema` accepts."""
    if dialect not in GRAMMAR_DIALECTS:
        return schema, []
    drop = WIDENING & UNSUPPORTED.get(dialect, frozenset())
    formats = FORMATS.get(dialect)
    dropped: list[str] = []

    def strip(node: Any, path: str) -> Any:
        if isinstance(node, list):
            return [strip(item, f"{path}/{i}") for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in drop:
                dropped.append(f"{path or '/'}: {key}")
            elif key == "format" and formats is not None and isinstance(value, str) and value not in formats:
                dropped.append(f"{path or '/'}: format {value[:40]!r}")
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: strip(sub, f"{path}/{key}/{name}") for name, sub in value.items()}
            elif key in ("enum", "const", "examples", "default"):
                out[key] = value
            else:
                out[key] = strip(value, f"{path}/{key}")
        return out

    return strip(schema, ""), dropped
