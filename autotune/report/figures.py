"""The report's figures, drawn with matplotlib and returned as PNG bytes.

Figures are built as ``matplotlib.figure.Figure`` objects and saved through the Agg
canvas, never through ``pyplot``: nothing is registered with a GUI backend or kept in
pyplot's list of open figures, so nothing needs closing and no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
BLUE, ORANGE, GREY, GREEN, RED = "#1f77b4", "#ff7f0e", "#9a9a9a", "#2ca02c", "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" stamp: the same data gives the same bytes on every matplotlib.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def pareto(points: Sequence[dict[str, Any]], front: Sequence[int], picked: int | None = None,
           default: int | None = None) -> bytes:
    """Every measured trial as throughput against validation loss; the Pareto front
    (more samples/s and lower loss) joined as a staircase, its trials numbered."""
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    xs = [p["throughput_samples_per_s"] for p in points]
    ys = [p["val_loss"] for p in points]
    ax.scatter(xs, ys, s=28, color=GREY, label="trial", zorder=2)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="pre", color=ORANGE, linewidth=1.5, zorder=3)
    ax.scatter(fx, fy, s=46, color=ORANGE, edgecolor="black", linewidth=0.6, label="Pareto front", zorder=4)
    for i in front:
        ax.annotate(f"#{points[i]['number']}", (xs[i], ys[i]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for number, marker, label in ((default, "s", "default config"), (picked, "*", "picked config")):
        hit = [i for i, p in enumerate(points) if number is not None and p["number"] == number]
        if hit:
            ax.scatter([xs[hit[0]]], [ys[hit[0]]], s=180 if marker == "*" else 90, marker=marker, facecolor="none",
                       edgecolor=BLUE if marker == "*" else GREEN, linewidth=1.6, label=label, zorder=5)
    ax.set_xlabel("throughput (samples/s, higher is better)")
    ax.set_ylabel("trial validation loss (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)


def importances(values: dict[str, float]) -> bytes:
    """Optuna's parameter importances as horizontal bars, the largest on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig = _figure(7, 0.45 * len(items) + 1.1)
    ax = fig.add_subplot()
    ax.barh(range(len(items)), [v for _, v in items], color=BLUE)
    ax.set_yticks(range(len(items)), labels=[k for k, _ in items])
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max([v for _, v in items] + [0.01]) * 1.18)
    ax.set_xlabel("importance (sums to 1)")
    ax.grid(True, axis="x", alpha=0.3)
    return to_png(fig)


def knob_effects(effects: dict[str, Any]) -> bytes:
    """Each screened choice's objective over the config it was screened around (the
    default, or for a two-stage screening the base for the knobs after the first), one bar per choice,
    grouped and coloured by knob (a pair screened together is a group of its own); a
    choice without a measurement is marked on the axis."""
    labels, values, colours, notes = [], [], [], []
    groups = list(effects["knobs"].items()) + list((effects.get("pairs") or {}).items())
    for k, (name, rows) in enumerate(groups):
        for r in rows:
            choice = " + ".join(map(_choice, r["choice"])) if isinstance(r["choice"], list) else _choice(r["choice"])
            labels.append(f"{name} = {choice}")
            values.append(r.get("relative"))
            colours.append(PALETTE[k % len(PALETTE)])
            notes.append(r.get("status") or "")
    labels, values, colours, notes = labels[::-1], values[::-1], colours[::-1], notes[::-1]
    fig = _figure(8, 0.36 * len(labels) + 1.2)
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), [v or 0.0 for v in values], color=colours)
    ax.set_yticks(range(len(labels)), labels=labels)
    top = max([v for v in values if v is not None] + [1.0])
    for y, (v, note) in enumerate(zip(values, notes)):
        text = f" {v:.2f}x" if v is not None else f" no measurement ({note})"
        ax.text(v or 0.0, y, text, va="center", fontsize=8, color="black" if v is not None else RED)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlim(0, top * 1.25)
    ref = "the default config" if not effects.get("lead") else "the config screened around (default or base)"
    ax.set_xlabel(f"objective relative to {ref} (1.0 = it, higher is better)")
    ax.grid(True, axis="x", alpha=0.3)
    return to_png(fig)


def _choice(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def training_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """The final run per epoch: loss (train and validation), validation accuracy (when
    the model is a classifier), learning rate and samples/s."""
    epochs = [r["epoch"] for r in history]
    panels = [("loss", [("train", "train_loss", BLUE), ("validation", "val_loss", ORANGE)])]
    if any(r.get("val_accuracy") is not None for r in history):
        panels.append(("validation accuracy", [("validation", "val_accuracy", GREEN)]))
    panels += [("learning rate (end of epoch)", [("lr", "lr", BLUE)]), ("samples/s", [("train", "samples_per_s", BLUE)])]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig = _figure(9, 2.9 * rows)
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for label, key, colour in series:
            pts = [(e, r.get(key)) for e, r in zip(epochs, history) if r.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=colour, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return to_png(fig)


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> bytes:
    """The confusion matrix as a heatmap (rows: true class, columns: predicted), each
    cell coloured by its share of the true class and labelled with its count."""
    n = len(labels)
    shares = [[c / max(sum(row), 1) for c in row] for row in matrix]
    side = min(8.0, 2.2 + 0.4 * n)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if n <= 30:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=9 if n <= 12 else 7 if n <= 20 else 5,
                            color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), labels=labels, rotation=45 if n > 10 or max(map(len, labels), default=0) > 3 else 0)
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return to_png(fig)


def history(trials: Sequence[dict[str, Any]], objective: str) -> bytes:
    """The search over time: each measured trial's objective value by trial number and by
    the search's wall time (its trials' seconds added up), with the best so far as a line."""
    measured = [t for t in trials if t.get("value") is not None and t.get("state") == "complete"]
    fig = _figure(10, 3.6)
    by_number, by_time = fig.subplots(1, 2, sharey=True)
    clock, times = 0.0, {}
    for t in sorted(trials, key=lambda t: t["number"]):
        clock += t.get("trial_seconds") or 0.0
        times[t["number"]] = clock
    for ax, xs, label in ((by_number, [t["number"] for t in measured], "trial"),
                          (by_time, [times[t["number"]] for t in measured], "search time (s, trials' own)")):
        ys = [t["value"] for t in measured]
        ax.scatter(xs, ys, s=22, color=BLUE, zorder=3, label="trial")
        best, line = -math.inf, []
        for y in ys:
            best = max(best, y)
            line.append(best)
        ax.step(xs, line, where="post", color=ORANGE, linewidth=1.5, label="best so far", zorder=2)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    by_number.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_number.set_ylabel(f"{objective} (samples/s)")
    by_number.legend(fontsize=8, loc="lower right")
    return to_png(fig)
