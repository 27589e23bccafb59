"""Form (a) of math.md §14 (iMAML): a proximal inner problem over the whole network.

theta_i = argmin_theta sum_j w_j l(f_theta(x_j), y_j) + delta/2 ||theta - lambda||^2, solved per
task by L-BFGS to a gradient-norm tolerance; the outer gradient is g_i = delta H_i^{-1}
grad L^val_i(theta_i) (b_i = 0, C_i = -delta I), with the inner iHVP by a Cholesky factor of
the dense Hessian for small networks (``p <= dense_max``) or conjugate gradient on autograd
Hessian-vector products.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, hessian, jvp

from ..curvature import LOSSES, get_loss
from ..linalg import NotConverged, conjugate_gradient, reached
from ..models.nets import FlatModel
from ..utils.config import check, check_choice, config, finite, setting
from .batch import TaskBatch

__all__ = ["ImamlConfig", "ImamlProblem"]


@config
class ImamlConfig:
    """The proximal (iMAML) form."""

    ways: int = setting(5, "classes per task (the network's outputs; the target dimension for real-valued "
                           "targets with the squared loss)")
    loss: str = setting("softmax", "loss of the network's outputs: softmax, squared, binary", choices=tuple(LOSSES))
    delta: float = setting(1.0, "proximal weight delta of ||theta - lambda||^2 / 2 (> 0)")
    gamma: float = setting(1e-4, "outer L2 weight on lambda")
    inner_tol: float = setting(1e-5, "inner solves stop at ||grad_theta F_i|| <= inner_tol")
    inner_max_iter: int = setting(100, "L-BFGS iterations per inner solve at most")
    cg_rtol: float = setting(1e-6, "relative residual of the inner CG (networks above dense_max parameters)")
    cg_max_iter: int = setting(100, "inner CG iterations at most")
    dense_max: int = setting(1000, "networks with at most this many parameters invert the inner Hessian densely")

    def __post_init__(self) -> None:
        check(isinstance(self.ways, int) and self.ways >= 1, self, "ways", "an integer >= 1", self.ways)
        check_choice(self, "loss", self.loss, LOSSES)
        check(finite(self.delta) and self.delta > 0, self, "delta", "a finite number > 0", self.delta)
        check(finite(self.gamma) and self.gamma >= 0, self, "gamma", "a finite number >= 0", self.gamma)
        for name in ("inner_tol", "cg_rtol"):
            check(finite(getattr(self, name)) and getattr(self, name) > 0, self, name, "> 0", getattr(self, name))


class ImamlProblem:
    """lambda and theta_i are both flat parameter vectors of the whole classifier, ``[p]``."""

    form = "imaml"

    def __init__(self, body: FlatModel, config: ImamlConfig) -> None:
        self.loss = get_loss(config.loss)
        outputs = self.loss.outputs(config.ways)
        self.net = FlatModel(nn.Sequential(body.module, nn.Linear(body.out_features, outputs)), outputs)
        self.config, self.gamma, self.delta = config, config.gamma, config.delta

    @property
    def theta_dim(self) -> int:
        return self.net.num_params

    def init_lambda(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.net.init(seed, dtype)

    def data_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j l(f_theta(x_j), y_j)`` for one task."""
        return (w * self.loss.value(self.net(theta, x), y)).sum()

    # ---- the bilevel seam: one task's objectives on flat vectors (math.md §1) ----------------

    def inner_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``F_i = L^tr_i(theta) + delta/2 ||theta - lambda||^2``."""
        return self.data_loss(theta, x, y, w) + 0.5 * self.delta * (theta - lam).pow(2).sum()

    def outer_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``L_i = L^val_i(theta)`` (no direct dependence on lambda)."""
        return self.data_loss(theta, x, y, w)

    def solve_inner(self, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """``theta_i [p]`` from ``theta0`` (default: lambda), and the final ``||grad_theta F_i||``."""
        lam = lam.detach()
        theta = (lam if theta0 is None else theta0.detach()).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=self.config.inner_max_iter, history_size=20,
                                tolerance_grad=self.config.inner_tol, tolerance_change=0.0,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = self.inner_objective(theta, lam, x, y, w)
            value.backward()
            return value

        opt.step(closure)
        theta = theta.detach()
        # L-BFGS's line search stops refining near 1e-8; finish with Newton-CG steps, which
        # converge quadratically from there.
        for newton_steps in range(5):
            g = torch.func.grad(self.inner_objective)(theta, lam, x, y, w)
            norm = float(g.norm())
            if norm <= self.config.inner_tol or newton_steps == 4:
                break
            theta = theta - self.adjoint(theta, x, y, w, g)
        return theta, norm

    def adjoint(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                rhs: torch.Tensor) -> torch.Tensor:
        """``H_i^{-1} rhs``, ``H_i = grad^2 L_tr(theta_i) + delta I``: Cholesky of the dense Hessian
        when ``p <= dense_max`` and it is positive definite, else CG with autograd HVPs."""
        if theta.numel() <= self.config.dense_max:
            h = hessian(self.data_loss)(theta, x, y, w)
            eye = torch.eye(len(theta), dtype=h.dtype, device=h.device)
            chol, bad = torch.linalg.cholesky_ex(0.5 * (h + h.T) + self.delta * eye)
            if not int(bad):
                return torch.cholesky_solve(rhs.view(-1, 1), chol).view(-1)
        loss_grad = grad(lambda t: self.data_loss(t, x, y, w))

        def matvec(v: torch.Tensor) -> torch.Tensor:  # v [1, 1, p]
            return jvp(loss_grad, (theta,), (v[0, 0],))[1].view_as(v) + self.delta * v

        res = conjugate_gradient(matvec, rhs.view(1, 1, -1), self.config.cg_rtol, self.config.cg_max_iter)
        if not bool(reached(res).all()):  # the rounding floor is as far as this dtype goes
            raise NotConverged(f"iMAML inner cg missed rtol {self.config.cg_rtol:g} (relative residual "
                               f"{float(res.resid.max()):.2e}); raise ImamlConfig.cg_max_iter or delta")
        return res.x.view(-1)

    def outer_gradient(self, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``sum_i c_i g_i`` with g_i = delta u_i, u_i = H_i^{-1} grad L^val_i(theta_i)."""
        total = torch.zeros_like(lam)
        outer, worst = 0.0, 0.0
        x_tr, x_val = batch.x_tr, batch.x_val  # gathered once, not once per task
        for i in range(len(batch)):
            theta, norm = self.solve_inner(lam, x_tr[i], batch.y_tr[i], batch.w_tr[i])
            a, value = torch.func.grad_and_value(self.data_loss)(theta, x_val[i], batch.y_val[i], batch.w_val[i])
            u = self.adjoint(theta, x_tr[i], batch.y_tr[i], batch.w_tr[i], a)
            total += task_weights[i] * self.delta * u
            outer += float(task_weights[i] * value)
            worst = max(worst, norm)
        return total, {"outer_loss": outer / float(task_weights.sum()), "weighted_loss": outer, "inner_grad_norm": worst}

    def predict(self, lam: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Adapt on each train split, return validation logits ``[B, v, C]``."""
        logits = []
        x_tr, x_val = batch.x_tr, batch.x_val
        for i in range(len(batch)):
            theta, _ = self.solve_inner(lam, x_tr[i], batch.y_tr[i], batch.w_tr[i])
            with torch.no_grad():
                logits.append(self.net(theta, x_val[i]))
        return torch.stack(logits)
