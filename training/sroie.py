"""SROIE 2019 task 3 (scanned Malaysian receipts) -> the `receipt` dataset format.

    extraction data sroie --src ../shared/data/sroie/train.jsonl --out var/data/sroie --val 0.15 --seed 0

SROIE labels `company`, `date`, `address`, `total` exactly as printed; the `receipt` schema has the same four
fields, typed. Normalisation (each rule tested in tests/training/test_sroie.py):
- company, address: whitespace runs (OCR boxes joined by a space or a newline) collapsed to one space, trimmed;
  case and punctuation kept. An empty label becomes null (noted).
- date: ISO 8601 from the printed form. Numeric forms are day-first (Malaysia): dd/mm/yyyy, dd-mm-yy, dd.mm.yyyy,
  ddmmyyyy, ddmmyy; a four-digit first group is year-first (yyyy-mm-dd, yyyy/mm/dd, yyyymmdd). A day-first
  reading that is impossible but month-first is not (12/28/2017) is read month-first and noted. Month names in
  English or Malay, any order of day and month (15 JAN 2019, 15-JAN-19, OCT 3, 2016, 15 MAC 2019). Times,
  weekdays, brackets and a `DATE:` prefix are ignored; two-digit years are 20yy. Anything else goes to dateutil
  (day-first) and must yield day, month and year.
- total: a number; currency marks (RM, MYR, $, ...) and spaces dropped, `1,234.50` -> 1234.5, `-RM 0.02` and
  `(1.73)` negative, a lone decimal comma (`9,50`) read as a decimal point (noted).
A label that cannot be normalised rejects its receipt: it is left out of the files and listed, with the reason,
in the printed report and in manifest.json; nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from service.tasks import Task
from training.datasets import Problem, Record, check_record, file_sha256, json_lines, validator_for
from training.split import FrozenTestError, split_records, write_split

SROIE_FIELDS = ("company", "date", "address", "total")
_SPACE = re.compile(r"\s+")
# English and Malay month names; any unambiguous prefix of three letters or more matches (MAR, MAC, OGO, DIS).
_MONTH_NAMES = (
    "january januari|february februari|march mac|april|may mei|june jun|july julai|august ogos|"
    "september sept|october oktober|november|december disember"
)
_MONTHS = {name: n for n, names in enumerate(_MONTH_NAMES.split("|"), 1) for name in names.split()}
# Times: h:mm[:ss] with an optional AM/PM, h.mm only with AM/PM (11.02.18 is a date), a lone AM/PM.
_TIME = re.compile(
    r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AP]\.?M\b\.?)?|\b\d{1,2}\.\d{2}\s*[AP]\.?M\b\.?|\b[AP]\.?M\b\.?", re.I
)
_WEEKDAY = re.compile(r"\b(?:MON|TUE|TUES|WED|THU|THUR|THURS|FRI|SAT|SUN)(?:DAY)?\b,?", re.I)
_PREFIX = re.compile(r"^(?:DATE|TARIKH|DATED)\s*[:.]?\s*", re.I)
_NUMERIC = re.compile(r"^(\d{1,4})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{1,4})$")
_CURRENCY = re.compile(r"(?<![A-Z])(?:RM|MYR|SGD|USD|US\$|S\$)(?![A-Z])|[$€£¥]", re.I)
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_DECIMAL_COMMA = re.compile(r"^\d+,\d{1,2}$")


class LabelError(ValueError):
    """A label that cannot be normalised; the message says why."""


def collapse(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def normalise_text(value: str) -> str | None:
    """Whitespace collapsed and trimmed; None when nothing is left."""
    return collapse(value) or None


def _year(text: str) -> int:
    if len(text) == 2:
        return 2000 + int(text)
    if len(text) == 4:
        return int(text)
    raise LabelError(f"year {text!r} has neither 2 nor 4 digits")


def _month(token: str) -> int | None:
    token = token.casefold().rstrip(".")
    if len(token) < 3:
        return None
    found = {n for name, n in _MONTHS.items() if name.startswith(token)}
    return found.pop() if len(found) == 1 else None


def _iso(year: int, month: int, day: int, printed: str) -> str:
    if not 1970 <= year <= 2099:
        raise LabelError(f"year {year} out of range 1970-2099 in {printed!r}")
    try:
        return date(year, month, day).isoformat()
    except ValueError as e:
        raise LabelError(f"not a calendar date ({e}) in {printed!r}") from None


def parse_date(printed: str) -> tuple[str, str | None]:
    """(ISO date, note or None) from a date as printed on a receipt; LabelError when there is none."""
    text = _PREFIX.sub("", collapse(printed).strip("()[]{}<>\"' ,;"))
    text = collapse(_WEEKDAY.sub(" ", _TIME.sub(" ", text))).strip(" ,;-")
    if not text:
        raise LabelError(f"no date in {printed!r}")
    if m := _NUMERIC.match(text):
        a, b, c = m.groups()
        if len(a) == 4:
            return _iso(int(a), int(b), int(c), printed), None
        if len(a) > 2:
            raise LabelError(f"first group {a!r} is neither a day nor a year in {printed!r}")
        day, month, year = int(a), int(b), _year(c)
        if month > 12 >= day:
            return _iso(year, day, month, printed), f"read month-first (no month {month}): {printed!r}"
        return _iso(year, month, day, printed), None
    if re.fullmatch(r"\d{8}", text):
        if 1970 <= int(text[:4]) <= 2099:
            try:
                return _iso(int(text[:4]), int(text[4:6]), int(text[6:]), printed), None
            except LabelError:
                pass
        return _iso(int(text[4:]), int(text[2:4]), int(text[:2]), printed), None
    if re.fullmatch(r"\d{6}", text):
        return _iso(_year(text[4:]), int(text[2:4]), int(text[:2]), printed), None
    tokens = [t for t in re.split(r"[\s,./-]+", re.sub(r"(?<=\d)(?=[A-Za-z])|(?<=[A-Za-z])(?=\d)", " ", text)) if t]
    months = [i for i, t in enumerate(tokens) if t.isalpha()]
    if len(tokens) == 3 and len(months) == 1 and all(t.isdigit() for i, t in enumerate(tokens) if i != months[0]):
        month = _month(tokens[months[0]])
        if month is None:
            raise LabelError(f"{tokens[months[0]]!r} is not a month in {printed!r}")
        first, second = (t for i, t in enumerate(tokens) if i != months[0])
        if len(first) == 4:  # 2019 JAN 15
            return _iso(int(first), month, int(second), printed), None
        return _iso(_year(second), month, int(first), printed), None  # 15 JAN 2019, JAN 15 2019
    return _parse_with_dateutil(text, printed), None


def _parse_with_dateutil(text: str, printed: str) -> str:
    from dateutil import parser

    # Two different defaults: a component dateutil had to fill in differs between them, so it was not printed.
    try:
        one = parser.parse(text, dayfirst=True, default=datetime(1901, 1, 1))
        two = parser.parse(text, dayfirst=True, default=datetime(1902, 2, 2))
    except (ValueError, OverflowError):
        raise LabelError(f"not a date: {printed!r}") from None
    if one != two:
        raise LabelError(f"incomplete date (day, month and year needed): {printed!r}")
    return _iso(one.year, one.month, one.day, printed)


def normalise_date(printed: str) -> str:
    """ISO 8601 date from a printed date (see the module docstring); LabelError when there is none."""
    return parse_date(printed)[0]


def parse_total(printed: str) -> tuple[float, str | None]:
    """(amount, note or None) from a printed total; LabelError when it is not one amount."""
    text = collapse(printed)
    negative = text.startswith("(") and text.endswith(")")
    text = _SPACE.sub("", _CURRENCY.sub("", text.strip("()")))
    if text[:1] in ("-", "+"):
        negative, text = negative or text[0] == "-", text[1:]
    note = None
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    elif _DECIMAL_COMMA.match(text):
        text, note = text.replace(",", "."), f"decimal comma read as a point: {printed!r}"
    elif not _PLAIN.match(text):
        raise LabelError(f"not an amount: {printed!r}")
    value = float(text)
    return (-value if negative else value) or 0.0, note


def normalise_total(printed: str) -> float:
    """The amount of a printed total as a number; LabelError when it is not one amount."""
    return parse_total(printed)[0]


@dataclass(frozen=True)
class LabelIssue:
    line: int
    id: str
    field: str
    value: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "field": self.field, "value": self.value, "reason": self.reason}

    def __str__(self) -> str:
        where = f"line {self.line} ({self.id})" + (f" {self.field}" if self.field else "")
        return f"{where}: {self.reason}"


def receipt_output(labels: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]], list[tuple[str, str]]]:
    """(receipt output, [(field, why it failed)], [(field, note)]) from SROIE labels."""
    output: dict[str, Any] = {}
    failures: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    for name in SROIE_FIELDS:
        value = labels.get(name)
        if name == "total" and isinstance(value, int | float) and not isinstance(value, bool):
            output[name] = float(value)
            continue
        if value is not None and not isinstance(value, str):
            failures.append((name, f"label is a {type(value).__name__}, not a string"))
            continue
        if value is None or not value.strip():
            output[name] = None
            notes.append((name, ("no label" if value is None else "empty label") + " -> null"))
            continue
        try:
            if name == "date":
                output[name], note = parse_date(value)
            elif name == "total":
                output[name], note = parse_total(value)
            else:
                output[name], note = normalise_text(value), None
        except LabelError as e:
            failures.append((name, str(e)))
            continue
        if note:
            notes.append((name, note))
    if extra := sorted(set(labels) - set(SROIE_FIELDS)):
        notes.append(("", f"labels {extra} are not receipt fields, ignored"))
    return output, failures, notes


@dataclass
class SroieImport:
    """What an import read, kept, rejected (with reasons) and noted."""

    source: str
    lines: int = 0
    records: list[Record] = field(default_factory=list)
    rejected: list[LabelIssue] = field(default_factory=list)
    notes: list[LabelIssue] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        rejected_ids = {(i.line, i.id) for i in self.rejected}
        return {"lines": self.lines, "imported": len(self.records), "rejected_receipts": len(rejected_ids),
                "rejected": [i.as_dict() for i in self.rejected],
                "notes": [i.as_dict() for i in self.notes]}  # fmt: skip


def import_sroie(src: Path, task: Task) -> SroieImport:
    """Every SROIE line normalised and checked against the task's schema; failures are listed, not dropped."""
    validator, seen = validator_for(task), set[str]()
    result = SroieImport(str(src))
    for number, raw in json_lines(src.read_text(encoding="utf-8")):
        result.lines += 1
        rid = str(raw.get("id", "")) if isinstance(raw, dict) else ""
        labels = raw.get("output") if isinstance(raw, dict) else None
        if not isinstance(labels, dict):
            why = str(raw) if isinstance(raw, Problem) else "not a JSON object with an `output` object of labels"
            result.rejected.append(LabelIssue(number, rid, "", None, why))
            continue
        output, failures, notes = receipt_output(labels)
        result.notes += [LabelIssue(number, rid, name, labels.get(name), note) for name, note in notes]
        result.rejected += [LabelIssue(number, rid, name, labels.get(name), why) for name, why in failures]
        if failures:
            continue
        record, problems = check_record({"id": raw.get("id"), "text": raw.get("text"), "output": output}, validator,
                                        seen)  # fmt: skip
        result.rejected += [LabelIssue(number, rid, "", None, problem) for problem in problems]
        if record:
            result.records.append(record)
    return result


