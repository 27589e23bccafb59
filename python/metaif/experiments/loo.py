"""Leave-one-out validation: predicted removal effects against warm-started re-solving (math.md §1).

For random unit directions d, each item's predicted projection ``d^T Δλ_X`` comes from one solve
per direction (``InfluenceAnalyzer.projections``); the actual one from re-solving the outer problem
without X, warm-started at lambda* (:func:`metaif.meta.solve_outer`). Agreement is the Spearman
rank correlation over items, per direction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..influence import InfluenceAnalyzer
from ..meta import solve_outer
from ..utils.progress import stage


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rank correlation of two ``[k]`` vectors (ties are improbable for continuous estimates)."""
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / (rx.norm() * ry.norm()))


@dataclass
class LooResult:
    """``predicted`` and ``actual`` projections ``[d, k]`` for one kind of item, Spearman per
    direction, relative error, and the wall time (s) of the predictions and of the re-solves."""

    kind: str
    items: list
    predicted: torch.Tensor
    actual: torch.Tensor
    spearman: list[float]
    relative_error: float
    predict_seconds: float
    resolve_seconds: float

    def summary(self) -> dict:
        return {"kind": self.kind, "items": len(self.items), "spearman": self.spearman,
                "spearman_min": min(self.spearman), "relative_error": self.relative_error,
                "predict_seconds": self.predict_seconds, "resolve_seconds": self.resolve_seconds}


def leave_one_out(analyzer: InfluenceAnalyzer, kind: str, items: list, directions: torch.Tensor,
                  tol: float = 1e-10, max_iter: int = 3000, progress: bool = False) -> LooResult:
    """Compare predictions with re-solves for ``items`` of ``kind`` "tasks" (positions), "val" or
    "train" (``(position, index)`` pairs)."""
    if kind not in ("tasks", "val", "train"):
        raise ValueError(f"kind must be 'tasks', 'val' or 'train', got {kind!r}")
    began = time.perf_counter()
    scores = analyzer.projections(directions)
    predicted = torch.stack([torch.stack([_pick(getattr(s, kind), item) for item in items]) for s in scores])
    predict_seconds = time.perf_counter() - began

    began = time.perf_counter()
    actual = []
    for item in stage(items, desc=f"re-solve without each {kind} item", disable=not progress):
        weights = analyzer.weights.without_positions(**{kind: [item]})
        lam = solve_outer(analyzer.problem, analyzer.tasks, analyzer.lam, weights, tol=tol, max_iter=max_iter).lam
        actual.append(directions @ (lam - analyzer.lam))
    actual = torch.stack(actual, 1)
    resolve_seconds = time.perf_counter() - began
    rho = [spearman(p, a) for p, a in zip(predicted, actual)]
    rel = float((predicted - actual).norm() / actual.norm())
    return LooResult(kind, list(items), predicted, actual, rho, rel, predict_seconds, resolve_seconds)


def _pick(table: torch.Tensor, item) -> torch.Tensor:
    return table[item] if isinstance(item, int) else table[item[0], item[1]]


def random_directions(p: int, count: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[count, p]`` unit directions (seeded)."""
    d = torch.randn(count, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).to(dtype)
