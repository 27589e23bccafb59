"""Pure PyTorch / autograd references of every :mod:`metaif.ops` op, with the same signatures.

They are the ground truth of the tests and the baselines of the benchmarks: straightforward,
batched, competent PyTorch — never the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import grad, jvp, vmap

from .ops.solvers import CGResult
from .parallel import ExactSum
from .parallel.exact import carried_value

__all__ = ["kfe_ihvp", "kfe_ihvp_grouped", "kfe_eigvals", "ce_head_hvp", "ggn_hvp",
           "ce_head_matvec", "neumann", "cg", "neumann_dense", "neumann_ce_head", "cg_dense",
           "cg_ce_head", "woodbury_solve", "gather_patch_matmul", "gather_patch_matmul_t", "exact_add",
           "exact_value"]


def kfe_ihvp(grads: torch.Tensor, q_out: torch.Tensor, q_in: torch.Tensor,
             eigvals: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    return q_out @ ((q_out.mT @ grads @ q_in) / (eigvals + damping)) @ q_in.mT


def kfe_ihvp_grouped(grads: Sequence[torch.Tensor], q_out: Sequence[torch.Tensor],
                     q_in: Sequence[torch.Tensor], eigvals: Sequence[torch.Tensor],
                     damping: float = 0.0) -> list[torch.Tensor]:
    return [kfe_ihvp(*layer, damping) for layer in zip(grads, q_out, q_in, eigvals)]


def _gathered_rows(cols: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``cols[n, index[n, p, c]]`` as ``[N, P, C, K]``."""
    n, p, c = index.shape
    return torch.gather(cols[:, None].expand(n, p, -1, -1), 2,
                        index[..., None].expand(-1, -1, -1, cols.shape[2])).view(n, p, c, cols.shape[2])


def gather_patch_matmul(cols: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                        weight: torch.Tensor) -> torch.Tensor:
    return mask * torch.einsum("npck,ck->npc", _gathered_rows(cols, index), weight)


def gather_patch_matmul_t(cols: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                          signal: torch.Tensor) -> torch.Tensor:
    return torch.einsum("npc,npck->ck", mask * signal, _gathered_rows(cols, index))


