"""Steps that run a chain of nodes together, in less time or memory than node by node. The plan of
:mod:`.traced` puts one in wherever its chain (:data:`FUSIONS`, first match wins) appears in a body:

* a monotone activation (ReLU, LeakyReLU) before a max-pool commutes with it: pool the
  pre-activation and keep the activation's sign at the pooled resolution (a quarter of the state
  and of the elementwise work);
* a convolution of a constant input (the images) with few taps (``in_channels * kh * kw <= 64``,
  e.g. 3x3 on gray or RGB images) is a GEMM on the cached im2col, with a column of ones for the
  bias (so the bias costs no broadcast pass and its gradient comes out of the same GEMM): oneDNN is
  slow on so few input channels;
* such a convolution followed by a max-pool (with a monotone activation between, or none) is only
  ever read at the pool's arg-maxes: its tangent and weight gradient go through the compiled
  gathered-patch products (:mod:`metaif.ops.patches`) at the pooled resolution, without the
  full-resolution output (on the devices metaif has kernels for).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import has_kernels
from ..ops.patches import gather_patch_matmul, gather_patch_matmul_t
from .steps import ActivationStep, MaxPoolStep, Step

__all__ = ["FUSIONS", "ActivationPoolStep", "Fusion", "ImageConvStep", "PooledPatchesStep"]

Tensor = torch.Tensor
Maybe = Tensor | None
MONOTONE = (nn.ReLU, nn.LeakyReLU)


class ActivationPoolStep(Step):
    """A monotone activation, then a max-pool, run as the pool then the activation (they commute)."""

    def __init__(self, modules: list[nn.Module], params: dict[str, slice], buffers: dict[str, Tensor]) -> None:
        super().__init__(modules[0], params, buffers)
        self.act, self.pool = ActivationStep(modules[0], {}, {}), MaxPoolStep(modules[1], {}, {})

    def forward(self, inputs, lam):
        pool_state, pooled = self.pool.forward(inputs, lam)
        act_state, out = self.act.forward([pooled], lam)
        return (pool_state, act_state), out

    def tangent(self, state, dots, v):
        return self.act.tangent(state[1], [self.pool.tangent(state[0], dots, v)], v)

    def backward(self, state, signal, wants):
        if not wants[0]:
            return [None]
        return self.pool.backward(state[0], self.act.backward(state[1], signal, [True])[0], wants)


@dataclass
class _PatchState:
    cols: Tensor           # the im2col rows with a ones column: [N L, K + 1], or [N, L, K + 1] when pooled
    n: int                 # images
    out_hw: tuple[int, int]  # the convolution's output size
    index: Maybe = None    # [N, P, C] the pool's arg-maxes (rows of cols)
    mask: Maybe = None     # [N, P, C] the activation's derivative there
    pooled: tuple[int, int] | None = None  # the pool's output size


class ImageConvStep(Step):
    """A convolution of a constant input with few taps, as a GEMM on its cached im2col."""

    def __init__(self, modules: list[nn.Module], params: dict[str, slice], buffers: dict[str, Tensor]) -> None:
        super().__init__(modules[0], params, buffers)

    def _augmented(self, flat: Tensor) -> Tensor:
        """``[C, K + 1]``: the flattened weight with the bias as the column that meets the ones."""
        w, b = self.param("weight", flat), self.param("bias", flat)
        return torch.cat([w.flatten(1), (w.new_zeros(w.shape[0]) if b is None else b)[:, None]], 1)

    def _patches(self, x: Tensor) -> _PatchState:
        m = self.module
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)  # [N, L, K]
        size = tuple((x.shape[d + 2] + 2 * m.padding[d] - m.dilation[d] * (m.kernel_size[d] - 1) - 1)
                     // m.stride[d] + 1 for d in range(2))
        return _PatchState(torch.cat([cols, cols.new_ones(*cols.shape[:2], 1)], 2), x.shape[0], size)

    def _image(self, state: _PatchState, rows: Tensor, size: tuple[int, int]) -> Tensor:
        """``[N * h * w, C]`` or ``[N, h * w, C]`` rows as a channels-last ``[N, C, h, w]`` view."""
        return rows.view(state.n, *size, -1).permute(0, 3, 1, 2)

    def _add_gradient(self, grad: Tensor, both: Tensor) -> None:
        """Add the ``[C, K + 1]`` gradient of the augmented weight into ``grad``."""
        self.accumulate(grad, "weight", both[:, :-1])
        if "bias" in self.params:
            self.accumulate(grad, "bias", both[:, -1])

    def forward(self, inputs, lam):
        state = self._patches(inputs[0])
        state.cols = state.cols.flatten(0, 1)
        return state, self.tangent(state, [None], lam)

    def tangent(self, state, dots, v):
        return self._image(state, state.cols @ self._augmented(v).T, state.out_hw)

    def backward(self, state, signal, wants):
        return [None]  # the input is constant

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        self._add_gradient(grad, zeta.permute(0, 2, 3, 1).reshape(-1, zeta.shape[1]).T @ state.cols)
        return [None]


class PooledPatchesStep(ImageConvStep):
    """An :class:`ImageConvStep` with the (monotone activation and) max-pool after it, read only at
    the pool's arg-maxes through the gathered-patch kernels."""

    def __init__(self, modules: list[nn.Module], params: dict[str, slice], buffers: dict[str, Tensor]) -> None:
        super().__init__(modules, params, buffers)
        self.act = modules[1] if len(modules) == 3 else None
        self.pool = modules[-1]

    def forward(self, inputs, lam):
        state = self._patches(inputs[0])
        z = self._image(state, state.cols @ self._augmented(lam).T, state.out_hw)
        m = self.pool
        out, index = F.max_pool2d(z, m.kernel_size, m.stride, m.padding, return_indices=True)
        if self.act is None:
            mask = torch.ones_like(out)
        else:  # the activation's derivative at the pooled pre-activation
            slope = out.new_full((), getattr(self.act, "negative_slope", 0.0))
            mask = torch.where(out > 0, out.new_ones(()), slope)
        state.pooled = tuple(out.shape[2:])
        state.index, state.mask = (t.permute(0, 2, 3, 1).reshape(state.n, -1, out.shape[1]) for t in (index, mask))
        return state, out * mask

    def tangent(self, state, dots, v):
        return self._image(state, gather_patch_matmul(state.cols, state.index, state.mask, self._augmented(v)),
                           state.pooled)

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        signal = zeta.permute(0, 2, 3, 1).reshape(state.n, -1, zeta.shape[1])
        self._add_gradient(grad, gather_patch_matmul_t(state.cols, state.index, state.mask, signal))
        return [None]


