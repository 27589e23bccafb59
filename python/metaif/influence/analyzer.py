"""The influence analyzer: one object per trained bilevel problem that answers task-IF, instance-IF,
editing and influence-score questions (math.md §3–§12).

Orientation and units: every removal prediction is ``Δλ = λ̂_{-X} - λ*`` in parameter units, one
row per item, ``[k, p]``; influence scores are predicted changes of the test loss ``Δf`` (nats),
negative for harmful items (math.md §12). Tasks are addressed by their position in the task set,
instances by ``(task position, index in the split)``. Every quantity that solves with the total
Hessian takes the Hessian ``variant`` per call (default: the config's).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch.func import vmap

from ..data.tasks import TaskSet
from ..linalg import DampingRetry, MatvecOperator, MetaifWarning, SolverConfig, SolveResult
from ..meta.batch import TaskBatch, Weights
from ..meta.binding import Bound, task_chunks
from ..meta.problem import outer_l2
from ..parallel import World
from .config import DIRECT, VARIANTS, InfluenceConfig

__all__ = ["InfluenceAnalyzer", "Scores"]

# Newton refinement's backtracking: sufficient-decrease constant and the most halvings of a step
_ARMIJO, _HALVINGS = 1e-4, 10

# the per-row Hessian each variant differentiates (math.md §4): gamma adds Gamma I to gn
_ROW_HESSIAN = {"exact": "exact", "gn": "gn", "gamma": "gn", DIRECT: DIRECT}


@dataclass
class Scores:
    """Predicted test-loss change on removal (math.md §12): ``tasks [m]``, ``val [m, v]``,
    ``train [m, n]``; negative = harmful. Zero-weight items score 0."""

    tasks: torch.Tensor
    val: torch.Tensor
    train: torch.Tensor


def _items(items, name: str, tasks: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(position, index)`` pairs as ``[k, 2]`` on ``device``, range-checked (no negative indexing)."""
    out = torch.as_tensor(items, dtype=torch.int64, device="cpu").reshape(-1, 2)
    if out.numel() == 0:
        raise ValueError(f"{name}: give at least one (task position, index) pair")
    bad = (out[:, 0] < 0) | (out[:, 0] >= tasks) | (out[:, 1] < 0) | (out[:, 1] >= width)
    if bool(bad.any()):
        raise ValueError(f"{name}: {tuple(out[bad][0].tolist())} is out of range; positions lie in [0, {tasks}) "
                         f"and indices in [0, {width})")
    return out.to(device)


def _positions(positions, count: int, name: str = "positions", device: torch.device | None = None) -> torch.Tensor:
    """Task positions as a flat ``[k]`` tensor on ``device`` (all ``count`` tasks when None), range-checked."""
    if positions is None:
        return torch.arange(count, device=device)
    out = torch.as_tensor(list(positions) if not torch.is_tensor(positions) else positions, dtype=torch.int64,
                          device="cpu").flatten()
    bad = (out < 0) | (out >= count)
    if bool(bad.any()):
        raise ValueError(f"{name}: {int(out[bad][0])} is out of range; task positions lie in [0, {count})")
    return out.to(device)


