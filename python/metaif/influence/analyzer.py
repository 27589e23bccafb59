"""The influence analyzer: one object per trained bilevel problem that answers task-IF, instance-IF,
editing and influence-score questions (math.md §3–§12), a thin facade over the computers that do
the work: :class:`~.hessian.TotalHessian` (products and solves), :class:`~.removal.RemovalPredictions`,
:class:`~.edit.Editor` and :class:`~.scores.ScoreComputer`, which share one :class:`~.session.Session`.

Orientation and units: every removal prediction is ``Δλ = λ̂_{-X} - λ*`` in parameter units, one
row per item, ``[k, p]``; influence scores are predicted changes of the test loss ``Δf`` (nats),
negative for harmful items (math.md §12). Tasks are addressed by their position in the task set,
instances by ``(task position, index in the split)``. Every quantity that solves with the total
Hessian takes the Hessian ``variant`` per call (default: the config's).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data.tasks import TaskSet
from ..linalg import DampingRetry, MatvecOperator, SolverConfig, SolveResult
from ..meta.batch import Weights
from ..meta.binding import Binding, Bound
from ..meta.problem import outer_l2
from ..parallel import World
from .config import InfluenceConfig
from .edit import Editor
from .hessian import TotalHessian
from .removal import RemovalPredictions
from .scores import ScoreComputer, Scores
from .session import Session

__all__ = ["InfluenceAnalyzer", "Scores"]


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
        self.session = Session(problem, lam, tasks, weights, config, world)
        self.hessian = TotalHessian(self.session)
        self.removal = RemovalPredictions(self.session, self.hessian)
        self.editor = Editor(self.session, self.hessian, self.removal)
        self.scorer = ScoreComputer(self.session, self.hessian)
        stationarity = self.gradient(self.c) + outer_l2(problem, self.lam)[1]
        self.diagnostics = {"inner_grad_norm_max": float(self.binding.inner_norm.max()),
                            "total_grad_norm": float(stationarity.norm()), "gamma_term": self.gamma_term,
                            "num_tasks": len(tasks), "p": self.lam.numel()}
        body_memory = getattr(self.binding, "body_memory", None)  # bindings with body passes over inputs
        if body_memory is not None:
            self.diagnostics["body_memory"] = body_memory

    # ---- what is analysed ----------------------------------------------------------------------

    problem = property(lambda self: self.session.problem, doc="The bilevel problem.")
    lam = property(lambda self: self.session.lam, doc="lambda* ``[p]``.")
    tasks = property(lambda self: self.session.tasks, doc="The analysed task set.")
    weights = property(lambda self: self.session.weights, doc="The task and instance weights (math.md §1).")
    c = property(lambda self: self.session.c, doc="Task weights ``c [m]``.")
    config = property(lambda self: self.session.config, doc="The influence configuration in use.")
    world = property(lambda self: self.session.world, doc="The ranks sharing the work.")

    @property
    def bound(self) -> Bound:
        """The problem bound at lambda* on the tasks (chunks of rows)."""
        return self.session.bound

    @property
    def binding(self) -> Binding:
        """The binding of the problem at lambda* (heads or inner solutions ``theta [m, q]`` and their derivatives)."""
        return self.session.binding

    @property
    def gamma_term(self) -> float:
        """Theorem 5.1's ``Gamma = sum_i c_i ||grad_theta L_i||_1`` (the "gamma" variant adds it)."""
        return self.hessian.gamma_term

    # ---- the total Hessian -----------------------------------------------------------------------

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (or ``sum_i c_i grad_lambda L_i`` when ``direct``), ``[p]``."""
        return self.hessian.gradient(c, direct)

    def hvp(self, v: torch.Tensor, variant: str | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """``H v`` of ``v [p]`` or a block ``[k, p]`` (:meth:`TotalHessian.hvp <.hessian.TotalHessian.hvp>`)."""
        return self.hessian.hvp(v, variant, subset)

    def operator(self, variant: str | None = None) -> MatvecOperator:
        """The total Hessian of ``variant`` as a :class:`~metaif.linalg.LinearOperator`."""
        return self.hessian.operator(variant)

    def solver(self, variant: str | None = None) -> DampingRetry:
        """The (cached) solver of ``variant``'s damped total Hessian."""
        return self.hessian.solver(variant)

    def solve(self, b: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        """``(H + damping I)^{-1} b`` for ``b [k, p]``; the outcome is kept in :attr:`last_solve`."""
        return self.hessian.solve(b, variant)

    def set_solver(self, solver: SolverConfig) -> None:
        """Use another solver configuration (e.g. more damping) for later solves."""
        self.hessian.set_solver(solver)
        self.editor.forget()

    @property
    def last_solve(self) -> SolveResult | None:
        """How the latest total-Hessian solve went (damping used, iterations, true residual)."""
        return self.hessian.last_solve

    @property
    def damping_used(self) -> float:
        """The damping of the latest solve (the retry policy may have raised the configured one)."""
        return self.hessian.damping_used

    # ---- removal predictions (RemovalPredictions) ----------------------------------------------

    def task_gradients(self, positions=None, direct: bool = False) -> torch.Tensor:
        """Per-task total gradients ``g_i`` (partial ``b_i`` when ``direct``), ``[k, p]``."""
        return self.removal.task_gradients(positions, direct)

    def val_gradients(self, items, direct: bool = False) -> torch.Tensor:
        """``D_lambda l(z')`` of validation instances ``items [k, 2]`` (partial when ``direct``), ``[k, p]``."""
        return self.removal.val_gradients(items, direct)

    def train_gradients(self, items) -> torch.Tensor:
        """``D_lambda [a_k^T H_k^{-1} grad_theta l(z)]`` of training instances ``items [k, 2]``, ``[k, p]``."""
        return self.removal.train_gradients(items)

    def task_influence(self, positions=None, variant: str | None = None) -> torch.Tensor:
        """task-IF removal predictions ``Δλ_k = c_k H^{-1} g_k`` (math.md §6), ``[k, p]``."""
        return self.removal.task_influence(positions, variant)

    def direct_influence(self, positions=None) -> torch.Tensor:
        """The direct IF of tasks (eq. 6, theta held fixed), ``[k, p]``."""
        return self.removal.direct_influence(positions)

    def direct_val_influence(self, items) -> torch.Tensor:
        """The direct IF of validation instances (theta held fixed), ``[k, p]``."""
        return self.removal.direct_val_influence(items)

    def first_order_influence(self, positions=None) -> torch.Tensor:
        """The J := I baseline of tasks (math.md §6; iMAML only), ``[k, p]``."""
        return self.removal.first_order_influence(positions)

    def first_order_val_influence(self, items) -> torch.Tensor:
        """The J := I baseline of validation instances (iMAML only), ``[k, p]``."""
        return self.removal.first_order_val_influence(items)

    def val_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Validation instance-IF removal predictions ``c_k w_kj H^{-1} D_lambda l(z')``, ``[k, p]``."""
        return self.removal.val_influence(items, variant)

    def train_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Training instance-IF removal predictions ``-c_k w_kj H^{-1} D_lambda P/w``, ``[k, p]`` (§10)."""
        return self.removal.train_influence(items, variant)

    def inner_influence(self, items) -> torch.Tensor:
        """inner-IF ``d theta_k / d eps`` of training instances (math.md §8), ``[k, q]``."""
        return self.removal.inner_influence(items)

    def loss_difference(self, items) -> torch.Tensor:
        """Change of task k's validation loss when training point j leaves its inner problem (§9), ``[k]``."""
        return self.removal.loss_difference(items)

    def removal_gradient(self, tasks=(), val=(), train=(), direct: bool = False) -> torch.Tensor:
        """``sum_X w_X (d/dw_X) D_lambda L`` over a removal set, ``[p]``."""
        return self.removal.removal_gradient(tasks, val, train, direct)

    # ---- editing (Editor) ------------------------------------------------------------------------

    def edit(self, tasks=(), val=(), train=(), method: str = "task-if", refine: int = 0,
             variant: str | None = None, polish: int = 0, polish_tol: float = 1e-5,
             polish_rtol: float = 0.0) -> torch.Tensor:
        """The model without tasks / instances (math.md §11), ``[p]``, optionally polished by the
        retrain's L-BFGS (:meth:`Editor.edit <.edit.Editor.edit>`; its record: ``editor.last_polish``)."""
        return self.editor.edit(tasks, val, train, method, refine, variant, polish, polish_tol, polish_rtol)

    def newton_steps(self, lam: torch.Tensor, tasks=(), val=(), train=(),
                     variant: str | None = None) -> Iterator[torch.Tensor]:
        """``lam``, then safeguarded Newton iterates toward the optimum without the removal set, ``[p]`` each."""
        return self.editor.newton_steps(lam, tasks, val, train, variant)

    # ---- scores (ScoreComputer) ------------------------------------------------------------------

    def test_gradient(self, test: TaskSet, partial: bool = False) -> torch.Tensor:
        """``D_lambda f`` of the mean query loss over ``test`` tasks (math.md §12), ``[p]``."""
        return self.scorer.test_gradient(test, partial)

    def directional(self, r: torch.Tensor, direct: bool = False) -> Scores:
        """``r^T`` of every item's removal gradient, scaled to removal predictions."""
        return self.scorer.directional(r, direct)

    def scores(self, test: TaskSet, partial: bool = False, variant: str | None = None) -> Scores:
        """Influence scores on new tasks (math.md §12); negative = harmful."""
        return self.scorer.scores(test, partial, variant)

    def direct_scores(self, test: TaskSet) -> Scores:
        """Scores of the direct IF; training instances score 0."""
        return self.scorer.direct_scores(test)

    def projections(self, directions: torch.Tensor, variant: str | None = None) -> list[Scores]:
        """Predicted ``d^T Δλ_X`` for every item and each direction ``d`` of ``directions [k, p]``."""
        return self.scorer.projections(directions, variant)
