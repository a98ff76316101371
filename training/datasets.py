"""The one dataset format: JSONL, one {"id", "text", "output"} per line, `output` valid against the task schema.

Loading checks every line and reports all bad lines with their numbers; writing is atomic (a temporary file
renamed into place), so nothing is ever half-written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from service.tasks import Task

MAX_REPORTED = 50


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    output: dict[str, Any]

    def as_json(self) -> str:
        return json.dumps({"id": self.id, "text": self.text, "output": self.output}, ensure_ascii=False)


class DatasetError(Exception):
    """Bad lines in a dataset file; `problems` lists them as 'line N: what'."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{path}: {len(problems)} bad line(s):\n  " + "\n  ".join(shown) + more)
        self.path = path
        self.problems = problems


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def validator_for(task: Task) -> Draft202012Validator:
    return Draft202012Validator(task.json_schema, format_checker=FormatChecker())


def check_record(raw: Any, validator: Draft202012Validator, seen: set[str]) -> tuple[Record | None, list[str]]:
    """A record from one parsed line, or the problems with it."""
    if not isinstance(raw, dict):
        return None, ["not a JSON object"]
    problems = []
    extra = set(raw) - {"id", "text", "output"}
    if extra:
        problems.append(f"unknown keys {sorted(extra)}")
    rid, text, output = raw.get("id"), raw.get("text"), raw.get("output")
    if not isinstance(rid, str | int) or isinstance(rid, bool) or str(rid) == "":
        problems.append("`id` must be a non-empty string")
    elif str(rid) in seen:
        problems.append(f"duplicate id {rid!r}")
    if not isinstance(text, str) or not text.strip():
        problems.append("`text` must be a non-empty string")
    if not isinstance(output, dict):
        problems.append("`output` must be a JSON object")
    else:
        problems += [f"output {e.json_path}: {e.message}" for e in validator.iter_errors(output)]
    if problems:
        return None, problems
    seen.add(str(rid))
    return Record(str(rid), text, output), []  # type: ignore[arg-type]


def load_dataset(path: Path, task: Task) -> list[Record]:
    """Every record of a JSONL dataset, or DatasetError listing every bad line (none are dropped silently)."""
    validator = validator_for(task)
    records, problems, seen = [], [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, [f"cannot read: {e}"]) from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            problems.append(f"line {number}: not JSON ({e.msg})")
            continue
        record, issues = check_record(raw, validator, seen)
        problems += [f"line {number}: {issue}" for issue in issues]
        if record:
            records.append(record)
    if problems:
        raise DatasetError(path, problems)
    if not records:
        raise DatasetError(path, ["no records"])
    return records


def write_dataset(path: Path, records: Iterable[Record]) -> str:
    """Write atomically; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for record in records:
                out.write(record.as_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A CSV cell as the JSON type the schema wants (empty -> null or [])."""
    types = schema.get("type", "string")
    types = types if isinstance(types, list) else [types]
    text = value.strip()
    if text == "":
        return [] if "array" in types else None
    if "array" in types:
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(";") if part.strip()]
    if "integer" in types:
        return int(float(text))
    if "number" in types:
        return float(text.replace(",", ""))
    if "boolean" in types:
        return text.lower() in ("1", "true", "yes")
    return text


@dataclass
class ColumnMap:
    """How source columns become records: `fields` maps output field -> column; or one JSON `output` column."""

    text: str = "text"
    id: str | None = None
    output: str | None = None
    fields: dict[str, str] | None = None


def import_records(source: Path, task: Task, mapping: ColumnMap, fmt: str | None = None) -> list[Record]:
    """Records from a CSV or JSONL file with a column mapping; every row is checked like `load_dataset`."""
    fmt = fmt or ("csv" if source.suffix.lower() == ".csv" else "jsonl")
    if fmt == "csv":
        with source.open(newline="", encoding="utf-8") as f:
            rows: list[dict[str, Any]] = list(csv.DictReader(f))
        first_line = 2  # after the header
    elif fmt == "jsonl":
        rows, first_line = [], 1
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise DatasetError(source, [f"line {number}: not JSON ({e.msg})"]) from e
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or jsonl")
    properties = task.json_schema.get("properties", {})
    validator = validator_for(task)
    records, problems, seen = [], [], set()
    for offset, row in enumerate(rows):
        number = first_line + offset
        try:
            raw = _row_to_raw(row, mapping, properties, offset)
        except (KeyError, ValueError) as e:
            problems.append(f"line {number}: {e}")
            continue
        record, issues = check_record(raw, validator, seen)
        problems += [f"line {number}: {issue}" for issue in issues]
        if record:
            records.append(record)
    if problems:
        raise DatasetError(source, problems)
    return records


def _row_to_raw(
    row: Mapping[str, Any], mapping: ColumnMap, properties: Mapping[str, Any], index: int
) -> dict[str, Any]:
    def cell(column: str) -> Any:
        if column not in row:
            raise KeyError(f"no column {column!r} (have {sorted(row)})")
        return row[column]

    if mapping.output:
        output = cell(mapping.output)
        output = json.loads(output) if isinstance(output, str) else output
    else:
        fields = mapping.fields or {name: name for name in properties}
        output = {}
        for name, column in fields.items():
            value = cell(column)
            output[name] = _coerce(value, properties.get(name, {})) if isinstance(value, str) else value
    rid = cell(mapping.id) if mapping.id else f"row-{index + 1}"
    return {"id": str(rid), "text": cell(mapping.text), "output": output}
