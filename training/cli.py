"""`extraction data|train|eval|report`: datasets, LoRA training, evaluation and the decision report."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.terminal import console as make_console

data_app = typer.Typer(no_args_is_help=True, help="Datasets: import, validate, synthesise, split, from logs.")
console = make_console()
err = make_console(stderr=True)

TasksDir = Annotated[Path | None, typer.Option(help="Task YAML folder (default: the shipped tasks).")]


def _task(name: str, tasks_dir: Path | None):  # type: ignore[no-untyped-def]
    from service.config import DEFAULT_CONFIG
    from service.tasks import TaskLoadError, load_tasks

    try:
        tasks = load_tasks(tasks_dir or DEFAULT_CONFIG.parent / "tasks")
    except TaskLoadError as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(2) from None
    if not tasks:
        err.print(f"[red]error[/red] no task YAML (*.yaml, *.yml) in {tasks_dir}")
        raise typer.Exit(2)
    if name not in tasks:
        err.print(f"[red]error[/red] unknown task {name!r}; available: {', '.join(sorted(tasks))}")
        raise typer.Exit(2)
    return tasks[name]


def _fail(e: Exception, code: int = 1) -> typer.Exit:
    err.print(f"[red]error[/red] {e}")
    return typer.Exit(code)


def _write(out: Path, records: list[Any]) -> str:
    """write_dataset, or one line and exit 1 where `out` cannot be written (nothing left behind)."""
    from training.datasets import OutputError, write_dataset

    try:
        return write_dataset(out, records)
    except OutputError as e:
        raise _fail(e) from None


def _not_an_input(out: Path, *inputs: Path) -> None:
    """One line and exit 1 where `out` is one of the command's input files: writing it would destroy them."""
    from training.datasets import OutputError, refuse_overwriting_inputs

    try:
        refuse_overwriting_inputs(out, *inputs)
    except OutputError as e:
        raise _fail(e) from None


@data_app.command("validate")
def validate(
    path: Path, task: Annotated[str, typer.Option(help="Task whose schema the outputs must match.")],
    tasks_dir: TasksDir = None,
) -> None:  # fmt: skip
    """Check a dataset file: every bad line is reported with its number (exit 1)."""
    from training.datasets import DatasetError, file_sha256, load_dataset

    try:
        records = load_dataset(path, _task(task, tasks_dir))
    except DatasetError as e:
        raise _fail(e) from None
    console.print(f"ok: {len(records)} records, sha256 {file_sha256(path)}")


@data_app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="CSV or JSONL file.")],
    task: Annotated[str, typer.Option(help="Task whose schema the outputs must match.")],
    out: Annotated[Path, typer.Option(help="Dataset JSONL to write.")],
    text_col: Annotated[str, typer.Option(help="Column with the text.")] = "text",
    id_col: Annotated[str | None, typer.Option(help="Column with a unique id (default: row number).")] = None,
    output_col: Annotated[str | None, typer.Option(help="Column holding the whole output as JSON.")] = None,
    field: Annotated[list[str] | None, typer.Option(help="FIELD=COLUMN, repeatable (default: same names).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or jsonl (default: by extension).")] = None,
    tasks_dir: TasksDir = None,
) -> None:
    """Import labelled examples with a column mapping; all rows are checked before anything is written."""
    from training.datasets import ColumnMap, DatasetError, import_records

    if field and (bad := [f for f in field if "=" not in f]):
        raise _fail(ValueError(f"--field takes FIELD=COLUMN, not {bad[0]!r}"), 2)
    fields = dict(f.split("=", 1) for f in field) if field else None
    _not_an_input(out, source)
    try:
        records = import_records(source, _task(task, tasks_dir), ColumnMap(text_col, id_col, output_col, fields), fmt)
    except (DatasetError, ValueError, OSError) as e:
        raise _fail(e) from None
    sha = _write(out, records)
    console.print(f"wrote {len(records)} records to {out} (sha256 {sha})")


