"""The rules of one node of a traced body (:mod:`.traced`), one registered class per module type.

A product of the total Hessian needs, per image, the feature tangent ``J v`` and the pull-back
``J^T m + d/dlambda <g, J v>`` (``g`` the fixed feature cotangent of a solve). Each :class:`Step` says
how its node keeps what those passes read (its forward state), moves a tangent forward, moves an
adjoint back, and adds its own second-order term, the derivative of ``<delta, out'>`` (``delta``: g's
backward signal at the node's output):

* bilinear in (input, parameters) — convolution, linear, batch norm: ``d/dx <delta, f(x, W')>``
  to the input and ``d/dW <delta, f(x', W)>`` to the parameters;
* a smooth elementwise activation: ``delta * sigma''(x) * x'``;
* everything piecewise linear (ReLU, LeakyReLU, pooling, addition, flatten): none.

A module type gets these passes by one registered class (:func:`register_step`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.seen import SeenTensor
from .body import affine_backward, smooth_derivatives

__all__ = ["STEPS", "ActivationStep", "MaxPoolStep", "Step", "register_step"]

Tensor = torch.Tensor
Maybe = Tensor | None

STEPS: dict[object, type[Step]] = {}  # module type or function -> its rules


def register_step(*kinds: object):
    """Register a :class:`Step` class for module types (or functions such as ``operator.add``)."""
    def add(cls: type[Step]) -> type[Step]:
        for kind in kinds:
            STEPS[kind] = cls
        return cls
    return add


class Step:
    """One node's rules. ``params`` maps the module's parameter names to their slices of the flat
    vector; ``buffers`` its frozen floating-point buffers (in lambda's dtype). Each method sees the
    state its :meth:`forward` returned."""

    uses_delta = False  # whether the second-order terms read g's backward signal at the output
    reads_input_tangent = False  # whether pull's second-order term reads the input's tangent
    has_tangent_terms = False  # whether tangent_terms adds anything
    cheap_adjoint = True  # whether backward is elementwise-cheap (then g's signal below it is derived, not kept)

    def __init__(self, module: nn.Module | None, params: dict[str, slice], buffers: dict[str, Tensor]) -> None:
        self.module, self.params, self.buffers = module, params, buffers

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        """Why this module cannot take these passes (``None``: it can)."""
        return None

    def param(self, name: str, flat: Tensor) -> Maybe:
        """The parameter ``name`` of the module read from ``flat`` (lambda or a direction)."""
        where = self.params.get(name)
        return None if where is None else flat[where].view(getattr(self.module, name).shape)

    def shared(self) -> list[Tensor]:
        """Tensors the step keeps for every batch of inputs (not per-input state)."""
        return []

    def accumulate(self, grad: Tensor, name: str, value: Tensor) -> None:
        """Add ``value`` (parameter ``name``'s gradient, any layout) into its slice of ``grad``, in place."""
        grad[self.params[name]].view(value.shape).add_(value)

    def forward(self, inputs: list[Tensor], lam: Tensor) -> tuple[object, Tensor]:
        """(the state the other rules read, the output) of the node on ``inputs`` at ``lam``."""
        raise NotImplementedError

    def tangent(self, state, dots: list[Maybe], v: Tensor) -> Maybe:
        """The output tangent from the inputs' tangents (``None``: does not depend on lambda)."""
        raise NotImplementedError

    def backward(self, state, signal: Tensor, wants: list[bool]) -> list[Maybe]:
        """The first-order adjoint of ``signal`` to each input that ``wants`` one."""
        raise NotImplementedError

    def tangent_terms(self, state, dots: list[Maybe], delta: Tensor, grad: Tensor) -> None:
        """Add the parameter part of ``d/dlambda <delta, out'>`` that reads the inputs' tangents
        ``dots`` into ``grad [P]``. The passes run it in the tangent pass, where the tangents are at
        hand, so that they need not be kept for the pull (:attr:`has_tangent_terms`)."""

    def pull(self, state, zeta: Tensor, dots: list[Maybe], delta: Maybe, v: Maybe, grad: Tensor,
             wants: list[bool]) -> list[Maybe]:
        """Add the parameter part of ``<zeta, out>`` and the rest of ``d/dlambda <delta, out'>`` (when
        ``v`` is given) into ``grad [P]``; return their input parts."""
        return self.backward(state, zeta, wants)


@dataclass
class _AffineState:
    x: Tensor          # the input
    w: Tensor          # the weight at lambda (the step's, shared by every batch of inputs)


@register_step(nn.Conv2d, nn.Linear)
class AffineStep(Step):
    """``Conv2d`` (zero padding) and ``Linear``: bilinear in (input, weight), plus a bias."""

    uses_delta = has_tangent_terms = True
    cheap_adjoint = False

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or not isinstance(module.padding, tuple)):
            return "padding other than zeros"
        return None

    def __init__(self, module: nn.Module | None, params: dict[str, slice], buffers: dict[str, Tensor]) -> None:
        super().__init__(module, params, buffers)
        self._weights: list[tuple[SeenTensor, Tensor]] = []  # most recently used first

    def weight(self, flat: Tensor) -> Tensor:
        """The weight in ``flat``; a convolution's channels-last (oneDNN converts it to that layout
        inside every call otherwise, up to 2.5x the time of a deep layer on a few images), kept for
        the last two vectors seen: lambda and the direction of the current product."""
        for k, (seen, w) in enumerate(self._weights):
            if seen.matches(flat):
                self._weights.insert(0, self._weights.pop(k))
                return w
        w = self.param("weight", flat)
        if isinstance(self.module, nn.Conv2d):
            w = w.contiguous(memory_format=torch.channels_last)
        seen = SeenTensor()
        seen.remember(flat)
        self._weights = [(seen, w), *self._weights[:1]]
        return w

    def shared(self) -> list[Tensor]:
        return [w for _, w in self._weights]

    def _apply(self, x: Tensor, w: Tensor, b: Maybe) -> Tensor:
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        return F.conv2d(x.contiguous(memory_format=torch.channels_last), w, b, m.stride, m.padding, m.dilation,
                        m.groups)

    def forward(self, inputs, lam):
        x = inputs[0]
        if isinstance(self.module, nn.Conv2d):
            x = x.contiguous(memory_format=torch.channels_last)
        w = self.weight(lam)
        return _AffineState(x, w), self._apply(x, w, self.param("bias", lam))

    def tangent(self, state, dots, v):
        out = self._apply(state.x, self.weight(v), self.param("bias", v))
        return out if dots[0] is None else out + self._apply(dots[0], state.w, None)

    def backward(self, state, signal, wants):
        return [affine_backward(self.module, signal, state.x, state.w, True, False)[0] if wants[0] else None]

    def tangent_terms(self, state, dots, delta, grad):
        if dots[0] is not None:  # d/dW <delta, f(x', W)>
            self.accumulate(grad, "weight", affine_backward(self.module, delta, dots[0], state.w, False, True)[1])

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        m = self.module
        gi, gw = affine_backward(m, zeta, state.x, state.w, wants[0], True)
        if v is not None and wants[0]:  # d/dx <delta, f(x, W')>
            gi = gi + affine_backward(m, delta, state.x, self.weight(v), True, False)[0]
        self.accumulate(grad, "weight", gw)
        if "bias" in self.params:
            self.accumulate(grad, "bias", zeta.sum(dim=[d for d in range(zeta.dim()) if d != 1]))
        return [gi]


@dataclass
class _NormState:
    normed: Tensor     # (x - mean) / sqrt(var + eps)
    scale: Tensor      # 1 / sqrt(var + eps), shaped to broadcast over channels
    gamma: Maybe


@register_step(nn.BatchNorm1d, nn.BatchNorm2d)
class FrozenNormStep(Step):
    """Batch norm in eval mode: frozen statistics, so an affine map per channel, bilinear in
    (input, scale)."""

    uses_delta = has_tangent_terms = True

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        if module.training:
            return "batch norm in train mode (its batch statistics couple a task's examples)"
        if not module.track_running_stats:
            return "batch norm without running statistics"
        return None

    def _channels(self, t: Tensor, like: Tensor) -> Tensor:
        return t.view(1, -1, *[1] * (like.dim() - 2))

    def forward(self, inputs, lam):
        x = inputs[0]
        scale = self._channels(torch.rsqrt(self.buffers["running_var"] + self.module.eps), x)
        normed = (x - self._channels(self.buffers["running_mean"], x)) * scale
        gamma = self.param("weight", lam)
        out = normed if gamma is None else normed * self._channels(gamma, x) + self._channels(self.param("bias", lam), x)
        return _NormState(normed, scale, None if gamma is None else self._channels(gamma, x)), out

    def _gain(self, state) -> Tensor:
        return state.scale if state.gamma is None else state.scale * state.gamma

    def tangent(self, state, dots, v):
        out = None if dots[0] is None else dots[0] * self._gain(state)
        if state.gamma is None:
            return out
        affine = state.normed * self._channels(self.param("weight", v), state.normed) + \
            self._channels(self.param("bias", v), state.normed)
        return affine if out is None else out + affine

    def backward(self, state, signal, wants):
        return [signal * self._gain(state) if wants[0] else None]

    def _per_channel(self, t: Tensor) -> Tensor:
        return t.sum(dim=[d for d in range(t.dim()) if d != 1])

    def tangent_terms(self, state, dots, delta, grad):
        if state.gamma is not None and dots[0] is not None:  # d/dgamma <delta, x' * scale * gamma>
            self.accumulate(grad, "weight", self._per_channel(delta * state.scale * dots[0]))

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        gi = zeta * self._gain(state) if wants[0] else None
        if state.gamma is None:
            return [gi]
        if v is not None and wants[0]:
            gi = gi + delta * state.scale * self._channels(self.param("weight", v), delta)
        self.accumulate(grad, "weight", self._per_channel(zeta * state.normed))
        self.accumulate(grad, "bias", self._per_channel(zeta))
        return [gi]


@dataclass
class _ActivationState:
    d1: Maybe          # sigma'(x) of a smooth activation
    d2: Maybe          # sigma''(x) of a smooth activation
    positive: Maybe = None  # x > 0 of a piecewise-linear one (a byte per element, not a float)
    slope: float = 0.0      # its slope below 0

    def times_derivative(self, signal: Tensor) -> Tensor:
        """``signal * sigma'(x)``. For a piecewise-linear one, aten's leaky-ReLU backward on the sign
        of x as a float: the same bits as multiplying by ``where(x > 0, 1, slope)`` in ``signal``'s
        dtype, about 4x faster on CPU than any op reading the byte mask."""
        if self.d1 is not None:
            return signal * self.d1
        return torch.ops.aten.leaky_relu_backward(signal, self.positive.to(signal.dtype), self.slope, False)


@register_step(nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Softplus)
class ActivationStep(Step):
    """An elementwise activation; the smooth ones (Tanh, Softplus) add ``delta * sigma'' * x'``."""

    @property
    def uses_delta(self) -> bool:
        return isinstance(self.module, (nn.Tanh, nn.Softplus))

    reads_input_tangent = uses_delta

    def forward(self, inputs, lam):
        x, m = inputs[0], self.module
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            state = _ActivationState(None, None, x > 0, getattr(m, "negative_slope", 0.0))
        else:
            state = _ActivationState(*smooth_derivatives(x, m))
        return state, m(x)

    def tangent(self, state, dots, v):
        return None if dots[0] is None else state.times_derivative(dots[0])

    def backward(self, state, signal, wants):
        return [state.times_derivative(signal) if wants[0] else None]

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        gi = state.times_derivative(zeta)
        if v is not None and state.d2 is not None and dots[0] is not None:
            gi = gi + delta * state.d2 * dots[0]
        return [gi if wants[0] else None]


@dataclass
class _ShapeState:
    shape: torch.Size  # of the input
    pooled: torch.Size | None = None  # of a max-pool's output
    index: Maybe = None  # a max-pool's arg-maxes, flattened per channel


@register_step(nn.MaxPool2d)
class MaxPoolStep(Step):
    """Max-pooling: a gather at the forward's arg-maxes (no ceil mode, no dilation)."""

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        if module.ceil_mode or module.dilation not in (1, (1, 1)) or module.return_indices:
            return "max-pooling with ceil mode, dilation or returned indices"
        return None

    def forward(self, inputs, lam):
        m, x = self.module, inputs[0]
        out, index = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, return_indices=True)
        return _ShapeState(x.shape, out.shape, index.flatten(2)), out

    @staticmethod
    def _empty(shape: torch.Size, like: Tensor) -> Tensor:
        """Channels-last, the convolutions' layout (its ``flatten(2)`` is still a view)."""
        layout = torch.channels_last if len(shape) == 4 else torch.contiguous_format
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)

    def tangent(self, state, dots, v):
        if dots[0] is None:
            return None
        out = self._empty(state.pooled, dots[0])
        torch.gather(dots[0].flatten(2), 2, state.index, out=out.flatten(2))
        return out

    def backward(self, state, signal, wants):
        if not wants[0]:
            return [None]
        out = self._empty(state.shape, signal).zero_()
        out.flatten(2).scatter_add_(2, state.index, signal.flatten(2))
        return [out]


