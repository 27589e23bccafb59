"""The influence analyzer: one object per trained bilevel problem that answers task-IF, instance-IF,
editing and influence-score questions (math.md §3–§12).

Orientation and units: every removal prediction is ``Δλ = λ̂_{-X} - λ*`` in parameter units, one
row per item, ``[k, p]``; influence scores are predicted changes of the test loss ``Δf`` (nats),
negative for harmful items (math.md §12). Tasks are addressed by their position in the task set,
instances by ``(task position, index in the split)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..data.tasks import TaskSet
from ..meta.anil import HEAD_SOLVERS, AnilProblem
from ..meta.batch import Weights
from ..models.second_order import PASSES
from .binding import BodyBinding, SeamBinding, _chunks
from .solve import HessianSolver, SolverConfig

VARIANTS = ("exact", "gn", "gamma", "direct")
_LOCAL = {"exact": "exact", "gn": "gn", "gamma": "gn", "direct": "direct"}


@dataclass(frozen=True)
class InfluenceConfig:
    """``variant`` of the total Hessian (math.md §4); ``solver`` for it; ``third_order_train``
    False gives §10's "second-order only"; ``path`` "auto" uses the unique-image body binding for
    the body-plus-head form, "seam" the generic per-task one; ``inner`` the head iHVP of that
    form ("auto" = exact Woodbury/Cholesky, "ekfac" = math.md §13.3 with damping delta +
    ``inner_damping``, "ekfac-pooled" = its eigenbases pooled over all tasks); ``body_passes`` the body passes of that form ("auto" = hand-written
    second-order passes when the body is a Conv/Linear/ReLU/Tanh/Softplus/pool ``Sequential``,
    else autograd; "structured" or "autograd" to force one); ``chunk`` tasks per feature-space
    batch; ``image_chunk`` images per body pass."""

    variant: str = "exact"
    solver: SolverConfig = field(default_factory=SolverConfig)
    third_order_train: bool = True
    path: str = "auto"
    inner: str = "auto"
    inner_damping: float = 0.0
    body_passes: str = "auto"
    chunk: int = 256
    image_chunk: int = 1024
    progress: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"InfluenceConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.path not in ("auto", "seam"):
            raise ValueError(f"InfluenceConfig.path must be 'auto' or 'seam', got {self.path!r}")
        if self.inner not in HEAD_SOLVERS:
            raise ValueError(f"InfluenceConfig.inner must be one of {HEAD_SOLVERS}, got {self.inner!r}")
        if self.body_passes not in PASSES:
            raise ValueError(f"InfluenceConfig.body_passes must be one of {PASSES}, got {self.body_passes!r}")
        if self.chunk < 1 or self.image_chunk < 1:
            raise ValueError("InfluenceConfig.chunk and image_chunk must be >= 1")


@dataclass
class Scores:
    """Predicted test-loss change on removal (math.md §12): ``tasks [m]``, ``val [m, v]``,
    ``train [m, n]``; negative = harmful. Zero-weight items score 0."""

    tasks: torch.Tensor
    val: torch.Tensor
    train: torch.Tensor


def _items(items, name: str) -> torch.Tensor:
    out = torch.as_tensor(items, dtype=torch.int64).reshape(-1, 2)
    if out.numel() == 0:
        raise ValueError(f"{name}: give at least one (task position, index) pair")
    return out


def _positions(positions, count: int) -> torch.Tensor:
    """Task positions as a flat ``[k]`` tensor (all ``count`` tasks when None)."""
    return torch.arange(count) if positions is None else torch.as_tensor(positions).flatten()


def _mask(items: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """1 at the ``(position, index)`` pairs of ``items``, 0 elsewhere, shaped like ``like``."""
    mask = torch.zeros_like(like)
    mask[items[:, 0], items[:, 1]] = 1.0
    return mask


def _scale_rows(cot: tuple, c: torch.Tensor) -> tuple:
    return tuple(x * c.view(-1, *([1] * (x.dim() - 1))).to(x) for x in cot)


class _State:
    """Inner solutions at ``lam`` for a task set, bound and cut into row chunks."""

    def __init__(self, problem, lam: torch.Tensor, tasks: TaskSet, weights: Weights, config: InfluenceConfig) -> None:
        self.c = weights.c.to(lam)
        if isinstance(problem, AnilProblem) and config.path == "auto":
            self.binding = BodyBinding(problem, lam, tasks, weights, config.image_chunk, config.inner,
                                       config.inner_damping, config.body_passes)
        else:
            self.binding = SeamBinding(problem, lam, tasks, weights)
        self.chunks = list(_chunks(len(tasks), config.chunk))
        chunks = tqdm(self.chunks, desc="inner states", leave=False) if config.progress else self.chunks
        self.rows = [self.binding.rows(idx) for idx in chunks]

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (or ``sum_i c_i grad_lambda L_i`` when ``direct``), ``[p]``."""
        buf = self.binding.zeros()
        for idx, rows in zip(self.chunks, self.rows):
            ci = c[idx].to(buf)
            if bool((ci != 0).any()):
                self.binding.scatter(buf, rows.direct_cotangent(ci) if direct else rows.gradient_cotangent(ci), idx)
        return self.binding.pull(buf)