@data_app.command("synth")
def synth(
    task: Annotated[str, typer.Option(help="invoice, receipt, email_triage, contract_clause or entities.")],
    n: Annotated[int, typer.Option(min=1, help="Records.")],
    out: Annotated[Path, typer.Option(help="Dataset JSONL to write.")],
    seed: int = 0,
    mix: Annotated[str | None, typer.Option(help="e.g. easy=0.3,medium=0.3,hard=0.2,adversarial=0.1,ood=0.1")] = None,
    tasks_dir: TasksDir = None,
) -> None:
    """Seeded synthetic records (Faker), checked against the task schema, written atomically."""
    from training.datasets import check_record, validator_for
    from training.synthetic import generate

    try:
        if mix and (bad := [p for p in mix.split(",") if p.count("=") != 1]):
            raise ValueError(f"--mix takes LEVEL=WEIGHT pairs, comma-separated (easy=0.5,hard=0.5), not {bad[0]!r}")
        weights = {k.strip(): float(v) for k, v in (p.split("=") for p in mix.split(","))} if mix else None
        records = generate(task, n, seed, weights)
    except ValueError as e:
        raise _fail(e, 2) from None
    validator, seen = validator_for(_task(task, tasks_dir)), set[str]()
    for record in records:
        _, problems = check_record({"id": record.id, "text": record.text, "output": record.output}, validator, seen)
        if problems:
            raise _fail(ValueError(f"generator bug, {record.id}: {problems}"))
    sha = _write(out, records)
    console.print(f"wrote {len(records)} records to {out} (sha256 {sha})")


@data_app.command("split")
def split(
    source: Path,
    task: Annotated[str, typer.Option(help="Task whose schema the outputs must match.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for train/val/test JSONL and manifest.json.")],
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing frozen test set.")] = False,
    tasks_dir: TasksDir = None,
) -> None:
    """Deterministic train / validation / frozen test split; the test set's hash goes into manifest.json."""
    from training.datasets import DatasetError, file_sha256, load_dataset
    from training.split import FrozenTestError, split_records, write_split

    try:
        records = load_dataset(source, _task(task, tasks_dir))
        train, validation, frozen = split_records(records, val, test, seed)
        manifest = write_split(
            {"train": train, "val": validation, "test": frozen}, out_dir, force=force,
            meta={"task": task, "source": str(source), "source_sha256": file_sha256(source), "seed": seed,
                  "val": val, "test": test}, inputs=(source,),
        )  # fmt: skip
    except (DatasetError, FrozenTestError, ValueError) as e:
        raise _fail(e) from None
    for name, info in manifest["files"].items():
        console.print(f"{name}: {info['records']} records  sha256 {info['sha256'][:16]}...")


@data_app.command("from-logs")
def from_logs(
    log: Annotated[Path, typer.Argument(help="The service's request log (JSONL).")],
    task: Annotated[str, typer.Option(help="Keep this task's successful requests.")],
    out: Annotated[Path, typer.Option(help="Dataset JSONL to write.")],
    anonymize: Annotated[bool, typer.Option(help="Replace PII by consistent fakes (default on).")] = True,
    seed: int = 0,
    tasks_dir: TasksDir = None,
) -> None:
    """Turn request logs into a dataset; PII is anonymised and a report says what was replaced."""
    from training.anonymize import Anonymizer
    from training.datasets import DatasetError, Problem, check_all, json_lines

    _not_an_input(out, log)
    anonymizer = Anonymizer(seed)

    def rows():  # type: ignore[no-untyped-def]
        for number, entry in json_lines(log.read_text(encoding="utf-8")):
            if isinstance(entry, Problem) or not isinstance(entry, dict):
                yield number, entry if isinstance(entry, Problem) else Problem("not a JSON object")
            elif entry.get("task") == task and entry.get("outcome") == "ok":
                text, output = entry.get("text", ""), entry.get("output")
                if not isinstance(text, str):  # the anonymiser's regexes need a string: a bad line, not a traceback
                    yield number, Problem(f"`text` must be a string, not {type(text).__name__}")
                    continue
                if anonymize:
                    text, output = anonymizer.record(text, output)
                yield number, {"id": str(entry.get("request_id") or f"log-{number}"), "text": text, "output": output}

    try:
        records = check_all(log, rows(), _task(task, tasks_dir))
    except (DatasetError, OSError, UnicodeDecodeError) as e:
        raise _fail(e) from None
    sha = _write(out, records)
    console.print(f"wrote {len(records)} records to {out} (sha256 {sha})")
    replaced = dict(anonymizer.counts) if anonymize else "anonymisation off"
    console.print(f"replaced: {replaced}")


