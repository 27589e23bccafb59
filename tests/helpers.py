"""Helpers shared by the test modules: random well-conditioned problems for the kernels and their
references, and small float64 bilevel problems on digits."""

from __future__ import annotations

import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, MamlConfig, MamlProblem, TaskBatch
from metaif.meta.unrolled import default_model
from metaif.models import mlp

TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}
LOSS_OF_HEAD = {"logistic": "softmax", "ridge": "squared"}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Comparison tolerances: tight in float64, loose in float32."""
    return TOLERANCES[dtype]


def orthogonal(d: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0].to(dtype)


def spd(tasks: int, q: int, dtype: torch.dtype, floor: float = 0.5) -> torch.Tensor:
    """``[T, q, q]`` symmetric positive definite with eigenvalues >= floor."""
    m = torch.randn(tasks, q, q, dtype=torch.float64) / q**0.5
    return (m @ m.mT + floor * torch.eye(q, dtype=torch.float64)).to(dtype)


def ce_head_problem(tasks: int, n: int, d: int, classes: int, dtype: torch.dtype, weighted: bool = True):
    """feats [T, n, d], probs [T, n, C] on the simplex, weights [T, n] (or None)."""
    feats = torch.randn(tasks, n, d, dtype=dtype)
    probs = torch.softmax(torch.randn(tasks, n, classes, dtype=torch.float64), -1).to(dtype)
    weights = torch.rand(tasks, n, dtype=dtype) / max(n, 1) if weighted else None
    return feats, probs, weights


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a strided (every other element) layout."""
    if t.dim() == 0:
        return t
    storage = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    storage[..., ::2] = t
    return storage[..., ::2]


def randn(shape, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_taskset(num_tasks: int, seed: int = 0, queries: int = 4):
    """3-way 3-shot digits tasks."""
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    return sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=queries, num_tasks=num_tasks, seed=seed))


def task_tuples(tasks, w_tr=None, w_val=None):
    """Per task ``(x_tr, y_tr, w_tr, x_val, y_val, w_val)`` in float64."""
    b = TaskBatch.from_taskset(tasks, dtype=torch.float64, w_tr=w_tr, w_val=w_val)
    x_tr, x_val = b.x_tr, b.x_val
    return [(x_tr[i], b.y_tr[i], b.w_tr[i], x_val[i], b.y_val[i], b.w_val[i]) for i in range(len(b))]


def make_problem(form: str, gamma: float = 1e-3):
    """A small float64-ready problem: ``imaml``, classic ``maml`` (K = 2 steps on a linear softmax
    model), or ANIL with a ``logistic`` / ``ridge`` head."""
    if form == "maml":
        return MamlProblem(default_model(mlp(64, ()), 3), MamlConfig(ways=3, inner_steps=2, inner_lr=0.05,
                                                                    gamma=0.02))
    if form == "imaml":
        return ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, delta=2.0, gamma=gamma, inner_tol=1e-12,
                                                               inner_max_iter=500, cg_rtol=1e-13, cg_max_iter=500))
    return AnilProblem(mlp(64, (6,), "tanh"), AnilConfig(ways=3, loss=LOSS_OF_HEAD[form], delta=0.3, gamma=gamma,
                                                         inner_tol=1e-12))
