"""Bindings: a problem solved at one lambda on a batch of tasks, where lambda meets the per-row
algebra of :mod:`metaif.meta.rows`.

A binding solves every inner problem once at lambda, then serves :class:`~.rows.Rows` for any
slice of tasks, context tangents of a direction ``v [p]``, and the pull-back of context
cotangents to lambda-space. :class:`Bound` cuts the tasks into chunks of bounded memory, fixed by
the data (ranks take whole chunks), and sums total gradients over them exactly
(:class:`CotangentSum`), so that the bits do not depend on the number of ranks; outer training
(:mod:`metaif.meta.train`) and the influence engine use the same objects.

* :class:`BodyBinding` (a :class:`~.problem.FeatureHeadProblem`): the context is the features of
  the task's inputs. Tasks resample the same inputs, so every body pass runs once per *unique*
  input (:class:`~metaif.curvature.ImageBody`) on cotangents summed over the tasks that use it;
  per-task work stays in feature space, batched over the tasks of a chunk.
* :class:`SeamBinding` (any :class:`~.problem.BilevelProblem`, iMAML included): the context is
  lambda itself; the row objectives are the seam's, vmapped over tasks.
* :class:`UnrolledBinding` (an :class:`~.problem.UnrolledProblem`, classic MAML): the context is
  lambda; the rows differentiate the explicit map (:class:`~.unrolled.UnrolledRows`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.func import grad, hessian, jvp, vmap

from ..curvature import INPUT_CHUNK, ImageBody
from ..linalg import NotConverged, conjugate_gradient, reached
from ..parallel import ExactSum, World
from ..utils.progress import stage
from .batch import TaskBatch
from .heads import FeatureHead, bilevel
from .problem import FeatureHeadProblem, UnrolledProblem
from .rows import Context, Rows
from .unrolled import UnrolledRows

__all__ = ["PATHS", "TASK_CHUNK", "Binding", "BodyBinding", "Bound", "CotangentSum", "LambdaContext", "SeamBinding",
           "UnrolledBinding", "chunk_spans", "meta_gradient", "task_chunks"]

PATHS = ("auto", "seam")
# Tasks per feature-space batch by default: bounds memory, and is the unit ranks share (a run on R ranks
# wants R chunks or more).
TASK_CHUNK = 64
SEAM_CG_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def chunk_spans(n: int, size: int, first: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive chunks of at most ``size`` of ``first..n-1``."""
    return [(start, min(start + size, n)) for start in range(first, n, size)]


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]``, as a view where ``idx`` is a run of consecutive positions (every chunk is): the
    heads of 10,000 tasks would otherwise be held twice (0.3 GB at mini-ImageNet's 8,000 per head)."""
    if len(idx) and bool((idx.diff() == 1).all()):
        return t[int(idx[0]):int(idx[-1]) + 1]
    return t[idx]


def task_chunks(n: int, size: int, device: torch.device | None = None, first: int = 0) -> list[torch.Tensor]:
    """Positions ``first..n-1`` in consecutive chunks of at most ``size``, on ``device``."""
    return [torch.arange(start, end, device=device) for start, end in chunk_spans(n, size, first)]


@runtime_checkable
class Binding(Protocol):
    """A problem solved at one lambda on a batch of ``m`` tasks: every member the influence engine
    and outer training may use. The *context* of a row is what lambda reaches the row's objectives
    through (features of its inputs, or lambda itself); context tangents and cotangents are tuples
    of ``[B, ...]`` tensors, the buffer of :meth:`zeros` holds summed cotangents of all rows."""

    lam: torch.Tensor          # [p], detached
    batch: TaskBatch
    world: World
    theta: torch.Tensor        # [m, q]: every task's inner solution (gathered over the ranks)
    inner_norm: torch.Tensor   # [m]: ||grad_theta F_i|| at theta_i (a stationarity diagnostic)
    blockwise: bool            # whether a block of directions [k, p] may be vmapped through the rows
    pull_reads_g: bool         # whether pull's second-order term reads g (not where the context is lambda)

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> Rows:
        """The rows of tasks ``idx [B]`` (this rank's span only), validation weights ``w_val [B, v]``
        replacing the batch's."""

    def tangent(self, v: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """What every row's context tangent along ``v [p]`` is cut from; ``g``: the cotangent buffer of
        the :meth:`pull` along ``v`` that follows, when one does (the pull's second-order part that
        reads tangents may then be done here)."""

    def context_tangent(self, tangent: torch.Tensor, idx: torch.Tensor) -> Context:
        """The context tangents of rows ``idx`` from :meth:`tangent`'s output."""

    def zeros(self) -> torch.Tensor:
        """An empty cotangent buffer."""

    def scatter(self, into: torch.Tensor, cot: Context, idx: torch.Tensor) -> None:
        """Add the context cotangents ``cot`` of rows ``idx`` into the buffer ``into``."""

    def touched(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The rows of the buffer that :meth:`scatter` of rows ``idx`` writes (``None``: all of it)."""

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """``J^T m + d/dlambda <g, J v>`` of buffers ``m``, ``g`` (the cotangents of every rank's rows,
        :meth:`CotangentSum.total`) to lambda-space ``[p]``, the same on every rank."""

    def pull_each(self, cot: Context, idx: torch.Tensor) -> torch.Tensor:
        """One lambda-space vector per row, ``[B, p]``, from the context cotangents of rows ``idx``."""


class BodyBinding:
    """Feature-head problems: lambda is the body, theta_i the head. ``image_chunk`` bounds the
    body passes' memory; ``inner`` names the head solver (:data:`~metaif.curvature.HEAD_SOLVERS`),
    applied to ``grad^2_theta F_i + inner_damping I``; ``passes`` the body passes; ``theta0``
    warm-starts the heads ``[B, q]``; heads are solved ``chunk`` tasks at a time; ``memory`` bounds
    the bytes of per-input state the body passes keep (:class:`~metaif.curvature.ImageBody`; None: its
    default). Over several
    ranks (``world``) each solves the heads of its span of whole chunks of the tasks and runs the
    body passes of its span of the inputs; heads, features and tangents are gathered, and pull-backs
    sum over the ranks."""

    blockwise = False  # each direction runs its own body passes
    pull_reads_g = True

    def __init__(self, problem, lam: torch.Tensor, batch: TaskBatch, image_chunk: int = INPUT_CHUNK,
                 inner: str = "auto", inner_damping: float = 0.0, passes: str = "auto",
                 theta0: torch.Tensor | None = None, world: World = World(), chunk: int = TASK_CHUNK,
                 memory: float | None = None) -> None:
        self.head = FeatureHead(problem)
        self.lam, self.batch, self.world = lam.detach(), batch, world
        self.inner, self.inner_damping = inner, inner_damping
        self.body = ImageBody(self.head.body, self.lam, batch.inputs, image_chunk, passes, world, memory)
        self.phi = self.body.phi
        first, last = world.span(len(batch), block=chunk)
        solved = []
        with torch.no_grad():
            for start, end in chunk_spans(last, chunk, first):
                own = slice(start, end)
                solved.append(self.head.solve(self.phi[batch.pos_tr[own]], batch.y_tr[own], batch.w_tr[own],
                                              None if theta0 is None else theta0[own]))
        self.theta, self.inner_norm = (world.gather_parts([part[k] for part in solved], self.phi) for k in (0, 1))
        self.bases = self.head.pooled_bases(self.theta, self.phi[batch.pos_tr], batch.y_tr, batch.w_tr) \
            if inner == "ekfac-pooled" else None

    @property
    def num_inputs(self) -> int:
        return len(self.body)

    @property
    def body_memory(self) -> dict:
        """How the body passes' state fits the memory budget (:attr:`ImageBody.memory_report`)."""
        return self.body.memory_report

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> Rows:
        head, b = self.head, self.batch
        y_tr, y_val = b.y_tr[idx], b.y_val[idx]
        pos_tr, pos_val = b.pos_tr[idx], b.pos_val[idx]
        w_tr, theta = b.w_tr[idx], _take(self.theta, idx)
        solve = head.solver(theta, self.phi[pos_tr], y_tr, w_tr, self.inner, self.inner_damping, self.bases)

        def xi() -> Context:
            # gathered from the unique inputs' features on each use: every task's per-slot features at
            # once would be 5 GB at 10,000 tasks of 80 slots with 1,600 features
            return self.phi[pos_tr], self.phi[pos_val]

        def inner_grad(theta, xi, w):
            return head.inner_grad(theta, xi[0], y_tr, w)

        def outer(theta, xi, w):
            return head.outer_objective(theta, xi[1], y_val, w)

        return Rows(theta, xi, w_tr, b.w_val[idx] if w_val is None else w_val, solve, inner_grad, outer)

    def tangent(self, v: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Feature tangents of every unique input along ``v``, ``[U, h]``."""
        return self.body.tangent(v, g)

    def context_tangent(self, tangent: torch.Tensor, idx: torch.Tensor) -> Context:
        return tangent[self.batch.pos_tr[idx]], tangent[self.batch.pos_val[idx]]

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.phi)

    def scatter(self, into: torch.Tensor, cot: Context, idx: torch.Tensor) -> None:
        """Add row cotangents into the per-input buffer ``[U, h]``."""
        width = into.shape[1]
        into.index_add_(0, self.batch.pos_tr[idx].flatten(), cot[0].reshape(-1, width))
        into.index_add_(0, self.batch.pos_val[idx].flatten(), cot[1].reshape(-1, width))

    def touched(self, idx: torch.Tensor) -> torch.Tensor:
        """The unique inputs of rows ``idx``."""
        return torch.unique(torch.cat([self.batch.pos_tr[idx].flatten(), self.batch.pos_val[idx].flatten()]))

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """``J_phi^T m + d/dlambda <g, J_phi v>`` over the unique inputs, ``[p]``."""
        return self.body.pull(m, g, v)

    def pull_each(self, cot: Context, idx: torch.Tensor) -> torch.Tensor:
        """One lambda-gradient per row, ``[B, p]``, through the row's own inputs."""
        positions = torch.cat([self.batch.pos_tr[idx], self.batch.pos_val[idx]], dim=1)
        return self.body.pull_rows(torch.cat(cot, dim=1), positions)


class LambdaContext:
    """The context of a row is lambda itself (broadcast per row): tangents are the direction, the
    pull-back is the identity with no second-order term, and a block of directions can be vmapped
    through the rows (``blockwise``)."""

    lam: torch.Tensor
    world: World
    blockwise = True
    pull_reads_g = False  # J is the identity: no second-order term

    def tangent(self, v: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return v.clone()

    def context_tangent(self, tangent: torch.Tensor, idx: torch.Tensor) -> Context:
        return (tangent.expand(len(idx), -1),)

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.lam)

    def scatter(self, into: torch.Tensor, cot: Context, idx: torch.Tensor) -> None:
        into += cot[0].sum(0)

    def touched(self, idx: torch.Tensor) -> None:
        return None

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        return m

    def pull_each(self, cot: Context, idx: torch.Tensor) -> torch.Tensor:
        return cot[0]


class SeamBinding(LambdaContext):
    """Any :class:`~.problem.BilevelProblem` on flat vectors: the context is lambda. Inner solves
    are dense Cholesky of ``grad^2_theta F_i + inner_damping I`` when ``q <= dense_max``, else CG on
    autograd products; ``theta0 [B, q]`` warm-starts the inner problems. Over several ranks
    (``world``) each solves and factors the inner problems of its span of whole chunks of ``chunk``
    tasks and serves rows of those only; the thetas are gathered."""

    def __init__(self, problem, lam: torch.Tensor, batch: TaskBatch, inner_damping: float = 0.0,
                 dense_max: int = 2000, cg_max_iter: int = 1000, theta0: torch.Tensor | None = None,
                 progress: bool = False, world: World = World(), chunk: int = TASK_CHUNK) -> None:
        # lambda and every tangent get fresh storage: forward AD tangents of the expanded
        # per-row lambda must share its layout (a view into another buffer, e.g. a column of
        # the dense solver's identity, would be copied into the stride-0 expansion and fail)
        self.problem, self.world = bilevel(problem), world
        self.lam, self.batch, self.inner_damping = lam.detach().clone(), batch, inner_damping
        self.x_tr, self.x_val = batch.x_tr.to(lam.dtype), batch.x_val.to(lam.dtype)
        self.cg_rtol, self.cg_max_iter = SEAM_CG_RTOL[lam.dtype], cg_max_iter
        self.first, last = world.span(len(batch), block=chunk)
        tasks = stage(range(self.first, last), desc="inner problems", disable=not progress)
        solved = [self.problem.solve_inner(self.lam, self.x_tr[i], batch.y_tr[i], batch.w_tr[i],
                                           None if theta0 is None else theta0[i]) for i in tasks]
        self.theta = world.gather_rows(torch.stack([s[0] for s in solved]) if solved else self.lam.new_zeros(0))
        # a diagnostic
        self.inner_norm = world.gather_rows(torch.tensor([float(s[1]) for s in solved], dtype=torch.float64,
                                                         device="cpu"))
        self._inner_grad = vmap(grad(self.problem.inner_objective, argnums=0))
        self._outer = vmap(self.problem.outer_objective)
        self.dense = self.theta.shape[1] <= dense_max
        self.blockwise = self.dense  # CG inner solves have data-dependent loops: no vmap over directions
        if self.dense:  # this rank's tasks, a chunk at a time (the same batches on any number of ranks)
            eye = torch.eye(self.theta.shape[1], dtype=self.theta.dtype, device=self.theta.device)
            factors = [self._factor(slice(start, end), eye) for start, end in chunk_spans(last, chunk, self.first)]
            self.chol = torch.cat(factors) if factors else eye.new_zeros(0, *eye.shape)

    def _factor(self, mine: slice, eye: torch.Tensor) -> torch.Tensor:
        """Cholesky factors of the damped inner Hessians of tasks ``mine``, ``[B, q, q]``."""
        b = self.batch
        h = vmap(hessian(self.problem.inner_objective, argnums=0))(
            self.theta[mine], self.lam.expand(mine.stop - mine.start, -1), self.x_tr[mine], b.y_tr[mine], b.w_tr[mine])
        return torch.linalg.cholesky(0.5 * (h + h.mT) + self.inner_damping * eye)

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> Rows:
        b = self.batch
        x_tr, y_tr, x_val, y_val = self.x_tr[idx], b.y_tr[idx], self.x_val[idx], b.y_val[idx]
        theta, w_tr = self.theta[idx], b.w_tr[idx]
        lam_rows = self.lam.expand(len(idx), -1)

        def inner_grad(th, xi, w):
            return self._inner_grad(th, xi[0], x_tr, y_tr, w)

        def outer(th, xi, w):
            return self._outer(th, xi[0], x_val, y_val, w)

        if self.dense:
            chol = self.chol[idx - self.first]  # rows of this rank's span only

            def solve(rhs):
                return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        else:
            def matvec(vec):  # [B, 1, q]
                hv = jvp(lambda th: inner_grad(th, (lam_rows,), w_tr), (theta,), (vec[:, 0],))[1]
                return (hv + self.inner_damping * vec[:, 0]).unsqueeze(1)

            def solve(rhs):
                res = conjugate_gradient(matvec, rhs.unsqueeze(1), self.cg_rtol, self.cg_max_iter)
                if not bool(reached(res).all()):  # the rounding floor is as far as this dtype goes
                    raise NotConverged(f"inner cg missed rtol {self.cg_rtol:g} (relative residual "
                                       f"{float(res.resid.max()):.2e}); raise inner_damping")
                return res.x.squeeze(1)

        return Rows(theta, (lam_rows,), w_tr, b.w_val[idx] if w_val is None else w_val, solve, inner_grad, outer)



class UnrolledBinding(LambdaContext):
    """An :class:`~.problem.UnrolledProblem`: every task's theta is its explicit map at lambda,
    computed ``chunk`` tasks at a time; ``inner_norm`` reports ``||grad_theta F_i||`` at theta (an
    explicit map need not be stationary). Over several ranks (``world``) each maps its span of the
    tasks; the thetas are gathered."""

    def __init__(self, problem, lam: torch.Tensor, batch: TaskBatch, chunk: int = 32, world: World = World()) -> None:
        self.problem, self.lam, self.batch, self.world = problem, lam.detach().clone(), batch, world
        self.x_tr, self.x_val = batch.x_tr.to(lam.dtype), batch.x_val.to(lam.dtype)
        self.theta = None
        thetas, norms = [], []
        first, last = world.span(len(batch), block=chunk)
        for idx in task_chunks(last, chunk, batch.pos_tr.device, first):
            rows = self.rows(idx)
            thetas.append(rows.theta.detach())
            norms.append(rows.map(grad(problem.inner_objective), rows.theta, rows.xi[0], self.x_tr[idx],
                                  batch.y_tr[idx], batch.w_tr[idx]).norm(dim=-1))
        self.theta, self.inner_norm = world.gather_parts(thetas, self.lam), world.gather_parts(norms, self.lam).detach()

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> UnrolledRows:
        b = self.batch
        return UnrolledRows(self.problem, self.lam.expand(len(idx), -1), self.x_tr[idx], b.y_tr[idx], b.w_tr[idx],
                            self.x_val[idx], b.y_val[idx], b.w_val[idx] if w_val is None else w_val,
                            None if self.theta is None else self.theta[idx])


class CotangentSum:
    """Context cotangents of chunks of rows summed into ``binding``'s buffer over the chunks and the
    ranks, exactly (:class:`~metaif.parallel.ExactSum`): the same bits however the chunks are shared.
    Each :meth:`add` must bring one whole chunk, the same rows on any number of ranks."""

    def __init__(self, binding: Binding) -> None:
        self.binding, self.buffer = binding, binding.zeros()
        self.sum = ExactSum(self.buffer)

    def add(self, cot: Context, idx: torch.Tensor) -> None:
        """Add the cotangents ``cot`` of the chunk of rows ``idx``."""
        self.binding.scatter(self.buffer, cot, idx)
        rows = self.binding.touched(idx)
        self.sum.add(self.buffer, rows)
        if rows is None:
            self.buffer.zero_()
        else:
            self.buffer[rows] = 0

    def total(self) -> torch.Tensor:
        """The buffer of every rank's chunks (a collective: every rank calls it)."""
        return self.binding.world.total(self.sum)


class Bound:
    """``problem`` solved at ``lam`` on ``batch``, its tasks cut into chunks of ``chunk`` rows (from
    the first task: the chunks are fixed by the data); over several ranks (``world``) every rank
    holds the whole batch and the rows of its span of whole chunks, and the sums over tasks
    (:meth:`gradient`, the bindings' pull-backs) add the chunks' partial sums exactly, so that they
    have the same bits on any number of ranks. A rank may hold no chunk (more ranks than chunks).

    ``path`` "auto" uses the unique-input :class:`BodyBinding` for problems that declare a
    feature-space head, the :class:`UnrolledBinding` for explicit inner maps and the
    :class:`SeamBinding` otherwise; "seam" forces the latter for feature-head problems.
    ``inner``, ``inner_damping``, ``passes``, ``image_chunk``, ``memory`` and ``theta0`` are the bindings'.
    """

    binding: Binding

    def __init__(self, problem, lam: torch.Tensor, batch: TaskBatch, *, path: str = "auto", chunk: int = TASK_CHUNK,
                 image_chunk: int = INPUT_CHUNK, inner: str = "auto", inner_damping: float = 0.0, passes: str = "auto",
                 theta0: torch.Tensor | None = None, progress: bool = False, world: World = World(),
                 memory: float | None = None) -> None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if isinstance(problem, UnrolledProblem):
            chunk = min(chunk, 32)  # the unrolled steps keep K copies of every activation per task
            self.binding = UnrolledBinding(problem, lam, batch, chunk, world)
        elif path == "auto" and isinstance(problem, FeatureHeadProblem):
            self.binding = BodyBinding(problem, lam, batch, image_chunk, inner, inner_damping, passes, theta0, world,
                                       chunk, memory)
        else:
            if inner not in ("auto", "cholesky"):
                raise ValueError(f"inner solver {inner!r} needs the feature-head path; the per-task path solves the "
                                 f"inner problems exactly ('auto')")
            self.binding = SeamBinding(problem, lam, batch, inner_damping, theta0=theta0, progress=progress,
                                       world=world, chunk=chunk)
        self.lam, self.batch, self.world, self.chunk = lam.detach(), batch, world, chunk
        first, last = world.span(len(batch), block=chunk)
        self.spans = chunk_spans(last, chunk, first)
        self.chunks = task_chunks(last, chunk, batch.pos_tr.device, first)
        chunks = stage(self.chunks, desc="inner states", disable=not progress)
        self.rows = [self.binding.rows(idx) for idx in chunks]

    @property
    def theta(self) -> torch.Tensor:
        return self.binding.theta

    @property
    def inner_norm(self) -> torch.Tensor:
        return self.binding.inner_norm

    def live_chunks(self, c: torch.Tensor) -> list[bool]:
        """Which chunks carry a nonzero weight of ``c [m]``: decided on the host when ``c`` is there;
        on a GPU every chunk runs (a zero weight costs less than a synchronisation per chunk)."""
        if c.device.type != "cpu":
            return [True] * len(self.spans)
        nonzero = c != 0
        return [bool(nonzero[start:end].any()) for start, end in self.spans]

    def gradient(self, c: torch.Tensor, direct: bool = False) -> torch.Tensor:
        """``sum_i c_i g_i`` (math.md §3; ``grad_lambda L_i`` at fixed theta when ``direct``), ``[p]``."""
        total = CotangentSum(self.binding)
        live = self.live_chunks(c)
        c = c.to(total.buffer, non_blocking=True)
        for idx, rows, on in zip(self.chunks, self.rows, live):
            if on:
                ci = c[idx]
                total.add(rows.direct_cotangent(ci) if direct else rows.gradient_cotangent(ci), idx)
        return self.binding.pull(total.total())

    def weighted_loss(self, c: torch.Tensor) -> float:
        """``sum_i c_i L_i(theta_i, lambda)`` for task weights ``c [m]`` (the objective without its l2 term)."""
        return float((c.to(self.lam) * self.outer_losses()).sum())

    def outer_losses(self) -> torch.Tensor:
        """``L_i(theta_i, lambda)`` per task ``[m]`` (gathered over the ranks)."""
        own = [rows.outer(rows.theta, rows.xi, rows.w_val).detach() for rows in self.rows]
        return self.world.gather_parts(own, self.lam)


def meta_gradient(problem, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor,
                  world: World = World(), chunk: int = TASK_CHUNK, image_chunk: int = INPUT_CHUNK,
                  memory: float | None = None) -> tuple[torch.Tensor, dict]:
    """``sum_i c_i g_i`` (math.md §3) over ``batch``, ``[p]``, and the losses: what outer training
    and polishing need from a problem without its own ``outer_gradient``. A feature-head problem
    runs the body once per unique input of the batch (a forward, then one pull-back of the summed
    feature cotangents); over several ranks each runs its chunks of ``chunk`` tasks and of
    ``image_chunk`` inputs. ``memory`` (bytes; default: :class:`~metaif.curvature.ImageBody`'s) bounds
    the body state kept between the forward and the pull-back; the chunks beyond it run their forward
    again."""
    bound = Bound(problem, lam, batch, chunk=chunk, image_chunk=image_chunk, world=world, memory=memory)
    c = task_weights.to(lam)
    grad = bound.gradient(c)
    weighted = bound.weighted_loss(c)
    return grad, {"outer_loss": weighted / float(c.sum()), "weighted_loss": weighted,
                  "inner_grad_norm": float(bound.inner_norm.max())}