@data_app.command("banking77")
def banking77_cmd(
    out_dir: Annotated[Path, typer.Option(help="Folder for train/val/test JSONL and manifest.json.")],
    src: Annotated[Path, typer.Option(help="BANKING77 folder (text,category CSVs).")] = Path(
        "../shared/data/banking77"
    ),
    test_limit: Annotated[int | None, typer.Option(help="Seeded test subset (default: all 3,080).")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Seeded train subset (default: all).")] = None,
    seed: int = 0,
    force: bool = False,
) -> None:
    """BANKING77 -> the `support_intent` dataset format (official test split frozen)."""
    from training.importers import banking77
    from training.split import FrozenTestError, write_split

    parts = banking77(src, test_limit=test_limit, seed=seed)
    if train_limit is not None:
        parts["train"] = parts["train"][:train_limit]  # the train part is already in a seeded order
    try:
        manifest = write_split(parts, out_dir, force=force, meta={"task": "support_intent", "source": str(src),
                                                                  "seed": seed, "test_limit": test_limit})  # fmt: skip
    except (FrozenTestError, ValueError) as e:
        raise _fail(e) from None
    console.print({k: v["records"] for k, v in manifest["files"].items()})


@data_app.command("wnut17")
def wnut17_cmd(
    out_dir: Annotated[Path, typer.Option(help="Folder for train/val/test JSONL and manifest.json.")],
    src: Annotated[Path, typer.Option(help="WNUT-17 folder (CoNLL files).")] = Path("../shared/data/wnut17"),
    test_limit: Annotated[int | None, typer.Option(help="First N test sentences (default: all 1,287).")] = None,
    train_max_empty_share: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=0.99,
            help="Train: every sentence with an entity + a seeded sample of empty ones "
            "up to this share (e.g. 0.33; default: all sentences as they come).",
        ),
    ] = None,
    force: bool = False,
) -> None:
    """WNUT-17 -> the `entities` dataset format (person, location, corporation+group -> organizations)."""
    from training.importers import cap_empty, wnut17
    from training.split import FrozenTestError, write_split

    parts = wnut17(src)
    parts["test"] = parts["test"][:test_limit]
    if train_max_empty_share is not None:
        parts["train"] = cap_empty(parts["train"], train_max_empty_share)
    try:
        manifest = write_split(parts, out_dir, force=force, meta={"task": "entities", "source": str(src)})
    except (FrozenTestError, ValueError) as e:
        raise _fail(e) from None
    console.print({k: v["records"] for k, v in manifest["files"].items()})


