"""Evaluates every query of keel's Grafana dashboard (docs/keel-dashboard.json) through a running
Prometheus's HTTP API, fails if any returns no series, and draws the panels from the results with
matplotlib: a picture of the dashboard's queries, not a Grafana screenshot (Grafana cannot be
installed here). Run by node/tests/client_matrix.rs against Prometheus scraping `keel dev`.

usage: dashboard.py PROMETHEUS_URL DASHBOARD_JSON RATE_INTERVAL START END OUT_PNG

RATE_INTERVAL replaces Grafana's `$__rate_interval`; START and END (Unix seconds) bound the range
queries the picture is drawn from; the instant queries are evaluated at END.
"""

import json
import math
import re
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from interop_common import fail, log  # noqa: E402

if len(sys.argv) != 7:
    fail(f"usage: {sys.argv[0]} PROMETHEUS_URL DASHBOARD_JSON RATE_INTERVAL START END OUT_PNG")
prom, dashboard_path, rate_interval, start, end, out_png = sys.argv[1:]
start, end = float(start), float(end)
dashboard = json.load(open(dashboard_path))


def api(path, **params):
    url = f"{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        fail(f"{path} {params}: {body}")
    return body["data"]


def expr_of(target):
    return target["expr"].replace("$__rate_interval", rate_interval)


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


empty = []
series_by_target = {}
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        expr = expr_of(target)
        result = api("query", query=expr, time=end)["result"]
        log(f"panel {panel['title']!r} {target['refId']}: {len(result)} series  ({expr})")
        if not result:
            empty.append(f"{panel['title']} ({target['refId']}): {expr}")
        series_by_target[(panel["id"], target["refId"])] = api(
            "query_range", query=expr, start=start, end=end, step=1)["result"]
if empty:
    fail("these dashboard queries return no series:\n  " + "\n  ".join(empty))
log(f"EVALUATED {sum(len(p['targets']) for p in dashboard['panels'])} queries of "
    f"{len(dashboard['panels'])} panels; every one returns at least one series")

# The picture: the panels on Grafana's 24-column grid, in dark colours like Grafana's.
plt.style.use("dark_background")
panels = dashboard["panels"]
rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
fig = plt.figure(figsize=(14, rows * 0.42), dpi=72)
grid = fig.add_gridspec(rows, 24, hspace=1.1, wspace=0.9, top=0.95, bottom=0.03, left=0.05, right=0.98)
fig.suptitle(f"{dashboard['title']} dashboard (docs/keel-dashboard.json): its queries against Prometheus "
             "scraping keel dev under load, drawn with matplotlib (not Grafana)", fontsize=11)
for panel in panels:
    g = panel["gridPos"]
    ax = fig.add_subplot(grid[g["y"] + 1:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
    ax.set_title(panel["title"], fontsize=10, loc="left")
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    scale, label = {"s": (1000, "ms"), "Bps": (1 / 1024, "KiB/s"), "reqps": (1, "req/s")}.get(unit, (1, ""))
    lines = 0
    for target in panel["targets"]:
        for s in series_by_target[(panel["id"], target["refId"])]:
            points = [(float(t) - start, float(v) * scale) for t, v in s["values"] if not math.isnan(float(v))]
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2,
                    label=legend(target.get("legendFormat", ""), s["metric"]))
            lines += 1
    ax.set_xlim(0, end - start)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("seconds", fontsize=7)
    if label:
        ax.set_ylabel(label, fontsize=7)
    ax.grid(alpha=0.2)
    if lines:
        ax.legend(fontsize=6, loc="upper left", ncol=3 if lines > 6 else 1, framealpha=0.3)
fig.savefig(out_png, dpi=72)
log(f"RENDERED {out_png}")
