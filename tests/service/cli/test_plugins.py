"""The `extraction` app finds the commands of training/ and loadtest/ through entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import typer
from typer.testing import CliRunner

from service.cli import app, plugins


def test_training_and_loadtest_commands_come_from_entry_points() -> None:
    names = {ep.name: ep.value for ep in plugins.discover()}
    assert names == {"training": "training.cli:register", "loadtest": "loadtest.cli:register"}
    help_text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for command in ("data", "train", "eval", "report", "loadtest", "serve", "vllm", "model", "keys"):
        assert f" {command} " in help_text, command


def test_a_plugin_that_cannot_import_is_skipped_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint(name="training", value="training_not_installed.cli:register", group=plugins.GROUP)
    good = EntryPoint(name="loadtest", value="loadtest.cli:register", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "discover", lambda: [broken, good])
    fresh = typer.Typer()
    failed = plugins.load_plugins(fresh)
    assert set(failed) == {"training"} and "extraction-service[train]" in failed["training"]
    assert [c.name for c in fresh.registered_commands] == ["loadtest"]


def test_a_plugin_whose_register_fails_does_not_take_the_cli_down(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = EntryPoint(name="loadtest", value="json:loads", group=plugins.GROUP)  # register(app) raises TypeError
    monkeypatch.setattr(plugins, "discover", lambda: [bad])
    failed = plugins.load_plugins(typer.Typer())
    assert "register() failed" in failed["loadtest"]
