"""Editing (math.md §11): the model without a removal set in one solve, safeguarded Newton
refinement toward the re-solved optimum, and the retrain's own L-BFGS continued from the edit."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import torch

from ..linalg import MetaifWarning
from ..meta import TrainResult, solve_outer
from ..meta.binding import Bound
from ..meta.problem import outer_l2
from .config import DIRECT
from .hessian import TotalHessian
from .removal import RemovalPredictions
from .session import Session

__all__ = ["METHODS", "Editor"]

METHODS = ("task-if", "direct")
# Newton refinement's backtracking: sufficient-decrease constant and the most halvings of a step
ARMIJO, HALVINGS = 1e-4, 10


class Editor:
    """Edits of ``session``'s lambda* (``[p]`` each). The refinement iterates of the latest removal
    set are kept, so ``edit(refine=r)`` after ``edit(refine=r - 1)`` takes one more step instead of
    ``r``; only one set is kept, since its iterator holds a binding of every task. ``last_polish``
    is the L-BFGS record (iterations, seconds, stopping rule) of the latest ``edit(polish=k)``."""

    def __init__(self, session: Session, hessian: TotalHessian, removal: RemovalPredictions) -> None:
        self.session, self.hessian, self.removal = session, hessian, removal
        self._path: tuple[tuple, list[torch.Tensor], Iterator[torch.Tensor]] | None = None
        self.last_polish: TrainResult | None = None

    def forget(self) -> None:
        """Drop the kept refinement iterates (the solver changed)."""
        self._path = None

    def _key(self, tasks, val, train, variant: str) -> tuple:
        """The removal set and variant as a hashable value (checked: a bad item raises here)."""
        s = self.session

        def pairs(items, split: str) -> tuple:
            return tuple(map(tuple, s.pairs(items, split).tolist())) if len(items) else ()

        return (tuple(s.positions(tasks, "removed tasks").tolist()), pairs(val, "val"), pairs(train, "train"), variant)

    def edit(self, tasks=(), val=(), train=(), method: str = "task-if", refine: int = 0,
             variant: str | None = None, polish: int = 0, polish_tol: float = 1e-5,
             polish_rtol: float = 0.0) -> torch.Tensor:
        """``λ̂_{-S} = λ* + H^{-1} removal_gradient(S)`` (math.md §11), one solve; ``method``
        "direct" uses the direct IF (tasks and validation instances); ``refine`` Newton steps
        re-solve the inner problems with S removed (warm-started; H kept from λ*); ``polish``
        iterations (at most) of the retrain's full-batch L-BFGS on the objective without S continue
        from there, stopping on the retrain's rule (``polish_tol``, ``polish_rtol``:
        :func:`~metaif.meta.solve_outer`), ``[p]``."""
        s = self.session
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
        for name, value, unit in (("refine", refine, "Newton steps"), ("polish", polish, "L-BFGS iterations")):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0 ({unit}), got {value!r}")
        direct = method == "direct"
        variant = DIRECT if direct else s.variant(variant)
        key = self._key(tasks, val, train, variant)
        if self._path is None or self._path[0] != key:
            if len(train):
                self._warn_emptied_classes(s.pairs(train, "train"))
            gradient = self.removal.removal_gradient(tasks, val, train, direct)
            lam = s.lam + self.hessian.solve(gradient[None], variant)[0]
            self._path = (key, [], self.newton_steps(lam, tasks, val, train, variant))
        _, iterates, steps = self._path
        iterates.extend(itertools.islice(steps, max(0, refine + 1 - len(iterates))))
        lam = iterates[min(refine, len(iterates) - 1)]
        if polish == 0:
            return lam
        removed = s.weights.without_positions(tasks, val, train)
        self.last_polish = solve_outer(s.problem, s.tasks, lam, removed, tol=polish_tol, max_iter=polish,
                                       desc="polish the edit (L-BFGS)", rtol=polish_rtol)
        return self.last_polish.lam

    def _warn_emptied_classes(self, items: torch.Tensor) -> None:
        """Warns when removing training ``items [k, 2]`` takes some task's last support example of a
        class (integer labels only): that task's inner problem then changes far beyond first order."""
        s = self.session
        y = s.tasks.y_train
        if y.is_floating_point():
            return
        touched = torch.unique(items[:, 0]).cpu()
        kept = s.weights.without_positions(train=items.tolist()).w_tr.detach().cpu()[touched]
        onehot = torch.nn.functional.one_hot(y[touched], int(y.max()) + 1).to(kept.dtype)  # [t, n, classes]
        before = torch.einsum("tn,tnc->tc", s.weights.w_tr.detach().cpu()[touched], onehot)
        after = torch.einsum("tn,tnc->tc", kept, onehot)
        emptied = int(((before > 0) & (after == 0)).any(1).sum())
        if emptied:
            warnings.warn(f"the removed training instances take the last support example of a class in {emptied} of "
                          f"the {len(touched)} tasks they touch: those inner problems change far beyond first order, "
                          f"so the edit may be far from retraining (refine=r Newton steps, or a retrain, measure "
                          f"it)", MetaifWarning, stacklevel=4)

    def newton_steps(self, lam: torch.Tensor, tasks=(), val=(), train=(),
                     variant: str | None = None) -> Iterator[torch.Tensor]:
        """``lam``, then the iterates of math.md §11's ``refine`` toward the optimum without S, ``[p]``
        each: the direction ``-(H + μI)^{-1} D_λ L_{-S}(λ)`` re-solves the inner problems at λ
        (warm-started from the last θ) and reuses this analyzer's total Hessian at λ*. H at λ* only
        approximates the curvature where a large removal leads, so a full step can climb: each step is
        halved (at most ``HALVINGS`` times) until ``L_{-S}`` decreases enough (Armijo); where no step
        does, a warning says so and the iteration ends at the last iterate."""
        s = self.session
        variant = s.variant(variant, allow_direct=True)
        removed = s.weights.without_positions(tasks, val, train)

        def at(point: torch.Tensor, theta0: torch.Tensor) -> tuple[Bound, float]:
            bound = s.bind(point, removed, theta0=theta0)
            return bound, bound.weighted_loss(removed.c) + outer_l2(s.problem, point)[0]

        yield lam  # before any binding: edit(refine=0) costs no more than the plain edit
        bound, value = at(lam, s.binding.theta)
        while True:
            grad = bound.gradient(removed.c) + outer_l2(s.problem, lam)[1]
            step = -self.hessian.solve(grad[None], variant)[0]
            slope = float(grad @ step)
            accepted = None
            for t in (0.5 ** h for h in range(HALVINGS + 1)) if slope < 0 else ():  # slope >= 0: no descent
                trial, trial_value = at(lam + t * step, bound.theta)
                if trial_value <= value + ARMIJO * t * slope:
                    accepted = t
                    break
            if accepted is None:
                warnings.warn(f"Newton refinement stopped: no step along -(H + mu I)^-1 D_lambda L_-S down to "
                              f"{0.5 ** HALVINGS:g} of it lowers the objective without the removed items "
                              f"({value:.6g}; slope {slope:.3g}); the last iterate is returned", MetaifWarning,
                              stacklevel=2)
                return
            lam, bound, value = lam + accepted * step, trial, trial_value
            yield lam
