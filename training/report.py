"""The decision report: prompting vs fine-tuning, side by side, from evaluation runs on the same test set.

    extraction report runs/receipt-local-prompted.json runs/receipt-local-finetuned.json \\
        --requests-per-day 12000 --training-cost 2.50 --horizon-days 30 --out reports/receipt

Runs are compared item by item on the items they share (training/pairing.py: one test file, the intersection of
their ids); every figure and the difference between the compared pair get paired-bootstrap intervals
(training/stats.py). Writes report.md, report.html, report.json, intervals.png, cost_vs_accuracy.png and
latency.png.
"""

from __future__ import annotations

import html
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from training.pairing import label, pair_runs
from training.pairing import slices as pair_slices
from training.report_plots import plots
from training.stats import CONFIDENCE, FIELD, RESAMPLES, Difference, compare, point_figures

ACCURACY_TOLERANCE = 0.01  # a fine-tuned model this close to the prompted one counts as "as accurate"
HYBRID_BAND = 0.05  # within this accuracy loss, a cheaper fine-tuned model is worth a fallback design
USEFUL_F1 = 0.5  # below this field F1 neither backend is fit for the task
HYBRID_KEEPS = 0.9  # "a little lower": the fine-tuned model keeps at least this share of the prompted F1
# what `build_report` writes into its folder (report_plots.plots the .png files)
REPORT_FILES = ("report.json", "report.md", "report.html", "cost_vs_accuracy.png", "latency.png", "intervals.png")


def load_run(path: Path) -> dict[str, Any]:
    """A run file as `extraction eval` writes it, or a one-line ValueError naming the file and what is wrong
    (the report reads meta, summary and every item: a wrong type there must not be a traceback)."""
    refused = f"{path} is not a run file from `extraction eval`"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{refused}: not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"{refused}: JSON nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{refused}: not JSON ({getattr(e, 'msg', e)})") from None
    if problem := run_shape_problem(run):
        raise ValueError(f"{refused}: {problem}")
    run["meta"]["file"] = str(path)
    return dict(run)


def run_shape_problem(run: Any) -> str | None:
    """What in a parsed run file has the wrong type for the report, or None."""
    if not isinstance(run, dict):
        return f"the file holds a JSON {type(run).__name__}, not an object"
    for key, kind in (("meta", dict), ("summary", dict), ("items", list)):
        if key not in run:
            return f"no `{key}`"
        if not isinstance(run[key], kind):
            return f"`{key}` is a {type(run[key]).__name__}, not {'an object' if kind is dict else 'a list'}"
    for key in ("task", "backend"):
        if not isinstance(run["meta"].get(key), str):
            return f"`meta.{key}` is not a string"
    fields = run["summary"].get("fields_scored")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        return "`summary.fields_scored` is not a list of field names"
    for k, item in enumerate(run["items"]):
        if not isinstance(item, dict):
            return f"`items[{k}]` is a {type(item).__name__}, not an object"
        if not isinstance(item.get("id"), str | int) or isinstance(item.get("id"), bool):
            return f"`items[{k}].id` is missing or not a string"
        latency = item.get("latency_ms")
        if not isinstance(latency, int | float) or isinstance(latency, bool):
            return f"`items[{k}].latency_ms` is not a number"
        for key in ("scores", "gold"):
            if key in item and not isinstance(item[key], dict):
                return f"`items[{k}].{key}` is not an object"
        if isinstance(item.get("scores"), dict) and not all(
            isinstance(s, list) and len(s) == 3 and all(isinstance(x, int | float) for x in s)
            for s in item["scores"].values()
        ):
            return f"`items[{k}].scores` holds something other than [TP, FP, FN] triples"
    return None


def run_names(runs: list[dict[str, Any]]) -> list[str]:
    """How the report names each run: its backend; where runs share one (two adapters served under one name,
    one backend before and after a change), its backend and the run file's name."""
    backends = [str(r["meta"]["backend"]) for r in runs]
    names = [
        f"{b} ({Path(r['meta'].get('file') or f'run-{k + 1}').stem})" if backends.count(b) > 1 else b
        for k, (b, r) in enumerate(zip(backends, runs, strict=True))
    ]
    return [n if names.count(n) == 1 else f"{n} #{k + 1}" for k, n in enumerate(names)]


