"""Draw the Grafana dashboard's panels as a PNG from a real Prometheus (for the docs).

Not a Grafana screenshot: the same PromQL per panel, fetched with ``/api/v1/query_range`` and
drawn with matplotlib (an optional dependency, imported only here).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

DASHBOARD = Path(__file__).parent / "grafana" / "paxyo-realtime.json"
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$provider": ".*"}


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        return json.loads(r.read())["data"]["result"]


def render_dashboard(prometheus: str, out: Path, start: float, end: float,
                     dashboard: Path = DASHBOARD) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(dashboard.read_text())["panels"]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(18, 3.2 * rows), squeeze=False)
    step = max(1.0, (end - start) / 300)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            for series in query_range(prometheus, expr, start, end, step):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = target.get("legendFormat", "")
                for key, value in series["metric"].items():
                    label = label.replace("{{" + key + "}}", value)
                ax.plot(xs, ys, label=label or expr[:30], linewidth=1.2)
        ax.set_title(f"{panel['title']} ({panel['fieldConfig']['defaults']['unit']})",
                     fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Paxyo Realtime: dashboard queries on real Prometheus data", fontsize=13)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
