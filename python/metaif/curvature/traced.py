"""Tangent and second-order pull-back passes of any traced body: a ``torch.fx`` graph of
registered modules and tensor additions (residual blocks, frozen batch norms, any DAG).

The passes are those of :class:`~.body.SecondOrderPasses` (the same interface and algebra), written
per node instead of per layer of a Sequential: the forward keeps what each node's rules need, the
backward signal ``delta`` of ``g`` is propagated once (summed where a value feeds several nodes),
a product is one tangent pass and one pull-back pass. A node's pull-back is its first-order
adjoint of ``zeta`` plus its own second-order term, the derivative of ``<delta, out'>``:

* bilinear in (input, parameters) — convolution, linear, batch norm: ``d/dx <delta, f(x, W')>``
  to the input and ``d/dW <delta, f(x', W)>`` to the parameters;
* a smooth elementwise activation: ``delta * sigma''(x) * x'``;
* everything piecewise linear (ReLU, LeakyReLU, pooling, addition, flatten): none.

A module type gets these passes by one registered :class:`Step` class (:func:`register_step`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.nets import FlatModel
from .body import affine_backward, smooth_derivatives, storage_bytes, tensors_in

__all__ = ["STEPS", "Step", "TracedPasses", "register_step", "traced_unsupported"]

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

    uses_delta = False  # whether pull's second-order term reads g's backward signal at the output
    reads_input_tangent = False  # whether pull's second-order term reads the input's tangent
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

    def forward(self, inputs: list[Tensor], lam: Tensor) -> tuple[object, Tensor]:
        """(the state the other rules read, the output) of the node on ``inputs`` at ``lam``."""
        raise NotImplementedError

    def tangent(self, state, dots: list[Maybe], v: Tensor) -> Maybe:
        """The output tangent from the inputs' tangents (``None``: does not depend on lambda)."""
        raise NotImplementedError

    def backward(self, state, signal: Tensor, wants: list[bool]) -> list[Maybe]:
        """The first-order adjoint of ``signal`` to each input that ``wants`` one."""
        raise NotImplementedError

    def pull(self, state, zeta: Tensor, dots: list[Maybe], delta: Maybe, v: Maybe, grad: Tensor,
             wants: list[bool]) -> list[Maybe]:
        """Add the parameter part of ``<zeta, out> + <delta, out'>`` (the latter when ``v`` is given)
        into ``grad [P]``; return its input parts."""
        return self.backward(state, zeta, wants)


@dataclass
class _AffineState:
    x: Tensor          # the input
    w: Tensor          # the weight at lambda


@register_step(nn.Conv2d, nn.Linear)
class AffineStep(Step):
    """``Conv2d`` (zero padding) and ``Linear``: bilinear in (input, weight), plus a bias."""

    uses_delta = reads_input_tangent = True
    cheap_adjoint = False

    @staticmethod
    def refuses(module: nn.Module | None) -> str | None:
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or not isinstance(module.padding, tuple)):
            return "padding other than zeros"
        return None

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
        w = self.param("weight", lam)
        return _AffineState(x, w), self._apply(x, w, self.param("bias", lam))

    def tangent(self, state, dots, v):
        out = self._apply(state.x, self.param("weight", v), self.param("bias", v))
        return out if dots[0] is None else out + self._apply(dots[0], state.w, None)

    def backward(self, state, signal, wants):
        return [affine_backward(self.module, signal, state.x, state.w, True, False)[0] if wants[0] else None]

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        m = self.module
        gi, gw = affine_backward(m, zeta, state.x, state.w, wants[0], True)
        if v is not None and dots[0] is not None:
            gw = gw + affine_backward(m, delta, dots[0], state.w, False, True)[1]
        if v is not None and wants[0]:
            gi = gi + affine_backward(m, delta, state.x, self.param("weight", v), True, False)[0]
        grad[self.params["weight"]] += gw.flatten()
        if "bias" in self.params:
            grad[self.params["bias"]] += zeta.sum(dim=[d for d in range(zeta.dim()) if d != 1])
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

    uses_delta = reads_input_tangent = True

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

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        gi = zeta * self._gain(state) if wants[0] else None
        if state.gamma is None:
            return [gi]
        g_gamma = self._per_channel(zeta * state.normed)
        if v is not None and dots[0] is not None:
            g_gamma = g_gamma + self._per_channel(delta * state.scale * dots[0])
        if v is not None and wants[0]:
            gi = gi + delta * state.scale * self._channels(self.param("weight", v), delta)
        grad[self.params["weight"]] += g_gamma
        grad[self.params["bias"]] += self._per_channel(zeta)
        return [gi]