class LinearMapStep(Step):
    """A fixed linear map of the input (no parameters, no second-order term): the tangent is the
    map of the input's tangent, the adjoint comes from :meth:`adjoint`."""

    def forward(self, inputs, lam):
        return _ShapeState(inputs[0].shape), self.module(inputs[0])

    def tangent(self, state, dots, v):
        return None if dots[0] is None else self.module(dots[0])

    def backward(self, state, signal, wants):
        return [self.adjoint(state, signal) if wants[0] else None]

    def adjoint(self, state, signal: Tensor) -> Tensor:
        raise NotImplementedError


@register_step(nn.AvgPool2d)
class AvgPoolStep(LinearMapStep):
    def adjoint(self, state, signal):
        m = self.module
        return torch.ops.aten.avg_pool2d_backward(signal, signal.new_empty(state.shape), m.kernel_size, m.stride,
                                                  m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)


@register_step(nn.AdaptiveAvgPool2d)
class AdaptiveAvgPoolStep(LinearMapStep):
    def adjoint(self, state, signal):
        return torch.ops.aten._adaptive_avg_pool2d_backward(signal, signal.new_empty(state.shape))


@register_step(nn.Flatten)
class FlattenStep(LinearMapStep):
    def adjoint(self, state, signal):
        return signal.reshape(state.shape)


@register_step(nn.Identity, nn.Dropout)
class IdentityStep(LinearMapStep):
    """The identity, and dropout in eval mode (in train mode it is random, and refused)."""

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        return "dropout in train mode (random)" if isinstance(module, nn.Dropout) and module.training else None

    def adjoint(self, state, signal):
        return signal


@register_step(operator.add, torch.add)
class AddStep(Step):
    """The sum of two tensors (a residual connection)."""

    def forward(self, inputs, lam):
        return None, inputs[0] + inputs[1]

    def tangent(self, state, dots, v):
        present = [d for d in dots if d is not None]
        return None if not present else present[0] if len(present) == 1 else present[0] + present[1]

    def backward(self, state, signal, wants):
        return [signal if want else None for want in wants]
