"""A per-thread deadline for schema work, and validators whose every keyword checks it.

Validation time is not bounded by the sizes of the schema and the answer alone: `oneOf` under a recursive
`$ref` evaluates every branch at every level (2^depth), and a backtracking pattern doubles per character. The
pipeline runs that work in a worker thread under `time_budget(seconds)`; `guarded(cls)` is the draft's
validator class with each keyword function wrapped to raise `TooSlow` once the deadline has passed, and
`service.schemas.patterns` gives each regular-expression match the time that is left. A thread cannot be
killed, so the work must stop itself: it does, within one keyword evaluation or one match of the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from service.schemas.problems import clip

_local = threading.local()


class TooSlow(Exception):
    """The work passed its time budget (raised in the thread doing it)."""


@contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Schema work in this block (this thread) stops with `TooSlow` after `seconds`."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = previous


def remaining() -> float | None:
    """Seconds left of this thread's budget (None: no budget)."""
    deadline: float | None = getattr(_local, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


def check() -> None:
    """Raise `TooSlow` if this thread's budget is spent."""
    left = remaining()
    if left is not None and left <= 0:
        raise TooSlow("the time budget is spent")


Keyword = Callable[[Any, Any, Any, Any], Iterable[Any] | None]


def _guard(keyword: Keyword) -> Keyword:
    def guarded_keyword(validator: Any, value: Any, instance: Any, schema: Any) -> Iterable[Any] | None:
        check()
        return keyword(validator, value, instance, schema)

    return guarded_keyword


def _canonical(value: Any) -> Any:
    """A hashable stand-in for a JSON value, equal where JSON Schema calls two values equal: 1 and 1.0 alike,
    `true` and 1 not, objects whatever their key order, arrays in order."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 == 1.0 and hash(1) == hash(1.0)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("other", repr(value))


def unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`uniqueItems` in linear time, checking the budget as it goes: jsonschema's own compares every pair of
    unhashable items (objects, arrays) inside one keyword call, 3 million comparisons for 2,500 objects."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for i, item in enumerate(instance):
        if i % 256 == 0:
            check()
        key = _canonical(item)
        if key in seen:
            # jsonschema's message is the whole array's repr: megabytes for a big one, and the repeat lost in it
            yield ValidationError(f"has non-unique elements: item {i} repeats an earlier one ({clip(repr(item), 80)})")
            return
        seen.add(key)


def additional_items(original: Any) -> Any:
    """`additionalItems` as the drafts define it: it applies only where `items` is an array of schemas. jsonschema's
    own takes a boolean `items` (draft 6 on) for an array and raises TypeError (`len(False)`), so a valid answer to
    `{"items": false, "additionalItems": {...}}` failed as "could not be validated"."""

    def keyword(validator: Any, ai: Any, instance: Any, schema: dict[str, Any]) -> Any:
        if not isinstance(schema.get("items", []), list):
            return
        yield from original(validator, ai, instance, schema)

    return keyword


def multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`multipleOf` on the numbers as JSON writes them: 19.99 is a multiple of 0.01. jsonschema divides the
    binary floats (19.99 / 0.01 = 1998.9999999999998) and refused every amount to the cent but a few. A float is
    taken at its shortest repr (the literal the answer carried), so the check is exact, for any size."""
    if not validator.is_type(instance, "number") or not validator.is_type(divisor, "number") or divisor <= 0:
        return
    try:
        quotient = _exact(instance) / _exact(divisor)
    except (ValueError, OverflowError):  # inf / nan: never from JSON, refused elsewhere
        return
    if quotient.denominator != 1:
        yield ValidationError(f"{clip(repr(instance), 80)} is not a multiple of {clip(repr(divisor), 80)}")


def _exact(number: int | float) -> Fraction:
    return Fraction(repr(number)) if isinstance(number, float) else Fraction(number)


def _mends(cls: type[Validator]) -> dict[str, Any]:
    """The keyword functions that replace jsonschema's in every draft's class."""
    mended: dict[str, Any] = {}
    if "additionalItems" in cls.VALIDATORS:
        mended["additionalItems"] = additional_items(cls.VALIDATORS["additionalItems"])
    if "multipleOf" in cls.VALIDATORS:
        mended["multipleOf"] = multiple_of
    return mended


_FIXED: dict[type[Validator], type[Validator]] = {}


def fixed(cls: type[Validator]) -> type[Validator]:
    """`cls` with jsonschema's keyword bugs mended (`additionalItems` beside a boolean `items`, `multipleOf` on
    decimal divisors), one class per draft; the unguarded validator of a cheap schema. `guarded` includes the same
    mends."""
    if cls not in _FIXED:
        _FIXED[cls] = validators.extend(cls, _mends(cls))  # type: ignore[no-untyped-call]
    return _FIXED[cls]


_GUARDED: dict[type[Validator], type[Validator]] = {}


def guarded(cls: type[Validator]) -> type[Validator]:
    """`cls` with every keyword checking the deadline first (one class per draft, made once).

    Instances must be built on a schema without `$schema` in it: jsonschema picks the class of a subschema
    that declares one by that URI (`validator_for`), which would be the unguarded class.
    """
    if cls not in _GUARDED:
        mended: dict[str, Any] = {"uniqueItems": unique_items, **_mends(cls)}
        wrapped = {name: _guard(mended[name] if name in mended else fn) for name, fn in cls.VALIDATORS.items()}
        _GUARDED[cls] = validators.extend(cls, wrapped)  # type: ignore[no-untyped-call]
    return _GUARDED[cls]
