"""JSON Schema handling: check schemas, compile validators once, validate outputs.

What each structured-output engine can enforce is the backend's business: `backends.profiles`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError

_FORMAT_CHECKER = FormatChecker()
MAX_ISSUES = 20


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation error: where (JSON path) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


def schema_errors(schema: Any) -> str | None:
    """None if `schema` is a usable draft 2020-12 object schema, else why not."""
    if not isinstance(schema, dict):
        return "schema must be a JSON object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return f"at {where}: {e.message}"
    return None


class ValidatorCache:
    """Compiled validators keyed by the schema's canonical JSON; bounded so ad-hoc schemas cannot grow it."""

    def __init__(self, max_size: int = 512) -> None:
        self._cache: OrderedDict[str, Draft202012Validator] = OrderedDict()
        self._max = max_size

    def get(self, schema: dict[str, Any]) -> Draft202012Validator:
        key = schema_key(schema)
        validator = self._cache.get(key)
        if validator is None:
            validator = Draft202012Validator(schema, format_checker=_FORMAT_CHECKER)
            self._cache[key] = validator
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return validator


_KEYS: OrderedDict[int, tuple[dict[str, Any], str]] = OrderedDict()


def schema_key(schema: dict[str, Any]) -> str:
    """A content hash of the schema. A task's schema is the same object on every request, so the hash is
    remembered by identity (the entry holds the object, so its id cannot be reused while cached)."""
    entry = _KEYS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    key = hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    _KEYS[id(schema)] = (schema, key)
    if len(_KEYS) > 256:
        _KEYS.popitem(last=False)
    return key


def validate(instance: Any, validator: Draft202012Validator) -> list[Issue]:
    """All errors (at most MAX_ISSUES), shallowest first; empty when valid."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    return [Issue(e.json_path, e.message) for e in errors[:MAX_ISSUES]]
