"""The CUDA kernels against the PyTorch composition (:mod:`metaif.reference`) on the same GPU
inputs, timed with CUDA events (issue 13): the few-shot sizes (1,000 tasks with a 5-way head of 65
features, q = 325; 1,000 dense q = 325 operators, 100 Neumann terms), large layers (d = 4,096
``kfe_ihvp``, also against its four GEMMs alone: the cuBLAS bound), the gathered-patch products of
the first Conv-4 layer, and the exact total HVP of the 200-task Omniglot Conv-4 pipeline beside our
1-thread CPU time (``benchmarks/scale.json``). Float32 throughout.

    metaif bench --device cuda --only gpu --root <omniglot folder> --json gpu.json
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import ops, reference
from ..data import TaskConfig, load_omniglot, sample_tasks, split_classes
from ..influence import InfluenceAnalyzer
from ..meta import AnilConfig, AnilProblem
from ..models import conv4
from .core import BenchConfig, Case

TASKS, WAYS, SHOTS, FEATURES = 1000, 5, 5, 65  # q = WAYS * FEATURES = 325
DENSE_Q, TERMS = 325, 100
CPU_SCALE_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "scale.json"
F32 = 4  # bytes


def _head(device: str):
    gen = torch.Generator().manual_seed(0)
    n = WAYS * SHOTS
    feats = torch.randn(TASKS, n, FEATURES, generator=gen) / FEATURES**0.5
    feats[..., -1] = 1.0
    probs = torch.softmax(2.0 * torch.randn(TASKS, n, WAYS, generator=gen), -1)
    return feats.to(device), probs.to(device)


def head_cases(cfg: BenchConfig) -> Iterator[Case]:
    device = cfg.device
    feats, probs = _head(device)
    n = feats.shape[1]
    operator_bytes = TASKS * (n * FEATURES + n * WAYS + n) * F32
    for batch in (1, 8):
        v = torch.randn(TASKS, batch, WAYS, FEATURES, device=device)
        yield Case("ce_head_hvp", f"T={TASKS} 5-way d={FEATURES} B={batch}", "torch composition",
                   lambda v=v: ops.ce_head_hvp(feats, probs, v, 0.01), lambda v=v: reference.ce_head_hvp(feats, probs, v, 0.01),
                   flops=8.0 * TASKS * batch * n * WAYS * FEATURES, bytes=operator_bytes + 2 * v.numel() * F32)
    b = torch.randn(TASKS, 1, WAYS, FEATURES, device=device)
    scale = torch.full((TASKS,), 2.0, dtype=torch.float64, device=device)
    yield Case("neumann_ce_head", f"T={TASKS} q={WAYS * FEATURES} {TERMS} terms", "torch loop",
               lambda: ops.neumann_ce_head(feats, probs, b, TERMS, scale, 0.05),
               lambda: reference.neumann_ce_head(feats, probs, b, TERMS, scale, 0.05), norm_check=True,
               flops=8.0 * TASKS * TERMS * n * WAYS * FEATURES, bytes=operator_bytes + 2 * b.numel() * F32)
    yield Case("cg_ce_head", f"T={TASKS} q={WAYS * FEATURES} 50 its", "torch loop (sync/it)",
               lambda: ops.cg_ce_head(feats, probs, b, 0.05, 0.0, 50).x,
               lambda: reference.cg_ce_head(feats, probs, b, 0.05, 0.0, 50).x, norm_check=True,
               flops=8.0 * TASKS * 50 * n * WAYS * FEATURES)


def dense_cases(cfg: BenchConfig) -> Iterator[Case]:
    device = cfg.device
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(TASKS, DENSE_Q, DENSE_Q, generator=gen) / DENSE_Q**0.5
    a = (m @ m.mT / 2 + 0.5 * torch.eye(DENSE_Q)).to(device)
    b = torch.randn(TASKS, 1, DENSE_Q, device=device)
    scale = torch.full((TASKS,), 4.0, dtype=torch.float64, device=device)
    streamed = TASKS * DENSE_Q**2 * F32  # the operators, read once per product
    yield Case("neumann_dense", f"T={TASKS} q={DENSE_Q} {TERMS} terms", "torch loop",
               lambda: ops.neumann_dense(a, b, TERMS, scale, 0.1), lambda: reference.neumann_dense(a, b, TERMS, scale, 0.1),
               norm_check=True, flops=2.0 * TASKS * TERMS * DENSE_Q**2, bytes=TERMS * streamed)
    yield Case("cg_dense", f"T={TASKS} q={DENSE_Q} 50 its", "torch loop (sync/it)",
               lambda: ops.cg_dense(a, b, 0.1, 0.0, 50).x, lambda: reference.cg_dense(a, b, 0.1, 0.0, 50).x,
               norm_check=True, flops=2.0 * TASKS * 50 * DENSE_Q**2, bytes=50 * streamed)
    jac = torch.randn(TASKS, WAYS * SHOTS, WAYS, DENSE_Q, device=device) / DENSE_Q**0.5
    feats, probs = _head(device)
    v = torch.randn(TASKS, 4, DENSE_Q, device=device)
    yield Case("ggn_hvp", f"T={TASKS} n=25 C=5 P={DENSE_Q} B=4", "torch composition",
               lambda: ops.ggn_hvp(jac, probs, v, 0.1), lambda: reference.ggn_hvp(jac, probs, v, 0.1),
               flops=4.0 * 4 * jac.numel(), bytes=jac.numel() * F32)


def kfe_cases(cfg: BenchConfig) -> Iterator[Case]:
    device, d = cfg.device, 4096
    q_out, q_in = (torch.linalg.qr(torch.randn(d, d, device=device))[0] for _ in range(2))
    eig = torch.rand(d, d, device=device) + 0.1
    for batch in (1, 8):
        grads = torch.randn(batch, d, d, device=device)
        flops = 8.0 * batch * d**3

        def gemms(g=grads):  # the four rotations alone: what cuBLAS needs at the least
            return q_out @ ((q_out.T @ g @ q_in)) @ q_in.T

        yield Case("kfe_ihvp", f"d={d} B={batch}", "torch composition",
                   lambda g=grads: ops.kfe_ihvp(g, q_out, q_in, eig, 0.01),
                   lambda g=grads: reference.kfe_ihvp(g, q_out, q_in, eig, 0.01), flops=flops)
        yield Case("kfe_ihvp", f"d={d} B={batch} vs bound", "its 4 GEMMs alone",
                   lambda g=grads: ops.kfe_ihvp(g, q_out, q_in, eig, 0.01), gemms, flops=flops,
                   note="speed-up = share of the cuBLAS bound reached")
    og, acts = torch.randn(64, 49, 64, device=device), torch.randn(64, 49, 577, device=device)
    qo, qi = torch.linalg.qr(torch.randn(64, 64, device=device))[0], torch.linalg.qr(torch.randn(577, 577, device=device))[0]
    yield Case("kfe_eigvals", "conv n=64 t=49 64x577", "einsum + matmul",
               lambda: ops.kfe_eigvals(og, acts, qo, qi), lambda: reference.kfe_eigvals(og, acts, qo, qi))


def patch_cases(cfg: BenchConfig) -> Iterator[Case]:
    device, n = cfg.device, 1000
    x = torch.randn(n, 1, 28, 28, device=device)
    cols = torch.cat([torch.nn.functional.unfold(x, 3, padding=1).mT, torch.ones(n, 784, 1, device=device)], 2).contiguous()
    z = torch.randn(n, 64, 28, 28, device=device)
    index = torch.nn.functional.max_pool2d(z, 2, return_indices=True)[1].flatten(2).mT.contiguous()
    mask = (torch.rand(index.shape, device=device) > 0.5).float()
    weight, signal = torch.randn(64, 10, device=device), torch.randn(index.shape, device=device)
    yield Case("gather_patch_matmul", f"Omniglot conv1 N={n}", "gather + matmul",
               lambda: ops.gather_patch_matmul(cols, index, mask, weight),
               lambda: reference.gather_patch_matmul(cols, index, mask, weight), flops=2.0 * index.numel() * 10)
    yield Case("gather_patch_matmul_t", f"Omniglot conv1 N={n}", "gather + matmul",
               lambda: ops.gather_patch_matmul_t(cols, index, mask, signal),
               lambda: reference.gather_patch_matmul_t(cols, index, mask, signal), flops=2.0 * index.numel() * 10)


def _cpu_total_hvp_ms(tasks: int) -> float | None:
    """Our 1-thread CPU time of the same product (benchmarks/scale.json), when recorded."""
    try:
        rows = json.loads(CPU_SCALE_RESULTS.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    found = [r["metaif_ms"] for r in rows if r["op"] == "total_hvp" and r["case"] == f"m={tasks}"]
    return found[0] if found else None


def pipeline_cases(cfg: BenchConfig) -> Iterator[Case]:
    if cfg.root is None:
        return
    pool = split_classes(load_omniglot(cfg.root), 0.5, seed=0)[0]
    problem = AnilProblem(conv4(1, 64, 28), AnilConfig(ways=5))
    lam = problem.init_lambda(0).to(cfg.device)
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=200, seed=0))
    began = time.perf_counter()
    analyzer = InfluenceAnalyzer(problem, lam, tasks)
    torch.cuda.synchronize(cfg.device)
    setup = time.perf_counter() - began
    v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0)).to(cfg.device)
    cpu_ms = _cpu_total_hvp_ms(200)
    vs_cpu = f"; our 1-thread CPU time {cpu_ms:.0f} ms (benchmarks/scale.json)" if cpu_ms else ""
    yield Case("total_hvp", "Omniglot m=200 Conv-4 64", "", lambda: analyzer.hvp(v), None,
               note=f"exact, set-up {setup:.1f} s{vs_cpu}")


GPU_GROUPS = (head_cases, dense_cases, kfe_cases, patch_cases, pipeline_cases)


def gpu_cases(cfg: BenchConfig) -> Iterator[Case]:
    if torch.device(cfg.device).type != "cuda" or not ops.has_kernels(cfg.device):
        raise SystemExit("metaif bench --only gpu needs --device cuda and metaif built with its CUDA kernels")
    for group in GPU_GROUPS:
        yield from group(cfg)


gpu_cases.ops = ()  # selected by its alias only: the op names are the CPU groups' too
gpu_cases.aliases = ("gpu",)
gpu_cases.explicit = True
