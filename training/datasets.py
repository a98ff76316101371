"""The one dataset format: JSONL, one {"id", "text", "output"} per line, `output` valid against the task schema.

Loading checks every line and reports all bad lines with their numbers; writing is atomic (a temporary file
renamed into place), so nothing is ever half-written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema.protocols import Validator

from service.files import WriteError, atomic_write, same_file
from service.schemas.problems import clip
from service.tasks import Task

MAX_REPORTED = 50


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    output: dict[str, Any]

    def as_json(self) -> str:
        return json.dumps(
            {"id": self.id, "text": self.text, "output": self.output}, ensure_ascii=False, allow_nan=False
        )


class OutputError(ValueError):
    """An output file cannot be written where it was asked for (nothing was written)."""


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
                yield number, strict_json(line)
            except TooDeep as e:
                yield number, Problem(str(e))
            except ValueError as e:
                yield number, Problem(f"not JSON ({getattr(e, 'msg', e)})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a JSON number")
    return value


MAX_DEPTH = 100  # nested objects and arrays in one line; real records need a handful


class TooDeep(ValueError):
    """JSON nested deeper than MAX_DEPTH (or than Python's parser can recurse)."""

    def __init__(self) -> None:
        super().__init__(f"nested too deeply (more than {MAX_DEPTH} levels of objects and arrays)")


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in a parsed value (0 for a scalar); without recursion, so any depth the
    parser returned can be measured."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def strict_json(line: str) -> Any:
    """JSON as RFC 8259 has it: NaN / Infinity, and numbers that overflow to infinity (1e400), refused; Python's
    parser takes them and every strict reader downstream of a dataset would then choke on what we wrote. Nesting
    beyond MAX_DEPTH is TooDeep (a ValueError): the parser, schema validation, anonymisation and scoring all
    recurse, and a RecursionError there would be a traceback instead of a bad line."""
    try:
        value = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise TooDeep() from None
    if depth(value) > MAX_DEPTH:
        raise TooDeep()
    return value


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
    """Write atomically; returns the file's sha256. OutputError (nothing written) where the path cannot be."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the dataset file's path")
    try:
        written = atomic_write(path, (record.as_json() + "\n" for record in records), make_parents=True)
    except WriteError as e:
        raise OutputError(str(e)) from None
    return file_sha256(written)


def refuse_overwriting_inputs(out: Path, *inputs: Path) -> None:
    """OutputError where `out` is one of the `inputs` (the same file by any path, symlinks and hard links
    included): writing it would destroy what is being read."""
    for source in inputs:
        if same_file(out, source):
            raise OutputError(f"--out {out} is the input file {source}; give another path (nothing written)")


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A CSV cell as the JSON type the schema wants (empty -> null or [])."""
    types = schema.get("type", "string")
    types = types if isinstance(types, list) else [types]
    text = value.strip()
    if text == "":
        return [] if "array" in types else None
    if "array" in types:
        if text.startswith("["):
            return strict_json(text)
        return [part.strip() for part in text.split(";") if part.strip()]
    if "integer" in types or "number" in types:
        try:
            number = _number_cell(text)
        except ValueError:
            if "string" in types:
                return text
            raise ValueError(f"{clip(text, 40)!r} is not a finite number") from None
        if isinstance(number, int) or "number" in types:
            return number  # an int is valid for both
        if number.is_integer():  # `4.0` for an integer
            return int(number)
        if "string" in types:
            return text
        raise ValueError(f"{clip(text, 40)!r} is not an integer")
    if "boolean" in types:
        if text.lower() in TRUE_CELLS or text.lower() in FALSE_CELLS:
            return text.lower() in TRUE_CELLS
        if "string" in types:
            return text
        raise ValueError(f"{clip(text, 40)!r} is not a boolean (true/false, yes/no, 1/0)")
    return text


_GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")  # 1,234,567.5: commas that group thousands


def _number_cell(text: str) -> int | float:
    """A CSV number: an integer exactly (no float rounding of 9007199254740993), else a finite float. Commas
    only where they group thousands; `1,5` (a decimal comma) is no number here rather than 15."""
    if _GROUPED.fullmatch(text):
        text = text.replace(",", "")
    try:
        return int(text)
    except ValueError:
        return _finite(text)


TRUE_CELLS, FALSE_CELLS = frozenset({"1", "true", "yes", "y", "t"}), frozenset({"0", "false", "no", "n", "f"})


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
        numbered = read_csv(source)
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
            except (KeyError, ValueError, AttributeError, TypeError) as e:
                yield number, Problem(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))

    return check_all(source, raws(), task)


def read_csv(source: Path) -> list[tuple[int, Any]]:
    """(line number, row mapping or Problem) per CSV record. Strict quoting: a quote left open would otherwise
    swallow the rows after it into one cell and the file would import "fine" with rows lost. A row with more
    or fewer cells than the header is a Problem, not cells dropped or made null."""
    with source.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise DatasetError(source, ["no header row"])
            numbered: list[tuple[int, Any]] = []
            start = reader.line_num + 1
            for cells in reader:
                if not any(c.strip() for c in cells):  # a blank (or whitespace-only) line
                    start = reader.line_num + 1
                    continue
                while len(cells) > len(header) and not cells[-1].strip():
                    cells.pop()  # trailing commas: empty cells past the header lose nothing
                if len(cells) != len(header):
                    problem = Problem(f"{len(cells)} cells where the header has {len(header)}")
                    numbered.append((start, problem))
                else:
                    numbered.append((start, dict(zip(header, cells, strict=True))))
                start = reader.line_num + 1
        except csv.Error as e:
            where = f"line {start}" + (f" (to line {reader.line_num})" if reader.line_num > start else "")
            raise DatasetError(
                source,
                [f"{where}: malformed CSV ({e}); a quote left open, or text after a closing quote? Nothing imported"],
            ) from None
    return numbered


def _row_to_raw(
    row: Mapping[str, Any], mapping: ColumnMap, properties: Mapping[str, Any], index: int
) -> dict[str, Any]:
    def cell(column: str) -> Any:
        if column not in row:
            raise KeyError(f"no column {column!r} (have {sorted(row)})")
        return row[column]

    if mapping.output:
        output = cell(mapping.output)
        output = strict_json(output) if isinstance(output, str) else output
    else:
        fields = mapping.fields or {name: name for name in properties}
        output = {}
        for name, column in fields.items():
            value = cell(column)
            output[name] = _coerce(value, properties.get(name, {})) if isinstance(value, str) else value
    rid = cell(mapping.id) if mapping.id else f"row-{index + 1}"
    return {"id": str(rid), "text": cell(mapping.text), "output": output}
