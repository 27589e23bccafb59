"""Inverse of the few-shot head Hessian (:class:`~.head.LinearHeadCurvature`), by name.

Each solver is a function ``(curvature, bases) -> solve`` registered with
:func:`register_head_solver`, where ``solve`` maps ``rhs [B, q]`` to ``H^{-1} rhs``:

* ``woodbury``: exact, on the few-shot factor (rank n K < q);
* ``cholesky``: exact, on the dense Hessian;
* ``cg``: conjugate gradient (the compiled ``cg_ce_head`` kernel for softmax heads);
* ``ekfac``: math.md §13.3 with per-task Kronecker eigenbases; ``ekfac-pooled``: with ``bases``
  pooled over all tasks (:func:`~.head.pooled_kfe_bases`);
* ``auto``: Woodbury when the factor's rank is below q (the few-shot case), else Cholesky.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..linalg import NotConverged, conjugate_gradient
from ..ops import cg_ce_head, kfe_ihvp_grouped
from .head import LinearHeadCurvature

__all__ = ["HEAD_SOLVERS", "head_solver", "register_head_solver"]

HeadSolve = Callable[[torch.Tensor], torch.Tensor]
Bases = tuple[torch.Tensor, torch.Tensor] | None
HEAD_SOLVERS: dict[str, Callable[[LinearHeadCurvature, Bases], HeadSolve]] = {}
CG_RTOL = {torch.float64: 1e-11, torch.float32: 1e-5}


def register_head_solver(name: str):
    def add(fn):
        HEAD_SOLVERS[name] = fn
        return fn
    return add


@register_head_solver("woodbury")
def _woodbury(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    return curv.woodbury()


@register_head_solver("cholesky")
def _cholesky(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    # H is SPD; batched LU (getrs/laswp) misbehaves in this torch's MKL after set_num_threads(>1).
    chol = torch.linalg.cholesky(curv.dense())
    return lambda rhs: torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)


@register_head_solver("cg")
def _cg(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    rtol = CG_RTOL[curv.phi.dtype]

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        if curv.probs is not None:  # softmax head: the compiled kernel, all iterations in C++
            res = cg_ce_head(curv.phi, curv.probs, rhs.view(len(rhs), 1, curv.outputs, -1), curv.damping, rtol,
                             4 * curv.dim, weights=curv.w)
        else:
            res = conjugate_gradient(lambda v: curv.matvec(v[:, 0])[:, None], rhs[:, None], rtol, 4 * curv.dim)
        if not bool(res.converged.all()):
            raise NotConverged(f"head cg missed rtol {rtol:g} (max relative residual {float(res.resid.max()):.2e})")
        return res.x.reshape(rhs.shape)

    return solve


def _kfe(curv: LinearHeadCurvature, q_out: torch.Tensor, q_in: torch.Tensor) -> HeadSolve:
    classes, width = curv.outputs, curv.phi.shape[-1]
    eigvals = curv.kfe_eigvals(q_out, q_in)

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        parts = kfe_ihvp_grouped([r.view(classes, width) for r in rhs], list(q_out), list(q_in), list(eigvals),
                                 curv.damping)
        return torch.stack([x.reshape(-1) for x in parts]) if parts else rhs.clone()

    return solve


@register_head_solver("ekfac")
def _ekfac(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    return _kfe(curv, *curv.kfe_bases())


@register_head_solver("ekfac-pooled")
def _ekfac_pooled(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    if bases is None:
        raise ValueError("head solver 'ekfac-pooled' needs bases pooled over all tasks (curvature.pooled_kfe_bases)")
    b = curv.phi.shape[0]
    return _kfe(curv, *(q.to(curv.phi).expand(b, -1, -1) for q in bases))


@register_head_solver("auto")
def _auto(curv: LinearHeadCurvature, bases: Bases) -> HeadSolve:
    few_shot = curv.phi.shape[1] * curv.outputs < curv.dim
    return HEAD_SOLVERS["woodbury" if few_shot else "cholesky"](curv, bases)


def head_solver(curv: LinearHeadCurvature, method: str = "auto", bases: Bases = None) -> HeadSolve:
    """``rhs [B, q] -> H^{-1} rhs`` by the registered solver ``method``."""
    if method not in HEAD_SOLVERS:
        raise ValueError(f"head solver must be one of {', '.join(HEAD_SOLVERS)}, got {method!r}")
    return HEAD_SOLVERS[method](curv, bases)