def _few_taps(conv: nn.Module, constant_input: bool) -> bool:
    return constant_input and conv.groups == 1 and conv.weight[0].numel() <= 64


@dataclass(frozen=True)
class Fusion:
    """A chain of nodes one step replaces: ``chain[k]`` the module types node ``k`` may be (each node
    but the last read by the next alone; only the first with parameters); ``applies(modules, lam,
    constant_input)`` any further condition; ``step`` built from the chain's modules."""

    chain: tuple[tuple[type[nn.Module], ...], ...]
    step: type[Step]
    applies: Callable[[list[nn.Module], Tensor, bool], bool]


FUSIONS: list[Fusion] = [
    Fusion(((nn.Conv2d,), MONOTONE, (nn.MaxPool2d,)), PooledPatchesStep,
           lambda mods, lam, constant: _few_taps(mods[0], constant) and has_kernels(lam.device)),
    Fusion(((nn.Conv2d,), (nn.MaxPool2d,)), PooledPatchesStep,
           lambda mods, lam, constant: _few_taps(mods[0], constant) and has_kernels(lam.device)),
    Fusion(((nn.Conv2d,),), ImageConvStep, lambda mods, lam, constant: _few_taps(mods[0], constant)),
    Fusion((MONOTONE, (nn.MaxPool2d,)), ActivationPoolStep, lambda mods, lam, constant: True),
]
