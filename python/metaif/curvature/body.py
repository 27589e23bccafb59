"""Hand-written tangent and second-order pull-back passes of a sequential body.

A total-Hessian product of form (b) needs, for one direction ``v [P]`` and every image:

* the feature tangent ``phi' = J v``, and
* the pull-back ``J^T m + d/dlambda <g, J v>``, where ``g`` (the feature gradient of the
  Lagrangian at lambda*) is the same for every product of a solve.

Autograd gets the second term by differentiating its own backward graph, which re-runs every
convolution's double-backward rule. Written out layer by layer it is cheaper: the forward state
(inputs, activation masks, pooling indices) and the backward signal ``delta`` of ``g`` are computed
once; a product is then one tangent pass (``z' = conv(a', W) + conv(a, W')``) and one backward pass
(``wgrad(a, zeta) + wgrad(a', delta)``, ``igrad(zeta, W) + igrad(delta, W')``), the convolutions
channels-last (oneDNN's fast layout on CPU). A ReLU next to a max-pool is handled at the pooled
resolution, and the first convolution is fused with the pool after it (on every device metaif has
kernels for): its output is read only at the arg-maxes, through the compiled gathered-patch
products on the cached im2col
(:mod:`metaif.ops.patches`).

Supported modules: ``Conv2d`` (zero padding), ``Linear``, ``ReLU``, ``Tanh``, ``Softplus``,
``MaxPool2d`` (no ceil mode, no dilation), ``Flatten``. :func:`supports` says whether a model
qualifies; the autograd path serves every other body.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jvp

from ..models.nets import FlatModel
from ..ops import has_kernels
from ..ops.patches import gather_patch_matmul, gather_patch_matmul_t
from ..utils.seen import SeenTensor

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


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.MaxPool2d):
        return not module.ceil_mode and module.dilation in (1, (1, 1)) and not module.return_indices
    return isinstance(module, (nn.Linear, nn.ReLU, nn.Tanh, nn.Softplus, nn.Flatten))


def supports(model: FlatModel) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` of the modules these passes know."""
    return unsupported(model) is None


def unsupported(model: FlatModel) -> str | None:
    """What keeps ``model`` off these passes (the first module they have no rule for), ``None`` when
    nothing does."""
    if not isinstance(model.module, nn.Sequential):
        return f"the body is a {type(model.module).__name__}, not an nn.Sequential"
    for name, module in model.module.named_children():
        if not _supported(module):
            return f"module {name} ({type(module).__name__})"
    return None




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


