"""The `extraction` command line.

The service's own commands live here (serve, check-config, cost, demo, keys, model, vllm); training/ and
loadtest/ add theirs (data, train, eval, report, loadtest) through the `extraction.commands` entry points, so
nothing in service/ imports the layers above it.
"""

from __future__ import annotations

import typer

from service.cli import keys, local, serve
from service.cli._common import err
from service.cli.plugins import load_plugins

app = typer.Typer(no_args_is_help=True, add_completion=False, help="JSON extraction service.")
for module in (serve, keys, local):
    module.register(app)
unavailable = load_plugins(app)


@app.callback()
def _main() -> None:
    """JSON extraction service."""
    for plugin, why in unavailable.items():  # said before every command, so a missing one is explained
        err.print(f"[yellow]the {plugin} commands are unavailable[/yellow]: {why}")


__all__ = ["app", "unavailable"]
