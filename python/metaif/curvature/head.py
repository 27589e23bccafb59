"""Curvature of a linear head ``logits = Theta phi`` over few examples (flattening of Theta
class-major, ``q = C K``), from the per-example logit Hessians ``G_n [B, n, C, C]``:

    H = sum_n w_n G_n (x) phi_n phi_n^T (+ damping I).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ops.kfe import kfe_ihvp_grouped


def head_factor(logit_hess: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``U [B, C K, n C]`` with ``U U^T = sum_n w_n G_n (x) phi_n phi_n^T``: per example
    ``sqrt(w_n) (L_n (x) phi_n)`` with ``L_n L_n^T = G_n`` (the exact few-shot factor Woodbury inverts)."""
    b, n, k = phi.shape
    classes = logit_hess.shape[-1]
    vals, vecs = torch.linalg.eigh(logit_hess)
    root = vecs * vals.clamp_min(0).sqrt()[..., None, :] * w.sqrt()[..., None, None]
    u = root[:, :, :, None, :] * phi[:, :, None, :, None]          # U[(c, k), (n, r)] = root[n, c, r] phi[n, k]
    return u.permute(0, 2, 3, 1, 4).reshape(b, classes * k, n * classes)


def ekfac_pooled_bases(logit_hess: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenbases ``(Q_S [C, C], Q_A [K, K])`` of the factors pooled over every task (math.md
    §13.3's option for tiny n_i): ``S = sum_i E_w[G_n]``, ``A = sum_i E_w[phi phi^T]``."""
    q_in = torch.linalg.eigh(torch.einsum("bn,bnk,bnl->kl", w, phi, phi)).eigenvectors
    q_out = torch.linalg.eigh(torch.einsum("bn,bncd->cd", w, logit_hess)).eigenvectors
    return q_out, q_in


def ekfac_head_solver(logit_hess: torch.Tensor, phi: torch.Tensor, w: torch.Tensor, damping: float,
                      bases: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """EK-FAC inverse of the head Hessian per task (math.md §13.3): eigenbases of
    ``A = E_w[phi phi^T]`` and ``S = E_w[g g^T]`` (true Fisher, its expectation over the model's
    labels taken analytically: ``E[g g^T] = G_n``), per task or the pooled ``bases``
    (:func:`ekfac_pooled_bases`); eigenvalues corrected per task to
    ``sum_n w_n (Q_S^T G_n Q_S)_aa (Q_A^T phi_n)_b^2``, then the compiled ``kfe_ihvp``.
    Returns ``rhs [B, C K] -> [B, C K]``."""
    b, classes, k = phi.shape[0], logit_hess.shape[-1], phi.shape[-1]
    if bases is None:
        q_in = torch.linalg.eigh(torch.einsum("bn,bnk,bnl->bkl", w, phi, phi)).eigenvectors
        q_out = torch.linalg.eigh(torch.einsum("bn,bncd->bcd", w, logit_hess)).eigenvectors
    else:
        q_out, q_in = (q.to(phi).expand(b, -1, -1) for q in bases)
    out_var = torch.einsum("bca,bncd,bda->bna", q_out, logit_hess, q_out)        # [B, n, C]
    eigvals = torch.einsum("bn,bnc,bnk->bck", w, out_var, (phi @ q_in).pow(2))   # [B, C, K]

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        parts = kfe_ihvp_grouped([r.view(classes, k) for r in rhs], list(q_out), list(q_in), list(eigvals), damping)
        return torch.stack([x.reshape(-1) for x in parts]) if parts else rhs.clone()

    return solve
