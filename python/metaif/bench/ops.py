"""Each compiled op against its pure-PyTorch baseline, side by side, same inputs."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .. import ops, reference
from ..curvature import AutogradPasses, LinearHeadCurvature, TracedPasses, get_loss
from ..linalg import WoodburyInverse, woodbury_solve
from ..models import conv4
from .core import BenchConfig, Case


def _orthogonal(d: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d))[0]


def kfe_cases(cfg: BenchConfig) -> Iterator[Case]:
    for d in (64, 256, 1024):
        for batch in (1, 32):
            grads = torch.randn(batch, d, d)
            q_out, q_in, eig = _orthogonal(d), _orthogonal(d), torch.rand(d, d) + 0.1
            yield Case("kfe_ihvp", f"d={d} B={batch}", "torch matmul",
                       lambda g=grads, a=q_out, b=q_in, e=eig: ops.kfe_ihvp(g, a, b, e, 0.01),
                       lambda g=grads, a=q_out, b=q_in, e=eig: reference.kfe_ihvp(g, a, b, e, 0.01),
                       flops=8.0 * batch * d**3)
    # Conv-4 on 28x28 (64 channels, 3x3 kernels, bias folded in) and a 5-way head.
    shapes = [(64, 1 * 9 + 1), (64, 64 * 9 + 1), (64, 64 * 9 + 1), (64, 64 * 9 + 1), (5, 64 + 1)]
    batch = 8
    layers = [(torch.randn(batch, o, i), _orthogonal(o), _orthogonal(i), torch.rand(o, i) + 0.1) for o, i in shapes]
    cols = [list(c) for c in zip(*layers)]
    flops = sum(2.0 * batch * (2 * o * o * i + 2 * o * i * i) for o, i in shapes)
    yield Case("kfe_ihvp_grouped", f"Conv-4 5 layers B={batch}", "per-layer torch matmul",
               lambda: ops.kfe_ihvp_grouped(*cols, damping=0.01),
               lambda: reference.kfe_ihvp_grouped(*cols, damping=0.01), flops=flops)


def kfe_eigvals_cases(cfg: BenchConfig) -> Iterator[Case]:
    n = 256 if cfg.quick else 1024
    og, acts = torch.randn(n, 1, 256), torch.randn(n, 1, 257)
    qo, qi = _orthogonal(256), _orthogonal(257)
    yield Case("kfe_eigvals", f"linear n={n} 256x257", "einsum + matmul",
               lambda: ops.kfe_eigvals(og, acts, qo, qi), lambda: reference.kfe_eigvals(og, acts, qo, qi))
    n, t = (16, 49) if cfg.quick else (64, 49)
    og, acts = torch.randn(n, t, 64), torch.randn(n, t, 577)
    qo, qi = _orthogonal(64), _orthogonal(577)
    yield Case("kfe_eigvals", f"conv n={n} t={t} 64x577", "einsum + matmul",
               lambda: ops.kfe_eigvals(og, acts, qo, qi), lambda: reference.kfe_eigvals(og, acts, qo, qi))


def _head_problem(tasks: int, n: int = 25, d: int = 65, classes: int = 5, feature_scale: float = 1.0):
    gen = torch.Generator().manual_seed(0)
    feats = feature_scale * torch.randn(tasks, n, d, generator=gen) / d**0.5
    feats[..., -1] = 1.0  # folded bias
    probs = torch.softmax(2.0 * torch.randn(tasks, n, classes, generator=gen), -1)
    return feats, probs


def hvp_cases(cfg: BenchConfig) -> Iterator[Case]:
    tasks = 1000
    feats, probs = _head_problem(tasks)
    for batch in (1, 16):
        vecs = torch.randn(tasks, batch, 5, 65)
        yield Case("ce_head_hvp", f"T={tasks} n=25 d=65 C=5 B={batch}", "torch.func hvp (vmap)",
                   lambda v=vecs: ops.ce_head_hvp(feats, probs, v, 0.1),
                   lambda v=vecs: reference.ce_head_hvp(feats, probs, v, 0.1))
        yield Case("ce_head_hvp", f"T={tasks} n=25 d=65 C=5 B={batch}", "closed-form einsum",
                   lambda v=vecs: ops.ce_head_hvp(feats, probs, v, 0.1),
                   lambda v=vecs: reference.ce_head_matvec(feats, probs, v, 0.1))
    tasks, params = (50, 2000) if cfg.quick else (200, 2000)
    jac = torch.randn(tasks, 25, 5, params) / params**0.5
    vecs = torch.randn(tasks, 4, params)
    yield Case("ggn_hvp", f"T={tasks} n=25 C=5 P={params} B=4", "torch.func hvp (vmap)",
               lambda: ops.ggn_hvp(jac, probs[:tasks], vecs, 0.1), lambda: reference.ggn_hvp(jac, probs[:tasks], vecs, 0.1))


def solver_cases(cfg: BenchConfig) -> Iterator[Case]:
    # Features of norm ~3 and little damping: condition numbers in the thousands, so that CG
    # really needs its 100 iterations (past convergence, float32 iterates turn denormal).
    tasks, iters, damping = 1000, 100, 0.01
    feats, probs = _head_problem(tasks, feature_scale=3.0)
    q = 5 * 65
    basis = torch.eye(q).reshape(1, q, 5, 65).expand(tasks, -1, -1, -1).contiguous()
    dense = ops.ce_head_hvp(feats, probs, basis).reshape(tasks, q, q).mT.contiguous()
    del basis
    b_head = torch.randn(tasks, 1, 5, 65)
    b_dense = b_head.reshape(tasks, 1, q)
    scale = reference.power_scale(lambda v: ops.ce_head_hvp(feats, probs, v, damping), b_head)
    label = f"T={tasks} q={q} B=1 {iters} it"
    yield Case("neumann_dense", label, "batched torch loop (bmm)",
               lambda: ops.neumann_dense(dense, b_dense, iters, scale, damping),
               lambda: reference.neumann_dense(dense, b_dense, iters, scale, damping))
    yield Case("neumann_ce_head", label, "batched torch loop (einsum)",
               lambda: ops.neumann_ce_head(feats, probs, b_head, iters, scale, damping),
               lambda: reference.neumann_ce_head(feats, probs, b_head, iters, scale, damping))
    rtol = 1e-6
    its = ops.cg_dense(dense, b_dense, damping, rtol, iters).iters.float().mean().item()
    note = f"rtol={rtol:g}: mean {its:.0f} it"
    label = f"T={tasks} q={q} B=1 <={iters} it"
    yield Case("cg_dense", label, "batched torch loop (bmm)",
               lambda: ops.cg_dense(dense, b_dense, damping, rtol, iters),
               lambda: reference.cg_dense(dense, b_dense, damping, rtol, iters), note=note)
    yield Case("cg_ce_head", label, "batched torch loop (einsum)",
               lambda: ops.cg_ce_head(feats, probs, b_head, damping, rtol, iters),
               lambda: reference.cg_ce_head(feats, probs, b_head, damping, rtol, iters), note=note)


def woodbury_cases(cfg: BenchConfig) -> Iterator[Case]:
    tasks, params, rank = (4 if cfg.quick else 16), 2000, 125
    u = torch.randn(tasks, params, rank) / params**0.5
    v = torch.randn(tasks, 4, params)
    yield Case("woodbury_solve", f"T={tasks} P={params} r={rank} B=4", "torch.linalg.solve (dense)",
               lambda: woodbury_solve(u, v, 0.1), lambda: reference.woodbury_solve(u, v, 0.1))
    # The polish's exact head solves: 5-way 1- and 5-shot heads on 64 features, one per task.
    tasks = 1000 if cfg.quick else 10000
    loss = get_loss("softmax")
    for shots in (1, 5):
        feats, _ = _head_problem(tasks, n=5 * shots)
        logits = 2.0 * torch.randn(tasks, 5 * shots, 5)
        weights, rhs = torch.full(logits.shape[:2], 1 / (5 * shots)), torch.randn(tasks, 5 * feats.shape[2])

        def structured(f=feats, z=logits, w=weights, r=rhs):
            return LinearHeadCurvature(loss.hessian(z), f, w, 1.0, logit_root=loss.hessian_root(z)).woodbury()(r)

        def formed(f=feats, z=logits, w=weights, r=rhs):
            curv = LinearHeadCurvature(loss.hessian(z), f, w, 1.0)
            return WoodburyInverse(curv.factor(), curv.damping)(r.unsqueeze(1)).squeeze(1)

        yield Case("head_woodbury", f"T={tasks} 5-way n={5 * shots} D=65", "formed factor (eigh) + Woodbury",
                   structured, formed, note="set-up + one solve")


def _dense_gather(cols, index, mask, weight):
    """The competent PyTorch way: the whole layer output by one GEMM, then gathered."""
    n, rows, _ = cols.shape
    dense = (cols.reshape(n * rows, -1) @ weight.T).view(n, rows, -1)
    return mask * torch.gather(dense, 1, index)


def _dense_scatter(cols, index, mask, signal):
    n, rows, _ = cols.shape
    dense = signal.new_zeros(n, rows, signal.shape[2]).scatter_add_(1, index, mask * signal)
    return dense.reshape(n * rows, -1).T @ cols.reshape(n * rows, -1)


def patch_cases(cfg: BenchConfig) -> Iterator[Case]:
    """Conv-4's first layer (1 channel, 3x3 + bias, 28x28) read at its 2x2 max-pool arg-maxes."""
    n = 128 if cfg.quick else 600
    x = torch.randn(n, 1, 28, 28)
    cols = torch.cat([torch.nn.functional.unfold(x, 3, padding=1).mT, torch.ones(n, 784, 1)], 2).contiguous()
    z = torch.randn(n, 64, 28, 28)
    index = torch.nn.functional.max_pool2d(z, 2, return_indices=True)[1].flatten(2).mT.contiguous()
    mask = (torch.rand(index.shape) > 0.5).float()
    weight, signal = torch.randn(64, 10), torch.randn(index.shape)
    yield Case("gather_patch_matmul", f"Conv-4 layer 1 N={n}", "torch mm + gather",
               lambda: ops.gather_patch_matmul(cols, index, mask, weight),
               lambda: _dense_gather(cols, index, mask, weight))
    yield Case("gather_patch_matmul_t", f"Conv-4 layer 1 N={n}", "torch scatter + mm",
               lambda: ops.gather_patch_matmul_t(cols, index, mask, signal),
               lambda: _dense_scatter(cols, index, mask, signal))