class InfluenceAnalyzer:
    """Influence of the tasks and instances of ``tasks`` on ``lam`` (a trained lambda*, ``[p]``).

    Solves every inner problem once at ``lam``; :attr:`diagnostics` reports the stationarity the
    formulas assume (math.md §15.10).
    """

    def __init__(self, problem, lam: torch.Tensor, tasks: TaskSet, *, weights: Weights | None = None,
                 config: InfluenceConfig = InfluenceConfig()) -> None:
        if lam.dim() != 1:
            raise ValueError(f"lam must be a flat parameter vector [p], got shape {tuple(lam.shape)}")
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("lam contains NaN or inf")
        self.problem, self.lam, self.tasks, self.config = problem, lam.detach(), tasks, config
        self.weights = weights or Weights.uniform(tasks, lam.dtype)
        self.state = _State(problem, self.lam, tasks, self.weights, config)
        self.c, self.binding = self.state.c, self.state.binding
        self._chunks, self._rows = self.state.chunks, self.state.rows
        self._solvers: dict[str, HessianSolver] = {}
        self.gamma_term = float(sum((self.c[idx] * r.outer_theta_grad().abs().sum(-1)).sum()
                                    for idx, r in zip(self._chunks, self._rows)))
        stationarity = self.gradient(self.c) + problem.gamma * self.lam
        self.diagnostics = {"inner_grad_norm_max": float(self.binding.inner_norm.max()),
                            "total_grad_norm": float(stationarity.norm()), "gamma_term": self.gamma_term,
                            "num_tasks": len(tasks), "p": self.lam.numel()}

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (or ``sum_i c_i grad_lambda L_i`` when ``direct``), ``[p]``."""
        return self.state.gradient(c, direct)

    def task_gradients(self, positions=None, direct: bool = False) -> torch.Tensor:
        """Per-task total gradients ``g_i`` (partial ``b_i`` when ``direct``), ``[k, p]``."""
        positions = _positions(positions, len(self.tasks))
        out = []
        for idx in _chunks(len(positions), self.config.chunk):
            rows, ones = self.binding.rows(positions[idx]), torch.ones(len(idx), dtype=self.lam.dtype)
            cot = rows.direct_cotangent(ones) if direct else rows.gradient_cotangent(ones)
            out.append(self.binding.pull_each(cot, positions[idx]))
        return torch.cat(out)

    def hvp(self, v: torch.Tensor, variant: str | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Total-Hessian-vector product ``H v`` (``[p]``) in ``variant``; ``subset`` of task
        positions gives the unbiased minibatch estimate (weights scaled by m / |subset|)."""
        variant = variant or self.config.variant
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        tangent = self.binding.tangent(v)
        g_buf, m_buf = self.binding.zeros(), self.binding.zeros()
        scale = 1.0 if subset is None else len(self.tasks) / len(subset)
        for idx, rows in zip(self._chunks, self._rows):
            c = self.c[idx] * scale
            if subset is not None:
                c = c * torch.isin(idx, subset).to(c)
            if not bool((c != 0).any()):
                continue
            g, m = rows.hvp_cotangents(self.binding.context_tangent(tangent, idx), c, _LOCAL[variant])
            self.binding.scatter(g_buf, g, idx)
            self.binding.scatter(m_buf, m, idx)
        out = self.problem.gamma * v + self.binding.pull(m_buf, g_buf, v)
        if variant == "gamma":
            out = out + self.gamma_term * v
        return out

    def set_solver(self, solver: SolverConfig) -> None:
        """Use another solver configuration (e.g. more damping) for later solves."""
        self.config = replace(self.config, solver=solver)
        self._solvers.clear()

    def solver(self, variant: str | None = None) -> HessianSolver:
        """The (cached) solver for ``variant``'s damped total Hessian."""
        variant = variant or self.config.variant
        if variant not in self._solvers:
            gen_tasks = self.config.solver.lissa_tasks

            def sampled(v, gen):
                subset = torch.randperm(len(self.tasks), generator=gen)[:gen_tasks]
                return self.hvp(v, variant, subset)

            self._solvers[variant] = HessianSolver(lambda v: self.hvp(v, variant), self.lam.numel(), self.lam,
                                                   self.config.solver, sampled)
        return self._solvers[variant]

    # ---- removal predictions -----------------------------------------------------------------

    def task_influence(self, positions=None) -> torch.Tensor:
        """task-IF removal predictions ``Δλ_k = c_k H^{-1} g_k`` (math.md §6), ``[k, p]``."""
        positions = _positions(positions, len(self.tasks))
        g = self.task_gradients(positions)
        return self.c[positions, None] * self.solver()(g)

    def direct_influence(self, positions=None) -> torch.Tensor:
        """The direct IF (eq. 6, theta held fixed): ``c_k H_dir^{-1} grad_lambda L_k``, ``[k, p]``."""
        positions = _positions(positions, len(self.tasks))
        b = self.task_gradients(positions, direct=True)
        if not bool(b.abs().sum() > 0):
            warnings.warn("the direct IF is identically 0 for this form (lambda enters the outer loss only "
                          "through theta, math.md §6); use first_order_influence as a baseline", stacklevel=2)
            return b
        return self.c[positions, None] * self.solver("direct")(b)

    def first_order_influence(self, positions=None) -> torch.Tensor:
        """The J := I baseline (math.md §6): ``g_i ~ a_i``, ``H ~ gamma I + sum_i c_i grad^2_theta L_i``;
        only where theta and lambda share a space (iMAML), ``[k, p]``."""
        if self.binding.theta.shape[1] != self.lam.numel():
            raise ValueError("first_order_influence needs theta and lambda in the same space (the iMAML form)")
        positions = _positions(positions, len(self.tasks))

        def matvec(v):
            out = self.problem.gamma * v
            for idx, rows in zip(self._chunks, self._rows):
                out = out + (self.c[idx, None] * rows.outer_theta_hvp(v.expand(len(idx), -1))).sum(0)
            return out

        a = torch.cat([self.binding.rows(positions[idx]).outer_theta_grad()
                       for idx in _chunks(len(positions), self.config.chunk)])
        solve = HessianSolver(matvec, self.lam.numel(), self.lam, self.config.solver)
        return self.c[positions, None] * solve(a)

    def _instance_gradients(self, items, name: str, width: int, cotangent) -> torch.Tensor:
        """Per-item lambda-gradients ``[k, p]``; ``cotangent(tasks, onehot [B, width])`` gives the
        context cotangents of a chunk of items."""
        items = _items(items, name)
        out = []
        for idx in _chunks(len(items), self.config.chunk):
            tasks = items[idx, 0]
            onehot = torch.nn.functional.one_hot(items[idx, 1], width).to(self.lam)
            out.append(self.binding.pull_each(cotangent(tasks, onehot), tasks))
        return torch.cat(out)

    def val_gradients(self, items) -> torch.Tensor:
        """``D_lambda l(z')`` of validation instances ``items [k, 2]``, ``[k, p]`` (math.md §7)."""
        def cotangent(tasks, onehot):
            return self.binding.rows(tasks, w_val=onehot).gradient_cotangent(torch.ones(len(tasks)).to(self.lam))

        return self._instance_gradients(items, "val items", self.tasks.y_val.shape[1], cotangent)

    def train_gradients(self, items) -> torch.Tensor:
        """``D_lambda [a_k^T H_k^{-1} grad_theta l(z)]`` of training instances ``items [k, 2]``, ``[k, p]`` (§10)."""
        def cotangent(tasks, onehot):
            return self.binding.rows(tasks).train_cotangent(onehot, self.config.third_order_train)

        return self._instance_gradients(items, "train items", self.tasks.y_train.shape[1], cotangent)

    def val_influence(self, items) -> torch.Tensor:
        """Validation instance-IF removal predictions ``c_k w_kj H^{-1} D_lambda l(z')``, ``[k, p]``."""
        items = _items(items, "val items")
        w = self.c[items[:, 0]] * self.weights.w_val[items[:, 0], items[:, 1]].to(self.lam)
        return w[:, None] * self.solver()(self.val_gradients(items))

    def train_influence(self, items) -> torch.Tensor:
        """Training instance-IF removal predictions ``-c_k w_kj H^{-1} D_lambda P/w``, ``[k, p]`` (§10)."""
        items = _items(items, "train items")
        w = self.c[items[:, 0]] * self.weights.w_tr[items[:, 0], items[:, 1]].to(self.lam)
        return -w[:, None] * self.solver()(self.train_gradients(items))

    def inner_influence(self, items) -> torch.Tensor:
        """inner-IF ``d theta_k / d eps = -H_k^{-1} grad_theta l(z)`` (math.md §8), ``[k, q]``."""
        items = _items(items, "train items")
        rows = self.binding.rows(items[:, 0])
        onehot = torch.nn.functional.one_hot(items[:, 1], self.tasks.y_train.shape[1]).to(self.lam)
        return -rows.solve(rows.data_grad(rows.theta, rows.xi, onehot))

    def loss_difference(self, items) -> torch.Tensor:
        """math.md §9: predicted change of task k's validation loss when training point j leaves
        its inner problem (lambda fixed), ``P = w_kj u_k^T grad_theta l(z_kj)``, ``[k]``."""
        items = _items(items, "train items")
        rows = self.binding.rows(items[:, 0])
        onehot = torch.nn.functional.one_hot(items[:, 1], self.tasks.y_train.shape[1]).to(self.lam)
        w = self.weights.w_tr[items[:, 0], items[:, 1]].to(self.lam)
        return w * (rows.u * rows.data_grad(rows.theta, rows.xi, onehot)).sum(-1)

    # ---- editing and scores --------------------------------------------------------------------

    def removal_gradient(self, tasks=(), val=(), train=(), direct: bool = False) -> torch.Tensor:
        """``sum_X w_X (d/dw_X) D_lambda L`` over a removal set (so that ``Δλ = H^{-1}`` of it), ``[p]``."""
        task_mask = torch.zeros(len(self.tasks), dtype=self.lam.dtype)
        task_mask[torch.as_tensor(list(tasks), dtype=torch.int64)] = 1.0
        total = self.gradient(self.c * task_mask, direct=direct)
        if direct:
            if len(val) or len(train):
                raise ValueError("the direct IF is defined for tasks only")
            return total
        if len(val):
            items = _items(val, "val items")
            w_val = self.weights.w_val.to(self.lam)
            touched = torch.unique(items[:, 0])
            rows = self.binding.rows(touched, w_val=(w_val * _mask(items, w_val))[touched])
            buf = self.binding.zeros()
            self.binding.scatter(buf, rows.gradient_cotangent(self.c[touched]), touched)
            total = total + self.binding.pull(buf)
        if len(train):
            items = _items(train, "train items")
            w_tr = self.weights.w_tr.to(self.lam)
            touched = torch.unique(items[:, 0])
            cot = self.binding.rows(touched).train_cotangent((w_tr * _mask(items, w_tr))[touched],
                                                             self.config.third_order_train)
            buf = self.binding.zeros()
            self.binding.scatter(buf, _scale_rows(cot, self.c[touched]), touched)
            total = total - self.binding.pull(buf)
        return total

    def edit(self, tasks=(), val=(), train=(), method: str = "task-if", refine: int = 0) -> torch.Tensor:
        """``λ̂_{-S} = λ* + H^{-1} removal_gradient(S)`` (math.md §11), one solve; ``method``
        "direct" uses the direct IF (tasks only); ``refine`` Newton steps re-solve the inner
        problems with S removed (H kept from λ*)."""
        if method not in ("task-if", "direct"):
            raise ValueError(f"method must be 'task-if' or 'direct', got {method!r}")
        direct = method == "direct"
        lam = self.lam + self.solver("direct" if direct else None)(
            self.removal_gradient(tasks, val, train, direct)[None])[0]
        if refine:
            removed = self.weights.without_positions(tasks, val, train)
            for _ in range(refine):
                state = _State(self.problem, lam, self.tasks, removed, self.config)
                grad = state.gradient(state.c) + self.problem.gamma * lam
                lam = lam - self.solver()(grad[None])[0]
        return lam

    def test_gradient(self, test: TaskSet, partial: bool = False) -> torch.Tensor:
        """``D_lambda f`` of the mean query loss over ``test`` tasks after adaptation (math.md §12),
        or the partial ``grad_lambda f`` with ``partial=True``, ``[p]``."""
        state = _State(self.problem, self.lam, test, Weights.uniform(test, self.lam.dtype), self.config)
        return state.gradient(state.c, direct=partial)

    def directional(self, r: torch.Tensor) -> Scores:
        """``r^T`` of every item's removal gradient, scaled to removal predictions: for the
        projection ``r^T Δλ_X`` pass ``r = H^{-1} d``; for scores ``r = H^{-1} D_lambda f``."""
        tangent = self.binding.tangent(r)
        tasks, val, train = [], [], []
        for idx, rows in zip(self._chunks, self._rows):
            t, v, tr = rows.directional(self.binding.context_tangent(tangent, idx), self.config.third_order_train)
            c = self.c[idx]
            tasks.append(c * t)
            val.append(c[:, None] * self.weights.w_val[idx].to(v) * v)
            train.append(-c[:, None] * self.weights.w_tr[idx].to(tr) * tr)
        return Scores(torch.cat(tasks), torch.cat(val), torch.cat(train))

    def scores(self, test: TaskSet, partial: bool = False) -> Scores:
        """Influence scores on new tasks (math.md §12), one solve (s_test): predicted change of
        the test loss when each task / instance is removed; negative = harmful."""
        r = self.solver()(self.test_gradient(test, partial)[None])[0]
        return self.directional(r)

    def direct_scores(self, test: TaskSet) -> torch.Tensor:
        """Task scores of the direct IF, ``c_k (H_dir^{-1} grad_lambda f)^T grad_lambda L_k``, ``[m]``."""
        r = self.solver("direct")(self.test_gradient(test, partial=True)[None])[0]
        tangent = self.binding.tangent(r)
        return torch.cat([self.c[idx] * rows.direct_directional(self.binding.context_tangent(tangent, idx))
                          for idx, rows in zip(self._chunks, self._rows)])

    def projections(self, directions: torch.Tensor) -> list[Scores]:
        """Predicted ``d^T Δλ_X`` for every item and each direction ``d`` of ``directions [k, p]``."""
        solved = self.solver()(directions)
        return [self.directional(r) for r in solved]