def row(run: dict[str, Any], items: list[dict[str, Any]], figures: dict[str, float],
        requests_per_day: int) -> dict[str, Any]:  # fmt: skip
    """One run's line of the table, on the shared items (throughput is the whole run's)."""
    m = run["meta"]
    costed = [i for i in items if i.get("attempts") is not None]

    def mean(key: str) -> float:  # as evaluate.summarize: over items that reached a backend
        return round(sum(i.get(key) or 0 for i in costed) / len(costed), 6) if costed else 0.0

    per_request = Decimal(str(mean("cost_usd")))
    return {
        "backend": m["backend"],
        "model": m["model"],
        "prompt_style": m["prompt_style"],
        "items": len(items),
        "run_items": len(run["items"]),
        "exact_match": round(figures["exact_match"], 4),
        "field_f1": round(figures["field_f1"], 4),
        # values the task's grounding rules snapped to the text, per item (a model's miscopies)
        "grounded": round(sum(len(i.get("grounding") or []) for i in items) / len(items), 3) if items else 0.0,
        "schema_valid_first": round(figures["schema_valid_first"], 4),
        "schema_valid": round(figures["schema_valid"], 4),
        "attempts": mean("attempts"),
        "input_tokens": mean("input_tokens"),
        "output_tokens": mean("output_tokens"),
        "cost_per_request": float(per_request),
        "cost_per_day": float(per_request * requests_per_day),
        "cost_per_month": float(per_request * requests_per_day * 30),
        "p50_ms": figures["latency_p50_ms"],
        "p95_ms": figures["latency_p95_ms"],
        "requests_per_s": run["summary"].get("requests_per_s"),
    }


def difference_factor(d: Difference, items: int | None) -> str:
    """The field-F1 difference in words: its interval, and whether more items could settle it."""
    on = f", {items:,} shared items" if items else ""
    text = (f"field F1 difference, fine-tuned − prompted: {d.value:+.3f} "
            f"({CONFIDENCE:.0%} interval {d.low:+.3f} to {d.high:+.3f}{on}): ")  # fmt: skip
    if d.significant:
        return text + "significant"
    if d.items_needed is None:
        return text + "no significant difference (the same field F1)"
    return text + f"no significant difference; about {d.items_needed:,} items would resolve a difference of this size"


def decide(prompted: dict[str, Any], finetuned: dict[str, Any], saving_per_day: float, payback_days: float | None,
           horizon_days: int, difference: Difference | None = None,
           items: int | None = None) -> tuple[str, list[str]]:  # fmt: skip
    """(recommendation, the factors that decided it); `difference`: the paired field-F1 difference, if known."""
    gap = finetuned["field_f1"] - prompted["field_f1"]
    factors = [
        f"field F1: fine-tuned {finetuned['field_f1']:.3f} vs prompted {prompted['field_f1']:.3f} ({gap:+.3f})",
        f"cost per request: ${finetuned['cost_per_request']:.6f} vs ${prompted['cost_per_request']:.6f}; "
        f"saving ${saving_per_day:,.2f}/day",
        f"P95 latency: {finetuned['p95_ms']} ms vs {prompted['p95_ms']} ms",
        f"schema-valid after re-asks: {finetuned['schema_valid']:.1%} vs {prompted['schema_valid']:.1%}",
    ]
    if difference is not None:
        factors.insert(1, difference_factor(difference, items))
    # Quality may outweigh cost only when the test set can tell the two apart.
    significant = difference is None or difference.significant
    # ... and a significant gain that costs nothing more per request needs no payback to be worth taking
    clearly_better = significant and (gap > HYBRID_BAND or (gap > 0 and difference is not None and saving_per_day >= 0))
    pays_back = payback_days is not None and payback_days <= horizon_days
    factors.append(
        f"training pays back in {payback_days:.2f} days (horizon {horizon_days})" if payback_days is not None
        else "fine-tuning saves nothing per request, so training never pays back"
    )  # fmt: skip
    if max(finetuned["field_f1"], prompted["field_f1"]) < USEFUL_F1:  # said whichever way the choice goes
        factors.append(f"both score below {USEFUL_F1} field F1 on this test set: neither is ready for the task; "
                       "more or better training data, or a larger model, before switching")  # fmt: skip
    if gap >= -ACCURACY_TOLERANCE and (pays_back or clearly_better):
        return "fine-tuning", factors
    # "A little lower" is small in absolute and in relative terms: 0.045 -> 0.0 is not a little lower.
    kept = finetuned["field_f1"] / prompted["field_f1"] if prompted["field_f1"] > 0 else 1.0
    if gap < -HYBRID_BAND or saving_per_day <= 0 or kept < HYBRID_KEEPS:
        return "prompting", factors
    if gap < -ACCURACY_TOLERANCE and pays_back:
        factors.append("accuracy is a little lower: serve the fine-tuned model first and fall back to the prompted "
                       "one when validation fails (the fallback chain)")  # fmt: skip
        return "hybrid", factors
    return "prompting", factors