@dataclass
class _ActivationState:
    d1: Maybe          # sigma'(x) of a smooth activation
    d2: Maybe          # sigma''(x) of a smooth activation
    positive: Maybe = None  # x > 0 of a piecewise-linear one (a byte per element, not a float)
    slope: float = 0.0      # its slope below 0

    def derivative(self, like: Tensor) -> Tensor:
        """sigma'(x) in ``like``'s dtype."""
        if self.d1 is not None:
            return self.d1
        # the slope in x's dtype (a Python float would make a float32 tensor: 0.1 off by 1.5e-8)
        return torch.where(self.positive, like.new_ones(()), like.new_full((), self.slope))


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
        return None if dots[0] is None else dots[0] * state.derivative(dots[0])

    def backward(self, state, signal, wants):
        return [signal * state.derivative(signal) if wants[0] else None]

    def pull(self, state, zeta, dots, delta, v, grad, wants):
        gi = zeta * state.derivative(zeta)
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

    def tangent(self, state, dots, v):
        return None if dots[0] is None else dots[0].flatten(2).gather(2, state.index).view(state.pooled)

    def backward(self, state, signal, wants):
        if not wants[0]:
            return [None]
        out = signal.new_zeros(state.shape)
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


def _node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> object:
    return type(modules[node.target]) if node.op == "call_module" else node.target


def _trace(model: FlatModel) -> tuple[fx.GraphModule | None, str | None]:
    """The traced body, or why it cannot be traced onto registered steps."""
    try:
        graph = fx.symbolic_trace(model.module)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: not these passes
        return None, f"the body cannot be traced by torch.fx ({type(err).__name__}: {err})"
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        kind = _node_kind(node, modules)
        what = f"{type(modules[node.target]).__name__} at {node.target}" if node.op == "call_module" else \
            getattr(node.target, "__name__", str(node.target))
        if node.op not in ("call_module", "call_function") or kind not in STEPS:
            return None, f"{what} ({node.op})"
        if any(not isinstance(arg, fx.Node) for arg in node.args) or node.kwargs:
            return None, f"{what} with non-tensor arguments"
        reason = STEPS[kind].refuses(modules.get(node.target) if node.op == "call_module" else None)
        if reason is not None:
            return None, f"{what}: {reason}"
    return graph, None


def traced_unsupported(model: FlatModel) -> str | None:
    """What keeps ``model`` off the traced passes (``None``: nothing)."""
    return _trace(model)[1]


def _own(named: dict, module_name: str) -> dict:
    """The entries of ``named`` (keyed by qualified names) that belong to the module itself, by their
    short names (``"weight"``, ``"running_mean"``), not to its children."""
    prefix = f"{module_name}."
    return {name[len(prefix):]: value for name, value in named.items()
            if name.startswith(prefix) and "." not in name[len(prefix):]}


@dataclass
class _Node:
    """A node of the plan: its step, the positions of its inputs, whether it depends on lambda, the
    last node that reads its value, whether a pull reads its tangent, and the nodes that read it."""

    step: Step
    inputs: list[int]
    depends: bool
    last_use: int = 0
    tangent_read: bool = False
    consumers: list[int] = field(default_factory=list)


