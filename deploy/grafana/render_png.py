"""Draw the Grafana dashboard's panels from real Prometheus data with matplotlib (no Grafana needed).

    python deploy/grafana/render_png.py --prometheus http://127.0.0.1:9090 --minutes 30 --out dashboard.png

Every panel of deploy/grafana/dashboards/extraction-service.json is evaluated as a range query with the
template variables set to "all", and drawn in the dashboard's order.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).parent / "dashboards" / "extraction-service.json"


def range_query(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, object]]:
    r = httpx.get(f"{prometheus}/api/v1/query_range",
                  params={"query": expr, "start": start, "end": end, "step": step}, timeout=30)  # fmt: skip
    r.raise_for_status()
    return r.json()["data"]["result"]  # type: ignore[no-any-return]


def label(metric: dict[str, str], template: str) -> str:
    for key, value in metric.items():
        template = template.replace("{{" + key + "}}", value)
    return template or ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    end = time.time()
    start = end - args.minutes * 60
    step = max(5.0, args.minutes * 60 / 200)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 6, rows * 3.2), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", args.rate_interval)
                    .replace('"$backend"', '".*"').replace('"$task"', '".*"'))  # fmt: skip
            for series in range_query(args.prometheus, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]  # type: ignore[union-attr]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        [(x - end) / 60 for x in xs], ys, label=label(series["metric"], target.get("legendFormat", ""))
                    )  # type: ignore[arg-type]
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("minutes ago", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"extraction-service dashboard, last {args.minutes:g} min (from Prometheus)", fontsize=13)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