def exact_add(limbs: torch.Tensor, top: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """``ExactSum``'s pure-PyTorch steps, in place (its row path: every element a row once, or the
    given ``rows`` of ``x``); the non-finite elements are skipped."""
    values = torch.where(torch.isfinite(x), x, 0.0)
    if rows is None:
        values, rows = values.reshape(-1), torch.arange(x.numel(), device=x.device)
    total = ExactSum(values)
    total.limbs, total.top = limbs.reshape(len(limbs), *values.shape).clone(), top.reshape(values.shape).clone()
    total.add(values, rows, compiled=False)
    limbs.copy_(total.limbs.view(limbs.shape))
    top.copy_(total.top.view(top.shape))


def exact_value(limbs: torch.Tensor, top: torch.Tensor, out: torch.Tensor) -> None:
    """``ExactSum``'s pure-PyTorch value, in place (the limbs carried, ``out`` written)."""
    out.copy_(carried_value(limbs, top, None, out.dtype).view(out.shape))


def _uniform(weights: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if weights is not None:
        return weights
    return torch.full(shape, 1.0 / max(shape[-1], 1), dtype=like.dtype, device=like.device)


def kfe_eigvals(out_grads: torch.Tensor, acts: torch.Tensor, q_out: torch.Tensor,
                q_in: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    w = _uniform(weights, out_grads, (out_grads.shape[0],))
    per_example = torch.einsum("nto,nti->noi", out_grads, acts)
    rotated = q_out.mT @ per_example @ q_in
    return torch.einsum("n,noi->oi", w, rotated**2)


def _logsumexp_hvp(logits_of: Callable[[torch.Tensor], torch.Tensor], probs: torch.Tensor,
                   w: torch.Tensor, point: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """HVP at ``point`` of sum_j w_j logsumexp(log p_j + logits_of(x)_j): the softmax-CE
    Hessian in the logits at probabilities p (the label term is linear and drops out)."""
    log_p = probs.log()

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (w * torch.logsumexp(log_p + logits_of(x), dim=-1)).sum()

    return jvp(grad(loss), (point,), (vec,))[1]


def ce_head_hvp(feats: torch.Tensor, probs: torch.Tensor, vecs: torch.Tensor,
                damping: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """torch.func HVP of the weighted softmax cross-entropy w.r.t. the head, per task and vector."""
    w = _uniform(weights, feats, feats.shape[:2])

    def one(phi, p, wt, v):  # phi [n, d], p [n, C], wt [n], v [C, d]
        return _logsumexp_hvp(lambda theta: phi @ theta.T, p, wt, torch.zeros_like(v), v)

    per_vec = vmap(one, in_dims=(None, None, None, 0))
    return vmap(per_vec)(feats, probs, w, vecs) + damping * vecs


def ggn_hvp(jac: torch.Tensor, probs: torch.Tensor, vecs: torch.Tensor,
            damping: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """torch.func HVP of sum_j w_j logsumexp(log p_j + J_j x) at x = 0, which is exactly the GGN."""
    w = _uniform(weights, jac, jac.shape[:2])

    def one(j, p, wt, v):  # j [n, C, P], v [P]
        return _logsumexp_hvp(lambda x: j @ x, p, wt, torch.zeros_like(v), v)

    per_vec = vmap(one, in_dims=(None, None, None, 0))
    return vmap(per_vec)(jac, probs, w, vecs) + damping * vecs


def ce_head_matvec(feats: torch.Tensor, probs: torch.Tensor, vecs: torch.Tensor,
                   damping: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ce-head Hessian product in closed form with batched einsums (the solvers' baseline)."""
    w = _uniform(weights, feats, feats.shape[:2])
    z = torch.einsum("tbcd,tnd->tbnc", vecs, feats)
    pz = (z * probs[:, None]).sum(-1, keepdim=True)
    s = w[:, None, :, None] * probs[:, None] * (z - pz)
    return torch.einsum("tbnc,tnd->tbcd", s, feats) + damping * vecs


def neumann(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, scale: torch.Tensor,
            iters: int) -> torch.Tensor:
    """Scaled Neumann series over a batched operator; ``scale`` is ``[T]``."""
    inv_s = (1.0 / scale).to(b).view(-1, *([1] * (b.dim() - 1)))
    r = b
    for _ in range(iters):
        r = b + r - inv_s * matvec(r)
    return inv_s * r


def cg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, rtol: float,
       maxiter: int) -> CGResult:
    """Batched CG over ``[T, B, ...]`` with per-column convergence, float64 reductions."""
    def dot(x, y):
        return (x.double() * y.double()).flatten(2).sum(-1)

    shape = (b.shape[0], b.shape[1]) + (1,) * (b.dim() - 2)
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = dot(r, r)
    b_norm = rs.sqrt()
    active = (b_norm > 0) & (rs.sqrt() > rtol * b_norm)
    iters = torch.zeros(b.shape[:2], dtype=torch.int64, device=b.device)
    for _ in range(maxiter):
        if not bool(active.any()):
            break
        ap = matvec(p)
        curvature = dot(p, ap)
        if bool((active & ~(curvature > 0)).any()):
            raise RuntimeError("cg: non-positive curvature; the operator is not positive definite")
        alpha = torch.where(active, rs / curvature.where(active, torch.ones_like(curvature)), 0.0)
        x = x + alpha.to(b).view(shape) * p
        r = r - alpha.to(b).view(shape) * ap
        rs_new = dot(r, r)
        iters = iters + active.long()
        beta = torch.where(active, rs_new / rs, 0.0)
        p = torch.where(active.view(shape), r + beta.to(b).view(shape) * p, p)
        rs = torch.where(active, rs_new, rs)
        active = active & (rs.sqrt() > rtol * b_norm)
    resid = torch.where(b_norm > 0, rs.sqrt() / b_norm.clamp_min(1e-300), 0.0).to(b.dtype)
    return CGResult(x, iters, resid, resid <= rtol)


def power_scale(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 20,
                safety: float = 1.1) -> torch.Tensor:
    """``[T]`` Neumann scales: ``safety`` times the Rayleigh quotient after ``iters`` power steps from a
    random start (not the kernels' start vector: an independent estimate)."""
    x = torch.randn((b.shape[0], 1, *b.shape[2:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                    device="cpu")
    x = x.to(b)
    for _ in range(iters):
        x = x / x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        y = matvec(x)
        estimate = (x * y).flatten(1).sum(1).double()
        x = y
    return safety * estimate


def _resolve_scale(scale, matvec, b: torch.Tensor) -> torch.Tensor:
    if scale is None:
        return power_scale(matvec, b)
    if isinstance(scale, (int, float)):
        return torch.full((b.shape[0],), float(scale), dtype=torch.float64)
    return scale


def _dense_matvec(a: torch.Tensor, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: v @ a.mT + damping * v


def neumann_dense(a: torch.Tensor, b: torch.Tensor, iters: int,
                  scale: torch.Tensor | float | None = None, damping: float = 0.0, rtol: float | None = None) -> torch.Tensor:
    matvec = _dense_matvec(a, damping)
    return neumann(matvec, b, _resolve_scale(scale, matvec, b), iters)


def neumann_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, iters: int,
                    scale: torch.Tensor | float | None = None, damping: float = 0.01,
                    weights: torch.Tensor | None = None, rtol: float | None = None) -> torch.Tensor:
    def matvec(v):
        return ce_head_matvec(feats, probs, v, damping, weights)

    return neumann(matvec, b, _resolve_scale(scale, matvec, b), iters)


def cg_dense(a: torch.Tensor, b: torch.Tensor, damping: float = 0.0, rtol: float = 1e-6,
             maxiter: int | None = None) -> CGResult:
    return cg(_dense_matvec(a, damping), b, rtol, a.shape[-1] if maxiter is None else maxiter)


def cg_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, damping: float = 0.01,
               rtol: float = 1e-6, maxiter: int | None = None,
               weights: torch.Tensor | None = None) -> CGResult:
    cap = b.shape[-1] * b.shape[-2] if maxiter is None else maxiter
    return cg(lambda v: ce_head_matvec(feats, probs, v, damping, weights), b, rtol, cap)


def woodbury_solve(u: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """Dense reference: ``torch.linalg.solve(damping I + U U^T, v)``."""
    eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    return torch.linalg.solve(damping * eye + u @ u.mT, v.mT).mT
