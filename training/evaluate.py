"""Evaluate one backend on a frozen test set through the running service.

    extraction eval --task receipt --data data/receipt/test.jsonl --backend local-finetuned \\
        --url http://127.0.0.1:8080 --out runs/receipt-local-finetuned.json

Writes a run file (meta, summary, per-item results with each field's TP/FP/FN) and, beside it,
`*.disagreements.jsonl` with every item whose output differs from the gold answer. The test file's hash is
checked against its split manifest. `--metric sroie` adds the SROIE task-3 leaderboard's metric (per-field
exact match of the normalised strings, see training/metrics.py) to each item and to the summary.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from service.files import WriteError, atomic_write, write_target
from service.grounding import keys_of, replaced
from service.tasks import Task
from training.datasets import Record, load_dataset, refuse_overwriting_inputs
from training.metrics import Scores, error_kind, score_field, sroie_item, sroie_summary
from training.split import MANIFEST, check_frozen
from training.sroie import SROIE_FIELDS

REQUEST_ERRORS = ("invalid_json", "schema_invalid", "upstream_error", "timeout", "rejected")
METRICS = ("field", "sroie")  # field-level F1 and exact match always; sroie on request


@dataclass
class EvalArgs:
    task: str
    data: Path
    backend: str
    url: str = "http://127.0.0.1:8080"
    out: Path | None = None
    concurrency: int = 8
    limit: int | None = None
    fields: list[str] | None = None
    allow_changed_test: bool = False
    timeout_s: float = 600.0
    api_key: str | None = None
    metrics: tuple[str, ...] = ()
    shed_retries: int = 5  # a 429/503 (shed, rate-limited) is sent again after its Retry-After, this many times


SHED_STATUSES = (429, 503)
MAX_SHED_WAIT_S = 30.0


def shed_wait(headers: Any) -> float:
    """Seconds to wait before sending a shed request again: its Retry-After, capped; 1 s if absent."""
    try:
        return min(max(float(headers.get("Retry-After", 1)), 0.0), MAX_SHED_WAIT_S)
    except (TypeError, ValueError):
        return 1.0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def request_error_kind(status: int, error: dict[str, Any] | None) -> str | None:
    if status == 200:
        return None
    code = (error or {}).get("code", "")
    if code in ("schema_validation_failed", "budget_exceeded"):
        messages = " ".join(e.get("message", "") for e in (error or {}).get("details", {}).get("errors", []))
        return "invalid_json" if "JSON" in messages else "schema_invalid"
    if code == "deadline_exceeded":
        return "timeout"
    if status < 500:
        return "rejected"
    return "upstream_error"


def summarize(
    task: Task, fields: list[str], items: list[dict[str, Any]], wall_s: float, metrics: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The run's summary: accuracy, structure adherence, tokens, cost, latency, throughput, error buckets."""
    scores, as_answered = Scores(), Scores()
    buckets: dict[str, int] = dict.fromkeys(("missing_field", "wrong_value", "wrong_type", *REQUEST_ERRORS), 0)
    for item in items:
        pred = item["output"] if isinstance(item["output"], dict) else None
        scores.add(item["gold"], pred, fields)
        as_answered.add(item["gold"], ungrounded(pred, item.get("grounding") or []), fields)
        if item["error_kind"]:
            buckets[item["error_kind"]] += 1
        for kind in item["field_errors"].values():
            buckets[kind] += 1
    n = len(items)
    ok = [i for i in items if i["status"] == 200]
    latencies = [i["latency_ms"] for i in items]
    costed = [i for i in items if i["attempts"] is not None]

    def mean(key: str, subset: list[dict[str, Any]]) -> float:
        return round(sum(i[key] or 0 for i in subset) / len(subset), 6) if subset else 0.0

    return {
        **scores.as_dict(),
        "fields_scored": fields,
        "schema_valid_first_attempt": round(sum(i["attempts"] == 1 for i in ok) / n, 4) if n else 0.0,
        "schema_valid_after_reasks": round(len(ok) / n, 4) if n else 0.0,
        "attempts_per_request": mean("attempts", costed),
        "input_tokens_per_request": mean("input_tokens", costed),
        "output_tokens_per_request": mean("output_tokens", costed),
        "cost_per_request_usd": mean("cost_usd", costed),
        "cost_total_usd": round(sum(i["cost_usd"] or 0 for i in items), 6),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "mean": round(sum(latencies) / n, 1) if n else None,
        },  # fmt: skip
        "requests_per_s": round(n / wall_s, 3) if wall_s else None,
        "wall_s": round(wall_s, 1),
        "error_buckets": buckets,
        "shed_retries": sum(i.get("shed_retries", 0) for i in items),  # 429/503 sent again after Retry-After
        # What the task's grounding rules changed, and the scores of the answers as the model gave them
        "grounding": {
            "values_snapped": sum(len(i.get("grounding") or []) for i in items),
            "requests_with_snaps": sum(bool(i.get("grounding")) for i in items),
            "as_answered": {
                "field_micro": as_answered.micro.as_dict(),
                "fields": {n: sc.as_dict() for n, sc in sorted(as_answered.fields.items())},
            },
        },  # fmt: skip
        **({"sroie": sroie_summary(items, SROIE_FIELDS)} if "sroie" in metrics else {}),
    }


