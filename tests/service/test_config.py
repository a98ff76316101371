from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from service.cli import app
from service.config import DEFAULT_CONFIG, ConfigError, Settings
from service.state import AppState
from service.tasks import TaskLoadError, load_tasks
from tests.conftest import SHIPPED_TASKS, backend_entry, write_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXTRACTION_CONFIG", "EXTRACTION_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def test_shipped_default_config_loads() -> None:
    settings = Settings()  # type: ignore[call-arg]
    assert settings.config == DEFAULT_CONFIG
    assert settings.default_backend == "local-prompted"
    assert {"local-prompted", "local-finetuned", "openai"} <= set(settings.backends)
    assert settings.backends["openai"].schema_dialect == "openai_strict"
    assert settings.backends["local-finetuned"].prompt_style == "finetuned"
    assert settings.tasks_dir == SHIPPED_TASKS.resolve()


def test_environment_flips_the_default_backend_without_file_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRACTION_DEFAULT_BACKEND", "local-finetuned")
    monkeypatch.setenv("EXTRACTION_RETRY__DEADLINE_S", "7")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.default_backend == "local-finetuned"
    assert settings.retry.deadline_s == 7


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", {"only": backend_entry("http://127.0.0.1:1/v1")})
    monkeypatch.setenv("EXTRACTION_CONFIG", str(path))
    assert list(Settings().backends) == ["only"]  # type: ignore[call-arg]


def test_unknown_default_backend_names_the_field(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1")}, default_backend="b")
    with pytest.raises(ValidationError, match="default_backend 'b' is not among backends"):
        Settings(config=path)  # type: ignore[call-arg]


def test_bad_field_type_and_unknown_field_are_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1", timeout_s="soon")})
    with pytest.raises(ValidationError, match="backends.a.timeout_s"):
        Settings(config=path)  # type: ignore[call-arg]
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1", colour="red")})
    with pytest.raises(ValidationError, match="colour"):
        Settings(config=path)  # type: ignore[call-arg]


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Settings(config=Path("/nonexistent/config.yaml"))  # type: ignore[call-arg]


def test_task_referencing_an_unknown_backend_stops_start_up(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text(yaml.safe_dump({"schema": {"type": "object"}, "backend": "ghost"}))
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1")}, tasks_dir="tasks")
    with pytest.raises(ConfigError, match="task 't': backend 'ghost'"):
        AppState.build(Settings(config=path))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"schema": {"type": "strnig"}}, "invalid JSON Schema"),
        ({"schema": {"type": "object"}, "name": "other"}, "must match the file name"),
        ({"schema": {"type": "object", "required": ["a"]}, "examples": [{"text": "x", "output": {}}]}, "examples[0]"),
        ({"instructions": "no schema"}, "schema"),
        ("- just\n- a list\n", "must be a YAML mapping"),
    ],
)
def test_bad_task_files_are_reported_with_file_and_field(tmp_path: Path, content: object, message: str) -> None:
    (tmp_path / "t.yaml").write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(TaskLoadError, match=message.replace("[", r"\[")) as info:
        load_tasks(tmp_path)
    assert "t.yaml" in str(info.value)


def test_shipped_tasks_have_three_to_five_valid_examples() -> None:
    tasks = load_tasks(SHIPPED_TASKS)
    assert set(tasks) == {"invoice", "receipt", "email_triage", "contract_clause", "entities", "support_intent"}
    for task in tasks.values():
        assert 3 <= len(task.examples) <= 5, task.name
        assert task.check_examples() == []
        assert task.json_schema["additionalProperties"] is False
    assert len(tasks["email_triage"].json_schema["properties"]["category"]["enum"]) == 12
    assert tasks["contract_clause"].json_schema["properties"]["language"]["enum"] == ["en", "es", "de"]
    assert {e.output["language"] for e in tasks["contract_clause"].examples} == {"en", "es", "de"}


def test_check_config_cli_reports_bad_config(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(app, ["check-config"])
    assert good.exit_code == 0 and "local-prompted" in good.output
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1", max_attempts=0)})
    bad = runner.invoke(app, ["check-config", "--config", str(path)])
    assert bad.exit_code == 2
    assert "backends.a.max_attempts" in bad.output
    missing = runner.invoke(app, ["check-config", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"backends: [unclosed\n", "not valid YAML at line"), (b"default_backend: caf\xe9\n", "not UTF-8"),
     (b"- a\n- b\n", "must be a mapping of settings, not a list")],
)  # fmt: skip
def test_a_config_file_that_is_no_yaml_mapping_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    r = CliRunner().invoke(app, ["check-config", "--config", str(path)])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_bad_environment_values_and_files_named_by_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("EXTRACTION_LIMITS", "notjson")
    r = runner.invoke(app, ["check-config"])
    assert r.exit_code == 2 and "limits" in r.output and "Traceback" not in r.output, r.output
    monkeypatch.delenv("EXTRACTION_LIMITS")
    folder = tmp_path / "log-dir"
    folder.mkdir()
    path = write_config(tmp_path / "c.yaml", {"a": backend_entry("http://x/v1")},
                        request_log={"enabled": True, "path": str(folder)})  # fmt: skip
    r = runner.invoke(app, ["check-config", "--config", str(path)])
    assert r.exit_code == 2 and "request_log.path" in r.output, r.output
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_bytes(b"name: caf\xe9\n")
    path = write_config(tmp_path / "c2.yaml", {"a": backend_entry("http://x/v1")}, tasks_dir=str(tasks))
    r = runner.invoke(app, ["check-config", "--config", str(path)])
    assert r.exit_code == 2 and "t.yaml: not UTF-8" in r.output, r.output


def test_a_misspelt_top_level_variable_is_named_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import unknown_env

    env = {"EXTRACTION_DEFALT_BACKEND": "openai", "EXTRACTION_RETRY__DEADLINE_S": "5", "EXTRACTION_CONFIG": "x",
           "EXTRACTION_CACHE_DIR": "/c", "extraction_default_backend": "a", "HOME": "/root"}  # fmt: skip
    assert unknown_env(env) == ["EXTRACTION_DEFALT_BACKEND sets nothing (did you mean EXTRACTION_DEFAULT_BACKEND?)"]
    monkeypatch.setenv("EXTRACTION_DEFALT_BACKEND", "openai")
    r = CliRunner().invoke(app, ["check-config"])
    assert r.exit_code == 0 and "EXTRACTION_DEFALT_BACKEND sets nothing" in r.output


@pytest.mark.parametrize(
    ("entry", "message"),
    [({"kind": "bogus"}, "kind must be openai, vllm, llamacpp or local"),
     ({"base_url": "not a url"}, "base_url must be an http:// or https:// URL"),
     ({"base_url": "127.0.0.1:8000/v1"}, "base_url must be an http:// or https:// URL")],
)  # fmt: skip
def test_a_backend_kind_or_base_url_that_cannot_work_is_refused_at_load(
    tmp_path: Path, entry: dict[str, str], message: str
) -> None:
    path = write_config(tmp_path / "c.yaml", {"a": {**backend_entry("http://x/v1"), **entry}})
    r = CliRunner().invoke(app, ["check-config", "--config", str(path)])
    assert r.exit_code == 2 and message in r.output and "backends.a." in r.output, r.output