class TracedPasses:
    """The passes of :class:`~.body.SecondOrderPasses` for any body :func:`traced_unsupported` accepts:
    forward state of the body at ``lam`` on ``x [N, ...]``; :meth:`cotangent` caches the backward
    signal of ``g [N, out]``; :meth:`tangent` and :meth:`pull` are the two passes of a product."""

    def __init__(self, model: FlatModel, lam: Tensor, x: Tensor) -> None:
        graph, reason = _trace(model)
        if graph is None:
            raise ValueError(f"TracedPasses cannot run this body: {reason}; use AutogradPasses")
        self.lam, self.num_params = lam.detach(), model.num_params
        self.nodes = self._plan(model, graph, lam)
        self._kept_signals, self._derived = self._signal_plan()
        self.states: list = []
        values: list[Maybe] = [x]  # position 0: the input
        with torch.no_grad():
            for i, node in enumerate(self.nodes[1:], 1):
                state, out = node.step.forward([values[j] for j in node.inputs], self.lam)
                self.states.append(state)
                values.append(out)
                self._release(values, i)
        self.states.insert(0, None)
        self.phi = values[-1].contiguous()
        self._deltas: list[Maybe] | None = None
        self._dots: list[Maybe] | None = None
        self._dot_v: Tensor | None = None
        self._inputs = (x, lam)

    @staticmethod
    def _plan(model: FlatModel, graph: fx.GraphModule, lam: Tensor) -> list[_Node]:
        offsets, start = {}, 0
        for name, numel in zip(model.names, model.numels):
            offsets[name] = slice(start, start + numel)
            start += numel
        modules = dict(graph.named_modules())
        position: dict[fx.Node, int] = {}
        nodes: list[_Node] = []
        for node in graph.graph.nodes:
            if node.op == "placeholder":
                position[node] = 0
                nodes.append(_Node(Step(None, {}, {}), [], False))
            elif node.op == "output":
                (result,) = node.args
                if position[result] != len(nodes) - 1:  # the output is the last value computed
                    nodes.append(_Node(IdentityStep(nn.Identity(), {}, {}), [position[result]],
                                       nodes[position[result]].depends))
            else:
                module = modules.get(node.target) if node.op == "call_module" else None
                params = _own(offsets, node.target) if module is not None else {}
                buffers = {name: b.to(lam) for name, b in _own(model.buffers, node.target).items()} \
                    if module is not None else {}
                inputs = [position[arg] for arg in node.args]
                step = STEPS[_node_kind(node, modules)](module, params, buffers)
                nodes.append(_Node(step, inputs, bool(params) or any(nodes[i].depends for i in inputs)))
                position[node] = len(nodes) - 1
        for i, node in enumerate(nodes):
            for j in node.inputs:
                nodes[j].last_use = i
                nodes[j].tangent_read |= node.step.reads_input_tangent
                nodes[j].consumers.append(i)
        return nodes

    def _signal_plan(self) -> tuple[set[int], dict[int, int]]:
        """Where g's backward signal is kept, and for the other nodes whose pull reads it, the one
        consumer it is derived from (a cheap adjoint: batch norm, activation, addition, pooling)."""
        required = {i for i, node in enumerate(self.nodes) if node.step.uses_delta}
        kept, derived = set(), {}
        for j, node in enumerate(self.nodes):  # a consumer comes after its inputs: decided later
            if j in required:
                if len(node.consumers) == 1 and self.nodes[node.consumers[0]].step.cheap_adjoint:
                    derived[j] = node.consumers[0]
                    required.add(node.consumers[0])
                else:
                    kept.add(j)
        return kept, derived

    def _delta(self, i: int, memo: dict[int, Tensor]) -> Tensor:
        """g's backward signal at node ``i``: kept, or derived from its consumer's."""
        if self._deltas[i] is not None:
            return self._deltas[i]
        if i not in memo:
            c = self._derived[i]
            consumer = self.nodes[c]
            parts = consumer.step.backward(self.states[c], self._delta(c, memo), [j == i for j in consumer.inputs])
            memo[i] = parts[consumer.inputs.index(i)]
        return memo[i]

    def _release(self, values: list[Maybe], i: int, keep: bool = False) -> None:
        """Forget the values node ``i`` was the last to read (unless ``keep`` asks for the ones a
        pull will read)."""
        for j in self.nodes[i].inputs:
            if self.nodes[j].last_use == i and not (keep and self.nodes[j].tangent_read):
                values[j] = None

    def kept_bytes(self) -> int:
        """Bytes of the per-image state these passes keep."""
        return storage_bytes(tensors_in([self.states, self.phi, self._deltas, self._dots]), self._inputs)

    def _wants(self, node: _Node) -> list[bool]:
        return [self.nodes[i].depends for i in node.inputs]

    def cotangent(self, g: Tensor) -> None:
        """Cache the backward signal of the fixed feature cotangent ``g [N, out]`` at every node."""
        signals: list[Maybe] = [None] * len(self.nodes)
        signals[-1] = g.to(self.phi)
        with torch.no_grad():
            for i in range(len(self.nodes) - 1, 0, -1):
                node = self.nodes[i]
                if signals[i] is None or not node.depends:
                    continue
                for j, part in zip(node.inputs, node.step.backward(self.states[i], signals[i], self._wants(node))):
                    if part is not None:
                        signals[j] = part if signals[j] is None else signals[j] + part
                if i not in self._kept_signals:
                    signals[i] = None
        self._deltas = signals

    def tangent(self, v: Tensor) -> Tensor:
        """``J v``, ``[N, out]``; the node tangents are kept for the :meth:`pull` of the same ``v``."""
        dots: list[Maybe] = [None]
        with torch.no_grad():
            for i, node in enumerate(self.nodes[1:], 1):
                dots.append(node.step.tangent(self.states[i], [dots[j] for j in node.inputs], v)
                            if node.depends else None)
                self._release(dots, i, keep=True)
        self._dots, self._dot_v = dots, v.clone()
        return dots[-1]

    def pull(self, m: Tensor, v: Tensor | None = None) -> Tensor:
        """``J^T m``, plus ``d/dlambda <g, J v>`` when ``v`` is given, ``[P]``."""
        if v is not None:
            if self._deltas is None:
                raise RuntimeError("call cotangent(g) before a second-order pull")
            if self._dot_v is None or not torch.equal(self._dot_v, v):
                self.tangent(v)
        grad = self.lam.new_zeros(self.num_params)
        zetas: list[Maybe] = [None] * len(self.nodes)
        zetas[-1] = m.to(self.phi)
        memo: dict[int, Tensor] = {}  # derived signals of g, for this pull
        with torch.no_grad():
            for i in range(len(self.nodes) - 1, 0, -1):
                node = self.nodes[i]
                if zetas[i] is None or not node.depends:
                    continue
                dots = [None] * len(node.inputs) if v is None else [self._dots[j] for j in node.inputs]
                delta = self._delta(i, memo) if v is not None and node.step.uses_delta else None
                parts = node.step.pull(self.states[i], zetas[i], dots, delta, v, grad, self._wants(node))
                zetas[i] = None  # done: its memory goes
                for j, part in zip(node.inputs, parts):
                    if part is not None:
                        zetas[j] = part if zetas[j] is None else zetas[j] + part
        return grad