def ungrounded(output: dict[str, Any] | None, changes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`output` with the service's grounding changes undone (each `path` back to its `model_value`): the answer
    as the model gave it, to score what grounding changed."""
    for change in changes if output is not None else []:
        try:
            output = replaced(output, keys_of(change["path"]), change["model_value"])
        except (KeyError, IndexError, TypeError):
            continue  # a path the answer does not have: nothing to undo
    return output


INVALID_RESPONSE = 599  # as a client error: the item is a failed request, not an answer to score


def _shown(body: Any, limit: int = 120) -> str:
    try:
        text = json.dumps(body, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(body))
    return text if len(text) <= limit else text[:limit] + "..."


def checked_answer(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """(status, body) of one /v1/extract answer for `_item`. A 200 that is no extraction response (no `data`
    and `task`: another server, a proxy's page) is not an answer with every field missing but a failed request,
    `invalid_response`; so is any answer whose JSON is not an object."""
    if isinstance(body, dict) and (
        ("data" in body and "task" in body) if status == 200 else isinstance(body.get("error"), dict)
    ):
        return status, body
    message = f"HTTP {status} but not an extraction-service response: {_shown(body)}"
    return (INVALID_RESPONSE if status == 200 else status), {"error": {"code": "invalid_response", "message": message}}


def _not_the_service(args: EvalArgs, path: str, body: Any, what: str) -> ValueError:
    """A 200 catalogue answer of another shape: one line naming the URL and what came back."""
    return ValueError(f"{args.url}{path} answered HTTP 200 but not with {what} ({_shown(body)}); is {args.url} an "
                      "extraction-service (give its root URL, without /v1)?")  # fmt: skip


def _item(
    record: Record, status: int, body: dict[str, Any], latency_ms: float, fields: list[str], sroie: bool = False
) -> dict[str, Any]:
    error = body.get("error") if status != 200 else None
    details = (error or {}).get("details") or {}
    details = details if isinstance(details, dict) else {}
    usage = body.get("usage") or details.get("usage") or {}
    usage = usage if isinstance(usage, dict) else {}
    output = body.get("data") if status == 200 else None
    field_errors, scores = {}, {}
    for name in fields:
        present = isinstance(output, dict) and name in output
        value = output.get(name) if isinstance(output, dict) else None
        kind = error_kind(record.output.get(name), value, present)
        if kind and status == 200:
            field_errors[name] = kind
        # TP/FP/FN per field let `report` recompute micro F1 on any resample or subset of the items.
        score = score_field(record.output.get(name), value)
        scores[name] = [score.tp, score.fp, score.fn]
    item = {
        "id": record.id,
        "status": status,
        "output": output,
        "gold": record.output,
        "error": {"code": error.get("code"), "message": error.get("message")} if error else None,
        "error_kind": request_error_kind(status, error),
        "field_errors": field_errors,
        "scores": scores,
        "attempts": body.get("attempts", details.get("attempts")),
        "retries": body.get("retries", details.get("retries")),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cost_usd": body.get("cost_usd", details.get("cost_usd")),
        "latency_ms": round(latency_ms, 1),
        "server_latency_ms": body.get("latency_ms"),
        "grounding": (body.get("grounding") or []) if status == 200 else [],
    }
    if sroie:
        item["sroie"] = sroie_item(record.output, output if isinstance(output, dict) else None, SROIE_FIELDS)
    return item


async def run_eval(args: EvalArgs, progress: Any = None) -> dict[str, Any]:
    """Send every test item through the service (bounded concurrency); returns the run (also written to disk)."""
    if unknown := sorted(set(args.metrics) - set(METRICS)):
        raise ValueError(f"unknown metric(s) {unknown}: choose from {', '.join(METRICS)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1 (got {args.limit})")
    frozen = check_frozen(args.data, args.allow_changed_test)
    if args.out:
        check_writable(args.out)  # before anything is sent (and billed), not after the run
        for written in (args.out, disagreements_path(args.out)):  # the frozen test set and its manifest stay whole
            refuse_overwriting_inputs(written, args.data, args.data.parent / MANIFEST)
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"--url {args.url!r}: give the service's http:// or https:// URL, e.g. http://127.0.0.1:8080")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout_s, headers=headers) as client:
        detail = await _get(client, f"/v1/tasks/{args.task}", args)
        if not (isinstance(detail, dict) and isinstance(detail.get("schema"), dict)
                and isinstance(detail.get("instructions"), str)):  # fmt: skip
            raise _not_the_service(args, f"/v1/tasks/{args.task}", detail, "a task's detail")
        listed = await _get(client, "/v1/backends", args)
        if not (isinstance(listed, list) and all(isinstance(b, dict) and isinstance(b.get("name"), str)
                                                 for b in listed)):  # fmt: skip
            raise _not_the_service(args, "/v1/backends", listed, "a list of backends")
        backends = {b["name"]: b for b in listed}
        if args.backend not in backends:
            raise SystemExit(f"unknown backend {args.backend!r}; the service has: {', '.join(sorted(backends))}")
        try:
            task = Task.model_validate(
                {"name": args.task, "schema": detail["schema"], "instructions": detail["instructions"]}
            )
        except ValidationError as e:
            problem = e.errors()[0]
            raise ValueError(f"{args.url}/v1/tasks/{args.task}: the task's schema cannot be used "
                             f"({'.'.join(str(p) for p in problem['loc'])}: {problem['msg']})") from None  # fmt: skip
        records = load_dataset(args.data, task)[: args.limit]
        properties = list(task.json_schema.get("properties", {}))
        if args.fields and (unknown := [f for f in args.fields if f not in properties]):
            raise ValueError(f"--fields {', '.join(unknown)}: task {args.task!r} has {', '.join(properties)}")
        fields = args.fields or [f for f in properties if f not in detail.get("eval_ignore", [])]
        if "sroie" in args.metrics and (missing := [f for f in SROIE_FIELDS if f not in properties]):
            raise ValueError(f"--metric sroie scores {', '.join(SROIE_FIELDS)}; task {args.task!r} lacks {missing}")
        limit = asyncio.Semaphore(args.concurrency)

        async def one(record: Record) -> dict[str, Any]:
            # Load shedding is the service protecting itself, not the model's answer: a 429/503 is sent again
            # after its Retry-After (at most `shed_retries` times) and counted; the latency is the last try's.
            shed = 0
            async with limit:
                while True:
                    started = time.perf_counter()
                    try:
                        r = await client.post("/v1/extract", json={"task": args.task, "text": record.text,
                                                                   "backend": args.backend})  # fmt: skip
                        status, body = r.status_code, r.json()
                    except (httpx.HTTPError, ValueError, RecursionError) as e:
                        status, body = 599, {"error": {"code": "client_error", "message": str(e)}}
                    else:
                        status, body = checked_answer(status, body)
                    latency = (time.perf_counter() - started) * 1000
                    if status not in SHED_STATUSES or shed >= args.shed_retries:
                        break
                    shed += 1
                    await asyncio.sleep(shed_wait(r.headers))  # the server's own Retry-After
            if progress is not None:
                progress()
            item = _item(record, status, body, latency, fields, sroie="sroie" in args.metrics)
            item["shed_retries"] = shed
            return item

        started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        t0 = time.perf_counter()
        items = await asyncio.gather(*(one(r) for r in records))
        wall = time.perf_counter() - t0
    backend = backends[args.backend]
    run = {
        "meta": {
            "task": args.task,
            "backend": args.backend,
            "model": backend.get("model"),  # .get: a run already paid for is not lost to a missing catalogue key
            "kind": backend.get("kind"),
            "prompt_style": backend.get("prompt_style"),
            "pricing": backend.get("pricing"),
            "url": args.url,
            "test_file": str(args.data),
            "test_sha256": frozen["sha256"],
            "test_frozen": frozen["frozen"],
            "concurrency": args.concurrency,
            "started": started_at,
            "items": len(items),
            "metrics": ["field", *(m for m in args.metrics if m != "field")],
        },  # fmt: skip
        "summary": summarize(task, fields, items, wall, args.metrics),
        "items": items,
    }
    if args.out:
        write_run(run, args.out)
    return run


async def _get(client: httpx.AsyncClient, path: str, args: EvalArgs) -> Any:
    """GET one of the service's catalogue routes; a ValueError a user can act on when it fails."""
    try:
        r = await client.get(path)
    except httpx.HTTPError as e:
        reason = f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot reach the service at {args.url} ({reason}); is `extraction serve` running?") from None
    if r.status_code == 404 and path.startswith("/v1/tasks/"):
        try:
            listed = (await client.get("/v1/tasks")).json()
            names = ", ".join(str(t["name"]) for t in listed)
        except (httpx.HTTPError, ValueError, TypeError, KeyError):  # not an extraction-service's catalogue
            raise ValueError(f"{args.url} has no /v1/tasks catalogue: is it an extraction-service (give its root "
                             "URL, without /v1)?") from None  # fmt: skip
        raise ValueError(f"unknown task {args.task!r}; the service has: {names}")
    if r.status_code in (401, 403):
        if r.status_code == 401 and not args.api_key:
            raise ValueError(f"{path}: HTTP 401: give an API key (--api-key or EXTRACTION_API_KEY)")
        said = _error_message(r) or "no reason given"
        if r.status_code == 401:  # a key was sent and refused: asking for one would send the user in circles
            raise ValueError(f"{args.url}{path}: HTTP 401: the service refused the API key ({said}); "
                             "check --api-key or EXTRACTION_API_KEY")  # fmt: skip
        raise ValueError(f"{args.url}{path}: HTTP 403: the API key may not do this ({said})")
    if r.status_code != 200:
        raise ValueError(f"{args.url}{path}: HTTP {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except (ValueError, RecursionError):
        raise ValueError(f"{args.url}{path}: the answer is not JSON; is {args.url} an extraction-service?") from None


def _error_message(r: httpx.Response) -> str | None:
    """The service's `error.message`, if the body is its error JSON."""
    try:
        error = r.json().get("error")
        return str(error["message"]) if isinstance(error, dict) and error.get("message") else None
    except (ValueError, AttributeError, RecursionError):
        return None


def check_writable(out: Path) -> None:
    """`out` can be written: not a folder, and a file can be made in its nearest existing folder (ValueError
    otherwise). Nothing is created: a run refused later leaves no folders behind."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file path")
    for path in (out, disagreements_path(out)):
        try:
            write_target(path)  # a device, FIFO or socket is refused, a symlink followed
        except WriteError as e:
            raise ValueError(f"--out {out}: {e}") from None
    existing = Path(os.path.realpath(out)).parent  # where the file will be made, symlinks followed
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so the folder cannot be made")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{out.name}.", suffix=".check"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {existing} ({e.strerror})") from None


def write_run(run: dict[str, Any], out: Path) -> None:
    """The run JSON and its disagreements file, each written atomically (WriteError, a ValueError, if not)."""
    disagreements = []
    for i in run["items"]:
        # with --metric sroie, also the fields only that metric counts wrong (case, punctuation)
        sroie = [name for name, (_, fp, fn) in i.get("sroie", {}).items() if fp or fn]
        if i["field_errors"] or i["status"] != 200 or sroie:
            disagreements.append({"id": i["id"], "gold": i["gold"], "output": i["output"],
                                  "field_errors": i["field_errors"], "error": i["error"],
                                  **({"sroie_errors": sroie} if "sroie" in i else {})})  # fmt: skip
    atomic_write(out, json.dumps(run, indent=1, ensure_ascii=False), make_parents=True)
    lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in disagreements)
    atomic_write(disagreements_path(out), lines, make_parents=True)


def disagreements_path(out: Path) -> Path:
    """The `*.disagreements.jsonl` written beside the run file `out`."""
    return out.with_suffix(".disagreements.jsonl")
