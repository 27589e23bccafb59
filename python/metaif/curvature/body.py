"""What every set of body passes shares: the autograd passes (any body) and the helpers of the
hand-written ones (:mod:`.traced`): derivatives of smooth activations, the adjoints of a convolution
or linear layer, and the bytes of kept state.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn
from torch.func import grad, jvp

from ..models.nets import FlatModel

_CHANNELS_LAST = torch.channels_last


def smooth_derivatives(z: torch.Tensor, module: nn.Tanh | nn.Softplus) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma'(z), sigma''(z))`` of a smooth activation ``module``."""
    if isinstance(module, nn.Tanh):
        t = torch.tanh(z)
        d1 = 1 - t * t
        return d1, -2 * t * d1
    s = torch.sigmoid(module.beta * z)
    linear = module.beta * z > module.threshold  # torch's softplus is the identity there
    d1 = torch.where(linear, torch.ones_like(s), s)
    d2 = torch.where(linear, torch.zeros_like(s), module.beta * s * (1 - s))
    return d1, d2


def affine_backward(module: nn.Conv2d | nn.Linear, out_grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                    need_input: bool, need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(input gradient, weight gradient) of ``<out_grad, module(x) at weight w>`` (no bias)."""
    if not isinstance(module, nn.Conv2d):
        gi = out_grad @ w if need_input else None
        gw = out_grad.flatten(0, -2).T @ x.flatten(0, -2) if need_weight else None
        return gi, gw
    gi, gw, _ = torch.ops.aten.convolution_backward(
        out_grad.contiguous(memory_format=_CHANNELS_LAST), x.contiguous(memory_format=_CHANNELS_LAST), w,
        None, module.stride, module.padding, module.dilation, False, [0, 0], module.groups,
        [need_input, need_weight, False])
    return gi, gw


def storage_bytes(tensors, inputs: tuple[torch.Tensor, ...] = ()) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once), not
    counting those of ``inputs`` (the images and lambda, which the caller holds anyway)."""
    theirs = {t.untyped_storage().data_ptr() for t in inputs}
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(size for pointer, size in seen.items() if pointer not in theirs)


def tensors_in(obj):
    """Every tensor in nested dicts, lists, tuples and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield from tensors_in(vars(obj))
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_in(value)


class AutogradPasses:
    """The same interface for any body, by autograd. The body's gradient graph ``J^T (g + u)`` is
    built once by :meth:`cotangent` and kept: each later product is one backward through it, whose
    u-branch also gives :meth:`tangent`."""

    tangent_reads_g = True  # once g is given, J v comes out of g's graph (other bits than a jvp)
    terms_in_tangent = False  # the second-order pull is one backward through g's graph, not split

    def __init__(self, model: FlatModel, lam: torch.Tensor, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self._leaf = lam.detach().requires_grad_(True)
        with torch.no_grad():
            self.phi = model(self._leaf.detach(), x)
        self._graph: tuple | None = None  # (phi, J^T (g + u), u)
        self._graph_bytes = 0
        # the same body's passes at the same lambda on other inputs (holds none of this state)
        self.factory = functools.partial(AutogradPasses, model, lam)

    def kept_bytes(self) -> int:
        """Bytes of the features and of the tensors the kept gradient graph saved."""
        return storage_bytes([self.phi]) + self._graph_bytes

    def cotangent(self, g: torch.Tensor) -> None:
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            u = torch.zeros_like(g, requires_grad=True)
            phi = self.model(self._leaf, self.x)
            h = torch.autograd.grad(((g + u) * phi).sum(), self._leaf, create_graph=True)[0]
        self._graph, self._graph_bytes = (phi, h, u), storage_bytes(saved, (self.x, self._leaf))

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        if self._graph is not None:
            _, h, u = self._graph
            return torch.autograd.grad((h * v).sum(), u, retain_graph=True)[0]
        return jvp(lambda la: self.model(la, self.x), (self._leaf.detach(),), (v,))[1]

    def pull(self, m: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if v is None:
            return grad(lambda la: (m * self.model(la, self.x)).sum())(self._leaf.detach())
        if self._graph is None:
            raise RuntimeError("call cotangent(g) before a second-order pull")
        phi, h, _ = self._graph
        return torch.autograd.grad((h * v).sum() + (m * phi).sum(), self._leaf, retain_graph=True)[0]