@data_app.command("sroie")
def sroie_cmd(
    out: Annotated[Path, typer.Option("--out", "--out-dir", help="Folder for the JSONL files and manifest.json.")],
    src: Annotated[Path, typer.Option(help="SROIE task-3 JSONL: {id, text, output} with labels as printed.")] = Path(
        "../shared/data/sroie/train.jsonl"
    ),
    val: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of receipts in the frozen val.jsonl.")] = 0.15,
    seed: int = 0,
    as_test: Annotated[bool, typer.Option(help="Every receipt into a frozen test.jsonl (held-out receipts).")] = False,
    force: Annotated[bool, typer.Option(help="Replace a different frozen val/test split.")] = False,
    tasks_dir: TasksDir = None,
) -> None:
    """SROIE 2019 task 3 -> the `receipt` format: labels normalised (ISO dates, numeric totals), every line
    checked, a seeded frozen validation split; what could not be normalised is listed, never dropped silently."""
    from rich.markup import escape

    from training.split import FrozenTestError
    from training.sroie import import_sroie, write_sroie

    try:
        imported = import_sroie(src, _task("receipt", tasks_dir))
        manifest = write_sroie(imported, out, val=val, seed=seed, as_test=as_test, force=force)
    except (FrozenTestError, ValueError, OSError) as e:
        raise _fail(e) from None
    report = manifest["report"]
    console.print(f"{src}: {report['lines']} lines, {report['imported']} receipts imported, "
                  f"{report['rejected_receipts']} rejected", soft_wrap=True)  # fmt: skip
    for issue in imported.rejected:
        console.print(f"  [red]rejected[/red] {escape(str(issue))}", highlight=False, soft_wrap=True)
    for issue in imported.notes:
        console.print(f"  note {escape(str(issue))}", highlight=False, soft_wrap=True)
    for name, info in manifest["files"].items():
        console.print(f"{name}: {info['records']} records  sha256 {info['sha256']}", soft_wrap=True)
    console.print(f"manifest: {out / 'manifest.json'}  (source sha256 {manifest['source_sha256']})", soft_wrap=True)


def train_command(ctx: typer.Context) -> None:
    """LoRA fine-tuning; arguments as in `python -m training.train --help` (or --config_file train.yaml)."""
    from training.train import cli

    cli(list(ctx.args))


def eval_command(
    task: Annotated[str, typer.Option(help="Task to evaluate.")],
    data: Annotated[Path, typer.Option(help="Frozen test JSONL.")],
    backend: Annotated[str, typer.Option(help="Backend to evaluate (as configured in the service).")],
    out: Annotated[Path, typer.Option(help="Run file to write (JSON).")],
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8080",
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="First N items only.")] = None,
    fields: Annotated[str | None, typer.Option(help="Comma-separated fields to score (default: all).")] = None,
    allow_changed_test: Annotated[bool, typer.Option(help="Evaluate a test set whose hash changed.")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="EXTRACTION_API_KEY", help="Bearer key, if needed.")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="Add a metric: sroie (SROIE task 3's per-field exact match).")
    ] = None,
    shed_retries: Annotated[
        int, typer.Option(min=0, help="Send a 429/503 (load shed) again after its Retry-After, this many times.")
    ] = 5,
) -> None:
    """Run a frozen test set through the running service against one backend; write the run file."""
    from rich.progress import Progress

    from training.datasets import DatasetError
    from training.evaluate import EvalArgs, run_eval
    from training.split import FrozenTestError

    args = EvalArgs(task, data, backend, url, out, concurrency, limit, fields.split(",") if fields else None,
                    allow_changed_test, api_key=api_key, metrics=tuple(metric or ()),
                    shed_retries=shed_retries)  # fmt: skip
    try:
        with Progress(console=err) as progress:
            bar = progress.add_task(f"{task} on {backend}", total=None)
            run = asyncio.run(run_eval(args, progress=lambda: progress.advance(bar)))
    except (FrozenTestError, DatasetError, ValueError) as e:
        raise _fail(e) from None
    s = run["summary"]
    table = Table(title=f"{task} / {backend}: {s['items']} items")
    for column in ("exact match", "field F1", "valid 1st", "valid", "attempts", "in tok", "out tok", "USD/req",
                   "P50 ms", "P95 ms", "req/s"):  # fmt: skip
        table.add_column(column)
    table.add_row(
        f"{s['exact_match']:.3f}", f"{s['field_micro']['f1']:.3f}", f"{s['schema_valid_first_attempt']:.1%}",
        f"{s['schema_valid_after_reasks']:.1%}", f"{s['attempts_per_request']:.2f}",
        f"{s['input_tokens_per_request']:.0f}", f"{s['output_tokens_per_request']:.1f}",
        f"{s['cost_per_request_usd']:.6f}", str(s["latency_ms"]["p50"]), str(s["latency_ms"]["p95"]),
        str(s["requests_per_s"]),
    )  # fmt: skip
    console.print(table)
    if "sroie" in s:
        _print_sroie(s)
    grounding = s["grounding"]
    if grounding["values_snapped"]:
        console.print(
            f"grounding: {grounding['values_snapped']} value(s) in {grounding['requests_with_snaps']} answer(s) "
            f"snapped to the text; field F1 as the model answered: {grounding['as_answered']['field_micro']['f1']:.3f}"
        )
    console.print(f"errors: {s['error_buckets']}\nrun: {out}  disagreements: {out.with_suffix('.disagreements.jsonl')}")


