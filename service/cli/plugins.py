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
# plugin -> the pip extra its dependencies come with
EXTRAS = {"training": "train", "loadtest": "loadtest"}


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
            extra = EXTRAS.get(ep.name, ep.name)
            failed[ep.name] = f"{e} (pip install 'extraction-service[{extra}]', or make install)"
            continue
        try:
            register(app)
        except Exception as e:  # one broken plugin must not take `extraction serve` down with it
            failed[ep.name] = f"its register() failed: {type(e).__name__}: {e}"
    return failed