def body_pass_cases(cfg: BenchConfig) -> Iterator[Case]:
    """One body product of the total HVP (tangent J v, then J^T m + d/dlambda <g, J v>) on
    Conv-4 / 28x28, both implementations holding their per-solve state (g fixed)."""
    n = 128 if cfg.quick else 600
    body = conv4()
    lam, x = body.init(0), torch.randn(n, 1, 28, 28)
    g, m, v = torch.randn(n, 64), torch.randn(n, 64), torch.randn(body.num_params)
    passes = []
    for kind in (TracedPasses, AutogradPasses):
        state = kind(body, lam, x)
        state.cotangent(g)
        passes.append(state)

    def product(state):
        state.tangent(v)
        return state.pull(m, v)

    yield Case("body_hvp", f"Conv-4 28x28 N={n}", "autograd double backward",
               lambda: product(passes[0]), lambda: product(passes[1]), note="kept graph, g fixed",
               norm_check=True)


# The ops each group yields, so that --only skips a group before its (costly) set-up.
kfe_cases.ops = ("kfe_ihvp", "kfe_ihvp_grouped")
kfe_eigvals_cases.ops = ("kfe_eigvals",)
hvp_cases.ops = ("ce_head_hvp", "ggn_hvp")
solver_cases.ops = ("neumann_dense", "neumann_ce_head", "cg_dense", "cg_ce_head")
woodbury_cases.ops = ("woodbury_solve", "head_woodbury")
patch_cases.ops = ("gather_patch_matmul", "gather_patch_matmul_t")
body_pass_cases.ops = ("body_hvp",)
OP_GROUPS = (kfe_cases, kfe_eigvals_cases, hvp_cases, solver_cases, woodbury_cases, patch_cases, body_pass_cases)
