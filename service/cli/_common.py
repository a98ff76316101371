"""What every command shares: the consoles, loading the config, turning errors into exit codes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from service.config import Settings
from service.terminal import console as make_console

console = make_console()
err = make_console(stderr=True)
ConfigOption = Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")]


def use_config(config: Path | None) -> None:
    if config is not None:
        if not config.is_file():
            err.print(f"[red]config file not found: {config}[/red]")
            raise typer.Exit(2)
        os.environ["EXTRACTION_CONFIG"] = str(config.resolve())


def load_settings_or_exit() -> Settings:
    """Validated settings, or a one-line message naming the bad field and exit code 2."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.config import ConfigError, unknown_env
    from service.tasks import TaskLoadError

    for line in unknown_env():
        err.print(f"[yellow]warning[/yellow] {line}")
    try:
        from service.state import AppState

        settings = Settings()

        AppState.build(settings)  # loads and checks tasks and backend references
        return settings
    except ValidationError as e:
        for problem in e.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "config"
            err.print(f"[red]config error[/red] {where}: {problem['msg']}")
    except SettingsError as e:  # an environment variable whose value is not the JSON its setting needs
        cause = f": {e.__cause__}" if e.__cause__ is not None else ""
        err.print(f"[red]config error[/red] {e}{cause}")
    except (ConfigError, TaskLoadError) as e:
        err.print(f"[red]config error[/red] {e}")
    raise typer.Exit(2)


def fail(e: Exception) -> typer.Exit:
    """Print `e` as one red line; the Exit to raise (code 1)."""
    err.print(f"[red]error[/red] {e}")
    return typer.Exit(1)
