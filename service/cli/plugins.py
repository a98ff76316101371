"""Commands from the layers above the service, found through entry points (as simonw/llm finds its plugins).

A package adds commands to `extraction` by declaring, in its pyproject.toml,

    [project.entry-points."extraction.commands"]
    training = "training.cli:register"

where `register(app: typer.Typer) -> None` adds its commands. The service never imports those packages: the
dependency points from them to it. A plugin whose optional dependencies are missing is skipped, and the
command line says which extra to install when it is asked for.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import typer

GROUP = "extraction.commands"


def discover() -> list[EntryPoint]:
    """The entry points of the group, in name order (a stable --help)."""
    return sorted(entry_points(group=GROUP), key=lambda ep: ep.name)


def load_plugins(app: typer.Typer) -> dict[str, str]:
    """Let every plugin register its commands on `app`; returns {plugin: why} for the ones that failed."""
    failed: dict[str, str] = {}
    for ep in discover():
        try:
            register = ep.load()
        except ImportError as e:
            failed[ep.name] = f"{e} (pip install 'extraction-service[{ep.name}]' or make install)"
            continue
        register(app)
    return failed
