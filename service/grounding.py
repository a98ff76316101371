"""Grounding: values a task declares printed in the text are checked against the text, and snapped to it.

A small model copies a printed value with a digit wrong (`51.4` for `51.42`) or scrambles a date while it writes
it as ISO 8601 (`2018-09-18` for `18 JUN 2018`, `2017-05-05` for `05/10/2017`); a valid schema does not catch
either. A task (or an ad-hoc request) names the fields whose value must be one the text prints:

    grounding: {date: date, total: number, "items[].amount": number}

After the answer validates, each such value is looked up among the candidates the text holds (every date it
prints, in each reading the printed form allows; every number). A value found there is kept (`printed`); one that
is not is replaced by a candidate near enough (`snapped`); otherwise it is left as the model gave it
(`not_found`). Nulls are left alone.

- Dates: the nearest reading by edit distance between the ISO strings when it is within two edits (a digit
  miscopied, day and month swapped); of a tie, the reading the document implies (day-first, unless one of its
  four-digit-year dates can only be read month-first), then the one printed first. An ISO date further off is
  replaced by the text's only date, if it prints exactly one.
- Numbers: within one edit of the number as the model wrote it (trailing zeros free), with as many digits
  before the point, the same sign and within 10x, and only when no other printed number is as near. A zero is
  left alone (no tax, no discount: meant, not miscopied).

Only for fields the text prints: a value the model must compute or infer (a sum, a due date "net 30") is not
one to ground. The pipeline validates a changed answer again and reports each change in the response.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

from service.schemas.budget import check

GroundingKind = Literal["date", "number"]
KINDS: tuple[str, ...] = get_args(GroundingKind)
MAX_RULES = 64
MAX_VALUE_CHARS = 64  # a longer "date" or number is not one the text prints; not compared
DATE_MAX_EDITS = 2  # a day or month miscopied (2018-09-18 for 2018-06-18) or day and month swapped
_PATH = re.compile(r"^[^.\[\]]+(?:\[\])?(?:\.[^.\[\]]+(?:\[\])?)*$")

# English, Malay, German, French and Spanish month names and abbreviations (lower case, no dots).
_MONTH_WORDS = {
    1: "jan january januari januar janvier enero ene",
    2: "feb february februari februar fev fevrier febrero",
    3: "mar march mac marz maerz mars marzo",
    4: "apr april avr avril abril abr",
    5: "may mei mai mayo",
    6: "jun june juni juin junio",
    7: "jul july julai juli juillet julio",
    8: "aug august ogos ogo aout agosto ago",
    9: "sep sept september septembre septiembre",
    10: "oct october oktober okt octobre octubre",
    11: "nov november novembre noviembre",
    12: "dec december disember dis dezember dez decembre diciembre dic",
}
_MONTHS = {word: n for n, words in _MONTH_WORDS.items() for word in words.split()}
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_SEP = r"\s*([-/.])\s*"
# Not after a letter, digit or separator (v1.13.20 is a version, 1.234.567 a number), nor before more of them.
_NUMERIC_DATE = re.compile(rf"(?<![\w.,/-])(\d{{1,4}}){_SEP}(\d{{1,2}}){_SEP}(\d{{2,4}})(?![\d/-]|[.,]\d)")
_DAY_MONTH_YEAR = re.compile(
    rf"(?<![\w])(\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?[\s\-/.,]*({_MONTH_RE})\.?[\s\-/.,']*(\d{{4}}|\d{{2}})(?!\d)", re.I
)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<![\w])({_MONTH_RE})\.?[\s\-/.]*(\d{{1,2}})(?:st|nd|rd|th)?[\s,.]+(\d{{4}}|'?\d{{2}})(?!\d)", re.I
)
_CJK_DATE = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A number as printed: digits with "." "," or "'" between groups (1,234.50 / 1.234,50 / 1'234.50 / 12,50 /
# RM9.00 / Total,12.50), a sign (- or the Unicode minus) before; grouped by spaces (1 234,50) read separately too.
_MINUS = "-\u2212"
_NUMBER = re.compile(rf"(?<![\d.'])[{_MINUS}]?\d+(?:[.,']\d+)*(?!\d)")
_SPACED = re.compile(rf"(?<![\d.,'])[{_MINUS}]?\d{{1,3}}(?:[ \u00a0\u202f]\d{{3}})+(?:[.,]\d+)?(?![\d.,])")
CHECK_EVERY = 256  # matches between looks at the time budget while scanning a text


@dataclass(frozen=True, slots=True)
class Change:
    """One grounded value the text did not print, replaced by the one it does."""

    path: str
    model_value: Any
    value: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "model_value": self.model_value, "value": self.value}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What grounding did with one value: `printed`, `snapped` or `not_found`."""

    rule: str
    outcome: Literal["printed", "snapped", "not_found"]


