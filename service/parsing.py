"""Turn model text into JSON: tolerate code fences, surrounding prose and near-miss syntax."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import json_repair

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Levels of arrays and objects an answer may have: pydantic, which writes our responses, stops at 255 levels of
# the answer wherever it sits in them; orjson (what goes upstream) at 254.
MAX_OUTPUT_DEPTH = 250

# Strict: NaN and Infinity are not JSON; an answer holding one would validate as a number and leave as null.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


class OutputNotJSON(ValueError):
    """The model's text holds no JSON value we can recover."""


@dataclass(frozen=True, slots=True)
class Parsed:
    value: Any
    repaired: bool


def parse_output(text: str, max_repair_chars: int | None = None) -> Parsed:
    """The first JSON object/array in `text`; repaired with json-repair when it is broken but close (and, with
    `max_repair_chars`, no longer than that: json-repair is pure Python and superlinear on broken input).
    A value no JSON response can carry (NaN, Infinity, a lone surrogate, nesting deeper than
    `MAX_OUTPUT_DEPTH`) is no answer either."""
    try:
        parsed = _parse(text, max_repair_chars)
    except RecursionError:  # the C parser and json-repair both recurse per nesting level
        raise OutputNotJSON("the output is nested too deeply to parse") from None
    if problem := _unsendable(parsed.value):
        raise OutputNotJSON(f"the output holds {problem}, which JSON cannot carry")
    return parsed


def _unsendable(value: Any) -> str | None:
    """What in `value` a UTF-8 JSON response cannot hold, or None (iterative: any depth)."""
    stack = [(value, 1)]  # (item, the level it would be at as an array or object: the outermost is 1)
    while stack:
        item, level = stack.pop()
        if level > MAX_OUTPUT_DEPTH and isinstance(item, dict | list):
            return f"nesting deeper than {MAX_OUTPUT_DEPTH} levels of arrays and objects"
        if isinstance(item, float) and not math.isfinite(item):
            return f"the number {item}"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone surrogate in a string"
        elif isinstance(item, dict):
            stack.extend((key, level) for key in item)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return None


def _parse(text: str, max_repair_chars: int | None) -> Parsed:
    candidate = text.strip()
    if fence := _FENCE.search(candidate):
        candidate = fence.group(1).strip()
    try:
        return Parsed(_DECODER.decode(candidate), repaired=False)
    except ValueError:
        pass
    start = _first_bracket(candidate)
    if start is None:
        raise OutputNotJSON("the output contains no JSON object")
    try:
        value, _ = _DECODER.raw_decode(candidate, start)  # leading/trailing prose
        return Parsed(value, repaired=False)
    except ValueError:
        pass
    if max_repair_chars is not None and len(candidate) - start > max_repair_chars:
        raise OutputNotJSON(f"the output is not valid JSON, and at {len(candidate) - start} characters too long "
                            f"to repair (limit {max_repair_chars})")  # fmt: skip
    try:
        repaired = json_repair.loads(candidate[start:])
    except (ValueError, RecursionError):  # json-repair turns its own RecursionError into a ValueError
        raise OutputNotJSON("the output is not valid JSON and could not be repaired") from None
    if not isinstance(repaired, dict | list) or repaired in ({}, []):
        raise OutputNotJSON("the output is not valid JSON and could not be repaired")
    return Parsed(repaired, repaired=True)


def _first_bracket(text: str) -> int | None:
    positions = [p for p in (text.find("{"), text.find("[")) if p >= 0]
    return min(positions) if positions else None


def dumps_compact(value: Any) -> str:
    """JSON without pretty-printing whitespace (what we show models in examples and ask of them)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
