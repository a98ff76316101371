"""The decision report: prompting vs fine-tuning, side by side, from evaluation runs on the same test set.

    extraction report runs/receipt-local-prompted.json runs/receipt-local-finetuned.json \\
        --requests-per-day 12000 --training-cost 2.50 --horizon-days 30 --out reports/receipt

Writes report.md, report.html, report.json, cost_vs_accuracy.png and latency.png.
"""

from __future__ import annotations

import html
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

ACCURACY_TOLERANCE = 0.01  # a fine-tuned model this close to the prompted one counts as "as accurate"
HYBRID_BAND = 0.05  # within this accuracy loss, a cheaper fine-tuned model is worth a fallback design
USEFUL_F1 = 0.5  # below this field F1 neither backend is fit for the task
HYBRID_KEEPS = 0.9  # "a little lower": the fine-tuned model keeps at least this share of the prompted F1


def load_run(path: Path) -> dict[str, Any]:
    run: dict[str, Any] = json.loads(path.read_text())
    if "summary" not in run or "meta" not in run:
        raise ValueError(f"{path} is not a run file from `extraction eval`")
    run["meta"]["file"] = str(path)
    return run


def row(run: dict[str, Any], requests_per_day: int) -> dict[str, Any]:
    s, m = run["summary"], run["meta"]
    per_request = Decimal(str(s["cost_per_request_usd"]))
    return {
        "backend": m["backend"],
        "model": m["model"],
        "prompt_style": m["prompt_style"],
        "items": s["items"],
        "exact_match": s["exact_match"],
        "field_f1": s["field_micro"]["f1"],
        "schema_valid_first": s["schema_valid_first_attempt"],
        "schema_valid": s["schema_valid_after_reasks"],
        "attempts": s["attempts_per_request"],
        "input_tokens": s["input_tokens_per_request"],
        "output_tokens": s["output_tokens_per_request"],
        "cost_per_request": float(per_request),
        "cost_per_day": float(per_request * requests_per_day),
        "cost_per_month": float(per_request * requests_per_day * 30),
        "p50_ms": s["latency_ms"]["p50"],
        "p95_ms": s["latency_ms"]["p95"],
        "requests_per_s": s["requests_per_s"],
        "latencies": [i["latency_ms"] for i in run["items"]],
    }


def decide(prompted: dict[str, Any], finetuned: dict[str, Any], saving_per_day: float, payback_days: float | None,
           horizon_days: int) -> tuple[str, list[str]]:  # fmt: skip
    """(recommendation, the factors that decided it)."""
    gap = finetuned["field_f1"] - prompted["field_f1"]
    factors = [
        f"field F1: fine-tuned {finetuned['field_f1']:.3f} vs prompted {prompted['field_f1']:.3f} ({gap:+.3f})",
        f"cost per request: ${finetuned['cost_per_request']:.6f} vs ${prompted['cost_per_request']:.6f}; "
        f"saving ${saving_per_day:,.2f}/day",
        f"P95 latency: {finetuned['p95_ms']} ms vs {prompted['p95_ms']} ms",
        f"schema-valid after re-asks: {finetuned['schema_valid']:.1%} vs {prompted['schema_valid']:.1%}",
    ]
    pays_back = payback_days is not None and payback_days <= horizon_days
    factors.append(
        f"training pays back in {payback_days:.2f} days (horizon {horizon_days})" if payback_days is not None
        else "fine-tuning saves nothing per request, so training never pays back"
    )  # fmt: skip
    if max(finetuned["field_f1"], prompted["field_f1"]) < USEFUL_F1:  # said whichever way the choice goes
        factors.append(f"both score below {USEFUL_F1} field F1 on this test set: neither is ready for the task; "
                       "more or better training data, or a larger model, before switching")  # fmt: skip
    if gap >= -ACCURACY_TOLERANCE and (pays_back or gap > HYBRID_BAND):
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