class _Affine:
    """A ``Conv2d`` or ``Linear`` whose weight and bias sit at slices of the flat vector.

    Convolutions keep their tensors channels-last (oneDNN's fast layout on CPU). A first layer
    with few input taps (``in_channels * kh * kw <= 64``, e.g. 3x3 on gray or RGB images) is a
    GEMM on the cached im2col of the data, with a column of ones for the bias (so the bias costs
    no broadcast pass and its gradient comes out of the same GEMM): oneDNN is slow on so few
    input channels.
    """

    def __init__(self, module: nn.Module, weight: slice, bias: slice | None, first: bool) -> None:
        self.module, self.weight, self.bias, self.first = module, weight, bias, first
        self.conv = isinstance(module, nn.Conv2d)
        self.im2col = self.conv and first and module.groups == 1 and \
            module.weight[0].numel() <= 64

    def params(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = flat[self.weight].view(self.module.weight.shape)
        return w, None if self.bias is None else flat[self.bias]

    @staticmethod
    def _augmented(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """``[C, K + 1]``: the flattened weight with the bias as the column that meets the
        im2col's ones column."""
        return torch.cat([w.flatten(1), (w.new_zeros(w.shape[0]) if b is None else b)[:, None]], 1)

    def prepare(self, st: dict, x: torch.Tensor) -> None:
        if self.im2col:
            m = self.module
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, K, L]
            size = [(x.shape[d + 2] + 2 * m.padding[d] - m.dilation[d] * (m.kernel_size[d] - 1) - 1)
                    // m.stride[d] + 1 for d in range(2)]
            cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            st["cols"] = torch.cat([cols, cols.new_ones(cols.shape[0], 1)], 1)  # [N L, K + 1]
            st["out_hw"], st["n"] = size, x.shape[0]
        else:
            st["x"] = x.contiguous(memory_format=_CHANNELS_LAST) if self.conv else x

    def apply(self, st: dict, x: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer at weights ``(w, b)`` on ``x`` (``None``: the cached input)."""
        if self.im2col:
            out = st["cols"] @ self._augmented(w, b).T
            return out.view(st["n"], *st["out_hw"], -1).permute(0, 3, 1, 2)
        x = st["x"] if x is None else x
        if not self.conv:
            return F.linear(x, w, b)
        m = self.module
        return F.conv2d(x.contiguous(memory_format=_CHANNELS_LAST), w, b, m.stride, m.padding, m.dilation, m.groups)

    def tangent(self, st: dict, h: torch.Tensor | None, w_dot: torch.Tensor, b_dot: torch.Tensor | None) -> torch.Tensor:
        """``z' = apply(h, W) + apply(x, W') + b'``."""
        out = self.apply(st, None, w_dot, b_dot)
        return out if h is None else out + self.apply(st, h, st["w"], None)

    def pull(self, st: dict, zeta: torch.Tensor, h_dot: torch.Tensor | None,
             w_dot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(weight gradient, bias gradient, input signal) of ``<zeta, z> + <delta, z'>``:
        ``wgrad(x, zeta) + wgrad(h', delta)``, ``sum zeta`` and ``igrad(zeta, W) + igrad(delta, W')``;
        without ``h'`` and ``W'`` (a first-order pull) the delta terms drop."""
        w = st["w"]
        if self.im2col:
            both = zeta.permute(0, 2, 3, 1).reshape(-1, zeta.shape[1]).T @ st["cols"]
            return both[:, :-1].reshape(w.shape), None if self.bias is None else both[:, -1], None
        gb = None if self.bias is None else zeta.sum(dim=[d for d in range(zeta.dim()) if d != 1])
        below = not self.first
        gi, gw = self._backward(zeta, st["x"], w, below, True)
        if h_dot is not None:
            gw = gw + self._backward(st["delta"], h_dot, w, False, True)[1]
        if below and w_dot is not None:
            gi = gi + self._backward(st["delta"], st["x"], w_dot, True, False)[0]
        return gw, gb, gi

    def backward_input(self, st: dict, signal: torch.Tensor) -> torch.Tensor:
        return self._backward(signal, st["x"], st["w"], True, False)[0]

    def _backward(self, out_grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                  need_input: bool, need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(input gradient, weight gradient) of ``<out_grad, apply(x, w)>``."""
        return affine_backward(self.module, out_grad, x, w, need_input, need_weight)


class _PooledPatches(_Affine):
    """The first convolution fused with the (ReLU and) max-pool after it: its outputs are only
    ever read at the pooling arg-maxes, so the tangent and the weight gradient go through the
    compiled gathered-patch products (:mod:`metaif.ops.patches`) on the cached im2col, at the
    pooled resolution, without the full-resolution layer output."""

    def __init__(self, conv: _Affine, pool: nn.MaxPool2d, relu: bool) -> None:
        super().__init__(conv.module, conv.weight, conv.bias, first=True)
        self.pool, self.relu = pool, relu

    def prepare(self, st: dict, x: torch.Tensor) -> None:
        super().prepare(st, x)
        st["cols"] = st["cols"].view(st["n"], -1, st["cols"].shape[1])  # [N, L, K + 1]

    def apply(self, st: dict, x: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n, (h, wd) = st["n"], st["out_hw"]
        z = (st["cols"] @ self._augmented(w, b).T).view(n, h, wd, -1).permute(0, 3, 1, 2)
        m = self.pool
        out, idx = F.max_pool2d(z, m.kernel_size, m.stride, m.padding, return_indices=True)
        mask = (out > 0).to(out) if self.relu else torch.ones_like(out)
        st["pooled"] = out.shape[2:]
        st["index"] = idx.permute(0, 2, 3, 1).reshape(n, -1, out.shape[1])  # [N, P, C]
        st["mask"] = mask.permute(0, 2, 3, 1).reshape(n, -1, out.shape[1])
        return out * mask

    def _to_image(self, st: dict, t: torch.Tensor) -> torch.Tensor:
        """``[N, P, C]`` → channels-last ``[N, C, Ph, Pw]`` (a view)."""
        return t.view(st["n"], *st["pooled"], -1).permute(0, 3, 1, 2)

    def tangent(self, st: dict, h: torch.Tensor | None, w_dot: torch.Tensor, b_dot: torch.Tensor | None) -> torch.Tensor:
        return self._to_image(st, gather_patch_matmul(st["cols"], st["index"], st["mask"], self._augmented(w_dot, b_dot)))

    def pull(self, st: dict, zeta: torch.Tensor, h_dot: torch.Tensor | None,
             w_dot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        signal = zeta.permute(0, 2, 3, 1).reshape(st["n"], -1, zeta.shape[1])
        both = gather_patch_matmul_t(st["cols"], st["index"], st["mask"], signal)
        return both[:, :-1].reshape(st["w"].shape), None if self.bias is None else both[:, -1], None


class SecondOrderPasses:
    """Forward state of a :func:`supports`-ed body at ``lam`` on ``x [N, ...]``; :meth:`cotangent`
    caches the backward signal of ``g [N, out]``, then :meth:`tangent` and :meth:`pull` are the
    two passes of a product."""

    def __init__(self, model: FlatModel, lam: torch.Tensor, x: torch.Tensor) -> None:
        if not supports(model):
            raise ValueError("SecondOrderPasses needs an nn.Sequential of Conv2d/Linear/ReLU/Tanh/"
                             "Softplus/MaxPool2d/Flatten; use AutogradPasses for other bodies")
        self.lam, self.num_params = lam.detach(), model.num_params
        self._inputs = (x, lam)
        self.steps = self._plan(model, fuse_first=has_kernels(x.device))
        self.state: list[dict] = []
        h = x
        with torch.no_grad():
            for step in self.steps:
                h = self._forward(step, h)
        self.phi = h.contiguous()
        self._has_g = False
        self._tangents: list[torch.Tensor | None] | None = None
        self._tangent_v = SeenTensor()

    def cotangent(self, g: torch.Tensor) -> None:
        """Cache the backward signal of the fixed feature cotangent ``g [N, out]``."""
        signal = g.to(self.phi)
        # the pull needs delta at the outputs of later affine layers and of smooth activations;
        # at and below the first affine layer nothing is needed
        first = next(i for i, step in enumerate(self.steps) if isinstance(step, _Affine))
        with torch.no_grad():
            for i in range(len(self.steps) - 1, first, -1):
                step, st = self.steps[i], self.state[i]
                if isinstance(step, _Affine) or "d2" in st:
                    st["delta"] = signal
                if i > first + 1:
                    signal = step.backward_input(st, signal) if isinstance(step, _Affine) \
                        else self._linear_back(step, st, signal)
        self._has_g = True

    def kept_bytes(self) -> int:
        """Bytes of the per-image state these passes keep (forward state, the backward signal of
        ``g`` once given, the latest tangents)."""
        return storage_bytes(tensors_in([self.state, self.phi, self._tangents]), self._inputs)

    @staticmethod
    def _plan(model: FlatModel, fuse_first: bool) -> list:
        offsets, start = {}, 0
        for name, numel in zip(model.names, model.numels):
            offsets[name] = slice(start, start + numel)
            start += numel
        modules = list(model.module.named_children())
        steps, i, first = [], 0, True
        while i < len(modules):
            name, mod = modules[i]
            nxt = modules[i + 1][1] if i + 1 < len(modules) else None
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                steps.append(_Affine(mod, offsets[f"{name}.weight"], offsets.get(f"{name}.bias"), first))
                first = False
            elif isinstance(mod, nn.ReLU) and isinstance(nxt, nn.MaxPool2d) or \
                    isinstance(mod, nn.MaxPool2d) and isinstance(nxt, nn.ReLU):
                # relu and max commute: pool the pre-activation, mask at the pooled resolution
                steps.append(("relu_pool", nxt if isinstance(nxt, nn.MaxPool2d) else mod))
                i += 1
            elif isinstance(mod, nn.MaxPool2d):
                steps.append(("pool", mod))
            elif isinstance(mod, nn.Flatten):
                steps.append(("flatten", mod))
            else:
                steps.append(("act", mod))
            i += 1
        first = next((i for i, step in enumerate(steps) if isinstance(step, _Affine)), None)
        if fuse_first and first is not None and first + 1 < len(steps) and steps[first].im2col and \
                isinstance(steps[first + 1], tuple) and steps[first + 1][0] in ("relu_pool", "pool"):
            kind, pool = steps.pop(first + 1)
            steps[first] = _PooledPatches(steps[first], pool, kind == "relu_pool")
        return steps

    # ---- forward state and the backward signal of g (once) ----

    def _forward(self, step, h: torch.Tensor) -> torch.Tensor:
        st: dict = {}
        self.state.append(st)
        if isinstance(step, _Affine):
            step.prepare(st, h)
            st["w"], b = step.params(self.lam)
            return step.apply(st, None, st["w"], b)
        kind, mod = step
        st["shape"] = h.shape
        if kind in ("relu_pool", "pool"):
            out, idx = F.max_pool2d(h, mod.kernel_size, mod.stride, mod.padding, return_indices=True)
            st["index"], st["pooled"] = idx.flatten(2), out.shape[2:]
            if kind == "relu_pool":
                st["mask"] = (out > 0).to(h)
                out = out * st["mask"]
            return out
        if kind == "flatten":
            return h.flatten(mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.ReLU):
            st["d1"] = (h > 0).to(h)
            return h * st["d1"]
        st["d1"], st["d2"] = smooth_derivatives(h, mod)
        return mod(h)

    def _linear_back(self, step, st: dict, signal: torch.Tensor) -> torch.Tensor:
        """The first-order backward of a non-affine step (its Jacobian transposed)."""
        kind, _ = step
        if kind in ("relu_pool", "pool"):
            if kind == "relu_pool":
                signal = signal * st["mask"]
            out = torch.empty(st["shape"], dtype=signal.dtype, device=signal.device,
                              memory_format=_CHANNELS_LAST).zero_()
            out.flatten(2).scatter_add_(2, st["index"], signal.flatten(2))
            return out
        if kind == "flatten":
            return signal.view(st["shape"])
        return signal * st["d1"]

    # ---- the two passes of a product ----

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """``J v``, ``[N, out]``; the layer tangents are kept for the :meth:`pull` of the same ``v``."""
        tangents, h = [], None
        with torch.no_grad():
            for step, st in zip(self.steps, self.state):
                tangents.append(h)
                if h is not None or isinstance(step, _Affine):
                    h = self._tangent_step(step, st, h, v)
        self._tangents = tangents
        self._tangent_v.remember(v)
        return h

    def _tangent_step(self, step, st: dict, h: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        if isinstance(step, _Affine):
            return step.tangent(st, h, *step.params(v))
        kind, mod = step
        if kind in ("relu_pool", "pool"):
            out = torch.empty(h.shape[:2] + st["pooled"], dtype=h.dtype, device=h.device,
                              memory_format=_CHANNELS_LAST)
            torch.gather(h.flatten(2), 2, st["index"], out=out.flatten(2))
            return out * st["mask"] if kind == "relu_pool" else out
        if kind == "flatten":
            return h.flatten(mod.start_dim, mod.end_dim)
        return h * st["d1"]

    def pull(self, m: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """``J^T m``, plus ``d/dlambda <g, J v>`` when ``v`` is given, ``[P]``."""
        if v is not None:
            if not self._has_g:
                raise RuntimeError("call cotangent(g) before a second-order pull")
            if not self._tangent_v.matches(v):
                self.tangent(v)
        tangents = self._tangents if v is not None else [None] * len(self.steps)
        out = self.lam.new_zeros(self.num_params)
        zeta = m.to(self.phi)
        with torch.no_grad():
            for step, st, h_dot in zip(reversed(self.steps), reversed(self.state), reversed(tangents)):
                zeta = self._pull_step(step, st, h_dot, zeta, v, out)
                if zeta is None:
                    break
        return out

    def _pull_step(self, step, st: dict, h_dot, zeta: torch.Tensor, v: torch.Tensor, out: torch.Tensor):
        if isinstance(step, _Affine):
            gw, gb, below = step.pull(st, zeta, h_dot, None if v is None else step.params(v)[0])
            out[step.weight] += gw.flatten()
            if gb is not None:
                out[step.bias] += gb
            return below
        kind, _ = step
        below = self._linear_back(step, st, zeta)
        if v is not None and kind == "act" and "d2" in st:
            # the activation's own second-order term: delta * sigma''(z) * z'
            below = below + st["delta"] * st["d2"] * h_dot
        return below


class AutogradPasses:
    """The same interface for any body, by autograd. The body's gradient graph ``J^T (g + u)`` is
    built once by :meth:`cotangent` and kept: each later product is one backward through it, whose
    u-branch also gives :meth:`tangent`."""

    def __init__(self, model: FlatModel, lam: torch.Tensor, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self._leaf = lam.detach().requires_grad_(True)
        with torch.no_grad():
            self.phi = model(self._leaf.detach(), x)
        self._graph: tuple | None = None  # (phi, J^T (g + u), u)
        self._graph_bytes = 0

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
