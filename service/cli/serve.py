"""`extraction serve | check-config | cost | demo`: the API itself and what sits closest to it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from backends.config import Pricing
from service.cli._common import console, err, fail, load_settings_or_exit, use_config
from service.cost import compare


def register(app: typer.Typer) -> None:
    """Add these commands to `app`."""
    app.command()(serve)
    app.command()(check_config)
    app.command()(cost)
    app.command()(demo)


class LogLevel(StrEnum):
    """uvicorn's log levels."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def serve(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn's log level.")] = LogLevel.warning,
) -> None:
    """Start the HTTP API under uvicorn."""
    import uvicorn

    from service.http_server import protocol_options

    use_config(config)
    settings = load_settings_or_exit()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker keeps its own counters; a shared folder lets /metrics add them up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="extraction-metrics-")
    err.print(
        f"extraction-service on http://{host}:{port}  (docs: /docs, metrics: /metrics, "
        f"default backend: {settings.default_backend}, config: {settings.config})"
    )
    limits = settings.limits
    uvicorn.run(
        "service.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.value,
        timeout_graceful_shutdown=30,
        access_log=False,
        **protocol_options(limits.max_header_bytes, limits.header_timeout_s, limits.body_timeout_s),
    )


def check_config(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
) -> None:
    """Validate a config and its tasks without starting anything."""
    use_config(config)
    settings = load_settings_or_exit()
    console.print(f"ok: {settings.config} ({len(settings.backends)} backends, default {settings.default_backend})")


def cost(
    input_tokens: Annotated[int, typer.Option(min=0, help="Input tokens per request (prompted).")],
    output_tokens: Annotated[int, typer.Option(min=0, help="Output tokens per request.")],
    # USD: no `min=0` here, the parser's range check would call NaN "not >= 0"; checked below with the reason
    price_in: Annotated[float, typer.Option(help="Prompted model: USD per 1k input tokens.")],
    price_out: Annotated[float, typer.Option(help="Prompted model: USD per 1k output tokens.")],
    ft_price: Annotated[float, typer.Option(help="Fine-tuned model: USD per 1k tokens (in+out).")],
    requests_per_day: Annotated[int, typer.Option(min=0, help="Traffic.")],
    payback_days: Annotated[int, typer.Option(min=1, help="Horizon for the break-even budget.")] = 30,
    ft_input_tokens: Annotated[
        int | None, typer.Option(min=0, help="Fine-tuned input tokens per request (default: same).")
    ] = None,
    training_cost: Annotated[float | None, typer.Option(help="USD; prints the payback days.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Back-of-the-envelope: prompted vs fine-tuned cost per request and day, and the break-even budget."""
    import math

    prices = {"--price-in": price_in, "--price-out": price_out, "--ft-price": ft_price,
              "--training-cost": training_cost}  # fmt: skip
    for name, value in prices.items():
        if value is not None and not math.isfinite(value):
            err.print(f"[red]error[/red] {name}: a finite number of USD, not {'NaN' if math.isnan(value) else value}")
            raise typer.Exit(2)
        if value is not None and value < 0:
            err.print(f"[red]error[/red] {name}: a number of USD >= 0, not {value:g}")
            raise typer.Exit(2)
    result = compare(
        input_tokens,
        output_tokens,
        Pricing(input_per_1k=price_in, output_per_1k=price_out),
        Pricing(input_per_1k=ft_price, output_per_1k=ft_price),
        requests_per_day,
        payback_days,
        finetuned_input_tokens=ft_input_tokens,
    )
    out: dict[str, float | int | bool | None] = dict(result.as_dict())
    if training_cost is not None:
        days = result.payback_days_for(training_cost)
        out["training_cost_usd"] = training_cost
        out["days_to_pay_back_training"] = None if days is None else float(days)
    if as_json:
        if overflow := [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]:
            # exact in Decimal, but beyond a JSON (double) number: `Infinity` is no JSON, so say so instead
            err.print(f"[red]error[/red] {', '.join(overflow)} overflow a JSON number (over 1.8e308): "
                      "check the prices and --requests-per-day")  # fmt: skip
            raise typer.Exit(2)
        sys.stdout.write(json.dumps(out, indent=2, allow_nan=False) + "\n")
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
    if result.pays_back:
        console.print(f"saving per day: ${result.saving_per_day:,.2f}")
        console.print(
            f"break-even training budget over {payback_days} days: [bold]${result.break_even_budget:,.2f}[/bold]"
        )
    else:  # no negative budget: no fine-tune, however cheap, pays for itself
        extra = -result.saving_per_day
        more = f"costs ${extra:,.2f}/day more than" if extra else "costs the same as"
        console.print(f"no break-even training budget: fine-tuned {more} prompted, so fine-tuning never pays back")
    if training_cost is not None and result.pays_back:
        days = result.payback_days_for(training_cost)
        console.print(
            "fine-tuning never pays back at this traffic"
            if days is None
            else f"a ${training_cost:,.2f} fine-tune pays back in {days:.1f} days"
        )


def demo(
    config: Annotated[Path | None, typer.Option(help="YAML config (default: the shipped one).")] = None,
    host: Annotated[str, typer.Option(help="Interface for the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8080,
    keep_running: Annotated[bool, typer.Option(help="Serve after the samples until Ctrl-C.")] = True,
) -> None:
    """The local stack end to end: the local engine (local_engine: auto, see `extraction engine status`) with the
    base model and adapters, the API, and the prompted and fine-tuned answers side by side."""
    from backends.local.base_model import ModelPrepareError
    from backends.local.process import ServerError
    from service.demo import demo as run_demo

    use_config(config)
    settings = load_settings_or_exit()
    try:
        run_demo(settings, host, port, keep_running, console)
    except (ServerError, ModelPrepareError, RuntimeError) as e:
        raise fail(e) from None
