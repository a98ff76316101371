"""`extraction loadtest`: Locust headless with summary, SLO gate and a capacity (step) mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from service.terminal import console as make_console

console = make_console()


def loadtest_command(
    host: Annotated[str, typer.Option(help="The service, e.g. http://127.0.0.1:8080.")],
    users: Annotated[int, typer.Option(min=1, help="Concurrent simulated users.")] = 10,
    spawn_rate: Annotated[float, typer.Option(min=0.1, help="Users started per second.")] = 5,
    duration: Annotated[str, typer.Option(help="Run time, e.g. 60s, 5m.")] = "60s",
    backend: Annotated[str | None, typer.Option(help="Send X-Extraction-Backend (default: routing).")] = None,
    slo_p95_ms: Annotated[float | None, typer.Option(help="Fail (exit 1) when P95 exceeds this.")] = None,
    slo_error_rate: Annotated[float | None, typer.Option(help="Fail when more than this share fails.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for CSV, HTML and summary.json.")] = Path("var/loadtest"),
    workers: Annotated[int, typer.Option(min=0, help="Locust worker processes (master/worker mode).")] = 0,
    tasks: Annotated[str | None, typer.Option(help='Task mix, e.g. "invoice=3,receipt=1".')] = None,
    batch_share: Annotated[float, typer.Option(min=0, max=1, help="Share of calls that are batches.")] = 0.1,
    think: Annotated[str, typer.Option(help='Think time range in seconds, "min,max".')] = "0.5,2",
    step_users: Annotated[str | None, typer.Option(help="Capacity search: user levels, e.g. 1,2,4,8.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="EXTRACTION_API_KEY", help="Bearer key, if needed.")] = None,
) -> None:
    """Load-test the service with realistic traffic; exit 1 when an SLO is missed."""
    from loadtest.run import LoadArgs, run, step

    args = LoadArgs(host.rstrip("/"), users, spawn_rate, duration, backend, slo_p95_ms, slo_error_rate, out,
                    workers, tasks, batch_share, think, api_key)  # fmt: skip
    if step_users:
        result = step(args, [int(u) for u in step_users.split(",")])
        table = Table(title="capacity search")
        for column in ("users", "req/s", "P50 ms", "P95 ms", "P99 ms", "errors", "within SLO"):
            table.add_column(column)
        for s in result["steps"]:
            latencies = [f"{s[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
            verdict = "yes" if s["within_slo"] else "no"
            table.add_row(str(s["users"]), f"{s['requests_per_s']:.2f}", *latencies, f"{s['error_rate']:.1%}", verdict)
        console.print(table)
        console.print(f"capacity at P95 <= {slo_p95_ms} ms: {result['capacity_requests_per_s']} requests/s "
                      f"({result['capacity_users']} users); plot: {out / 'latency_vs_load.png'}")  # fmt: skip
        raise typer.Exit(0 if result["capacity_requests_per_s"] is not None else 1)
    code, summary = run(args)
    table = Table(title=f"{summary['requests']} requests")
    for column in ("req/s", "P50 ms", "P95 ms", "P99 ms", "server P95 ms", "error rate"):
        table.add_column(column)
    latencies = [f"{summary[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
    table.add_row(f"{summary['requests_per_s']:.2f}", *latencies, str(summary["server_p95_ms"]),
                  f"{summary['error_rate']:.2%}")  # fmt: skip
    console.print(table)
    for missed in summary["slo"]["missed"]:
        console.print(f"[red]SLO missed[/red]: {missed}")
    console.print(f"summary: {out / 'summary.json'}  report: {out / 'locust.html'}")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """The `extraction.commands` entry point: adds `loadtest` to the `extraction` app."""
    app.command("loadtest")(loadtest_command)
