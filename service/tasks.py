"""Tasks: named extraction jobs (schema, instructions, few-shot examples), one YAML file each."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from service.grounding import GroundingKind, check_paths, check_rules
from service.pii import PiiPolicy
from service.schemas.compiled import CompiledSchema, compile_schema, validate
from service.schemas.problems import SchemaProblem

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
    grounding: dict[str, GroundingKind] = Field(
        default_factory=dict,
        description="Fields whose value the text must print, checked and snapped to it (see service.grounding): "
        "{path: date|number}, e.g. {date: date, 'items[].amount': number}.",
    )

    _compiled: CompiledSchema | None = PrivateAttr(None)

    @field_validator("grounding")
    @classmethod
    def _grounding_rules(cls, rules: dict[str, str]) -> dict[str, str]:
        return check_rules(rules)

    def model_post_init(self, context: Any) -> None:
        """Check and compile the schema (by the draft it declares); an ad-hoc task comes compiled already."""
        compiled = context.get("compiled") if isinstance(context, dict) else None
        if compiled is None:
            try:
                compiled = compile_schema(self.json_schema)
            except SchemaProblem as e:
                raise ValueError(f"schema: invalid JSON Schema: {e.message}") from None
        self._compiled = compiled
        try:
            check_paths(self.grounding, self.json_schema)
        except ValueError as e:
            raise ValueError(f"grounding: {e}") from None

    @property
    def compiled(self) -> CompiledSchema:
        """The checked, compiled schema answers are validated with."""
        assert self._compiled is not None, "set in model_post_init"
        return self._compiled

    def check_examples(self) -> list[str]:
        """Problems with the few-shot examples (each must validate against the schema)."""
        return [
            f"examples[{i}]: {issue.path}: {issue.message}"
            for i, ex in enumerate(self.examples)
            for issue in validate(ex.output, self.compiled)
        ]


class TaskLoadError(Exception):
    """A task file cannot be used; the message names the file and field."""


def load_task(path: Path) -> Task:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise TaskLoadError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (OSError, yaml.YAMLError) as e:
        raise TaskLoadError(f"{path}: cannot read YAML: {e}") from e
    except RecursionError:  # PyYAML recurses per nesting level
        raise TaskLoadError(f"{path}: cannot read YAML: nested too deeply for the parser") from None
    if not isinstance(raw, dict):
        raise TaskLoadError(f"{path}: must be a YAML mapping")
    raw.setdefault("name", path.stem)
    try:
        task = Task.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise TaskLoadError(f"{path}: {where + ': ' if where else ''}{message}") from e
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
        if task.name == ADHOC:  # the name keys and metrics use for ad-hoc schemas
            raise TaskLoadError(f"{path}: the task name {ADHOC!r} is reserved for ad-hoc schemas; choose another")
        tasks[task.name] = task
    return tasks


def adhoc_task(compiled: CompiledSchema, instructions: str | None, grounding: Mapping[str, str] | None = None) -> Task:
    """A task for a request that brings its own schema, checked and compiled already."""
    return Task.model_validate(
        {"name": ADHOC, "schema": compiled.schema, "instructions": instructions or "", "grounding": grounding or {}},
        context={"compiled": compiled},
    )
