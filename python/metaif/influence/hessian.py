"""The total Hessian at lambda* (math.md §4) in every variant: products, the operator the solvers
see, and solves with the configured solver (damping retries included); the J := I curvature of the
first-order baseline (§6)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch
from torch.func import vmap

from ..linalg import DampingRetry, MatvecOperator, SolverConfig, SolveResult
from ..meta.binding import CotangentSum
from ..meta.rows import Rows
from ..utils.progress import stage
from .config import DIRECT
from .session import Session

__all__ = ["ROW_HESSIAN", "TotalHessian"]

# the per-row Hessian each variant differentiates (math.md §4): gamma adds Gamma I to gn
ROW_HESSIAN = {"exact": "exact", "gn": "gn", "gamma": "gn", DIRECT: DIRECT}


class TotalHessian:
    """Products and solves with ``H = gamma I + sum_i c_i D_lambda g_i`` of ``session``'s tasks.
    :attr:`last_solve` says how the latest solve went (damping used, iterations, true residual)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._g_buf: dict[str, torch.Tensor] = {}  # G of hvp per variant (math.md §4): fixed at lambda
        self._solvers: dict[str, DampingRetry] = {}
        self.last_solve: SolveResult | None = None
        s, bound = session, session.bound
        own = [(s.c[idx] * r.outer_theta_grad().abs().sum(-1)).sum() for idx, r in zip(bound.chunks, bound.rows)]
        #: Theorem 5.1's Gamma = sum_i c_i ||grad_theta L_i||_1, what the "gamma" variant adds
        self.gamma_term = float(s.world.sum_blocks(own, s.lam.new_zeros(())))

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (or ``sum_i c_i grad_lambda L_i`` when ``direct``), ``[p]``."""
        return self.session.bound.gradient(c, direct)

    def weighted_chunks(self, subset: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, Rows, torch.Tensor]]:
        """``(positions, rows, c)`` of every chunk with a non-zero task weight; with a ``subset`` of
        task positions the weights of an unbiased minibatch estimate (scaled by m / |subset|).
        Which chunks to skip is decided on the host: no device synchronisation per chunk."""
        s, bound = self.session, self.session.bound
        if subset is None:
            for idx, rows, live in zip(bound.chunks, bound.rows, s.live):
                if live:
                    yield idx, rows, s.c[idx]
            return
        members = torch.as_tensor(subset, device="cpu")
        on_device = members.to(s.lam.device, non_blocking=True)
        scale = len(s.tasks) / len(members)
        for (start, end), idx, rows in zip(bound.spans, bound.chunks, bound.rows):
            inside = members[(members >= start) & (members < end)]
            if len(inside) and bool((s.host_c[inside] != 0).any()):
                yield idx, rows, s.c[idx] * scale * torch.isin(idx, on_device).to(s.c)

    def hvp(self, v: torch.Tensor, variant: str | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Total-Hessian-vector products ``H v`` of ``v [p]`` or a block ``[k, p]`` in ``variant``
        ("direct": the direct Hessian of eq. 7); ``subset`` of task positions gives the unbiased
        minibatch estimate. Where the context is lambda (the per-task path with dense inner solves,
        explicit inner maps) a block runs as one vmapped product per chunk."""
        s = self.session
        binding = s.binding
        variant = s.variant(variant, allow_direct=True)
        if v.dim() == 2:
            if binding.blockwise:
                out = self._block_hvp(v, variant, subset)
            else:
                return torch.stack([self.hvp(row, variant, subset) for row in v]) if len(v) else v.clone()
        else:
            g_buf = self._g_buffer(variant, subset)  # before the products: one exact sum held at a time
            tangent = binding.tangent(v, g_buf)
            m_sum = CotangentSum(binding)
            for idx, rows, c in self.weighted_chunks(subset):
                m_sum.add(rows.hvp_cotangents(binding.context_tangent(tangent, idx), c, ROW_HESSIAN[variant])[1], idx)
            out = binding.pull(m_sum.total(), g_buf, v)
        out = out + s.problem.gamma * v
        return out + self.gamma_term * v if variant == "gamma" else out

    def _g_buffer(self, variant: str, subset: torch.Tensor | None) -> torch.Tensor | None:
        """The summed ``G`` cotangents of :meth:`hvp` (``None`` where the pull-back does not read them);
        ``G`` does not depend on the direction, so the full-batch one is kept, and passing the same
        tensor lets the body passes reuse what they derived from it."""
        binding = self.session.binding
        if not binding.pull_reads_g:
            return None
        if subset is None and variant in self._g_buf:
            return self._g_buf[variant]
        g_sum = CotangentSum(binding)
        for idx, rows, c in self.weighted_chunks(subset):
            g_sum.add(rows.hvp_g(c, ROW_HESSIAN[variant]), idx)
        g_buf = g_sum.total()
        if subset is None:
            self._g_buf[variant] = g_buf
        return g_buf

    def _block_hvp(self, block: torch.Tensor, variant: str, subset: torch.Tensor | None) -> torch.Tensor:
        """The row part of ``H v`` for every row of ``block [k, p]`` when the context is lambda (the
        pull-back is the identity and has no second-order term)."""
        def chunk_products(idx: torch.Tensor, rows: Rows, c: torch.Tensor) -> torch.Tensor:
            def one(v: torch.Tensor) -> torch.Tensor:
                return rows.hvp_cotangents((v.expand(len(idx), -1),), c, ROW_HESSIAN[variant])[1][0].sum(0)

            return vmap(one)(block.clone())

        parts = (chunk_products(*chunk) for chunk in self.weighted_chunks(subset))
        return self.session.world.sum_blocks(parts, block)

    def operator(self, variant: str | None = None) -> MatvecOperator:
        """The total Hessian of ``variant`` as a :class:`~metaif.linalg.LinearOperator` (with the
        minibatch product LiSSA needs)."""
        s = self.session
        variant = s.variant(variant, allow_direct=True)
        batch_tasks = s.config.solver.lissa_tasks

        def sampled(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            subset = torch.randperm(len(s.tasks), generator=gen, device="cpu")[:batch_tasks].to(s.lam.device)
            return self.hvp(v, variant, subset)

        return MatvecOperator(lambda v: self.hvp(v, variant), s.lam.numel(), s.lam.dtype, s.lam.device,
                              lambda v, gen: torch.stack([sampled(row, gen) for row in v]))

    def set_solver(self, solver: SolverConfig) -> None:
        """Use another solver configuration (e.g. more damping) for later solves."""
        self.session.config = replace(self.session.config, solver=solver)
        self._solvers.clear()

    def solver(self, variant: str | None = None) -> DampingRetry:
        """The (cached) solver of ``variant``'s damped total Hessian."""
        variant = self.session.variant(variant, allow_direct=True)
        if variant not in self._solvers:
            self._solvers[variant] = DampingRetry(self.operator(variant), self.session.config.solver)
        return self._solvers[variant]

    def solve(self, b: torch.Tensor, variant: str | None = None) -> torch.Tensor:
        """``(H + damping I)^{-1} b`` for ``b [k, p]``; the outcome is kept in :attr:`last_solve`."""
        columns = f"{len(b)} right-hand side{'s' if len(b) != 1 else ''}"
        with stage(desc=f"total-Hessian solve ({columns})", disable=not self.session.shows_progress):
            self.last_solve = self.solver(variant).solve(b)
        return self.last_solve.x

    @property
    def damping_used(self) -> float:
        """The damping of the latest solve (the retry policy may have raised the configured one)."""
        return self.last_solve.damping if self.last_solve is not None else self.session.config.solver.damping

    def first_order_solver(self) -> DampingRetry:
        """The solver of ``gamma I + sum_i c_i grad^2_theta L_i`` (damped): the J := I baseline's
        curvature (math.md §6), only where theta and lambda share a space (iMAML)."""
        s = self.session
        if s.binding.theta.shape[1] != s.lam.numel():
            raise ValueError("the first-order (J = I) baseline needs theta and lambda in the same space (the iMAML "
                             "form)")

        def matvec(v):
            parts = ((s.c[idx, None] * rows.outer_theta_hvp(v.expand(len(idx), -1))).sum(0)
                     for idx, rows in zip(s.bound.chunks, s.bound.rows))
            return s.problem.gamma * v + s.world.sum_blocks(parts, v)

        return DampingRetry(MatvecOperator.per_vector(matvec, s.lam), s.config.solver)