@dataclass(frozen=True, slots=True)
class Grounded:
    data: Any
    changes: list[Change]
    outcomes: list[Outcome]


def check_rules(rules: Mapping[str, str]) -> dict[str, str]:
    """The rules as given, or ValueError saying which is malformed (for task files and request bodies)."""
    if len(rules) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} grounding rules")
    for path, kind in rules.items():
        if not _PATH.match(path):
            raise ValueError(
                f"grounding path {path!r}: property names joined by '.', '[]' after an array (e.g. 'items[].amount')"
            )
        if kind not in KINDS:
            raise ValueError(f"grounding kind {kind!r} for {path!r}: one of {', '.join(KINDS)}")
    return dict(rules)


_OPAQUE = ("$ref", "$dynamicRef", "anyOf", "oneOf", "allOf", "if")  # past these a path is not followed
_TYPES = {"date": {"string"}, "number": {"number", "integer"}}


def _steps(path: str) -> list[tuple[str, bool]]:
    """A rule's path as (property name, whether it is an array whose every item is meant) per step."""
    return [(step[:-2], True) if step.endswith("[]") else (step, False) for step in path.split(".")]


def _followed(node: Any) -> dict[str, Any] | None:
    """A subschema a path can be followed into (None: not a plain one: $ref, a combinator, a boolean)."""
    return node if isinstance(node, dict) and not any(k in node for k in _OPAQUE) else None


def _declared(node: dict[str, Any]) -> set[str] | None:
    """The types a subschema declares (None: it does not say)."""
    kind = node.get("type")
    return None if kind is None else set(kind if isinstance(kind, list) else [kind])


def check_paths(rules: Mapping[str, str], schema: Any) -> None:
    """ValueError when a rule's path cannot name a value of its kind in `schema`: a property the schema does
    not declare, an array step on a non-array, a date rule on a non-string (a typo would silently switch
    grounding off). Paths through $ref, combinators or undeclared properties are taken on trust."""
    for path, kind in rules.items():
        node = _followed(schema)
        for name, each in _steps(path):
            properties = node.get("properties") if node is not None else None
            if not isinstance(properties, dict):
                node = None  # not followed, or an object with no declared properties: any name may be there
                break
            if name not in properties:
                raise ValueError(f"grounding path {path!r}: the schema has no property {name!r}")
            node = _followed(properties[name])
            if each and node is not None:
                if (types := _declared(node)) is not None and "array" not in types:
                    raise ValueError(f"grounding path {path!r}: {name!r} is not an array in the schema")
                node = _followed(node.get("items"))
        if node is not None and (types := _declared(node)) is not None and not _TYPES[kind] & types:
            raise ValueError(f"grounding path {path!r}: a {kind} rule on a value of type {node['type']}")


# ---------------------------------------------------------------------------------------------- candidates


def _year(text: str) -> int:
    text = text.lstrip("'")
    if len(text) == 4:
        return int(text)
    year = int(text)
    return 2000 + year if year < 70 else 1900 + year  # the POSIX pivot for two-digit years


def _valid(year: int, month: int, day: int) -> str | None:
    try:
        return date(year, month, day).isoformat() if 1000 <= year <= 9999 else None
    except ValueError:
        return None


