"""Curvature of a linear head ``logits = Theta phi`` fitted on a few examples per task.

Theta ``[K, D]`` is flattened class-major (``q = K D``; a bias is a constant feature of phi).
From the per-example logit Hessians ``G_n [B, n, K, K]`` of the loss,

    H = sum_n w_n G_n (x) phi_n phi_n^T + damping I

for each of B tasks. :class:`LinearHeadCurvature` applies it, forms it, gives its exact
few-shot factor (``U U^T = H - damping I``) and its EK-FAC approximation (math.md §13.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .losses import psd_root

__all__ = ["LinearHeadCurvature", "linear_logits", "pooled_kfe_bases"]


def linear_logits(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``theta [B, K D]`` (class-major) on ``phi [B, n, D]`` → logits ``[B, n, K]``."""
    return phi @ theta.view(theta.shape[0], -1, phi.shape[-1]).mT


@dataclass
class LinearHeadCurvature:
    """``H_b = sum_n w[b, n] G[b, n] (x) phi[b, n] phi[b, n]^T + damping I`` for B tasks.

    ``probs [B, n, K]`` (softmax heads only) lets the compiled ce-head kernels apply H;
    ``logit_root [B, n, K, K]`` (``R R^T = G``, from the loss) spares :meth:`factor` an
    eigendecomposition per example.
    """

    logit_hess: torch.Tensor   # [B, n, K, K]
    phi: torch.Tensor          # [B, n, D]
    w: torch.Tensor            # [B, n]
    damping: float
    probs: torch.Tensor | None = None
    logit_root: torch.Tensor | None = None

    @property
    def outputs(self) -> int:
        return self.logit_hess.shape[-1]

    @property
    def dim(self) -> int:
        return self.outputs * self.phi.shape[-1]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for ``v [B, q]``."""
        z = linear_logits(v, self.phi)                                        # [B, n, K]
        s = self.w[..., None] * (self.logit_hess @ z[..., None])[..., 0]      # [B, n, K]
        return (s.mT @ self.phi).flatten(1) + self.damping * v

    def dense(self) -> torch.Tensor:
        """``H`` as ``[B, q, q]``."""
        b, _, k = self.phi.shape
        classes = self.outputs
        s = self.w[..., None, None] * self.logit_hess
        # sum_n s_n (x) phi_n phi_n^T as one batched GEMM over the examples; a 4-operand einsum
        # would materialise an [n, K, K, D, D] intermediate instead.
        outer = (self.phi[..., :, None] * self.phi[..., None, :]).flatten(-2)
        h = (s.flatten(-2).mT @ outer).view(b, classes, classes, k, k).permute(0, 1, 3, 2, 4)
        eye = torch.eye(self.dim, dtype=self.phi.dtype, device=self.phi.device)
        return h.reshape(b, self.dim, self.dim) + self.damping * eye

    def _roots(self) -> torch.Tensor:
        """``sqrt(w_n) R_n [B, n, K, K]`` with ``R_n R_n^T = G_n``."""
        root = psd_root(self.logit_hess) if self.logit_root is None else self.logit_root
        return root * self.w.sqrt()[..., None, None]

    def factor(self) -> torch.Tensor:
        """``U [B, K D, n K]`` with ``U U^T = H - damping I``: per example ``sqrt(w_n) (R_n (x) phi_n)``,
        ``R_n R_n^T = G_n`` (the exact few-shot factor that Woodbury inverts)."""
        b, n, k = self.phi.shape
        root = self._roots()
        u = root[:, :, :, None, :] * self.phi[:, :, None, :, None]   # U[(c, k), (n, r)] = root[n, c, r] phi[n, k]
        return u.permute(0, 2, 3, 1, 4).reshape(b, self.outputs * k, n * self.outputs)

    def woodbury(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rhs [B, q] -> H^{-1} rhs``, exact, by Woodbury on the few-shot factor without forming it:
        ``U^T U`` is ``(phi_n . phi_m) (R_n^T R_m)`` blockwise, and ``U^T v``, ``U c`` go through the
        features, so memory and work grow with ``n K (n K + D)`` per task instead of ``n K^2 D``."""
        b, n, d = self.phi.shape
        classes, mu, phi = self.outputs, self.damping, self.phi
        root = self._roots()                                                    # [B, n, K, K]
        gram = (phi @ phi.mT)[:, :, None, :, None]                              # [B, n, 1, n, 1]
        small = (gram * torch.einsum("bncr,bmcs->bnrms", root, root)).reshape(b, n * classes, n * classes)
        eye = torch.eye(n * classes, dtype=phi.dtype, device=phi.device)
        chol = torch.linalg.cholesky(mu * eye + small)

        def solve(rhs: torch.Tensor) -> torch.Tensor:
            v = rhs.view(b, classes, d)
            u_t_v = torch.einsum("bncr,bcn->bnr", root, v @ phi.mT).reshape(b, n * classes, 1)
            coeffs = torch.cholesky_solve(u_t_v, chol).view(b, n, classes)
            u_c = torch.einsum("bncr,bnr->bcn", root, coeffs) @ phi             # [B, K, D]
            return (v - u_c).reshape(b, -1) / mu

        return solve

    def kfe_bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task eigenbases ``(Q_S [B, K, K], Q_A [B, D, D])`` of ``S = E_w[G]`` (the true Fisher's
        output factor: its expectation over the model's labels is G) and ``A = E_w[phi phi^T]``."""
        q_in = torch.linalg.eigh(torch.einsum("bn,bnk,bnl->bkl", self.w, self.phi, self.phi)).eigenvectors
        q_out = torch.linalg.eigh(torch.einsum("bn,bncd->bcd", self.w, self.logit_hess)).eigenvectors
        return q_out, q_in

    def kfe_eigvals(self, q_out: torch.Tensor, q_in: torch.Tensor) -> torch.Tensor:
        """EK-FAC corrected eigenvalues ``sum_n w_n (Q_S^T G_n Q_S)_aa (Q_A^T phi_n)_b^2`` ``[B, K, D]``
        in the bases ``q_out [B, K, K]``, ``q_in [B, D, D]``."""
        out_var = torch.einsum("bca,bncd,bda->bna", q_out, self.logit_hess, q_out)
        return torch.einsum("bn,bnc,bnk->bck", self.w, out_var, (self.phi @ q_in).pow(2))


def pooled_kfe_bases(curvature: LinearHeadCurvature) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenbases ``(Q_S [K, K], Q_A [D, D])`` of the EK-FAC factors summed over all B tasks
    (math.md §13.3's option for tiny n_i)."""
    c = curvature
    q_in = torch.linalg.eigh(torch.einsum("bn,bnk,bnl->kl", c.w, c.phi, c.phi)).eigenvectors
    q_out = torch.linalg.eigh(torch.einsum("bn,bncd->cd", c.w, c.logit_hess)).eigenvectors
    return q_out, q_in
