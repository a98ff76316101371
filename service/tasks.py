"""Tasks: named extraction jobs (schema, instructions, few-shot examples), one YAML file each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.pii import PiiPolicy
from service.validation import schema_errors

ADHOC = "adhoc"


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    output: dict[str, Any]


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")
    description: str = ""
    json_schema: dict[str, Any] = Field(alias="schema")
    instructions: str = ""
    examples: list[Example] = Field(default_factory=list)
    backend: str | None = Field(None, description="This task's backend; None: the default backend.")
    max_output_tokens: int | None = Field(None, ge=1)
    max_text_chars: int | None = Field(None, ge=1, description="Overrides limits.max_text_chars.")
    max_text_tokens: int | None = Field(None, ge=1, description="Overrides limits.max_text_tokens.")
    pii: PiiPolicy | None = Field(None, description="PII policy for outputs; None: the config's `pii`.")
    eval_ignore: list[str] = Field(
        default_factory=list, description="Free-text fields left out of field-level accuracy (e.g. a reason)."
    )

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if problem := schema_errors(schema):
            raise ValueError(f"invalid JSON Schema {problem}")
        return schema

    def check_examples(self) -> list[str]:
        """Problems with the few-shot examples (each must validate against the schema)."""
        validator = Draft202012Validator(self.json_schema, format_checker=FormatChecker())
        return [
            f"examples[{i}]: {err.json_path}: {err.message}"
            for i, ex in enumerate(self.examples)
            for err in validator.iter_errors(ex.output)
        ]


class TaskLoadError(Exception):
    """A task file cannot be used; the message names the file and field."""


def load_task(path: Path) -> Task:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TaskLoadError(f"{path}: cannot read YAML: {e}") from e
    if not isinstance(raw, dict):
        raise TaskLoadError(f"{path}: must be a YAML mapping")
    raw.setdefault("name", path.stem)
    try:
        task = Task.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TaskLoadError(f"{path}: {where}: {first['msg']}") from e
    if task.name != path.stem:
        raise TaskLoadError(f"{path}: name {task.name!r} must match the file name {path.stem!r}")
    if problems := task.check_examples():
        raise TaskLoadError(f"{path}: {problems[0]}")
    return task


def load_tasks(folder: Path) -> dict[str, Task]:
    """Every `*.yaml`/`*.yml` task in `folder`, by name."""
    if not folder.is_dir():
        raise TaskLoadError(f"tasks_dir {folder} is not a folder")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    tasks = {}
    for path in files:
        task = load_task(path)
        if task.name in tasks:
            raise TaskLoadError(f"{path}: task {task.name!r} is defined twice")
        tasks[task.name] = task
    return tasks


def adhoc_task(schema: dict[str, Any], instructions: str | None) -> Task:
    """A task for a request that brings its own schema."""
    return Task.model_validate({"name": ADHOC, "schema": schema, "instructions": instructions or ""})
