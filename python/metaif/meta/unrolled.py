"""Form (c) of math.md §14: classic MAML, an explicit inner map of K gradient steps.

theta_i(lambda, w) = K steps of gradient descent from lambda on the task's weighted train loss,
with a scalar step alpha or a learned per-parameter one (Meta-SGD, part of lambda). The outer
objective ``sum_i c_i L_i(theta_i(lambda)) + gamma/2 ||lambda - anchor||^2`` is an ordinary smooth
function of lambda, so every quantity is a derivative of the unrolled map, taken by ``torch.func``
and vmapped over the tasks of a chunk (:class:`UnrolledRows`): the total gradient is one VJP
through the steps, the total-Hessian product forward-over-reverse (third derivatives of the train
loss included), the training-instance quantities derivatives in the instance weights. The engine
sees these rows through the same interface as the argmin forms' (:mod:`.rows`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap

from ..curvature import LOSSES, get_loss
from ..models.nets import FlatModel
from ..utils.config import check, check_choice, config, finite, setting
from .batch import TaskBatch

__all__ = ["MamlConfig", "MamlProblem", "UnrolledRows"]


@config
class MamlConfig:
    """Classic MAML: K unrolled gradient steps on each task's train split."""

    ways: int | None = setting(None, "classes per task: when given, the model's outputs are checked against it "
                                     "(None: not checked, as for real-valued targets)")
    loss: str = setting("softmax", "loss of the network's outputs: softmax, squared, binary", choices=tuple(LOSSES))
    inner_steps: int = setting(5, "K, gradient steps of the inner adaptation (0: no adaptation)")
    inner_lr: float = setting(0.4, "alpha, the inner step size (the initial one with meta_sgd)")
    meta_sgd: bool = setting(False, "learn a per-parameter inner step size as part of lambda (Meta-SGD)")
    first_order: bool = setting(False, "train with first-order MAML (J := I); the analysis always polishes with the "
                                       "exact gradient first, since this update is no objective's gradient")
    gamma: float = setting(1e-4, "outer L2 weight on lambda")
    vectorize: str = setting("auto", "run the tasks of a chunk as one vmapped computation (on), one after another "
                                     "(off), or auto: vmapped unless a convolutional model runs on the CPU, where "
                                     "vmap's per-task (grouped) convolutions are slower than a loop",
                             choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_choice(self, "vectorize", self.vectorize, ("auto", "on", "off"))
        check(self.ways is None or isinstance(self.ways, int) and self.ways >= 1, self, "ways",
              "None or an integer >= 1", self.ways)
        check_choice(self, "loss", self.loss, LOSSES)
        check(isinstance(self.inner_steps, int) and self.inner_steps >= 0, self, "inner_steps", "an integer >= 0",
              self.inner_steps)
        check(finite(self.inner_lr) and self.inner_lr > 0, self, "inner_lr", "a finite number > 0", self.inner_lr)
        check(finite(self.gamma) and self.gamma >= 0, self, "gamma", "a finite number >= 0", self.gamma)
        check(not (self.first_order and self.meta_sgd), self, "first_order",
              "False with meta_sgd (first-order MAML gives the learned step sizes no gradient)", self.first_order)


class MamlProblem:
    """lambda: the network's flat parameters ``[p]`` (followed by ``p`` step sizes with Meta-SGD);
    theta_i: the adapted parameters ``[p]``. Declares :class:`~.problem.UnrolledProblem`."""

    form = "maml"

    def __init__(self, model: FlatModel, config: MamlConfig) -> None:
        self.model, self.config = model, config
        self.loss = get_loss(config.loss)
        if config.ways is not None and model.out_features != self.loss.outputs(config.ways):
            raise ValueError(f"MamlConfig.ways is {config.ways}, so the {config.loss} loss needs "
                             f"{self.loss.outputs(config.ways)} model outputs, but the model has {model.out_features}")
        self.gamma = config.gamma
        self.params = model.num_params
        self._convolutional = any(isinstance(m, nn.Conv2d) for m in model.module.modules())

    def map_tasks(self, fn, *args):
        """``fn`` over the leading (task) dimension of ``args``: vmapped, or a loop (``vectorize``)."""
        vectorized = self.config.vectorize == "on" or self.config.vectorize == "auto" and not (
            self._convolutional and args[0].device.type == "cpu")
        if vectorized:
            return vmap(fn)(*args)
        outs = [fn(*row) for row in zip(*args)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*outs))
        return torch.stack(outs)

    @property
    def theta_dim(self) -> int:
        return self.params

    def init_lambda(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        params = self.model.init(seed, dtype)
        if not self.config.meta_sgd:
            return params
        return torch.cat([params, torch.full_like(params, self.config.inner_lr)])

    def split(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(initial parameters ``[p]``, step size: a number, or ``[p]`` with Meta-SGD)."""
        if self.config.meta_sgd:
            return lam[: self.params], lam[self.params:]
        return lam, self.config.inner_lr

    # ---- one task on flat vectors -------------------------------------------------------------

    def data_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j l(f_theta(x_j), y_j)``."""
        return (w * self.loss.value(self.model(theta, x), y)).sum()

    def inner_objective(self, theta, lam, x, y, w) -> torch.Tensor:
        """``F_i = sum_j w_j l`` on the train split (no regulariser: the map is explicit)."""
        return self.data_loss(theta, x, y, w)

    def outer_objective(self, theta, lam, x, y, w) -> torch.Tensor:
        """``L_i(theta)`` on the validation split (lambda enters only through theta)."""
        return self.data_loss(theta, x, y, w)

    def adapt(self, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``theta_K``: K steps ``theta <- theta - alpha * grad F_i(theta)`` from lambda's parameters."""
        theta, alpha = self.split(lam)
        step = grad(self.data_loss)
        for _ in range(self.config.inner_steps):
            theta = theta - alpha * step(theta, x, y, w)
        return theta

    # ---- what training and evaluation need -----------------------------------------------------

    def outer_gradient(self, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor,
                       first_order: bool = False) -> tuple[torch.Tensor, dict]:
        """``sum_i c_i g_i`` through the unrolled steps (``first_order``: first-order MAML's update,
        the validation gradient at theta_K with ``J := I``, which is no objective's gradient)."""
        x_tr, x_val = batch.x_tr.to(lam.dtype), batch.x_val.to(lam.dtype)
        c = task_weights.to(lam)

        def total(la, xt, yt, wt, xv, yv, wv):
            return self.data_loss(self.adapt(la, xt, yt, wt), xv, yv, wv)

        args = (x_tr, batch.y_tr, batch.w_tr.to(lam), x_val, batch.y_val, batch.w_val.to(lam))
        if first_order:
            thetas = self.map_tasks(lambda xt, yt, wt: self.adapt(lam, xt, yt, wt), *args[:3]).detach()
            grads = self.map_tasks(grad(self.data_loss), thetas, *args[3:])
            values = self.map_tasks(self.data_loss, thetas, *args[3:])
        else:
            grads, values = self.map_tasks(lambda *a: torch.func.grad_and_value(total)(lam, *a), *args)
        weighted = float((c * values).sum())
        return (c[:, None] * grads).sum(0), {"outer_loss": weighted / float(c.sum()), "weighted_loss": weighted,
                                             "inner_grad_norm": 0.0}

    def training_gradient(self, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor):
        """What Adam steps on: first-order MAML's update with ``config.first_order``, else the exact
        gradient. Polishing and every analysis use :meth:`outer_gradient` (exact)."""
        return self.outer_gradient(lam, batch, task_weights, self.config.first_order)

    def predict(self, lam: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Adapt on each train split, return validation outputs ``[B, v, K]``."""
        x_tr, x_val = batch.x_tr.to(lam.dtype), batch.x_val.to(lam.dtype)

        def one(xt, yt, wt, xv):
            return self.model(self.adapt(lam, xt, yt, wt), xv)

        with torch.no_grad():
            return self.map_tasks(one, x_tr, batch.y_tr, batch.w_tr.to(lam), x_val)


def default_model(body: FlatModel, outputs: int) -> FlatModel:
    """``body`` followed by a linear layer to ``outputs`` logits, as one network."""
    return FlatModel(nn.Sequential(body.module, nn.Linear(body.out_features, outputs)), outputs)


class UnrolledRows:
    """B rows of an explicit inner map at lambda: the same interface as :class:`~.rows.Rows` (the
    context is lambda per row), every quantity a derivative of ``G(lambda, w_tr, w_val) =
    L(theta(lambda, w_tr), lambda; w_val)`` vmapped over the rows."""

    def __init__(self, problem, lam_rows: torch.Tensor, x_tr, y_tr, w_tr, x_val, y_val, w_val,
                 theta: torch.Tensor | None = None) -> None:
        self.problem, self.xi = problem, (lam_rows,)
        self.data = (x_tr, y_tr, x_val, y_val)
        self.w_tr, self.w_val = w_tr, w_val
        self.map = getattr(problem, "map_tasks", lambda fn, *args: vmap(fn)(*args))
        self.theta = self.map(problem.adapt, lam_rows, x_tr, y_tr, w_tr) if theta is None else theta

    # per-row functions of (lambda, w_tr, w_val) with the row's data bound by vmap
    def _total(self, lam, w_tr, w_val, x_tr, y_tr, x_val, y_val):
        theta = self.problem.adapt(lam, x_tr, y_tr, w_tr)
        return self.problem.outer_objective(theta, lam, x_val, y_val, w_val)

    def _rows(self, fn, *extra):
        """vmap ``fn(lam, w_tr, w_val, *extra, x_tr, y_tr, x_val, y_val)`` over the rows."""
        return self.map(fn, self.xi[0], self.w_tr, self.w_val, *extra, *self.data)

    def outer(self, theta: torch.Tensor, xi, w: torch.Tensor) -> torch.Tensor:
        x_val, y_val = self.data[2:]
        return self.map(self.problem.outer_objective, theta, xi[0], x_val, y_val, w)

    def gradient_cotangent(self, c: torch.Tensor):
        g = self._rows(lambda la, wt, wv, *d: grad(self._total)(la, wt, wv, *d))
        return (c.to(g)[:, None] * g,)

    def direct_cotangent(self, c: torch.Tensor):
        theta = self.theta.detach()
        x_val, y_val = self.data[2:]
        g = self.map(grad(lambda la, th, x, y, w: self.problem.outer_objective(th, la, x, y, w)),
                     self.xi[0], theta, x_val, y_val, self.w_val)
        return (c.to(g)[:, None] * g,)

    def direct_directional(self, xi_dot):
        theta = self.theta.detach()
        x_val, y_val = self.data[2:]

        def along(w):
            return self.map(lambda la, r, th, x, y, ww: jvp(lambda l_: self.problem.outer_objective(th, l_, x, y, ww),
                                                              (la,), (r,))[1], self.xi[0], xi_dot[0], theta, x_val,
                            y_val, w)

        return along(self.w_val), grad(lambda w: along(w).sum())(self.w_val)

    def _gn_product(self, v: torch.Tensor) -> torch.Tensor:
        """``J^T grad^2_theta L J v`` per row (the map's own curvature dropped)."""
        def one(la, vv, wt, wv, x_tr, y_tr, x_val, y_val):
            adapt = lambda l_: self.problem.adapt(l_, x_tr, y_tr, wt)  # noqa: E731
            theta, t = jvp(adapt, (la,), (vv,))
            outer_grad = grad(lambda th: self.problem.outer_objective(th, la, x_val, y_val, wv))
            s = jvp(outer_grad, (theta,), (t,))[1]
            return vjp(adapt, la)[1](s)[0]

        return self.map(one, self.xi[0], v, self.w_tr, self.w_val, *self.data)

    def _exact_product(self, v: torch.Tensor) -> torch.Tensor:
        """``grad^2_lambda G v`` per row, forward-over-reverse through the steps."""
        def one(la, vv, wt, wv, x_tr, y_tr, x_val, y_val):
            return jvp(lambda l_: grad(self._total)(l_, wt, wv, x_tr, y_tr, x_val, y_val), (la,), (vv,))[1]

        return self.map(one, self.xi[0], v, self.w_tr, self.w_val, *self.data)

    def hvp_cotangents(self, xi_dot, c: torch.Tensor, variant: str):
        """``(G, M)`` as for :class:`~.rows.Rows`; the context is lambda, so ``G`` is zero."""
        v = xi_dot[0]
        if variant == "exact":
            m = self._exact_product(v)
        elif variant == "gn":
            m = self._gn_product(v)
        else:  # direct: theta held fixed, grad^2_lambda L
            theta = self.theta.detach()
            x_val, y_val = self.data[2:]
            m = self.map(lambda la, vv, th, x, y, w: jvp(
                lambda l_: grad(lambda l2: self.problem.outer_objective(th, l2, x, y, w))(l_), (la,), (vv,))[1],
                self.xi[0], v, theta, x_val, y_val, self.w_val)
        return (torch.zeros_like(v),), (c.to(m)[:, None] * m,)

    def directional(self, xi_dot, third_order: bool = True):
        """``r^T g_i`` ``[B]``, ``r^T D_lambda l(z'_j)`` ``[B, v]`` and ``-r^T dg_i/dw_j`` ``[B, n]`` (the
        training-instance quantity of :meth:`~.rows.Rows.directional`)."""
        def f(la, r, wt, wv, x_tr, y_tr, x_val, y_val):
            return jvp(lambda l_: self._total(l_, wt, wv, x_tr, y_tr, x_val, y_val), (la,), (r,))[1]

        def one(la, r, wt, wv, *d):
            value = f(la, r, wt, wv, *d)
            d_tr, d_val = grad(f, argnums=(2, 3))(la, r, wt, wv, *d)
            return value, d_val, -d_tr

        return self.map(one, self.xi[0], xi_dot[0], self.w_tr, self.w_val, *self.data)

    def train_cotangent(self, onehot: torch.Tensor, third_order: bool = True):
        """``-d g_i / d w`` along ``onehot [B, n]`` (forward in the weight over reverse in lambda)."""
        def one(la, wt, wv, dw, *d):
            return -jvp(lambda w_: grad(self._total)(la, w_, wv, *d), (wt,), (dw,))[1]

        return (self.map(one, self.xi[0], self.w_tr, self.w_val, onehot, *self.data),)

    def outer_theta_grad(self) -> torch.Tensor:
        x_val, y_val = self.data[2:]
        return self.map(grad(lambda th, la, x, y, w: self.problem.outer_objective(th, la, x, y, w)),
                        self.theta, self.xi[0], x_val, y_val, self.w_val)

    def outer_theta_hvp(self, t: torch.Tensor) -> torch.Tensor:
        x_val, y_val = self.data[2:]

        def one(th, tt, la, x, y, w):
            return jvp(grad(lambda t_: self.problem.outer_objective(t_, la, x, y, w)), (th,), (tt,))[1]

        return self.map(one, self.theta, t, self.xi[0], x_val, y_val, self.w_val)

    def inner_tangent(self, w_dot: torch.Tensor) -> torch.Tensor:
        """``d theta / d w`` along ``w_dot [B, n]`` (math.md §14(c)'s tangent recursion, by forward mode)."""
        x_tr, y_tr = self.data[:2]

        def one(la, wt, dw, x, y):
            return jvp(lambda w_: self.problem.adapt(la, x, y, w_), (wt,), (dw,))[1]

        return self.map(one, self.xi[0], self.w_tr, w_dot, x_tr, y_tr)