def _fold(text: str) -> str:
    """Accents off (März -> Marz, février -> fevrier, août -> aout), the length kept where one letter stays one."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@dataclass(frozen=True, slots=True)
class _Printed:
    """One date printed in the text: its readings (ISO) in preference order, and which order it shows."""

    start: int
    readings: tuple[str, ...]
    day_first_only: bool = False
    month_first_only: bool = False


def _checked(matches: Iterator[re.Match[str]]) -> Iterator[re.Match[str]]:
    """The matches, looking at the time budget every CHECK_EVERY of them."""
    for k, m in enumerate(matches):
        if k % CHECK_EVERY == 0:
            check()
        yield m


def _printed_dates(text: str) -> Iterator[_Printed]:
    for m in _checked(_NUMERIC_DATE.finditer(text)):
        a, sep1, b, sep2, c = m.groups()
        if len(a) == 4:  # 2018-06-18, 2018/6/18
            if len(c) <= 2 and (iso := _valid(int(a), int(b), int(c))):
                yield _Printed(m.start(), (iso,))
            continue
        if len(a) > 2 or len(c) == 3 or sep1 != sep2:
            continue
        dmy, mdy = _valid(_year(c), int(b), int(a)), _valid(_year(c), int(a), int(b))
        readings = tuple(dict.fromkeys(r for r in (dmy, mdy) if r))
        if readings:
            # Only a four-digit year is evidence of the document's order: 12.30.45 is likelier a time.
            evidence = len(c) == 4
            yield _Printed(m.start(), readings, evidence and mdy is None, evidence and dmy is None)
    folded = _fold(text)
    for m in _checked(_DAY_MONTH_YEAR.finditer(folded)):
        day, month, printed_year = m.groups()
        if iso := _valid(_year(printed_year), _MONTHS[month.lower()], int(day)):
            yield _Printed(m.start(), (iso,))
    for m in _checked(_MONTH_DAY_YEAR.finditer(folded)):
        month, day, printed_year = m.groups()
        if iso := _valid(_year(printed_year), _MONTHS[month.lower()], int(day)):
            yield _Printed(m.start(), (iso,))
    for m in _checked(_CJK_DATE.finditer(text)):
        if iso := _valid(int(m.group(1)), int(m.group(2)), int(m.group(3))):
            yield _Printed(m.start(), (iso,))


@dataclass(frozen=True, slots=True)
class Dates:
    """The dates a text prints: `readings` (ISO, in preference order: each printed date's likelier reading
    first, in document order, then the other readings) and `distinct`, the likelier reading of each date."""

    readings: list[str]
    likely: frozenset[str]
    distinct: list[str]


def find_dates(text: str) -> Dates:
    """The dates `text` prints. Ambiguous day/month forms (10/02/2017) are read day-first unless a date in the
    text can only be read month-first (12/28/2017) and none only day-first."""
    printed = sorted(_printed_dates(text), key=lambda p: p.start)
    month_first = any(p.month_first_only for p in printed) and not any(p.day_first_only for p in printed)
    ordered = [p.readings[::-1] if month_first else p.readings for p in printed]
    first = [r[0] for r in ordered]
    others = [x for r in ordered for x in r[1:]]
    return Dates(list(dict.fromkeys([*first, *others])), frozenset(first), list(dict.fromkeys(first)))


def _readings(printed: str) -> list[Decimal]:
    """The values a printed number can have: 1,234.50 and 1.234,50 one each; 1,234 and 2.200 two (grouped
    thousands, or three decimals); 12,50 a decimal comma; groups that are not thousands (10.02.2017) none."""
    sign = "-" if printed[0] in _MINUS else ""
    digits = printed.lstrip(_MINUS).replace("'", "")  # 1'234.50: the apostrophe only ever groups
    if "'" in printed and not re.fullmatch(r"\d{1,3}(?:'\d{3})+(?:[.,]\d+)?", printed.lstrip(_MINUS)):
        return []
    seps = [c for c in digits if c in ".,"]
    if not seps:
        return [Decimal(sign + digits)]
    last = seps[-1]
    head, _, tail = digits.rpartition(last)
    groups = re.split(r"[.,]", head)
    thousands = len(groups) == 1 or all(len(g) == 3 for g in groups[1:])
    if len(set(seps)) == 2:  # the last separator is the decimal one; the other groups thousands
        if seps.count(last) > 1 or not thousands:
            return []
        return [Decimal(sign + "".join(groups) + "." + tail)]
    if len(seps) > 1:  # 1,234,567 or 1.234.567: grouped, no decimals
        parts = digits.split(last)
        return [Decimal(sign + "".join(parts))] if all(len(g) == 3 for g in parts[1:]) else []
    values = [Decimal(sign + head + "." + tail)]
    if len(tail) == 3:
        values.append(Decimal(sign + head + tail))
    return values


def number_candidates(text: str) -> list[Decimal]:
    """Every number the text prints, in document order (grouped forms read as one number; space-grouped ones,
    1 234,50, both as one and as the numbers they could also be)."""
    found = [n for m in _checked(_NUMBER.finditer(text)) for n in _readings(m.group(0))]
    spaced = (re.sub(r"[ \u00a0\u202f]", "", m.group(0)) for m in _checked(_SPACED.finditer(text)))
    return list(dict.fromkeys([*found, *(n for s in spaced for n in _readings(s))]))


# ---------------------------------------------------------------------------------------------- matching


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _distance(a: str, b: str, at_most: int) -> int:
    """edit_distance under the caller's time budget (service.schemas.budget); a distance beyond `at_most` may be
    reported as at_most + 1 (when the length difference alone rules it out)."""
    check()
    if abs(len(a) - len(b)) > at_most:
        return at_most + 1
    return edit_distance(a, b)


def _plain(n: Decimal) -> str:
    """A number's digits as it would be printed with no trailing zeros (51.40 -> 51.4, 7E+1 -> 70)."""
    text = format(n.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _snap_date(value: Any, dates: Dates) -> tuple[str, Any]:
    if not isinstance(value, str) or not dates.readings or len(value) > MAX_VALUE_CHARS:
        return "not_found", value
    if value in dates.readings:
        return "printed", value
    # Nearest; of a tie, a likelier reading, then the one printed first (the list's order).
    ranked = [(_distance(value, c, DATE_MAX_EDITS), c not in dates.likely, k, c) for k, c in enumerate(dates.readings)]
    distance, _, _, best = min(ranked)
    if distance <= DATE_MAX_EDITS:
        return "snapped", best
    if len(dates.distinct) == 1 and _ISO_DATE.match(value):
        return "snapped", dates.distinct[0]  # far from it, but a date, and the one date the text prints
    return "not_found", value


def _number_forms(n: Decimal) -> set[str]:
    return {format(n, "f"), _plain(n)}


def _integer_digits(n: Decimal) -> int:
    return len(format(abs(n).to_integral_value(rounding="ROUND_DOWN"), "f"))


def _near_number(wanted: Decimal, written: set[str], printed: Decimal) -> bool:
    """One edit from how the model wrote it (trailing zeros free), with as many integer digits, the same sign and
    within 10x: a digit miscopied, or one lost or added after the point (51.4 / 51.42; not 5 / 15, 7.42 / 0.42)."""
    if (
        printed == 0
        or not Decimal("0.1") < wanted / printed < 10
        or _integer_digits(wanted) != _integer_digits(printed)
    ):
        return False  # another sign, magnitude (7.42 is not 0.42) or count of integer digits
    return min(_distance(a, b, 1) for a in written for b in _number_forms(printed)) <= 1


def _snap_number(value: Any, candidates: list[Decimal]) -> tuple[str, Any]:
    if isinstance(value, bool) or not isinstance(value, int | float) or value == 0:
        return "not_found", value  # a zero is a deliberate answer (no tax, no discount), not a miscopy
    try:
        wanted = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return "not_found", value
    if not wanted.is_finite() or len(repr(value)) > MAX_VALUE_CHARS:
        return "not_found", value
    if any(c == wanted for c in candidates):
        return "printed", value
    written = {repr(value), *_number_forms(wanted)}
    near = {c for c in candidates if _near_number(wanted, written, c)}
    if len(near) != 1:
        return "not_found", value  # nothing near enough, or several as near: leave the model's reading
    (snapped,) = near
    return "snapped", int(snapped) if isinstance(value, int) and snapped == snapped.to_integral() else float(snapped)


# ---------------------------------------------------------------------------------------------- answers

Step = str | int


def _locations(data: Any, path: str) -> Iterator[tuple[list[Step], Any]]:
    """(keys from the root, value) for each value `path` names in `data` (absent ones are skipped)."""
    frontier: list[tuple[list[Step], Any]] = [([], data)]
    for name, each in _steps(path):
        following: list[tuple[list[Step], Any]] = []
        for keys, node in frontier:
            if not isinstance(node, dict) or name not in node:
                continue
            child = node[name]
            if not each:
                following.append(([*keys, name], child))
            elif isinstance(child, list):
                following.extend(([*keys, name, k], item) for k, item in enumerate(child))
        frontier = following
    yield from frontier


def _where(keys: list[Step]) -> str:
    """Keys from the root as a change's `path`: items[2].amount (keys_of reads it back)."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def keys_of(where: str) -> list[Step]:
    """A change's `path` (items[2].amount) as keys from the root: ["items", 2, "amount"]."""
    return [int(index) if index else name for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", where)]


def replaced(data: Any, keys: list[Step], value: Any) -> Any:
    """`data` with the value at `keys` replaced: the containers on the way copied (shallow), the rest shared."""
    root = copy.copy(data)
    node = root
    for key in keys[:-1]:
        child = copy.copy(node[key])
        node[key] = child
        node = child
    node[keys[-1]] = value
    return root


def ground(data: Any, rules: Mapping[str, str], text: str) -> Grounded:
    """`data` with its grounded values checked against `text` (changed values in a copy: `data` is not touched)."""
    if not rules:
        return Grounded(data, [], [])
    dates = find_dates(text) if "date" in rules.values() else Dates([], frozenset(), [])
    numbers = number_candidates(text) if "number" in rules.values() else []
    out = data
    changes: list[Change] = []
    outcomes: list[Outcome] = []
    for rule, kind in rules.items():
        for keys, value in list(_locations(data, rule)):
            if value is None:
                continue
            outcome, new = _snap_date(value, dates) if kind == "date" else _snap_number(value, numbers)
            outcomes.append(Outcome(rule, outcome))  # type: ignore[arg-type]
            if outcome == "snapped":
                out = replaced(out, keys, new)
                changes.append(Change(_where(keys), value, new))
    return Grounded(out, changes, outcomes)