def _mask(items: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """1 at the ``(position, index)`` pairs of ``items``, 0 elsewhere, shaped like ``like``."""
    mask = torch.zeros_like(like)
    mask[items[:, 0], items[:, 1]] = 1.0
    return mask


def _scale_rows(cot: tuple, c: torch.Tensor) -> tuple:
    return tuple(x * c.view(-1, *([1] * (x.dim() - 1))).to(x) for x in cot)


class InfluenceAnalyzer:
    """Influence of the tasks and instances of ``tasks`` on ``lam`` (a trained lambda*, ``[p]``).

    ``tasks`` is a :class:`~metaif.data.TaskSet` (or plain per-task tensors through
    :meth:`TaskSet.from_tensors <metaif.data.TaskSet.from_tensors>`). Solves every inner problem
    once at ``lam``; :attr:`diagnostics` reports the stationarity the formulas assume (math.md
    §15.10) and :attr:`last_solve` how the latest total-Hessian solve went (damping used,
    iterations, true residual).
    """

    def __init__(self, problem, lam: torch.Tensor, tasks: TaskSet, *, weights: Weights | None = None,
                 config: InfluenceConfig = InfluenceConfig(), world: World | None = None) -> None:
        if lam.dim() != 1:
            raise ValueError(f"lam must be a flat parameter vector [p], got shape {tuple(lam.shape)}")
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("lam contains NaN or inf")
        self.problem, self.lam, self.tasks, self.config = problem, lam.detach(), tasks, config
        self.world = World.current() if world is None else world
        self.weights = weights.to(lam) if weights is not None else Weights.uniform(tasks, lam.dtype, lam.device)
        self.c = self.weights.c
        self.state = self._bind(self.lam, self.weights)
        self.binding = self.state.binding
        self._host_c = self.c.cpu()
        self._live = self.state.live_chunks(self._host_c)
        self._g_buf: dict[str, torch.Tensor] = {}  # G of hvp per variant (math.md §4): fixed at lambda
        self._solvers: dict[str, DampingRetry] = {}
        self.last_solve: SolveResult | None = None
        own = [(self.c[idx] * r.outer_theta_grad().abs().sum(-1)).sum() for idx, r in zip(self.state.chunks,
                                                                                           self.state.rows)]
        self.gamma_term = float(self.world.sum_(torch.stack(own).sum() if own else self.lam.new_zeros(())))
        stationarity = self.gradient(self.c) + outer_l2(problem, self.lam)[1]
        self.diagnostics = {"inner_grad_norm_max": float(self.binding.inner_norm.max()),
                            "total_grad_norm": float(stationarity.norm()), "gamma_term": self.gamma_term,
                            "num_tasks": len(tasks), "p": self.lam.numel()}

    def _bind(self, lam: torch.Tensor, weights: Weights, theta0: torch.Tensor | None = None,
              tasks: TaskSet | None = None) -> Bound:
        tasks = self.tasks if tasks is None else tasks
        cfg = self.config
        batch = TaskBatch.from_taskset(tasks, dtype=lam.dtype, w_tr=weights.w_tr, w_val=weights.w_val,
                                       device=lam.device)
        return Bound(self.problem, lam, batch, path=cfg.path, chunk=cfg.chunk, image_chunk=cfg.image_chunk,
                     inner=cfg.inner, inner_damping=cfg.inner_damping, passes=cfg.body_passes, theta0=theta0,
                     progress=cfg.progress and self.world.writer, world=self.world)

    def _by_owner(self, positions: torch.Tensor, compute, row_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Rows ``[k, *row_shape]`` (default ``[k, p]``) for requests about the tasks at ``positions
        [k]``: each rank computes the requests of its span of the tasks, ``chunk`` at a time
        (``compute(select)``, ``select`` their indices into the request), and every rank gets all of
        them in request order."""
        row_shape = (self.lam.numel(),) if row_shape is None else row_shape
        if not self.world.distributed:
            return self._chunked(torch.arange(len(positions), device=positions.device), compute, row_shape)
        owner = self.world.owner(positions.cpu(), len(self.tasks))
        mine = torch.nonzero(owner == self.world.rank).flatten().to(positions.device)
        gathered = self.world.gather_rows(self._chunked(mine, compute, row_shape))
        out = torch.empty_like(gathered)
        out[torch.argsort(owner, stable=True).to(out.device)] = gathered  # gathered in rank order
        return out

    def _chunked(self, select: torch.Tensor, compute, row_shape: tuple[int, ...]) -> torch.Tensor:
        """``compute`` over chunks of ``config.chunk`` requests of ``select``, concatenated."""
        parts = [compute(select[idx]) for idx in task_chunks(len(select), self.config.chunk, select.device)]
        return torch.cat(parts) if parts else self.lam.new_zeros(0, *row_shape)

    def _own(self, positions: torch.Tensor) -> torch.Tensor:
        """The ``positions`` in this rank's span of the tasks."""
        first, last = self.world.span(len(self.tasks))
        return positions[(positions >= first) & (positions < last)]

    def _pairs(self, items, split: str) -> torch.Tensor:
        """``(task position, index)`` pairs of the ``split`` ("val" or "train") instances, ``[k, 2]``."""
        width = (self.tasks.y_val if split == "val" else self.tasks.y_train).shape[1]
        return _items(items, f"{split} items", len(self.tasks), width, self.lam.device)

    def _variant(self, variant: str | None, allow_direct: bool = False) -> str:
        variant = variant or self.config.variant
        if variant == DIRECT and not allow_direct:
            raise ValueError("variant 'direct' is the direct-IF baseline (theta held fixed): use direct_influence, "
                             "direct_val_influence or direct_scores")
        choices = (*VARIANTS, DIRECT) if allow_direct else VARIANTS
        if variant not in choices:
            raise ValueError(f"variant must be one of {', '.join(choices)}, got {variant!r}")
        return variant

    # ---- gradients and products ----------------------------------------------------------------

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (or ``sum_i c_i grad_lambda L_i`` when ``direct``), ``[p]``."""
        return self.state.gradient(c, direct)

    def task_gradients(self, positions=None, direct: bool = False) -> torch.Tensor:
        """Per-task total gradients ``g_i`` (partial ``b_i`` when ``direct``), ``[k, p]``."""
        positions = _positions(positions, len(self.tasks), device=self.lam.device)

        def compute(select: torch.Tensor) -> torch.Tensor:
            at = positions[select]
            rows, ones = self.binding.rows(at), self.lam.new_ones(len(select))
            cot = rows.direct_cotangent(ones) if direct else rows.gradient_cotangent(ones)
            return self.binding.pull_each(cot, at)

        return self._by_owner(positions, compute)

    def _weighted_chunks(self, subset: torch.Tensor | None):
        """``(positions, rows, c)`` of every chunk with a non-zero task weight; with a ``subset`` of
        task positions the weights of an unbiased minibatch estimate (scaled by m / |subset|).
        Which chunks to skip is decided on the host: no device synchronisation per chunk."""
        if subset is None:
            for idx, rows, live in zip(self.state.chunks, self.state.rows, self._live):
                if live:
                    yield idx, rows, self.c[idx]
            return
        members = torch.as_tensor(subset, device="cpu")
        on_device = members.to(self.lam.device, non_blocking=True)
        scale = len(self.tasks) / len(members)
        for (start, end), idx, rows in zip(self.state.spans, self.state.chunks, self.state.rows):
            inside = members[(members >= start) & (members < end)]
            if len(inside) and bool((self._host_c[inside] != 0).any()):
                yield idx, rows, self.c[idx] * scale * torch.isin(idx, on_device).to(self.c)

    def hvp(self, v: torch.Tensor, variant: str | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Total-Hessian-vector products ``H v`` of ``v [p]`` or a block ``[k, p]`` in ``variant``
        ("direct": the direct Hessian of eq. 7); ``subset`` of task positions gives the unbiased
        minibatch estimate. Where the context is lambda (the per-task path with dense inner solves,
        explicit inner maps) a block runs as one vmapped product per chunk."""
        variant = self._variant(variant, allow_direct=True)
        if v.dim() == 2:
            if getattr(self.binding, "blockwise", False):
                out = self._seam_block_hvp(v, variant, subset)
            else:
                return torch.stack([self.hvp(row, variant, subset) for row in v]) if len(v) else v.clone()
        else:
            tangent = self.binding.tangent(v)
            # G does not depend on v: the full-batch one is kept, and passing the same tensor lets the
            # body passes reuse what they derived from it
            cached = self._g_buf.get(variant) if subset is None else None
            g_buf, m_buf = self.binding.zeros() if cached is None else cached, self.binding.zeros()
            for idx, rows, c in self._weighted_chunks(subset):
                g, m = rows.hvp_cotangents(self.binding.context_tangent(tangent, idx), c, _ROW_HESSIAN[variant])
                if cached is None:
                    self.binding.scatter(g_buf, g, idx)
                self.binding.scatter(m_buf, m, idx)
            if subset is None:
                self._g_buf[variant] = g_buf
            out = self.binding.pull(m_buf, g_buf, v)
        out = out + self.problem.gamma * v
        return out + self.gamma_term * v if variant == "gamma" else out

    def _seam_block_hvp(self, block: torch.Tensor, variant: str, subset: torch.Tensor | None) -> torch.Tensor:
        """The row part of ``H v`` for every row of ``block [k, p]`` when the context is lambda (the
        pull-back is the identity and has no second-order term)."""
        out = torch.zeros_like(block)
        for idx, rows, c in self._weighted_chunks(subset):
            def one(v: torch.Tensor) -> torch.Tensor:
                return rows.hvp_cotangents((v.expand(len(idx), -1),), c, _ROW_HESSIAN[variant])[1][0].sum(0)

            out = out + vmap(one)(block.clone())
        return self.world.sum_(out)

    def operator(self, variant: str | None = None) -> MatvecOperator:
        """The total Hessian of ``variant`` as a :class:`~metaif.linalg.LinearOperator` (with the
        minibatch product LiSSA needs)."""
        variant = self._variant(variant, allow_direct=True)
        batch_tasks = self.config.solver.lissa_tasks

        def sampled(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            subset = torch.randperm(len(self.tasks), generator=gen, device="cpu")[:batch_tasks].to(self.lam.device)
            return self.hvp(v, variant, subset)

        return MatvecOperator(lambda v: self.hvp(v, variant), self.lam.numel(), self.lam.dtype, self.lam.device,
                              lambda v, gen: torch.stack([sampled(row, gen) for row in v]))

    def set_solver(self, solver: SolverConfig) -> None:
        """Use another solver configuration (e.g. more damping) for later solves."""
        self.config = replace(self.config, solver=solver)
        self._solvers.clear()

    def solver(self, variant: str | None = None) -> DampingRetry:
        """The (cached) solver of ``variant``'s damped total Hessian."""
        variant = self._variant(variant, allow_direct=True)
        if variant not in self._solvers:
            self._solvers[variant] = DampingRetry(self.operator(variant), self.config.solver)
        return self._solvers[variant]

    def solve(self, b: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        """``(H + damping I)^{-1} b`` for ``b [k, p]``; the outcome is kept in :attr:`last_solve`."""
        self.last_solve = self.solver(variant).solve(b)
        return self.last_solve.x

    @property
    def damping_used(self) -> float:
        """The damping of the latest solve (the retry policy may have raised the configured one)."""
        return self.last_solve.damping if self.last_solve is not None else self.config.solver.damping

    # ---- removal predictions -----------------------------------------------------------------

    def task_influence(self, positions=None, variant: str | None = None) -> torch.Tensor:
        """task-IF removal predictions ``Δλ_k = c_k H^{-1} g_k`` (math.md §6), ``[k, p]``."""
        variant, positions = self._variant(variant), _positions(positions, len(self.tasks), device=self.lam.device)
        return self.c[positions, None] * self.solve(self.task_gradients(positions), variant)

    def direct_influence(self, positions=None) -> torch.Tensor:
        """The direct IF of tasks (eq. 6, theta held fixed): ``c_k H_dir^{-1} grad_lambda L_k``, ``[k, p]``."""
        positions = _positions(positions, len(self.tasks), device=self.lam.device)
        b = self.task_gradients(positions, direct=True)
        if not bool(b.abs().sum() > 0):
            warnings.warn("the direct IF is identically 0 for this form (lambda enters the outer loss only "
                          "through theta, math.md §6); use first_order_influence as a baseline", MetaifWarning,
                          stacklevel=2)
            return b
        return self.c[positions, None] * self.solve(b, DIRECT)

    def direct_val_influence(self, items) -> torch.Tensor:
        """The direct IF of validation instances: ``c_k w_kj H_dir^{-1} grad_lambda l(z')`` with theta
        held fixed (math.md §7's partial-gradient variant), ``[k, p]``."""
        items = self._pairs(items, "val")

        def cotangent(tasks, onehot):
            return self.binding.rows(tasks, w_val=onehot).direct_cotangent(self.lam.new_ones(len(tasks)))

        grads = self._instance_gradients(items, self.tasks.y_val.shape[1], cotangent)
        w = self.c[items[:, 0]] * self.weights.w_val[items[:, 0], items[:, 1]]
        return w[:, None] * self.solve(grads, DIRECT)

    def first_order_influence(self, positions=None) -> torch.Tensor:
        """The J := I baseline (math.md §6): ``g_i ~ a_i``, ``H ~ gamma I + sum_i c_i grad^2_theta L_i``;
        only where theta and lambda share a space (iMAML), ``[k, p]``."""
        if self.binding.theta.shape[1] != self.lam.numel():
            raise ValueError("first_order_influence needs theta and lambda in the same space (the iMAML form)")
        positions = _positions(positions, len(self.tasks), device=self.lam.device)

        def matvec(v):
            out = self.problem.gamma * v
            local = torch.zeros_like(v)
            for idx, rows in zip(self.state.chunks, self.state.rows):
                local = local + (self.c[idx, None] * rows.outer_theta_hvp(v.expand(len(idx), -1))).sum(0)
            return out + self.world.sum_(local)

        a = self._by_owner(positions, lambda select: self.binding.rows(positions[select]).outer_theta_grad(),
                           (self.binding.theta.shape[1],))
        solver = DampingRetry(MatvecOperator.per_vector(matvec, self.lam), self.config.solver)
        return self.c[positions, None] * solver.solve(a).x

    def _instance_gradients(self, items: torch.Tensor, width: int, cotangent) -> torch.Tensor:
        """Per-item lambda-gradients ``[k, p]``; ``cotangent(tasks, onehot [B, width])`` gives the
        context cotangents of a chunk of items."""
        def compute(select: torch.Tensor) -> torch.Tensor:
            tasks = items[select, 0]
            onehot = torch.nn.functional.one_hot(items[select, 1], width).to(self.lam)
            return self.binding.pull_each(cotangent(tasks, onehot), tasks)

        return self._by_owner(items[:, 0], compute)

    def val_gradients(self, items) -> torch.Tensor:
        """``D_lambda l(z')`` of validation instances ``items [k, 2]``, ``[k, p]`` (math.md §7)."""
        width = self.tasks.y_val.shape[1]
        items = self._pairs(items, "val")

        def cotangent(tasks, onehot):
            return self.binding.rows(tasks, w_val=onehot).gradient_cotangent(self.lam.new_ones(len(tasks)))

        return self._instance_gradients(items, width, cotangent)

    def train_gradients(self, items) -> torch.Tensor:
        """``D_lambda [a_k^T H_k^{-1} grad_theta l(z)]`` of training instances ``items [k, 2]``, ``[k, p]`` (§10)."""
        width = self.tasks.y_train.shape[1]
        items = self._pairs(items, "train")

        def cotangent(tasks, onehot):
            return self.binding.rows(tasks).train_cotangent(onehot, self.config.third_order_train)

        return self._instance_gradients(items, width, cotangent)

    def val_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Validation instance-IF removal predictions ``c_k w_kj H^{-1} D_lambda l(z')``, ``[k, p]``."""
        variant, items = self._variant(variant), self._pairs(items, "val")
        w = self.c[items[:, 0]] * self.weights.w_val[items[:, 0], items[:, 1]]
        return w[:, None] * self.solve(self.val_gradients(items), variant)

    def train_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Training instance-IF removal predictions ``-c_k w_kj H^{-1} D_lambda P/w``, ``[k, p]`` (§10)."""
        variant = self._variant(variant)
        items = self._pairs(items, "train")
        w = self.c[items[:, 0]] * self.weights.w_tr[items[:, 0], items[:, 1]]
        return -w[:, None] * self.solve(self.train_gradients(items), variant)

    def inner_influence(self, items) -> torch.Tensor:
        """inner-IF ``d theta_k / d eps`` of up-weighting training point j of task k (math.md §8:
        ``-H_k^{-1} grad_theta l(z)``; §14(c)'s tangent recursion for an unrolled map), ``[k, q]``."""
        width = self.tasks.y_train.shape[1]
        items = self._pairs(items, "train")

        def compute(select: torch.Tensor) -> torch.Tensor:
            rows = self.binding.rows(items[select, 0])
            return rows.inner_tangent(torch.nn.functional.one_hot(items[select, 1], width).to(self.lam))

        return self._by_owner(items[:, 0], compute, (self.binding.theta.shape[1],))

    def loss_difference(self, items) -> torch.Tensor:
        """math.md §9: predicted change of task k's validation loss when training point j leaves
        its inner problem (lambda fixed), ``-w_kj grad_theta L_k^T d theta_k / d eps`` (for an argmin
        ``P = w_kj u_k^T grad_theta l(z_kj)``), ``[k]``."""
        width = self.tasks.y_train.shape[1]
        items = self._pairs(items, "train")

        def compute(select: torch.Tensor) -> torch.Tensor:
            rows = self.binding.rows(items[select, 0])
            tangent = rows.inner_tangent(torch.nn.functional.one_hot(items[select, 1], width).to(self.lam))
            w = self.weights.w_tr[items[select, 0], items[select, 1]]
            return -w * (rows.outer_theta_grad() * tangent).sum(-1)

        return self._by_owner(items[:, 0], compute, ())

    # ---- editing and scores --------------------------------------------------------------------

    def removal_gradient(self, tasks=(), val=(), train=(), direct: bool = False) -> torch.Tensor:
        """``sum_X w_X (d/dw_X) D_lambda L`` over a removal set (so that ``Δλ = H^{-1}`` of it), ``[p]``;
        ``direct`` uses partial gradients (theta held fixed; tasks and validation instances only)."""
        task_mask = self.lam.new_zeros(len(self.tasks))
        task_mask[_positions(tasks, len(self.tasks), "removed tasks", device=self.lam.device)] = 1.0
        total = self.gradient(self.c * task_mask, direct=direct)
        if direct and len(train):
            raise ValueError("the direct IF has no training instances (they reach lambda only through theta)")
        if len(val):
            items = self._pairs(val, "val")
            w_val = self.weights.w_val
            touched = self._own(torch.unique(items[:, 0]))
            buf = self.binding.zeros()
            if len(touched):
                rows = self.binding.rows(touched, w_val=(w_val * _mask(items, w_val))[touched])
                cot = rows.direct_cotangent(self.c[touched]) if direct else rows.gradient_cotangent(self.c[touched])
                self.binding.scatter(buf, cot, touched)
            total = total + self.binding.pull(buf)
        if len(train):
            items = self._pairs(train, "train")
            w_tr = self.weights.w_tr
            touched = self._own(torch.unique(items[:, 0]))
            buf = self.binding.zeros()
            if len(touched):
                cot = self.binding.rows(touched).train_cotangent((w_tr * _mask(items, w_tr))[touched],
                                                                 self.config.third_order_train)
                self.binding.scatter(buf, _scale_rows(cot, self.c[touched]), touched)
            total = total - self.binding.pull(buf)
        return total

    def edit(self, tasks=(), val=(), train=(), method: str = "task-if", refine: int = 0,
             variant: str | None = None) -> torch.Tensor:
        """``λ̂_{-S} = λ* + H^{-1} removal_gradient(S)`` (math.md §11), one solve; ``method``
        "direct" uses the direct IF (tasks and validation instances); ``refine`` Newton steps
        re-solve the inner problems with S removed (warm-started; H kept from λ*), ``[p]``."""
        if method not in ("task-if", "direct"):
            raise ValueError(f"method must be 'task-if' or 'direct', got {method!r}")
        if not (isinstance(refine, int) and refine >= 0):
            raise ValueError(f"refine must be an integer >= 0 (Newton steps), got {refine!r}")
        direct = method == "direct"
        variant = DIRECT if direct else self._variant(variant)
        if len(train):
            self._warn_emptied_classes(self._pairs(train, "train"))
        lam = self.lam + self.solve(self.removal_gradient(tasks, val, train, direct)[None], variant)[0]
        *_, last = itertools.islice(self.newton_steps(lam, tasks, val, train, variant), refine + 1)
        return last

    def _warn_emptied_classes(self, items: torch.Tensor) -> None:
        """Warns when removing training ``items [k, 2]`` takes some task's last support example of a
        class (integer labels only): that task's inner problem then changes far beyond first order."""
        y = self.tasks.y_train
        if y.is_floating_point():
            return
        touched = torch.unique(items[:, 0]).cpu()
        kept = self.weights.without_positions(train=items.tolist()).w_tr.detach().cpu()[touched]
        onehot = torch.nn.functional.one_hot(y[touched], int(y.max()) + 1).to(kept.dtype)  # [t, n, classes]
        before = torch.einsum("tn,tnc->tc", self.weights.w_tr.detach().cpu()[touched], onehot)
        after = torch.einsum("tn,tnc->tc", kept, onehot)
        emptied = int(((before > 0) & (after == 0)).any(1).sum())
        if emptied:
            warnings.warn(f"the removed training instances take the last support example of a class in {emptied} of "
                          f"the {len(touched)} tasks they touch: those inner problems change far beyond first order, "
                          f"so the edit may be far from retraining (refine=r Newton steps, or a retrain, measure "
                          f"it)", MetaifWarning, stacklevel=3)

    def newton_steps(self, lam: torch.Tensor, tasks=(), val=(), train=(),
                     variant: str | None = None) -> Iterator[torch.Tensor]:
        """``lam``, then the iterates of math.md §11's ``refine`` toward the optimum without S, ``[p]``
        each: the direction ``-(H + μI)^{-1} D_λ L_{-S}(λ)`` re-solves the inner problems at λ
        (warm-started from the last θ) and reuses this analyzer's total Hessian at λ*. H at λ* only
        approximates the curvature where a large removal leads, so a full step can climb: each step is
        halved (at most ``_HALVINGS`` times) until ``L_{-S}`` decreases enough (Armijo); where no step
        does, a warning says so and the iteration ends at the last iterate."""
        variant = self._variant(variant, allow_direct=True)
        removed = self.weights.without_positions(tasks, val, train)

        def at(point: torch.Tensor, theta0: torch.Tensor) -> tuple[Bound, float]:
            state = self._bind(point, removed, theta0=theta0)
            return state, state.weighted_loss(removed.c) + outer_l2(self.problem, point)[0]

        yield lam  # before any binding: edit(refine=0) costs no more than the plain edit
        state, value = at(lam, self.binding.theta)
        while True:
            grad = state.gradient(removed.c) + outer_l2(self.problem, lam)[1]
            step = -self.solve(grad[None], variant)[0]
            slope = float(grad @ step)
            accepted = None
            for t in (0.5 ** h for h in range(_HALVINGS + 1)) if slope < 0 else ():  # slope >= 0: no descent
                trial, trial_value = at(lam + t * step, state.theta)
                if trial_value <= value + _ARMIJO * t * slope:
                    accepted = t
                    break
            if accepted is None:
                warnings.warn(f"Newton refinement stopped: no step along -(H + mu I)^-1 D_lambda L_-S down to "
                              f"{0.5 ** _HALVINGS:g} of it lowers the objective without the removed items "
                              f"({value:.6g}; slope {slope:.3g}); the last iterate is returned", MetaifWarning,
                              stacklevel=2)
                return
            lam, state, value = lam + accepted * step, trial, trial_value
            yield lam

    def test_gradient(self, test: TaskSet, partial: bool = False) -> torch.Tensor:
        """``D_lambda f`` of the mean query loss over ``test`` tasks after adaptation (math.md §12),
        or the partial ``grad_lambda f`` with ``partial=True``, ``[p]``."""
        weights = Weights.uniform(test, self.lam.dtype, self.lam.device)
        state = self._bind(self.lam, weights, tasks=test)
        return state.gradient(weights.c, direct=partial)

    def directional(self, r: torch.Tensor) -> Scores:
        """``r^T`` of every item's removal gradient, scaled to removal predictions: for the
        projection ``r^T Δλ_X`` pass ``r = H^{-1} d``; for scores ``r = H^{-1} D_lambda f``."""
        tangent = self.binding.tangent(r)
        tasks, val, train = [], [], []
        for idx, rows in zip(self.state.chunks, self.state.rows):
            t, v, tr = rows.directional(self.binding.context_tangent(tangent, idx), self.config.third_order_train)
            c = self.c[idx]
            tasks.append(c * t)
            val.append(c[:, None] * self.weights.w_val[idx].to(v) * v)
            train.append(-c[:, None] * self.weights.w_tr[idx].to(tr) * tr)
        return Scores(*(self.world.gather_rows(torch.cat(part)) for part in (tasks, val, train)))

    def scores(self, test: TaskSet, partial: bool = False, variant: str | None = None) -> Scores:
        """Influence scores on new tasks (math.md §12), one solve (s_test): predicted change of
        the test loss when each task / instance is removed; negative = harmful."""
        variant = self._variant(variant)
        r = self.solve(self.test_gradient(test, partial)[None], variant)[0]
        return self.directional(r)

    def direct_scores(self, test: TaskSet) -> Scores:
        """Scores of the direct IF (theta held fixed, partial gradients and the direct Hessian):
        tasks ``[m]`` and validation instances ``[m, v]``; training instances score 0 (the direct
        IF has none)."""
        r = self.solve(self.test_gradient(test, partial=True)[None], DIRECT)[0]
        tangent = self.binding.tangent(r)
        tasks, val = [], []
        for idx, rows in zip(self.state.chunks, self.state.rows):
            t, v = rows.direct_directional(self.binding.context_tangent(tangent, idx))
            c = self.c[idx]
            tasks.append(c * t)
            val.append(c[:, None] * self.weights.w_val[idx].to(v) * v)
        return Scores(self.world.gather_rows(torch.cat(tasks)), self.world.gather_rows(torch.cat(val)),
                      torch.zeros_like(self.weights.w_tr, dtype=self.lam.dtype))

    def projections(self, directions: torch.Tensor, variant: str | None = None) -> list[Scores]:
        """Predicted ``d^T Δλ_X`` for every item and each direction ``d`` of ``directions [k, p]``."""
        return [self.directional(r) for r in self.solve(directions, self._variant(variant))]
