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
  miscopied, day and month swapped); else, if the text prints one date only, that date. Ties go to the reading
  the document implies (day-first, unless a date in it can only be read month-first), then to the earlier date.
- Numbers: within one edit of the number as the model wrote it (a digit wrong, missing or extra; trailing zeros
  free), of the same order of magnitude, and only when no other printed number is as near.

Only for fields the text prints: a value the model must compute or infer (a sum, a due date "net 30") is not
one to ground. The pipeline validates a changed answer again and reports each change in the response.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from service.schemas.budget import check

GroundingKind = Literal["date", "number"]
KINDS: tuple[str, ...] = ("date", "number")
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
_SEP = r"\s*[-/.]\s*"
_NUMERIC_DATE = re.compile(rf"(?<![\d.,/-])(\d{{1,4}}){_SEP}(\d{{1,2}}){_SEP}(\d{{2,4}})(?![\d/-]|[.,]\d)")
_DAY_MONTH_YEAR = re.compile(
    rf"(?<![\w])(\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?[\s\-/.,]*({_MONTH_RE})\.?[\s\-/.,']*(\d{{4}}|\d{{2}})(?!\d)", re.I
)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<![\w])({_MONTH_RE})\.?[\s\-/.]*(\d{{1,2}})(?:st|nd|rd|th)?[\s,.]+(\d{{4}}|'?\d{{2}})(?!\d)", re.I
)
_CJK_DATE = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
# A number as printed: digits with "." or "," between groups (1,234.50 / 1.234,50 / 12,50 / RM9.00).
_NUMBER = re.compile(r"(?<![\d.,])-?\d+(?:[.,]\d+)*(?!\d)")


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


@dataclass(frozen=True, slots=True)
class _Printed:
    """One date printed in the text: its readings (ISO) in preference order, and which order it allows."""

    start: int
    readings: tuple[str, ...]
    day_first_only: bool = False
    month_first_only: bool = False


def _printed_dates(text: str) -> Iterator[_Printed]:
    for m in _NUMERIC_DATE.finditer(text):
        a, b, c = m.groups()
        if len(a) == 4:  # 2018-06-18, 2018/6/18
            if len(c) <= 2 and (iso := _valid(int(a), int(b), int(c))):
                yield _Printed(m.start(), (iso,))
            continue
        if len(a) > 2 or len(c) == 3:
            continue
        dmy, mdy = _valid(_year(c), int(b), int(a)), _valid(_year(c), int(a), int(b))
        readings = tuple(dict.fromkeys(r for r in (dmy, mdy) if r))
        if readings:
            yield _Printed(m.start(), readings, day_first_only=mdy is None, month_first_only=dmy is None)
    for m in _DAY_MONTH_YEAR.finditer(text):
        day, month, printed_year = m.groups()
        if iso := _valid(_year(printed_year), _MONTHS[month.lower()], int(day)):
            yield _Printed(m.start(), (iso,))
    for m in _CJK_DATE.finditer(text):
        if iso := _valid(int(m.group(1)), int(m.group(2)), int(m.group(3))):
            yield _Printed(m.start(), (iso,))
    for m in _MONTH_DAY_YEAR.finditer(text):
        month, day, printed_year = m.groups()
        if iso := _valid(_year(printed_year), _MONTHS[month.lower()], int(day)):
            yield _Printed(m.start(), (iso,))


def date_candidates(text: str) -> list[str]:
    """Every date the text prints, as ISO strings, most likely reading first: each printed date's readings in
    document order, day-first before month-first unless a date in the text can only be read month-first."""
    return _dates(text)[0]


def _dates(text: str) -> tuple[list[str], list[str]]:
    """(every reading, most likely first; the most likely reading of each distinct printed date)."""
    printed = sorted(_printed_dates(text), key=lambda p: p.start)
    month_first = any(p.month_first_only for p in printed) and not any(p.day_first_only for p in printed)
    ordered = [p.readings[::-1] if month_first else p.readings for p in printed]
    distinct = list(dict.fromkeys(readings for readings in ordered))
    return list(dict.fromkeys(r for readings in ordered for r in readings)), [r[0] for r in distinct]


def _readings(printed: str) -> list[Decimal]:
    """The values a printed number can have: 1,234.50 and 1.234,50 one each; 1,234 and 2.200 two (grouped
    thousands, or three decimals); 12,50 a decimal comma; groups that are not thousands (10.02.2017) none."""
    sign, digits = ("-", printed[1:]) if printed.startswith("-") else ("", printed)
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
    """Every number the text prints, in document order (grouped forms read as one number)."""
    return list(dict.fromkeys(n for m in _NUMBER.finditer(text) for n in _readings(m.group(0))))


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


