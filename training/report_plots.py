"""The decision report's PNGs: cost vs accuracy, latency distribution, and the intervals as error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.stats import FIELD


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(report: dict[str, Any], latencies: list[list[float]], out: Path) -> None:
    """cost_vs_accuracy.png, latency.png and intervals.png in `out`."""
    plt = _pyplot()
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        f1 = r["intervals"]["field_f1"]
        x = r["cost_per_request"] * 1000
        ax.errorbar(x, f1["value"], yerr=_yerr(f1), fmt="o", ms=7, capsize=4)
        ax.annotate(r["backend"], (x, f1["value"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("USD per 1,000 requests")
    ax.set_ylabel("field F1 (95% interval)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("cost vs accuracy")
    _save(plt, fig, out / "cost_vs_accuracy.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([values or [0] for values in latencies], showfliers=True)
    ax.set_xticks(range(1, len(rows) + 1), [r["backend"] for r in rows])
    ax.set_ylabel("latency per request (ms)")
    ax.set_title("latency distribution")
    ax.grid(alpha=0.3, axis="y")
    _save(plt, fig, out / "latency.png")
    intervals(report, out / "intervals.png")


def intervals(report: dict[str, Any], path: Path) -> None:
    """Left: each run's accuracy figures with intervals; right: the compared pair's differences (zero marked)."""
    plt = _pyplot()
    names = ["exact_match", "field_f1", "schema_valid", *(FIELD + f for f in report["pairing"]["fields"])]
    diffs = [(n, report["differences"][n]) for n in names]
    diffs += [(f"field F1, {s} slice", c["differences"]["field_f1"]) for s, c in report["slices"].items()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(names), len(diffs)) + 1.8))
    rows = report["rows"]
    for k, r in enumerate(rows):
        shift = (k - (len(rows) - 1) / 2) * 0.8 / max(len(rows), 1)
        ests = [r["intervals"][n] for n in names]
        left.errorbar([e["value"] for e in ests], [y + shift for y in range(len(names))],
                      xerr=_yerr(*ests), fmt="o", capsize=3, label=r["backend"])  # fmt: skip
    left.set_yticks(range(len(names)), [n.replace(FIELD, "F1 ") for n in names])
    left.invert_yaxis()
    left.set_xlim(-0.02, 1.02)
    left.set_xlabel("value (95% interval)")
    left.legend(fontsize=8, loc="lower left")
    left.grid(alpha=0.3, axis="x")
    for y, (_, d) in enumerate(diffs):
        right.errorbar(d["value"], y, xerr=_yerr(d), fmt="o", capsize=3, color="C3" if d["significant"] else "C7")
    right.axvline(0, color="black", lw=0.8)
    right.set_yticks(range(len(diffs)), [n.replace(FIELD, "F1 ") for n, _ in diffs])
    right.invert_yaxis()
    right.set_xlabel(f"{report['finetuned']} − {report['prompted']} (red: interval excludes 0)")
    right.grid(alpha=0.3, axis="x")
    fig.suptitle(f"paired bootstrap on {report['pairing']['shared_items']} shared items")
    _save(plt, fig, path)


def _yerr(*estimates: dict[str, Any]) -> list[list[float]]:
    # A percentile interval need not contain the point estimate (skewed resamples); bars cannot be negative.
    return [[max(0.0, e["value"] - e["low"]) for e in estimates], [max(0.0, e["high"] - e["value"]) for e in estimates]]


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
