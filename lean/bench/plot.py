"""pareto.png of a bench run: accuracy against latency (perplexity against decode speed for an LM),
every variant a labelled point, the Pareto front ringed and joined.

A reader of runs: imports the bottom of lean.bench and the other readers only; matplotlib inside.
"""

from __future__ import annotations

import io
from typing import Any

from lean.bench.figures import cell_at, primary_cell
from lean.bench.report_lm import pareto_points
from lean.bench.stats import pareto_front


def pareto_png(results: dict[str, Any]) -> bytes:
    """Accuracy against median latency at the primary cell, a labelled point per variant, the front drawn."""
    if (results.get("task") or {}).get("kind") == "lm":  # perplexity against decode tokens/s
        return lm_pareto_png(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = primary_cell(results)
    points, unreliable = [], []
    for row in results["variants"]:
        cell = cell_at(row, key) if key else None
        accuracy = (row.get("quality") or {}).get("accuracy")
        if row["status"] == "ok" and cell and accuracy is not None:
            # a latency its rounds do not support has no place on the front (lean.bench.reliability)
            (unreliable if cell.get("unreliable") else points).append((row["name"], cell["median_ms"], accuracy))
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if unreliable:
        ax.text(0.01, 0.01, f"left out, latency unreliable: {', '.join(p[0] for p in unreliable)}", fontsize=7,
                transform=ax.transAxes, color="tab:gray")
    if points:
        if max(p[1] for p in points) / max(min(p[1] for p in points), 1e-9) > 20:
            ax.set_xscale("log")
        draw_points(ax, points, pareto_front(points), where="post")
    else:
        ax.text(0.5, 0.5, "no variant measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"median latency, ms (batch {key[0]} × {key[1]} tokens)" if key else "median latency, ms")
    ax.set_ylabel("test accuracy")
    return finish_png(fig, ax, results, "accuracy against latency")


def draw_points(ax, points: list[tuple[str, float, float]], front: list[tuple[str, float, float]], where: str) -> None:
    """Scatter (name, x, y) points, ring and join the Pareto front, and label each point where its label
    does not cover an earlier one (variants often land within a few pixels of each other)."""
    ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue", zorder=3)
    ax.scatter([p[1] for p in front], [p[2] for p in front], s=140, facecolors="none", edgecolors="tab:red",
               linewidths=1.5, zorder=4, label="Pareto front")
    ax.step([p[1] for p in front], [p[2] for p in front], where=where, color="tab:red", alpha=0.6, zorder=2)
    ax.figure.canvas.draw()  # fixes the limits, so data -> pixel positions hold for the labels
    placed: list[tuple[float, float, float, float]] = []  # label boxes in pixels
    offsets = [(6, 5), (6, -13), (-6, 5), (-6, -13), (6, 16), (6, -24)]
    for name, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        px, py = ax.transData.transform((x, y))
        width, height = 5.5 * len(name), 11.0  # 8-point text at 110 dpi
        for dx, dy in offsets:
            left = px + dx if dx > 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    ha="left" if dx > 0 else "right")
    ax.legend(loc="best")


def finish_png(fig, ax, results: dict[str, Any], subject: str) -> bytes:
    """Title (suite, device, threads), grid, and the figure as PNG bytes; closes the figure."""
    import matplotlib.pyplot as plt

    run = results.get("run", {})
    ax.set_title(f"lean bench {results['suite']['name']}: {subject} "
                 f"({run.get('device')}, {run.get('threads')} threads)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def lm_pareto_png(results: dict[str, Any]) -> bytes:
    """Perplexity against decode tokens/s (batch = the smallest measured), the front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, batch = pareto_points(results)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if points:
        if max(p[1] for p in points) / max(min(p[1] for p in points), 1e-9) > 10:  # ONNX vs bitsandbytes on a CPU
            ax.set_xscale("log")
        draw_points(ax, points, sorted(pareto_front(points, x="higher", y="lower"), key=lambda p: p[1]), where="pre")
    else:
        ax.text(0.5, 0.5, "no variant measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"decode tokens/s, greedy, batch {batch} (higher is better)")
    ax.set_ylabel("test perplexity (lower is better)")
    return finish_png(fig, ax, results, "perplexity against decode speed")