def _distance(a: str, b: str, at_most: int | None = None) -> int:
    """edit_distance under the caller's time budget (service.schemas.budget); `at_most`: any distance beyond it
    may be reported as at_most + 1 (the length difference alone rules it out)."""
    check()
    if at_most is not None and abs(len(a) - len(b)) > at_most:
        return at_most + 1
    return edit_distance(a, b)


def _plain(n: Decimal) -> str:
    """A number's digits as it would be printed with no trailing zeros (51.40 -> 51.4, 7E+1 -> 70)."""
    text = format(n.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _snap_date(value: Any, dates: tuple[list[str], list[str]]) -> tuple[str, Any]:
    candidates, printed = dates
    if not isinstance(value, str) or not candidates or len(value) > MAX_VALUE_CHARS:
        return "not_found", value
    if value in candidates:
        return "printed", value
    best = min(candidates, key=lambda c: _distance(value, c))  # min keeps the first (most likely) of a tie
    if edit_distance(value, best) <= DATE_MAX_EDITS:
        return "snapped", best
    if len(printed) == 1:  # far from it, but the one date the text prints: in its most likely reading
        return "snapped", printed[0]
    return "not_found", value


def _number_distance(written: str, printed: Decimal) -> int:
    """Edits between the number as the model wrote it (`repr`: 51.4, 12.0, 7) and as the text prints it, with or
    without its trailing zeros (51.42; 12.90 or 12.9), whichever is fewer."""
    return min(_distance(written, format(printed, "f"), 1), _distance(written, _plain(printed), 1))


def _same_magnitude(a: Decimal, b: Decimal) -> bool:
    if a == 0 or b == 0:
        return abs(a - b) < 1
    return Decimal("0.1") < a / b < 10  # a negative ratio (signs differ) fails too


def _snap_number(value: Any, candidates: list[Decimal]) -> tuple[str, Any]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not_found", value
    try:
        wanted = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:  # inf, nan
        return "not_found", value
    if any(c == wanted for c in candidates):
        return "printed", value
    # One edit away, the same order of magnitude (51.4 is not 514 with its point lost).
    written = repr(value)
    near = {c for c in candidates if _same_magnitude(wanted, c) and _number_distance(written, c) <= 1}
    if len(near) != 1:
        return "not_found", value  # nothing near enough, or several as near: leave the model's reading
    (snapped,) = near
    return "snapped", int(snapped) if isinstance(value, int) and snapped == snapped.to_integral() else float(snapped)


# ---------------------------------------------------------------------------------------------- answers


def _locations(data: Any, path: str) -> Iterator[tuple[Any, str | int, str]]:
    """(container, key, concrete path) for each value `path` names in `data` (absent ones are skipped)."""
    frontier: list[tuple[Any, str]] = [(data, "")]
    steps = path.split(".")
    for i, step in enumerate(steps):
        name, each = (step[:-2], True) if step.endswith("[]") else (step, False)
        last = i == len(steps) - 1
        following: list[tuple[Any, str]] = []
        for node, where in frontier:
            if not isinstance(node, dict) or name not in node:
                continue
            here = f"{where}.{name}" if where else name
            if not each:
                if last:
                    yield node, name, here
                else:
                    following.append((node[name], here))
                continue
            items = node[name]
            if not isinstance(items, list):
                continue
            for k, item in enumerate(items):
                if last:
                    yield items, k, f"{here}[{k}]"
                else:
                    following.append((item, f"{here}[{k}]"))
        frontier = following


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def ground(data: Any, rules: Mapping[str, str], text: str) -> Grounded:
    """`data` with its grounded values checked against `text` (a changed copy; `data` itself is not touched)."""
    if not rules:
        return Grounded(data, [], [])
    out = _copy(data)
    dates = _dates(text) if "date" in rules.values() else ([], [])
    numbers = number_candidates(text) if "number" in rules.values() else []
    changes: list[Change] = []
    outcomes: list[Outcome] = []
    for rule, kind in rules.items():
        for container, key, where in list(_locations(out, rule)):
            value = container[key]
            if value is None:
                continue
            outcome, new = _snap_date(value, dates) if kind == "date" else _snap_number(value, numbers)
            outcomes.append(Outcome(rule, outcome))  # type: ignore[arg-type]
            if outcome == "snapped":
                container[key] = new
                changes.append(Change(where, value, new))
    return Grounded(out if changes else data, changes, outcomes)
