"""Headless matplotlib figures, written atomically as PNG (matplotlib comes with the
``experiments`` extra)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.extras import optional_import
from ..utils.io import write_atomic

HARMFUL = "negative = harmful"


def _pyplot():
    matplotlib = optional_import("matplotlib", "plots")
    matplotlib.use("Agg")
    return optional_import("matplotlib.pyplot", "plots")


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def _power_of_ten(values: list[float]) -> int:
    """The exponent that brings the largest magnitude into [1, 10) (0 for all-zero data)."""
    largest = max((abs(v) for v in values), default=0.0)
    return int(math.floor(math.log10(largest))) if largest > 0 else 0


@dataclass(frozen=True)
class Panel:
    """One axes of :func:`panels`: a line per named series (``errors``: its ± band, e.g. the std over
    seeds) and a dashed horizontal line per named ``levels`` value; ``from_zero`` starts the y axis at 0
    (amounts such as seconds, whose differences should read at their size)."""

    ylabel: str
    series: dict[str, list[float]]
    errors: dict[str, list[float]] | None = None
    levels: dict[str, float] = field(default_factory=dict)
    from_zero: bool = False


def panels(path: Path, x, figure: list[Panel], xlabel: str, title: str) -> Path:
    """The panels of ``figure`` side by side over the shared ``x``, ``title`` over them all."""
    fig, axes = _pyplot().subplots(1, len(figure), figsize=(5 * len(figure), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], figure):
        for name, ys in panel.series.items():
            spread = (panel.errors or {}).get(name)
            ax.errorbar(x, ys, yerr=spread if spread and any(spread) else None, marker="o", capsize=3, label=name)
        for name, level in panel.levels.items():
            ax.axhline(level, color="grey", ls="--", lw=1, label=name)
        ax.set(xlabel=xlabel, ylabel=panel.ylabel)
        if panel.from_zero:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(figure) > 1:
        fig.suptitle(title)
    else:
        axes[0][0].set_title(title)
    return _save(fig, path)


def curves(path: Path, x, series: dict[str, list[float]], xlabel: str, ylabel: str, title: str) -> Path:
    """One line per named series over the shared ``x``."""
    return panels(path, x, [Panel(ylabel, series)], xlabel, title)


def bars(path: Path, labels: list[str], values: list[float], errors: list[float], ylabel: str, title: str) -> Path:
    fig, ax = _pyplot().subplots(figsize=(max(4, 0.9 * len(labels)), 3.6))
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def histogram(path: Path, groups: dict[str, list[float]], xlabel: str, title: str,
              cutoff: float | None = None, flagged: str = "flagged") -> Path:
    """One panel per named group of scores (own bins, in units of a shared power of ten named in
    the axis label, so tick labels stay short); ``cutoff`` draws the line at or below which items
    are flagged and shades that side. The x label says that negative is harmful."""
    plt = _pyplot()
    names = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    exponent = _power_of_ten([float(v) for name in names for v in groups[name]])
    scale = 10.0 ** -exponent
    unit = f" [×1e{exponent}]" if exponent else ""
    for ax, name in zip(axes[0], names):
        values = [float(v) * scale for v in groups[name]]
        ax.hist(values, bins=40, color="tab:blue")
        if cutoff is not None:
            ax.axvspan(min(values + [cutoff * scale]), cutoff * scale, color="tab:red", alpha=0.15, lw=0)
            ax.axvline(cutoff * scale, color="tab:red", lw=1.2, ls="--", label=flagged)
            ax.legend(fontsize=8)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(_max_ticks(6))
        ax.set(xlabel=f"{xlabel}{unit}\n({HARMFUL})", ylabel="count",
               title=f"{title}: {name}" if len(names) > 1 else title)
    return _save(fig, path)


def _max_ticks(count: int):
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(count)
