"""Headless matplotlib figures, written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils.io import write_atomic  # noqa: E402


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def curves(path: Path, x, series: dict[str, list[float]], xlabel: str, ylabel: str, title: str) -> Path:
    """One line per named series over the shared ``x``."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def bars(path: Path, labels: list[str], values: list[float], errors: list[float], ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(labels)), 3.6))
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def histogram(path: Path, values, xlabel: str, title: str, marked=None) -> Path:
    """Histogram of scores; ``marked`` (a boolean mask) is drawn as a second, stacked group."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    values = list(map(float, values))
    if marked is None:
        ax.hist(values, bins=40)
    else:
        clean = [v for v, m in zip(values, marked) if not m]
        bad = [v for v, m in zip(values, marked) if m]
        ax.hist([clean, bad], bins=40, stacked=True, label=["clean", "corrupted"])
        ax.legend()
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    return _save(fig, path)