def _print_sroie(s: dict[str, Any]) -> None:
    sroie = s["sroie"]
    table = Table(title="SROIE task-3 metric (exact match of the normalised field) next to field F1")
    for column in ("field", "SROIE P", "SROIE R", "SROIE F1", "field F1"):
        table.add_column(column)
    rows = [*sroie["fields"].items(), ("all (micro)", sroie["micro"])]
    for name, score in rows:
        f1 = s["field_micro"] if name == "all (micro)" else s["fields"].get(name)
        table.add_row(name, f"{score['precision']:.3f}", f"{score['recall']:.3f}", f"{score['f1']:.3f}",
                      f"{f1['f1']:.3f}" if f1 else "-")  # fmt: skip
    console.print(table)
    if sroie["worst"]:
        worst = Table(title="worst disagreements (SROIE metric)")
        for column in ("id", "field", "gold", "predicted"):
            worst.add_column(column, overflow="fold")
        for row in sroie["worst"][:10]:
            none = f"(none: {row['error']})" if row["error"] else "(none)"
            predicted = row["predicted"] if row["predicted"] is not None else none
            worst.add_row(row["id"], row["field"], str(row["gold"]), predicted)
        console.print(worst)


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run files of one task.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md/.html/.json and plots.")],
    requests_per_day: Annotated[int, typer.Option(min=0)] = 10_000,
    training_cost: Annotated[float, typer.Option(min=0, help="USD the fine-tune cost.")] = 0.0,
    horizon_days: Annotated[int, typer.Option(min=1)] = 30,
    resamples: Annotated[int, typer.Option(min=100, help="Paired bootstrap resamples for the 95% intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (the same seed gives the same intervals).")] = 0,
) -> None:
    """Prompting vs fine-tuning on the items both runs share: table with 95% intervals, break-even, plots, verdict."""
    from training.report import REPORT_FILES, build_report, headline, load_run

    if len(runs) < 2:
        raise _fail(ValueError("give two or more run files"), 2)
    if len({p.resolve() for p in runs}) < len(runs):
        raise _fail(ValueError("a run file is given twice"), 2)
    for name in REPORT_FILES:
        _not_an_input(out / name, *runs)
    try:
        loaded = [load_run(p) for p in runs]
    except (ValueError, OSError) as e:
        raise _fail(e) from None
    try:
        report = build_report(loaded, requests_per_day, training_cost, horizon_days, out, resamples=resamples,
                              seed=seed)  # fmt: skip
    except (ValueError, OSError) as e:
        raise _fail(e) from None
    except (KeyError, TypeError, AttributeError) as e:  # a field load_run does not check, of the wrong shape
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise _fail(ValueError(f"the run files are not as `extraction eval` writes them ({what}): "
                               f"{', '.join(map(str, runs))}")) from None  # fmt: skip
    sys.stdout.write((out / "report.md").read_text())
    if report["roles_assumed"]:
        err.print(f"[yellow]warning[/yellow] {report['factors'][0]}")
    console.print(f"\nrecommendation: [bold]{headline(report)}[/bold]  ({out}/report.html)")


def register(app: typer.Typer) -> None:
    """The `extraction.commands` entry point: adds data, train, eval and report to the `extraction` app."""
    app.add_typer(data_app, name="data")
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                add_help_option=False)(train_command)  # fmt: skip
    app.command("eval")(eval_command)
    app.command("report")(report_command)
