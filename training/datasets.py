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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.protocols import Validator

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


def validator_for(task: Task) -> Validator:
    """The task's compiled validator: the draft its schema declares, formats checked, no remote `$ref`."""
    return task.compiled.validator


def check_record(raw: Any, validator: Validator, seen: set[str]) -> tuple[Record | None, list[str]]:
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


class Problem(str):
    """A row that could not even be parsed; `check_all` reports it with its line number."""


def json_lines(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or Problem) for each non-blank line."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError as e:
                yield number, Problem(f"not JSON ({e.msg})")


def check_all(source: Path | str, rows: Iterable[tuple[int, Any]], task: Task) -> list[Record]:
    """Records from (line number, row) pairs, or DatasetError listing every bad line (none dropped silently)."""
    validator, seen = validator_for(task), set[str]()
    records, problems = [], []
    for number, raw in rows:
        if isinstance(raw, Problem):
            problems.append(f"line {number}: {raw}")
            continue
        record, issues = check_record(raw, validator, seen)
        problems += [f"line {number}: {issue}" for issue in issues]
        if record:
            records.append(record)
    if problems:
        raise DatasetError(source, problems)
    if not records:
        raise DatasetError(source, ["no records"])
    return records


def load_dataset(path: Path, task: Task) -> list[Record]:
    """Every record of a JSONL dataset, or DatasetError listing every bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, [f"cannot read: {e}"]) from e
    return check_all(path, json_lines(text), task)


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
    numbered: list[tuple[int, Any]]
    if fmt == "csv":
        with source.open(newline="", encoding="utf-8") as f:
            numbered = list(enumerate(csv.DictReader(f), 2))  # line 1 is the header
    elif fmt == "jsonl":
        numbered = list(json_lines(source.read_text(encoding="utf-8")))
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or jsonl")
    properties = task.json_schema.get("properties", {})

    def raws() -> Iterator[tuple[int, Any]]:
        for index, (number, row) in enumerate(numbered):
            if isinstance(row, Problem):
                yield number, row
                continue
            try:
                yield number, _row_to_raw(row, mapping, properties, index)
            except (KeyError, ValueError, AttributeError) as e:
                yield number, Problem(str(e).strip("'\""))

    return check_all(source, raws(), task)


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
