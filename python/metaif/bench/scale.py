"""Scale in the task count (issue 11): on Omniglot, Conv-4 (64 channels), 5-way 1-shot with 15
queries, one thread, the full-batch outer gradient and one exact total HVP at 200, 2,000 and 10,000
tasks. The gradient runs the body once per unique image (metaif) against once per image slot of
every task (the per-slot path, in chunks of tasks so that it fits in memory), at 200 and 2,000
tasks; the HVP is timed with its set-up (inner solves, forward state) in the note. The unique
images hardly grow with the task count, so neither should the cost.

    metaif bench --only scale --root ../shared/data/omniglot
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache

import torch

from ..data import TaskConfig, load_omniglot, sample_tasks, split_classes
from ..influence import InfluenceAnalyzer
from ..meta import AnilConfig, AnilProblem, FeatureHead, TaskBatch, Weights, meta_gradient
from ..models import conv4
from .core import BenchConfig, Case

SIZES, QUICK_SIZES = (200, 2_000, 10_000), (50, 200, 1_000)
SLOT_SIZES = (200, 2_000, 50)
SLOT_CHUNK = 50  # tasks per autograd pass of the per-slot path (4,000 image slots)


@lru_cache(maxsize=1)
def _pool(root: str):
    return split_classes(load_omniglot(root), 0.5, seed=0)[0]


def per_slot_gradient(problem: AnilProblem, lam: torch.Tensor, batch: TaskBatch, c: torch.Tensor) -> torch.Tensor:
    """``sum_i c_i g_i`` with every task's images pushed through the body (what the meta layer did
    before it shared the unique-image machinery), ``SLOT_CHUNK`` tasks per autograd pass."""
    head = FeatureHead(problem)
    total = torch.zeros_like(lam)
    for start in range(0, len(batch), SLOT_CHUNK):
        rows = torch.arange(start, min(start + SLOT_CHUNK, len(batch)))
        b = batch.select(rows)
        la = lam.detach().requires_grad_(True)
        phi_tr, phi_val = head.features(la, b.x_tr), head.features(la, b.x_val)
        theta, _ = head.solve(phi_tr.detach(), b.y_tr, b.w_tr)
        theta_req = theta.detach().requires_grad_(True)
        outer = head.outer_objective(theta_req, phi_val.detach(), b.y_val, b.w_val)
        a = torch.autograd.grad(outer.sum(), theta_req)[0]
        u = head.solver(theta, phi_tr.detach(), b.y_tr, b.w_tr)(a)
        surrogate = head.outer_objective(theta, phi_val, b.y_val, b.w_val) - (
            head.inner_grad(theta, phi_tr, b.y_tr, b.w_tr) * u).sum(-1)
        total += torch.autograd.grad((c[rows] * surrogate).sum(), la)[0]
    return total


def scale_cases(cfg: BenchConfig) -> Iterator[Case]:
    if cfg.root is None:
        raise SystemExit("metaif bench --only scale needs --root: the Omniglot folder (zips or folders)")
    pool = _pool(cfg.root)
    problem = AnilProblem(conv4(1, 64, 28), AnilConfig(ways=5))
    lam = problem.init_lambda(0)
    for m in QUICK_SIZES if cfg.quick else SIZES:
        tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=m, seed=0))
        batch = TaskBatch.from_taskset(tasks)
        c = Weights.uniform(tasks).c
        slots = m * (tasks.train_index.shape[1] + tasks.val_index.shape[1])
        note = f"{len(batch.inputs)} unique images, {slots} slots"
        yield Case("outer_gradient", f"m={m}", "per-slot autograd", lambda b=batch, c=c: meta_gradient(problem, lam, b, c)[0],
                   (lambda b=batch, c=c: per_slot_gradient(problem, lam, b, c)) if m in SLOT_SIZES else None,
                   note=note, norm_check=True, repeats=1)
        began = time.perf_counter()
        analyzer = InfluenceAnalyzer(problem, lam, tasks)
        setup = time.perf_counter() - began
        v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0))
        yield Case("total_hvp", f"m={m}", "", lambda a=analyzer: a.hvp(v), None,
                   note=f"exact, set-up {setup:.1f} s; {note}", repeats=2)
        del analyzer


scale_cases.ops = ("outer_gradient", "total_hvp")
scale_cases.aliases = ("scale",)
scale_cases.explicit = True
