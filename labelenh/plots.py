"""Reliability diagrams as PNG files (matplotlib, imported lazily, drawn without pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from labelenh.errors import LabelenhError, OutputError
from labelenh.files import atomic_write
from labelenh.metrics import (
    DEFAULT_BINS,
    CalibrationBins,
    calibration_bins,
    classification_metrics,
)


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


# Bins holding fewer samples are drawn pale and hatched: their accuracy is too coarse to read
# (a bin of 3 samples can only show 0, 1/3, 2/3 or 1), yet at full height they dominate the eye
# and the MCE.
MIN_BIN_COUNT = 10
ACC_COLOUR, GAP_COLOUR = "#3b6fb6", "#e04f4f"


def _draw(ax_rel: Any, ax_hist: Any, bins: CalibrationBins, stats: dict, title: str,
          min_count: int) -> None:
    edges = bins.edges.numpy()
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    counts = bins.counts.numpy()
    acc, conf = bins.accuracy.numpy(), bins.confidence.numpy()
    for sure in (True, False):
        show = (counts >= min_count) if sure else (counts > 0) & (counts < min_count)
        if not show.any():
            continue
        style = {} if sure else {"alpha": 0.35, "hatch": "xxx"}
        ax_rel.bar(lo[show], acc[show], width=width[show], align="edge", color=ACC_COLOUR,
                   edgecolor="black", linewidth=0.6, **style)
        # the gap between accuracy and mean confidence of each bin
        ax_rel.bar(lo[show], abs(acc[show] - conf[show]), bottom=np.minimum(acc[show], conf[show]),
                   width=width[show], align="edge", color=GAP_COLOUR, alpha=0.35 if sure else 0.15,
                   edgecolor="#b02020", hatch="//", linewidth=0.6)
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    for x, w, n in zip(lo, width, counts, strict=True):
        if n > 0:  # each bin's sample count, in a row above the bars
            ax_rel.text(x + w / 2, 1.015, f"{int(n)}", ha="center", va="bottom", fontsize=6,
                        rotation=90 if len(lo) > 10 else 0, color="#333333")
    ax_rel.axhline(1.0, color="black", linewidth=0.5)
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.12)
    ax_rel.set_yticks(np.linspace(0, 1, 6))
    ax_rel.set_ylabel("accuracy")
    head = f"{title}\n" if title else ""
    ts = (f"  after TS {100 * stats['ece_ts']:.2f}% (T={stats['temperature']:.2f})"
          if stats.get("ece_ts") is not None else "")
    ax_rel.set_title(f"{head}ECE {100 * stats['ece']:.2f}%{ts}\nacc {100 * stats['acc1']:.2f}%  "
                     f"MCE {100 * stats['mce']:.1f}%  N={stats['n']}", fontsize=9)
    ax_rel.tick_params(labelbottom=False)
    # share of samples per confidence bin, the usual companion of the diagram
    ax_hist.bar(lo, counts / max(counts.sum(), 1), width=width, align="edge", color="#7f7f7f",
                edgecolor="black", linewidth=0.4)
    ax_hist.axvline(stats["acc1"], color=ACC_COLOUR, linestyle="-", linewidth=1)
    ax_hist.axvline(float((bins.confidence * bins.counts).sum() / max(bins.n, 1)), color=GAP_COLOUR,
                    linestyle="--", linewidth=1)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("share")


def _reliability_legend(fig: Any, min_count: int, ncols: int) -> None:
    """One legend for every panel, below them, so that it never covers a bar."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=ACC_COLOUR, edgecolor="black", label="accuracy per bin (top: samples)"),
        Patch(facecolor=GAP_COLOUR, alpha=0.35, edgecolor="#b02020", hatch="//", label="gap to confidence"),
        Patch(facecolor=ACC_COLOUR, alpha=0.35, edgecolor="black", hatch="xxx",
              label=f"bin with < {min_count} samples"),
        Line2D([], [], color="gray", linestyle="--", label="perfect calibration"),
        Line2D([], [], color=ACC_COLOUR, label="accuracy (histogram)"),
        Line2D([], [], color=GAP_COLOUR, linestyle="--", label="mean confidence (histogram)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=7, frameon=False)


def reliability_grid(
    panels: Sequence[tuple[str, Tensor, Tensor]],
    path: str | Path,
    n_bins: int = DEFAULT_BINS,
    ncols: int | None = None,
    *,
    min_count: int = MIN_BIN_COUNT,
    extra: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Side-by-side reliability diagrams, one per (title, logits [N, C], labels [N]); a PNG.
    `extra` (one dict per panel) may add `ece_ts` and `temperature` to a panel's title."""
    if not panels:
        raise LabelenhError("reliability_grid needs at least one (title, logits, labels) panel")
    computed = []
    for i, (title, logits, labels) in enumerate(panels):
        stats = classification_metrics(logits, labels, n_bins)
        if stats["ece"] != stats["ece"]:  # NaN: the logits are not all finite
            raise LabelenhError(
                f"cannot draw a reliability diagram for {title!r}: logits are not finite"
            )
        if extra is not None:
            stats.update({k: v for k, v in extra[i].items() if v is not None})
        computed.append((str(title), calibration_bins(logits, labels, n_bins), stats))
    ncols = min(len(panels), ncols or 4)
    nrows = -(-len(panels) // ncols)
    legend_cols = 1 if ncols == 1 else (2 if ncols < 4 else 3)
    fig = _figure(3.6 * ncols, 4.8 * nrows + 0.25 * -(-6 // legend_cols))
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    for i, (title, bins, stats) in enumerate(computed):
        r, c = divmod(i, ncols)
        ax_rel = fig.add_subplot(grid[2 * r, c])
        ax_hist = fig.add_subplot(grid[2 * r + 1, c], sharex=ax_rel)
        _draw(ax_rel, ax_hist, bins, stats, title, min_count)
    _reliability_legend(fig, min_count, legend_cols)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))


def reliability_diagram(
    logits: Tensor, labels: Tensor, path: str | Path, n_bins: int = DEFAULT_BINS, title: str = ""
) -> Path:
    """Reliability diagram (accuracy per confidence bin, gap, ECE) over a confidence histogram."""
    return reliability_grid([(title, logits, labels)], path, n_bins=n_bins)


def write_reliability(path: Path, logits: Tensor, labels: Tensor, bins: int, title: str) -> None:
    """A run's reliability diagram at `path`; without matplotlib a note instead."""
    try:
        reliability_diagram(logits, labels, path, n_bins=bins, title=title)
    except OutputError:
        raise  # a full disk must fail the command, though the run's checkpoint is complete
    except LabelenhError as e:  # matplotlib missing: the run is still valid
        print(f"labelenh: note: {e}")


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
    fig = _figure(8.0, 4.8)
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
    fig.legend(fontsize=8, frameon=False, loc="outside right upper")  # never over a dot
    if title:
        ax.set_title(title, fontsize=10)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))


def training_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, Any, Any, Any]]]],
    path: str | Path,
    *,
    ncols: int = 3,
    log_y: Sequence[str] = (),
) -> Path:
    """Line plots against the epoch, `ncols` per row. Each panel is (y label, series); a series
    is (name, epochs [T], mean [T], std [T] or None), drawn as a line with a ± std band. A name
    keeps its colour across panels; one legend below all panels. Panels whose y label is in
    `log_y` use a log scale (the learning rate). Epoch ticks are integers."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = [(label, series) for label, series in panels if series]
    if not panels:
        raise LabelenhError("training_curves needs at least one panel with a series")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(4.6 * ncols, 3.6 * nrows + 0.9)
    colour = _colours([s[0] for _, series in panels for s in series])
    for i, (ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name, x, mean, std in series:
            x, mean = np.asarray(x, dtype=float), np.asarray(mean, dtype=float)
            ax.plot(x, mean, color=colour[name], linewidth=1.4, label=name,
                    marker="o" if len(x) < 3 else None, markersize=3)
            if std is not None:
                std = np.asarray(std, dtype=float)
                ax.fill_between(x, mean - std, mean + std, color=colour[name], alpha=0.2, linewidth=0)
        if ylabel in log_y:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, linewidth=1.4, label=name) for name, c in colour.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8,
               frameon=False)
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