def write_sroie(
    imported: SroieImport, out_dir: Path, *, val: float, seed: int, as_test: bool = False, force: bool = False
) -> dict[str, Any]:
    """train.jsonl + a seeded frozen val.jsonl (or, `as_test`, every receipt in a frozen test.jsonl) and a
    manifest with each file's sha256, the source's sha256 and the import report. Re-running writes
    byte-identical files; a different frozen split already there is kept unless `force`."""
    if not imported.records:
        raise ValueError(f"{imported.source}: no receipt could be imported")
    others = [n for n in (("train", "val") if as_test else ("test",)) if (out_dir / f"{n}.jsonl").exists()]
    if others and not force:
        # the manifest would be replaced without them: their hashes lost, and receipts trained on evaluated
        kind = "a train/val split" if as_test else "a frozen test set"
        raise FrozenTestError(
            f"{out_dir} already holds {kind} ({', '.join(f'{n}.jsonl' for n in others)}); write "
            f"{'the held-out test set' if as_test else 'the train/val split'} to a folder of its own, or pass --force"
        )
    if as_test:
        parts = {"test": imported.records}
    else:
        train, validation, _ = split_records(imported.records, val=val, test=0.0, seed=seed)
        parts = {"train": train, "val": validation}
    for name in ("val", "test"):
        path = out_dir / f"{name}.jsonl"
        content = "".join(r.as_json() + "\n" for r in parts.get(name, [])).encode()
        if name in parts and path.exists() and path.read_bytes() != content and not force:
            raise FrozenTestError(
                f"{path} holds a different frozen {name} split (another seed, share or source); pass --force to "
                "replace it (earlier runs then no longer compare)"
            )
    meta = {"task": "receipt", "importer": "sroie", "source": imported.source,
            "source_sha256": file_sha256(Path(imported.source)), "seed": seed,
            "val": None if as_test else val, "report": imported.report()}  # fmt: skip
    return write_split(parts, out_dir, meta=meta, force=force or as_test, stamp=False, inputs=(Path(imported.source),))
