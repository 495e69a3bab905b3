"""Reliability diagrams as PNG files (matplotlib, imported lazily, drawn without pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from labelenh.errors import LabelenhError
from labelenh.metrics import CalibrationBins, calibration_bins, classification_metrics
from labelenh.utils import atomic_write


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise LabelenhError(
            "reliability diagram needs matplotlib: pip install 'labelenh[plot]'"
        ) from e
    # A bare Figure on the Agg canvas: no pyplot global state, no display needed
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw(ax_rel: Any, ax_hist: Any, bins: CalibrationBins, stats: dict, title: str) -> None:
    edges = bins.edges.numpy()
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    counts = bins.counts.numpy()
    filled = counts > 0
    acc, conf = bins.accuracy.numpy(), bins.confidence.numpy()
    ax_rel.bar(
        lo[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color="#3b6fb6",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    # the gap between accuracy and mean confidence of each bin
    bottom = np.minimum(acc[filled], conf[filled])
    height = abs(acc[filled] - conf[filled])
    ax_rel.bar(
        lo[filled],
        height,
        bottom=bottom,
        width=width[filled],
        align="edge",
        color="#e04f4f",
        alpha=0.35,
        edgecolor="#b02020",
        hatch="//",
        linewidth=0.6,
        label="gap",
    )
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect")
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1)
    ax_rel.set_ylabel("accuracy")
    head = f"{title}\n" if title else ""
    ax_rel.set_title(
        f"{head}ECE {100 * stats['ece']:.2f}%  acc {100 * stats['acc1']:.2f}%", fontsize=10
    )
    ax_rel.legend(
        loc="upper left",
        fontsize=8,
        frameon=False,
        title=f"MCE {100 * stats['mce']:.1f}%  N={stats['n']}",
        title_fontsize=8,
    )
    ax_rel.tick_params(labelbottom=False)
    # share of samples per confidence bin, the usual companion of the diagram
    ax_hist.bar(
        lo,
        counts / max(counts.sum(), 1),
        width=width,
        align="edge",
        color="#7f7f7f",
        edgecolor="black",
        linewidth=0.4,
    )
    ax_hist.axvline(stats["acc1"], color="#3b6fb6", linestyle="-", linewidth=1, label="accuracy")
    ax_hist.axvline(
        float((bins.confidence * bins.counts).sum() / max(bins.n, 1)),
        color="#e04f4f",
        linestyle="--",
        linewidth=1,
        label="avg. confidence",
    )
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("share")
    ax_hist.legend(loc="upper left", fontsize=7, frameon=False)


def reliability_grid(
    panels: Sequence[tuple[str, Tensor, Tensor]],
    path: str | Path,
    n_bins: int = 15,
    ncols: int | None = None,
) -> Path:
    """Side-by-side reliability diagrams, one per (title, logits [N, C], labels [N]); a PNG."""
    if not panels:
        raise LabelenhError("reliability_grid needs at least one (title, logits, labels) panel")
    computed = []
    for title, logits, labels in panels:
        stats = classification_metrics(logits, labels, n_bins)
        if stats["ece"] != stats["ece"]:  # NaN: the logits are not all finite
            raise LabelenhError(
                f"cannot draw a reliability diagram for {title!r}: logits are not finite"
            )
        computed.append((str(title), calibration_bins(logits, labels, n_bins), stats))
    ncols = min(len(panels), ncols or 4)
    nrows = -(-len(panels) // ncols)
    fig = _figure(3.6 * ncols, 4.6 * nrows)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    for i, (title, bins, stats) in enumerate(computed):
        r, c = divmod(i, ncols)
        ax_rel = fig.add_subplot(grid[2 * r, c])
        ax_hist = fig.add_subplot(grid[2 * r + 1, c], sharex=ax_rel)
        _draw(ax_rel, ax_hist, bins, stats, title)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))


def reliability_diagram(
    logits: Tensor, labels: Tensor, path: str | Path, n_bins: int = 15, title: str = ""
) -> Path:
    """Reliability diagram (accuracy per confidence bin, gap, ECE) over a confidence histogram."""
    return reliability_grid([(title, logits, labels)], path, n_bins=n_bins)


def _colours(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per distinct name, in order of first appearance."""
    from matplotlib import colormaps

    distinct = list(dict.fromkeys(names))
    cmap = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(distinct)}


def accuracy_ece_scatter(
    points: Sequence[tuple[str, float, float]],
    path: str | Path,
    *,
    means: Sequence[tuple[str, float, float]] = (),
    title: str = "",
) -> Path:
    """Test Acc@1 against ECE, one dot per (name, acc1, ece) point (fractions), coloured by name;
    `means` (same form) are drawn as large crosses in their name's colour. Up and left is better."""
    if not points:
        raise LabelenhError("accuracy_ece_scatter needs at least one (name, acc1, ece) point")
    fig = _figure(6.4, 4.8)
    colour = _colours([p[0] for p in points] + [m[0] for m in means])
    ax = fig.add_subplot(1, 1, 1)
    for name in colour:
        mine = [(a, e) for n, a, e in points if n == name]
        if mine:
            acc, ece = np.array(mine).T * 100
            ax.scatter(ece, acc, s=28, alpha=0.75, color=colour[name], label=name)
    for name, acc, ece in means:
        ax.scatter([100 * ece], [100 * acc], s=160, marker="X", color=colour[name],
                   edgecolor="black", linewidth=0.8, zorder=3)
    if means:
        ax.scatter([], [], s=100, marker="X", color="white", edgecolor="black", label="mean")
    ax.set_xlabel("ECE (%)")
    ax.set_ylabel("Acc@1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))


def training_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, Any, Any, Any]]]],
    path: str | Path,
) -> Path:
    """Side-by-side line plots against the epoch. Each panel is (y label, series); a series is
    (name, epochs [T], mean [T], std [T] or None), drawn as a line with a ± std band. A name keeps
    its colour across panels."""
    if not panels or not any(series for _, series in panels):
        raise LabelenhError("training_curves needs at least one panel with a series")
    fig = _figure(5.2 * len(panels), 4.2)
    colour = _colours([s[0] for _, series in panels for s in series])
    for i, (ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, x, mean, std in series:
            x, mean = np.asarray(x, dtype=float), np.asarray(mean, dtype=float)
            ax.plot(x, mean, color=colour[name], linewidth=1.4, label=name,
                    marker="o" if len(x) < 3 else None, markersize=3)
            if std is not None:
                std = np.asarray(std, dtype=float)
                ax.fill_between(x, mean - std, mean + std, color=colour[name], alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, frameon=False, loc="best")
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
