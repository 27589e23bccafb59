"""Typed wrappers over the compiled ``torch.ops.metaif`` kernels, with fake kernels and autograd.

Every op has a pure-PyTorch twin with the same signature in :mod:`metaif.reference`.
"""

import torch

from . import batching  # noqa: F401  (vmap rules)
from .exact import exact_add, exact_value
from .hvp import ce_head_hvp, ggn_hvp
from .kfe import kfe_eigvals, kfe_ihvp, kfe_ihvp_grouped
from .patches import gather_patch_matmul, gather_patch_matmul_t
from .solvers import CGResult, cg_ce_head, cg_dense, neumann_ce_head, neumann_dense


def has_kernels(device: torch.device | str) -> bool:
    """Whether this build of metaif has its compiled kernels for ``device``'s type ("cpu" always;
    "cuda" when it was built against a CUDA-enabled torch with nvcc)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("metaif::cg_dense", key)


__all__ = ["CGResult", "has_kernels", "ce_head_hvp", "exact_add", "exact_value", "cg_ce_head", "cg_dense",
           "gather_patch_matmul", "gather_patch_matmul_t", "ggn_hvp", "kfe_eigvals", "kfe_ihvp", "kfe_ihvp_grouped",
           "neumann_ce_head", "neumann_dense"]
