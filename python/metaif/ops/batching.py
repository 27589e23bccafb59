"""``torch.func.vmap`` rules for the ops whose vmapped dimension maps onto a batch dimension they
already have, so that vmapping them runs one kernel call instead of PyTorch's slow per-example
fallback:

* the per-task ops (``ce_head_hvp``, ``ggn_hvp``, the four solvers) fold the vmapped dimension into
  their task dimension T (unbatched operator inputs are broadcast);
* ``kfe_ihvp`` folds it into the leading batch dimensions of ``grads`` when only ``grads`` is
  vmapped;
* ``gather_patch_matmul`` folds it into its image dimension N when ``weight`` is not vmapped.

Other combinations (a vmapped eigenbasis, kfe_eigvals' sum over examples, the adjoint's sum over
images) run the op once per vmapped slice, as the fallback would, but without its warning.
"""

from __future__ import annotations

import torch

__all__: list[str] = []


def _front(t: torch.Tensor | None, dim: int | None, size: int) -> torch.Tensor | None:
    """``t`` with the vmapped dimension first (broadcast when ``dim`` is None)."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _per_slice(op, info, in_dims, args):
    """The op once per vmapped slice (the fallback, without its warning)."""
    size = info.batch_size
    slices = [[a.movedim(d, 0)[i] if d is not None else a for a, d in zip(args, in_dims)] for i in range(size)]
    outs = [op(*s) for s in slices]
    if isinstance(outs[0], (tuple, list)):
        return tuple(torch.stack(parts) for parts in zip(*outs)), tuple(0 for _ in outs[0])
    return torch.stack(outs), 0


def _fold_tasks(op, positions: tuple[int, ...]):
    """A rule that folds the vmapped dimension into the task dimension (dim 0) of the tensor
    arguments at ``positions``."""
    def rule(info, in_dims, *args):
        size = info.batch_size
        args = list(args)
        tasks = None
        for i in positions:
            if args[i] is None:
                continue
            t = _front(args[i], in_dims[i], size)
            tasks = t.shape[1]
            args[i] = t.reshape(size * t.shape[1], *t.shape[2:])
        out = op(*args)

        def unfold(t):
            return t.view(size, tasks, *t.shape[1:])

        if isinstance(out, (tuple, list)):
            return tuple(unfold(t) for t in out), tuple(0 for _ in out)
        return unfold(out), 0

    return rule


def _kfe_ihvp_rule(info, in_dims, grads, q_out, q_in, eigvals, damping):
    op = torch.ops.metaif.kfe_ihvp.default
    if in_dims[1:4] == (None, None, None):
        return op(grads.movedim(in_dims[0], 0), q_out, q_in, eigvals, damping), 0
    return _per_slice(op, info, in_dims, (grads, q_out, q_in, eigvals, damping))


def _gather_rule(info, in_dims, cols, index, mask, weight):
    op = torch.ops.metaif.gather_patch_matmul.default
    if in_dims[3] is not None:
        return _per_slice(op, info, in_dims, (cols, index, mask, weight))
    size = info.batch_size
    parts = [_front(t, d, size) for t, d in zip((cols, index, mask), in_dims[:3])]
    images = parts[0].shape[1]
    out = op(*(p.reshape(size * images, *p.shape[2:]) for p in parts), weight)
    return out.view(size, images, *out.shape[1:]), 0


def _per_slice_rule(op):
    def rule(info, in_dims, *args):
        return _per_slice(op, info, in_dims, args)
    return rule


_lib = torch.ops.metaif
torch.library.register_vmap("metaif::ce_head_hvp", _fold_tasks(_lib.ce_head_hvp.default, (0, 1, 2, 4)))
torch.library.register_vmap("metaif::ggn_hvp", _fold_tasks(_lib.ggn_hvp.default, (0, 1, 2, 4)))
torch.library.register_vmap("metaif::neumann_dense", _fold_tasks(_lib.neumann_dense.default, (0, 1, 2)))
torch.library.register_vmap("metaif::neumann_ce_head", _fold_tasks(_lib.neumann_ce_head.default, (0, 1, 2, 3, 4)))
torch.library.register_vmap("metaif::cg_dense", _fold_tasks(_lib.cg_dense.default, (0, 1)))
torch.library.register_vmap("metaif::cg_ce_head", _fold_tasks(_lib.cg_ce_head.default, (0, 1, 2, 3)))
torch.library.register_vmap("metaif::kfe_ihvp", _kfe_ihvp_rule)
torch.library.register_vmap("metaif::gather_patch_matmul", _gather_rule)
torch.library.register_vmap("metaif::kfe_eigvals", _per_slice_rule(_lib.kfe_eigvals.default))
torch.library.register_vmap("metaif::gather_patch_matmul_t", _per_slice_rule(_lib.gather_patch_matmul_t.default))
