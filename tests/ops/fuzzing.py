"""Generated cases for every op's contract: a valid input must match ``metaif.reference``; an
invalid one (a wrong rank, size, dtype or device in one argument, a bad number) must raise a
``RuntimeError`` / ``ValueError`` that names the argument. Used by ``tests/ops/test_fuzz.py``
(bounded, hypothesis) and by ``benchmarks/fuzz_ops.py`` (long runs, each case in a subprocess).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from metaif import ops, reference
from metaif.linalg import woodbury_solve

OUTCOMES = ("matched", "clean error", "wrong", "crash")


@dataclass
class Case:
    op: str
    call: Callable[[], object]
    expected: Callable[[], object] | None  # None: the call must raise
    argument: str | None                   # the argument an invalid case broke
    dtype: torch.dtype


def _tensor(rng, shape, dtype, kind="normal", contiguous=True):
    values = rng.standard_normal(shape) if kind == "normal" else rng.uniform(0.1, 1.0, shape)
    t = torch.as_tensor(values, dtype=torch.float64).to(dtype)
    if not contiguous and t.dim() >= 1 and t.shape[-1] > 0:
        storage = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=dtype)
        storage[..., ::2] = t
        t = storage[..., ::2]
    return t


def _spd(rng, tasks, q, dtype):
    m = rng.standard_normal((tasks, q, q)) / max(q, 1) ** 0.5
    return torch.as_tensor(m @ m.transpose(0, 2, 1) + 0.5 * np.eye(q), dtype=torch.float64).to(dtype)


def _orthogonal(rng, d, dtype):
    return torch.linalg.qr(torch.as_tensor(rng.standard_normal((d, d)), dtype=torch.float64))[0].to(dtype)


def _probs(rng, shape, dtype):
    return torch.softmax(torch.as_tensor(rng.standard_normal(shape), dtype=torch.float64), -1).to(dtype)


BREAKS = ("rank", "size", "dtype", "device")


def _broken(rng, args: dict, names: list[str]) -> tuple[dict, str]:
    """One tensor argument broken in one way."""
    name = names[rng.integers(len(names))]
    t = args[name]
    how = BREAKS[rng.integers(len(BREAKS))]
    if how == "rank":  # flattened (leading batch dimensions would still be valid for some ops)
        t = t.flatten() if t.dim() >= 2 else t[None]
    elif how == "size":  # every dimension one larger: the first one, at least, meets a constraint
        t = torch.zeros([s + 1 for s in t.shape], dtype=t.dtype)
    elif how == "dtype":
        t = t.to([torch.float16, torch.complex64, torch.int32][rng.integers(3)]) if t.dtype != torch.int64 else t.float()
    else:
        t = torch.empty(t.shape, dtype=t.dtype, device="meta")
    return {**args, name: t}, name


def kfe_ihvp_case(rng, valid, dtype):
    d_out, d_in, batch = rng.integers(1, 6), rng.integers(1, 6), rng.integers(0, 4)
    args = {"grads": _tensor(rng, (batch, d_out, d_in), dtype, contiguous=bool(rng.integers(2))),
            "q_out": _orthogonal(rng, d_out, dtype), "q_in": _orthogonal(rng, d_in, dtype),
            "eigvals": _tensor(rng, (d_out, d_in), dtype, "positive")}
    damping = float(rng.uniform(0, 1))
    name = None
    if not valid:
        if rng.integers(4) == 0:
            damping, name = [float("nan"), -1.0, float("inf")][rng.integers(3)], "damping"
        else:
            args, name = _broken(rng, args, list(args))
    return Case("kfe_ihvp", lambda: ops.kfe_ihvp(**args, damping=damping),
                (lambda: reference.kfe_ihvp(**args, damping=damping)) if valid else None, name, dtype)


def kfe_eigvals_case(rng, valid, dtype):
    n, t, d_out, d_in = rng.integers(0, 5), rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 5)
    args = {"out_grads": _tensor(rng, (n, t, d_out), dtype), "acts": _tensor(rng, (n, t, d_in), dtype),
            "q_out": _orthogonal(rng, d_out, dtype), "q_in": _orthogonal(rng, d_in, dtype),
            "weights": _tensor(rng, (n,), dtype, "positive")}
    name = None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("kfe_eigvals", lambda: ops.kfe_eigvals(**args),
                (lambda: reference.kfe_eigvals(**args)) if valid else None, name, dtype)


def _head(rng, dtype, batch_dims):
    tasks, n, d, classes = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 5), rng.integers(2, 4)
    return {"feats": _tensor(rng, (tasks, n, d), dtype, contiguous=bool(rng.integers(2))),
            "probs": _probs(rng, (tasks, n, classes), dtype),
            "weights": _tensor(rng, (tasks, n), dtype, "positive"),
            "vecs": _tensor(rng, (tasks, rng.integers(0, 3), classes, d), dtype)}


def ce_head_hvp_case(rng, valid, dtype):
    args, damping, name = _head(rng, dtype, 1), float(rng.uniform(0, 1)), None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("ce_head_hvp", lambda: ops.ce_head_hvp(**args, damping=damping),
                (lambda: reference.ce_head_hvp(**args, damping=damping)) if valid else None, name, dtype)


def ggn_hvp_case(rng, valid, dtype):
    tasks, n, classes, params = rng.integers(1, 4), rng.integers(1, 4), rng.integers(2, 4), rng.integers(1, 6)
    args = {"jac": _tensor(rng, (tasks, n, classes, params), dtype), "probs": _probs(rng, (tasks, n, classes), dtype),
            "vecs": _tensor(rng, (tasks, rng.integers(0, 3), params), dtype),
            "weights": _tensor(rng, (tasks, n), dtype, "positive")}
    damping, name = float(rng.uniform(0, 1)), None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("ggn_hvp", lambda: ops.ggn_hvp(**args, damping=damping),
                (lambda: reference.ggn_hvp(**args, damping=damping)) if valid else None, name, dtype)


def _dense_solver_args(rng, dtype):
    tasks, q = rng.integers(1, 4), rng.integers(1, 6)
    return {"a": _spd(rng, tasks, q, dtype), "b": _tensor(rng, (tasks, rng.integers(0, 3), q), dtype)}


def neumann_dense_case(rng, valid, dtype):
    args = _dense_solver_args(rng, dtype)
    lam_max = torch.linalg.eigvalsh(args["a"].double())[:, -1] if len(args["a"]) else torch.zeros(0)
    scale = (1.1 * lam_max + 0.2).double()
    iters, name = int(rng.integers(0, 8)), None
    if not valid:
        if rng.integers(3) == 0:
            iters, name = -1, "iters"
        else:
            args, name = _broken(rng, args, list(args))
    return Case("neumann_dense", lambda: ops.neumann_dense(**args, iters=iters, scale=scale, damping=0.1),
                (lambda: reference.neumann_dense(**args, iters=iters, scale=scale, damping=0.1)) if valid else None,
                name, dtype)


def cg_dense_case(rng, valid, dtype):
    args, name = _dense_solver_args(rng, dtype), None
    if not valid:
        args, name = _broken(rng, args, list(args))

    def solve():
        eye = torch.eye(args["a"].shape[-1], dtype=torch.float64)
        return torch.linalg.solve(args["a"].double() + 0.1 * eye, args["b"].double().mT).mT.to(dtype)

    return Case("cg_dense", lambda: ops.cg_dense(**args, damping=0.1, rtol=1e-10, maxiter=200).x,
                solve if valid else None, name, dtype)


def _ce_solver_args(rng, dtype):
    args = _head(rng, dtype, 1)
    args["b"] = args.pop("vecs")
    return args


def neumann_ce_head_case(rng, valid, dtype):
    args, iters, name = _ce_solver_args(rng, dtype), int(rng.integers(0, 6)), None
    scale = 2.0 + 2.0 * float(args["feats"].double().pow(2).sum(-1).max()) if args["feats"].numel() else 2.0
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("neumann_ce_head",
                lambda: ops.neumann_ce_head(**args, iters=iters, scale=scale, damping=0.2),
                (lambda: reference.neumann_ce_head(**args, iters=iters, scale=scale, damping=0.2)) if valid else None,
                name, dtype)


def cg_ce_head_case(rng, valid, dtype):
    args, name = _ce_solver_args(rng, dtype), None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("cg_ce_head", lambda: ops.cg_ce_head(**args, damping=0.2, rtol=1e-10, maxiter=500).x,
                (lambda: reference.cg_ce_head(**args, damping=0.2, rtol=1e-12, maxiter=500).x) if valid else None,
                name, dtype)


def _patch_args(rng, dtype):
    n, rows, taps, positions, channels = (rng.integers(0, 3), rng.integers(1, 6), rng.integers(1, 4),
                                          rng.integers(0, 4), rng.integers(1, 4))
    return {"cols": _tensor(rng, (n, rows, taps), dtype),
            "index": torch.as_tensor(rng.integers(0, rows, (n, positions, channels)), dtype=torch.int64),
            "mask": _tensor(rng, (n, positions, channels), dtype, "positive")}, taps, channels


def gather_patch_matmul_case(rng, valid, dtype):
    args, taps, channels = _patch_args(rng, dtype)
    args["weight"], name = _tensor(rng, (channels, taps), dtype), None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("gather_patch_matmul", lambda: ops.gather_patch_matmul(**args),
                (lambda: reference.gather_patch_matmul(**args)) if valid else None, name, dtype)


def gather_patch_matmul_t_case(rng, valid, dtype):
    args, _, _ = _patch_args(rng, dtype)
    args["signal"], name = _tensor(rng, args["index"].shape, dtype), None
    if not valid:
        args, name = _broken(rng, args, list(args))
    return Case("gather_patch_matmul_t", lambda: ops.gather_patch_matmul_t(**args),
                (lambda: reference.gather_patch_matmul_t(**args)) if valid else None, name, dtype)


def woodbury_case(rng, valid, dtype):
    tasks, params, rank = rng.integers(1, 4), rng.integers(1, 6), rng.integers(0, 4)
    args = {"u": _tensor(rng, (tasks, params, rank), dtype), "v": _tensor(rng, (tasks, rng.integers(0, 3), params), dtype)}
    damping, name = float(rng.uniform(0.1, 1)), None
    if not valid:
        if rng.integers(4) == 0:
            damping, name = [0.0, float("nan"), -1.0][rng.integers(3)], "damping"
        else:
            args, name = _broken(rng, args, list(args))
    return Case("woodbury_solve", lambda: woodbury_solve(**args, damping=damping),
                (lambda: reference.woodbury_solve(**args, damping=damping)) if valid else None, name, dtype)


GENERATORS = {"kfe_ihvp": kfe_ihvp_case, "kfe_eigvals": kfe_eigvals_case, "ce_head_hvp": ce_head_hvp_case,
              "ggn_hvp": ggn_hvp_case, "neumann_dense": neumann_dense_case, "cg_dense": cg_dense_case,
              "neumann_ce_head": neumann_ce_head_case, "cg_ce_head": cg_ce_head_case,
              "gather_patch_matmul": gather_patch_matmul_case, "gather_patch_matmul_t": gather_patch_matmul_t_case,
              "woodbury_solve": woodbury_case}


def make_case(op: str, seed: int) -> Case:
    """The case of ``seed``: valid two times in three, float32 or float64."""
    rng = np.random.default_rng(seed)
    valid = rng.integers(3) > 0
    dtype = (torch.float32, torch.float64)[rng.integers(2)]
    return GENERATORS[op](rng, valid, dtype)


def outcome(case: Case) -> tuple[str, str]:
    """``(outcome, detail)``: matched, clean error (names the op or the argument), or wrong."""
    try:
        got = case.call()
    except (RuntimeError, ValueError) as err:
        if case.expected is not None:
            return "wrong", f"a valid input raised: {err}"
        message = str(err)
        named = case.op in message or (case.argument is not None and case.argument in message)
        return ("clean error", message.splitlines()[0]) if named else ("wrong", f"unnamed error: {message[:200]}")
    except Exception as err:  # noqa: BLE001  an error of the wrong kind is a wrong answer
        return "wrong", f"{type(err).__name__}: {err}"
    if case.expected is None:
        return "wrong", f"accepted an invalid {case.argument}"
    want = case.expected()
    tol = dict(rtol=1e-8, atol=1e-8) if case.dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    got_list = list(got) if isinstance(got, (list, tuple)) else [got]
    want_list = list(want) if isinstance(want, (list, tuple)) else [want]
    for g, w in zip(got_list, want_list):
        if g.shape != w.shape or not torch.allclose(g.double(), w.double(), **tol):
            return "wrong", f"differs from the reference by {float((g.double() - w.double()).abs().max()):.3g}"
    return "matched", ""
