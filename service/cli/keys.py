"""`extraction keys create | hash`: API keys, stored as SHA-256 hashes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli._common import err

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored as SHA-256 hashes).")


OPTIONS = {"name": "NAME", "tasks": "--tasks", "backends": "--backends", "requests_per_minute": "--rpm",
           "tokens_per_minute": "--tpm", "daily_budget_usd": "--daily-budget-usd"}  # fmt: skip


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for logs and errors, e.g. billing-team.")],
    file: Annotated[Path, typer.Option(help="Key file (YAML) that auth.key_file points at.")] = Path("keys.yaml"),
    tasks: Annotated[str | None, typer.Option(help="Allowed tasks, comma-separated (adhoc: ad-hoc schemas).")] = None,
    backends: Annotated[str | None, typer.Option(help="Allowed backends, comma-separated.")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute (input + output).")] = None,
    daily_budget_usd: Annotated[float | None, typer.Option(help="USD per UTC day (> 0, finite).")] = None,
) -> None:
    """Make a new key, store only its hash in FILE, print the key once."""
    from pydantic import ValidationError

    from service.auth import ApiKeyConfig, add_key_to_file, hash_key, new_key

    _warn_unknown("task", _names(tasks), _configured("tasks"))
    _warn_unknown("backend", _names(backends), _configured("backends"))
    key = new_key()
    try:
        entry = ApiKeyConfig(name=name, key_sha256=hash_key(key), tasks=_names(tasks), backends=_names(backends),
                             requests_per_minute=rpm, tokens_per_minute=tpm,
                             daily_budget_usd=daily_budget_usd)  # fmt: skip
    except ValidationError as e:  # an empty name, a budget of NaN or infinity: one line naming the argument
        problem = e.errors()[0]
        where = OPTIONS.get(str(problem["loc"][0]) if problem["loc"] else "", "key")
        err.print(f"[red]error:[/red] {where}: {problem['msg'].removeprefix('Value error, ')}")
        raise typer.Exit(2) from None
    try:
        add_key_to_file(file, entry)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    err.print(f"added key {name!r} to {file} (hash only); it is shown once, store it now:")
    typer.echo(key)


def _configured(what: str) -> set[str] | None:
    """The task or backend names of the config in effect (EXTRACTION_CONFIG or the shipped one); None when it
    cannot be loaded (the key file may serve another config: then nothing is checked)."""
    try:
        from service.config import Settings
        from service.tasks import ADHOC, load_tasks

        settings = Settings()
        return {*load_tasks(settings.tasks_dir), ADHOC} if what == "tasks" else set(settings.backends)
    except Exception:  # noqa: BLE001 - only a courtesy check
        return None


def _warn_unknown(kind: str, names: list[str] | None, known: set[str] | None) -> None:
    for name in sorted(set(names or ()) - (known or set(names or ()))):
        err.print(f"[yellow]warning[/yellow] {kind} {name!r} is not in this config ({', '.join(sorted(known or ()))})")


@keys_app.command("hash")
def keys_hash(key: Annotated[str, typer.Argument(help="The key.")]) -> None:
    """Print a key's SHA-256, for `auth.keys[].key_sha256`."""
    from service.auth import hash_key

    typer.echo(hash_key(key))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
