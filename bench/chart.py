"""Draws the PNG of a bench/run.py result: one panel per workload, one bar per configuration
(median requests/s over the rounds, a whisker from the slowest to the fastest round), the
bar labelled with its ratio to nginx -> uWSGI of the same round.

    build/bench-venv/bin/python bench/chart.py bench/results/latest.json bench/results/latest.png

run.py calls it with the benchmark's virtualenv, which has matplotlib.
"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"ceiling": "#9e9e9e", "ngx-wsgi": "#1f77b4", "proxied": "#ff7f0e", "direct": "#2ca02c"}


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    configs = data["configs"]
    workloads = data["workloads"]
    table = data["table"]
    meta = data["meta"]

    cols = 2 if len(workloads) > 1 else 1
    rows = math.ceil(len(workloads) / cols)
    height = max(2.2, 0.36 * len(configs) + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, height * rows), squeeze=False)
    labels = [c["label"] for c in configs]
    for i, wl in enumerate(workloads):
        ax = axes[i // cols][i % cols]
        vals, lo, hi, colours, notes = [], [], [], [], []
        for c in configs:
            row = table.get(f"{wl['key']}|{c['key']}", {})
            v = row.get("rps") or 0.0
            rounds = [r for r in row.get("rps_rounds") or [] if r is not None] or [v]
            vals.append(v)
            lo.append(v - min(rounds))
            hi.append(max(rounds) - v)
            colours.append(COLOURS.get(c["group"], "#555555"))
            if "rps" not in row:
                notes.append("failed" if row.get("errors") else "")
            elif c["key"] == "uwsgi":
                notes.append(f"{v:,.0f}  (reference)")
            else:
                x = row.get("x_uwsgi")
                notes.append(f"{v:,.0f}" + (f"  ×{x:.2f} uWSGI" if x is not None else ""))
        y = list(range(len(configs)))
        bars = ax.barh(y, vals, xerr=[lo, hi], color=colours, ecolor="#333333", capsize=2,
                       height=0.7)
        if not wl.get("ceiling_exact", True):
            # nginx cannot do this workload (no sleep, no echo): its bar is only a bound.
            for c, bar in zip(configs, bars):
                if c["group"] == "ceiling":
                    bar.set_hatch("//")
                    bar.set_alpha(0.5)
            notes = [n + "  (not like-for-like)" if c["group"] == "ceiling" and n else n
                     for c, n in zip(configs, notes)]
        ax.set_yticks(y)
        ax.set_yticklabels(labels if i % cols == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(wl["title"], fontsize=10)
        ax.set_xlabel("requests/s", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        top = max(vals) if vals and max(vals) > 0 else 1.0
        ax.set_xlim(0, top * 1.55)
        for yy, v, note in zip(y, vals, notes):
            ax.text(v + top * 0.02, yy, note, va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    for j in range(len(workloads), rows * cols):
        axes[j // cols][j % cols].axis("off")
    m = meta["machine"]
    a = meta["args"]
    fig.suptitle(f"ngx-wsgi benchmark, {meta['date']} — {m['cores']} cores ({m['cpu']}), "
                 f"wrk -t{a['threads']} -c{a['connections']} -d{a['duration']:g}s, "
                 f"{a['rounds']} rounds, nginx {m['nginx_debian']} / {m['nginx_vendored']}, "
                 f"Python {m['python']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