def verdict(d: Difference, a: str, b: str, what: str = "field F1") -> str:
    """The verdict on a difference: "no significant difference in field F1", or which of a and b is better."""
    if not d.significant:
        return f"no significant difference in {what}"
    better, worse = (b, a) if d.value > 0 else (a, b)
    return f"{better} is better than {worse} in {what}"


def _pair(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """The rows the decision compares: the best prompted and the best fine-tuned (field F1, then cost)."""

    def best(among: list[int]) -> int:
        return max(among, key=lambda k: (rows[k]["field_f1"], -rows[k]["cost_per_request"]))

    def style(name: str) -> list[int]:
        return [k for k, r in enumerate(rows) if r["prompt_style"] == name]

    a = best(style("few_shot")) if style("few_shot") else 0
    b = best(style("finetuned")) if style("finetuned") else len(rows) - 1
    if a == b:  # e.g. two adapters, the first the best: compare it with the best of the others
        b = best([k for k in range(len(rows)) if k != a])
    return a, b


def headline(report: dict[str, Any]) -> str:
    """The recommendation as a word (prompting / fine-tuning / hybrid), or, where both runs are of one prompt
    style and "fine-tuning" would name the wrong thing, the run it points at."""
    return str(report["recommended_run"] if report.get("roles_assumed") else report["recommendation"])


def build_report(
    runs: list[dict[str, Any]], requests_per_day: int, training_cost: float, horizon_days: int, out: Path,
    resamples: int = RESAMPLES, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Pair the runs on their shared items, bootstrap every figure, decide, and write the report files."""
    if len(runs) < 2:
        raise ValueError("give two or more run files")
    if any(runs[i] == runs[j] for i in range(len(runs)) for j in range(i)):
        raise ValueError("the same run is given twice; compare runs of different backends or adapters")
    if not all(math.isfinite(x) for x in (training_cost,)):
        raise ValueError(f"--training-cost must be a finite number of USD, not {training_cost}")
    tasks = {r["meta"]["task"] for r in runs}
    if len(tasks) > 1:
        raise ValueError(f"runs cover different tasks {sorted(tasks)}; compare runs of one task")
    pairing = pair_runs(runs)  # refuses different test files; reduces to the shared items
    rows = [row(r, items, point_figures(t), requests_per_day)
            for r, items, t in zip(runs, pairing.items, pairing.tables, strict=True)]  # fmt: skip
    for r, name in zip(rows, run_names(runs), strict=True):
        r["backend"] = name
    a, b = _pair(rows)
    prompted, finetuned = rows[a], rows[b]
    roles_assumed = prompted["prompt_style"] == finetuned["prompt_style"] or finetuned["prompt_style"] != "finetuned"
    comparison = compare(pairing.tables, a, b, resamples, seed)
    for r, estimates in zip(rows, comparison.runs, strict=True):
        r["intervals"] = {k: e.as_dict() for k, e in estimates.items()}
    slices = {name: compare([t.rows(index) for t in pairing.tables], a, b, resamples, [seed, k])
              for k, (name, index) in enumerate(pair_slices(pairing.ids).items())}  # fmt: skip
    saving = (
        Decimal(str(prompted["cost_per_request"])) - Decimal(str(finetuned["cost_per_request"]))
    ) * requests_per_day
    payback = float(Decimal(str(training_cost)) / saving) if saving > 0 else None
    f1_difference = comparison.differences["field_f1"]
    recommendation, factors = decide(prompted, finetuned, float(saving), payback, horizon_days, f1_difference,
                                     comparison.items)  # fmt: skip
    report = {
        "task": tasks.pop(),
        "same_test_set": True,  # pair_runs refuses anything else
        "requests_per_day": requests_per_day,
        "training_cost_usd": training_cost,
        "horizon_days": horizon_days,
        "pairing": {
            "test_sha256": pairing.test_sha256,
            "shared_items": len(pairing.ids),
            "fields": pairing.fields,
            "runs": [
                {"run": label(r), "items": total, "dropped": dropped}
                for r, total, dropped in zip(runs, pairing.run_items, pairing.dropped, strict=True)
            ],
            "method": "paired bootstrap over items, percentile intervals",
            "resamples": resamples,
            "seed": seed,
            "confidence": CONFIDENCE,
        },
        "rows": rows,
        "prompted": prompted["backend"],
        "finetuned": finetuned["backend"],
        "differences": {k: d.as_dict() for k, d in comparison.differences.items()},
        "slices": {name: c.as_dict() for name, c in slices.items()},
        "significant": f1_difference.significant,
        "verdict": verdict(f1_difference, prompted["backend"], finetuned["backend"]),
        "saving_per_day_usd": float(saving),
        "break_even_training_budget_usd": float(saving * horizon_days),
        "payback_days": payback,
        "input_token_ratio": round(prompted["input_tokens"] / finetuned["input_tokens"], 2)
        if finetuned["input_tokens"]
        else None,
        "recommendation": recommendation,
        "factors": factors,
        "roles_assumed": roles_assumed,
        "recommended_run": {"fine-tuning": finetuned["backend"], "prompting": prompted["backend"]}.get(
            recommendation, f"{finetuned['backend']}, falling back to {prompted['backend']}"
        ),
    }
    if roles_assumed:  # two prompted runs (or two adapters): the decision's words would name the wrong thing
        factors.insert(0, f"no prompted vs fine-tuned pair: {prompted['backend']} ({prompted['prompt_style']}) plays "
                          f"the prompted side and {finetuned['backend']} ({finetuned['prompt_style']}) the fine-tuned "
                          "side; read the recommendation as a choice between these two runs")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    plots(report, [[i["latency_ms"] for i in items] for items in pairing.items], out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    (out / "report.html").write_text(to_html(report))
    return report


COLUMNS = [
    ("backend", "backend", "{}"), ("prompt_style", "prompt", "{}"), ("items", "items", "{}"),
    ("exact_match", "exact match", "{:.3f}"), ("field_f1", "field F1", "{:.3f}"), ("grounded", "snapped/req", "{:.2f}"),
    ("schema_valid_first", "valid 1st try", "{:.1%}"), ("schema_valid", "valid w/ re-asks", "{:.1%}"),
    ("attempts", "attempts/req", "{:.2f}"), ("input_tokens", "in tok/req", "{:.0f}"),
    ("output_tokens", "out tok/req", "{:.1f}"), ("cost_per_request", "USD/req", "{:.6f}"),
    ("cost_per_day", "USD/day", "{:,.2f}"), ("cost_per_month", "USD/month", "{:,.2f}"),
    ("p95_ms", "P95 ms", "{:.0f}"), ("requests_per_s", "req/s", "{:.2f}"),
]  # fmt: skip


def _cells(r: dict[str, Any]) -> list[str]:
    return [fmt.format(r[key]) if r[key] is not None else "-" for key, _, fmt in COLUMNS]


# (figure, title, format of a value); latency is better lower, everything else higher.
ACCURACY = [("exact_match", "exact match"), ("field_f1", "field F1 (micro)"),
            ("schema_valid", "schema-valid w/ re-asks"), ("schema_valid_first", "schema-valid 1st try")]  # fmt: skip
LATENCY = [("latency_p50_ms", "P50 latency ms"), ("latency_p95_ms", "P95 latency ms")]


def _estimate(e: dict[str, Any], ms: bool, sign: str = "") -> str:
    f = f"{{:{sign}.0f}}" if ms else f"{{:{sign}.3f}}"
    return f"{f.format(e['value'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def _verdict_cell(d: dict[str, Any], a: str, b: str, ms: bool) -> str:
    if d["significant"]:
        worse_b = d["value"] > 0 if ms else d["value"] < 0
        return f"{a if worse_b else b} {'faster' if ms else 'better'}"
    needed = f"; ~{d['items_needed']:,} items to resolve" if d["items_needed"] else ""
    return "no significant difference" + needed


def interval_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the interval tables, rendered alike in Markdown and HTML."""
    names = [r["backend"] for r in report["rows"]]
    a, b = report["prompted"], report["finetuned"]
    header = ["figure", *names, f"{b} − {a}", "verdict"]

    def line(title: str, runs: list[dict[str, Any]], d: dict[str, Any], ms: bool = False) -> list[str]:
        return [title, *(_estimate(e, ms) for e in runs), _estimate(d, ms, "+"), _verdict_cell(d, a, b, ms)]

    def table(figures: list[tuple[str, str]]) -> list[list[str]]:
        return [line(title, [r["intervals"][k] for r in report["rows"]], report["differences"][k], k in dict(LATENCY))
                for k, title in figures]  # fmt: skip

    fields = [(FIELD + f, f) for f in report["pairing"]["fields"]]
    tables = [("Accuracy and latency", header, table(ACCURACY + LATENCY)), ("F1 per field", header, table(fields))]
    if report["slices"]:
        slices = [line(f"{name} ({c['items']} items)", [run["field_f1"] for run in c["runs"]],
                       c["differences"]["field_f1"]) for name, c in report["slices"].items()]  # fmt: skip
        tables.append(("Field F1 per difficulty slice", ["slice", *header[1:]], slices))
    return tables


def pairing_note(report: dict[str, Any]) -> str:
    """Which items were compared, what was dropped from which run, and how the intervals were made."""
    p = report["pairing"]
    dropped = [f"{r['dropped']} of {r['items']} from {r['run']}" for r in p["runs"] if r["dropped"]]
    return (f"Compared on {p['shared_items']:,} items shared by every run (test file sha256 {p['test_sha256'][:12]}); "
            + (f"dropped {'; '.join(dropped)}. " if dropped else "no item dropped. ")
            + f"Intervals: {p['confidence']:.0%}, paired bootstrap over items ({p['resamples']:,} resamples, "
            f"seed {p['seed']}); a difference is significant when its interval excludes 0.")  # fmt: skip


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def markdown(report: dict[str, Any]) -> str:
    header = [title for _, title, _ in COLUMNS]
    payback = f"{report['payback_days']:.2f} days" if report["payback_days"] is not None else "never"
    factors = "\n".join(f"- {f}" for f in report["factors"])
    intervals = "\n\n".join(f"### {title}\n\n{_md_table(h, rows)}" for title, h, rows in interval_tables(report))
    return f"""# Prompting vs fine-tuning: `{report["task"]}`

Traffic {report["requests_per_day"]:,} requests/day, training cost ${report["training_cost_usd"]:,.2f}, horizon {report["horizon_days"]} days.

{pairing_note(report)}

{_md_table(header, [_cells(r) for r in report["rows"]])}

- saving with `{report["finetuned"]}` instead of `{report["prompted"]}`: **${report["saving_per_day_usd"]:,.2f}/day**
- break-even training budget over {report["horizon_days"]} days: **${report["break_even_training_budget_usd"]:,.2f}**
- payback of the ${report["training_cost_usd"]:,.2f} training: **{payback}**
- input tokens per request, prompted / fine-tuned: {report["input_token_ratio"]}x

## Recommendation: **{headline(report)}** ({report["verdict"]})

{factors}

## With {report["pairing"]["confidence"]:.0%} intervals

{intervals}

![intervals](intervals.png)
![cost vs accuracy](cost_vs_accuracy.png)
![latency](latency.png)
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(report: dict[str, Any]) -> str:
    main = _html_table([title for _, title, _ in COLUMNS], [_cells(r) for r in report["rows"]])
    intervals = "".join(f"<h3>{html.escape(t)}</h3>{_html_table(h, rows)}" for t, h, rows in interval_tables(report))
    factors = "".join(f"<li>{html.escape(f)}</li>" for f in report["factors"])
    payback = f"{report['payback_days']:.2f} days" if report["payback_days"] is not None else "never"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report["task"])}: prompting vs fine-tuning</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>
<h1>Prompting vs fine-tuning: <code>{html.escape(report["task"])}</code></h1>
<p>Traffic {report["requests_per_day"]:,} requests/day, training cost ${report["training_cost_usd"]:,.2f}, horizon {report["horizon_days"]} days.</p>
<p>{html.escape(pairing_note(report))}</p>
{main}
<ul><li>saving: <b>${report["saving_per_day_usd"]:,.2f}/day</b></li>
<li>break-even training budget: <b>${report["break_even_training_budget_usd"]:,.2f}</b></li>
<li>payback: <b>{payback}</b></li></ul>
<h2>Recommendation: {html.escape(headline(report))} ({html.escape(report["verdict"])})</h2><ul>{factors}</ul>
<h2>With {report["pairing"]["confidence"]:.0%} intervals</h2>{intervals}
<img src="intervals.png" alt="intervals"><img src="cost_vs_accuracy.png" alt="cost vs accuracy"><img src="latency.png" alt="latency"></body></html>
"""