def build_report(
    runs: list[dict[str, Any]], requests_per_day: int, training_cost: float, horizon_days: int, out: Path
) -> dict[str, Any]:
    tasks = {r["meta"]["task"] for r in runs}
    tests = {r["meta"]["test_sha256"] for r in runs}
    if len(tasks) > 1:
        raise ValueError(f"runs cover different tasks {sorted(tasks)}; compare runs of one task")
    rows = [row(r, requests_per_day) for r in runs]

    # With several runs of a kind, the decision compares the best of each (field F1, then cost per request).
    def best(style: str, fallback: dict[str, Any]) -> dict[str, Any]:
        kind = [r for r in rows if r["prompt_style"] == style]
        return max(kind, key=lambda r: (r["field_f1"], -r["cost_per_request"])) if kind else fallback

    prompted = best("few_shot", rows[0])
    finetuned = best("finetuned", rows[-1])
    saving = (
        Decimal(str(prompted["cost_per_request"])) - Decimal(str(finetuned["cost_per_request"]))
    ) * requests_per_day
    payback = float(Decimal(str(training_cost)) / saving) if saving > 0 else None
    recommendation, factors = decide(prompted, finetuned, float(saving), payback, horizon_days)
    out.mkdir(parents=True, exist_ok=True)
    plots(rows, out)
    report = {
        "task": tasks.pop(),
        "same_test_set": len(tests) == 1,
        "requests_per_day": requests_per_day,
        "training_cost_usd": training_cost,
        "horizon_days": horizon_days,
        "rows": [{k: v for k, v in r.items() if k != "latencies"} for r in rows],
        "prompted": prompted["backend"],
        "finetuned": finetuned["backend"],
        "saving_per_day_usd": float(saving),
        "break_even_training_budget_usd": float(saving * horizon_days),
        "payback_days": payback,
        "input_token_ratio": round(prompted["input_tokens"] / finetuned["input_tokens"], 2)
        if finetuned["input_tokens"]
        else None,
        "recommendation": recommendation,
        "factors": factors,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    (out / "report.html").write_text(to_html(report))
    return report


COLUMNS = [
    ("backend", "backend", "{}"), ("prompt_style", "prompt", "{}"), ("items", "items", "{}"),
    ("exact_match", "exact match", "{:.3f}"), ("field_f1", "field F1", "{:.3f}"),
    ("schema_valid_first", "valid 1st try", "{:.1%}"), ("schema_valid", "valid w/ re-asks", "{:.1%}"),
    ("attempts", "attempts/req", "{:.2f}"), ("input_tokens", "in tok/req", "{:.0f}"),
    ("output_tokens", "out tok/req", "{:.1f}"), ("cost_per_request", "USD/req", "{:.6f}"),
    ("cost_per_day", "USD/day", "{:,.2f}"), ("cost_per_month", "USD/month", "{:,.2f}"),
    ("p95_ms", "P95 ms", "{:.0f}"), ("requests_per_s", "req/s", "{:.2f}"),
]  # fmt: skip


def _cells(r: dict[str, Any]) -> list[str]:
    return [fmt.format(r[key]) if r[key] is not None else "-" for key, _, fmt in COLUMNS]


def markdown(report: dict[str, Any]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = "\n".join("| " + " | ".join(_cells(r)) + " |" for r in report["rows"])
    payback = f"{report['payback_days']:.2f} days" if report["payback_days"] is not None else "never"
    warn = "" if report["same_test_set"] else "\n> Warning: the runs used different test files (hashes differ).\n"
    factors = "\n".join(f"- {f}" for f in report["factors"])
    return f"""# Prompting vs fine-tuning: `{report["task"]}`
{warn}
Traffic {report["requests_per_day"]:,} requests/day, training cost ${report["training_cost_usd"]:,.2f}, horizon {report["horizon_days"]} days.

{header}
{rule}
{body}

- saving with `{report["finetuned"]}` instead of `{report["prompted"]}`: **${report["saving_per_day_usd"]:,.2f}/day**
- break-even training budget over {report["horizon_days"]} days: **${report["break_even_training_budget_usd"]:,.2f}**
- payback of the ${report["training_cost_usd"]:,.2f} training: **{payback}**
- input tokens per request, prompted / fine-tuned: {report["input_token_ratio"]}x

## Recommendation: **{report["recommendation"]}**

{factors}

![cost vs accuracy](cost_vs_accuracy.png)
![latency](latency.png)
"""


def to_html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in report["rows"])
    factors = "".join(f"<li>{html.escape(f)}</li>" for f in report["factors"])
    payback = f"{report['payback_days']:.2f} days" if report["payback_days"] is not None else "never"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report["task"])}: prompting vs fine-tuning</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>
<h1>Prompting vs fine-tuning: <code>{html.escape(report["task"])}</code></h1>
<p>Traffic {report["requests_per_day"]:,} requests/day, training cost ${report["training_cost_usd"]:,.2f}, horizon {report["horizon_days"]} days.</p>
<table><tr>{head}</tr>{body}</table>
<ul><li>saving: <b>${report["saving_per_day_usd"]:,.2f}/day</b></li>
<li>break-even training budget: <b>${report["break_even_training_budget_usd"]:,.2f}</b></li>
<li>payback: <b>{payback}</b></li></ul>
<h2>Recommendation: {html.escape(report["recommendation"])}</h2><ul>{factors}</ul>
<img src="cost_vs_accuracy.png" alt="cost vs accuracy"><img src="latency.png" alt="latency"></body></html>
"""


def plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["cost_per_request"] * 1000, r["field_f1"], s=60)
        ax.annotate(r["backend"], (r["cost_per_request"] * 1000, r["field_f1"]), textcoords="offset points",
                    xytext=(5, 5))  # fmt: skip
    ax.set_xlabel("USD per 1,000 requests")
    ax.set_ylabel("field F1")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("cost vs accuracy")
    fig.tight_layout()
    fig.savefig(out / "cost_vs_accuracy.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([r["latencies"] or [0] for r in rows], showfliers=True)
    ax.set_xticks(range(1, len(rows) + 1), [r["backend"] for r in rows])
    ax.set_ylabel("latency per request (ms)")
    ax.set_title("latency distribution")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
