"""Tangent and second-order pull-back passes of any traced body: a ``torch.fx`` graph of
registered steps (:mod:`.steps`, one per module type; :mod:`.fused` for chains run together) and
tensor additions — Sequentials, residual blocks, frozen batch norms, any DAG.

For one direction ``v [P]`` a total-Hessian product needs, per image, the feature tangent ``J v``
and the pull-back ``J^T m + d/dlambda <g, J v>``. Autograd gets the second term by differentiating
its own backward graph, which re-runs every convolution's double-backward rule. Written out node by
node it is cheaper: the forward keeps what each node's rules need, the backward signal ``delta`` of
``g`` is propagated once (summed where a value feeds several nodes; kept only where it cannot be
derived cheaply from a consumer's), and a product is one tangent pass and one pull-back pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..models.nets import FlatModel
from ..utils.seen import SeenTensor
from .body import storage_bytes, tensors_in
from .fused import FUSIONS, Fusion
from .steps import STEPS, IdentityStep, Step

__all__ = ["TracedPasses", "TracedPlan", "traced_unsupported"]

Tensor = torch.Tensor
Maybe = Tensor | None


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


def _fusion(node: fx.Node, modules: dict[str, nn.Module], lam: Tensor,
            constant_input: bool) -> tuple[Fusion | None, list[fx.Node]]:
    """The first of :data:`~.fused.FUSIONS` whose chain starts at ``node``, and the chain's nodes
    (``None`` and ``[node]`` when none does)."""
    for fusion in FUSIONS:
        chain = [node]
        for k, kinds in enumerate(fusion.chain):
            link = chain[-1]
            if link.op != "call_module" or type(modules[link.target]) not in kinds:
                break
            if k > 0 and next(modules[link.target].parameters(recurse=False), None) is not None:
                break
            if k + 1 < len(fusion.chain):
                if len(link.users) != 1:
                    break
                chain.append(next(iter(link.users)))
        else:
            if fusion.applies([modules[link.target] for link in chain], lam, constant_input):
                return fusion, chain
    return None, [node]


@dataclass
class _Node:
    """A node of the plan: its step, the positions of its inputs, whether it depends on lambda, the
    last node that reads its value, whether a pull reads its tangent, whether a consumer's tangent
    terms read it, and the nodes that read it."""

    step: Step
    inputs: list[int]
    depends: bool
    last_use: int = 0
    tangent_read: bool = False
    terms_read: bool = False
    consumers: list[int] = field(default_factory=list)


class TracedPlan:
    """What the passes of a body at ``lam`` share across batches of inputs: the traced graph as
    :class:`~.steps.Step` nodes (fused where :data:`~.fused.FUSIONS` match), and where g's backward
    signal is kept or derived."""

    def __init__(self, model: FlatModel, lam: Tensor) -> None:
        graph, reason = _trace(model)
        if graph is None:
            raise ValueError(f"TracedPasses cannot run this body: {reason}; use AutogradPasses")
        self.model, self.lam = model, lam.detach()
        self.nodes = self._plan(model, graph, self.lam)
        self.kept_signals, self.derived = self._signal_plan()
        # no pull reads a tangent (piecewise-linear activations, pools, convolutions, norms): every
        # second-order term that reads one is added up in the tangent pass
        self.terms_in_tangent = not any(node.tangent_read for node in self.nodes)

    def passes(self, x: Tensor) -> TracedPasses:
        """The passes of this plan on inputs ``x [N, ...]``."""
        return TracedPasses(self.model, self.lam, x, self)

    @staticmethod
    def _plan(model: FlatModel, graph: fx.GraphModule, lam: Tensor) -> list[_Node]:
        offsets, start = {}, 0
        for name, numel in zip(model.names, model.numels):
            offsets[name] = slice(start, start + numel)
            start += numel
        modules = dict(graph.named_modules())
        position: dict[fx.Node, int] = {}
        nodes: list[_Node] = []
        absorbed: set[fx.Node] = set()  # nodes a fused step runs
        for node in graph.graph.nodes:
            if node in absorbed:
                continue
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
                fusion, chain = _fusion(node, modules, lam, constant_input=not any(nodes[i].depends for i in inputs))
                if fusion is None:
                    step = STEPS[_node_kind(node, modules)](module, params, buffers)
                else:
                    step = fusion.step([modules[link.target] for link in chain], params, buffers)
                    absorbed.update(chain[1:])
                nodes.append(_Node(step, inputs, bool(params) or any(nodes[i].depends for i in inputs)))
                position[chain[-1]] = len(nodes) - 1
        for i, node in enumerate(nodes):
            for j in node.inputs:
                nodes[j].last_use = i
                nodes[j].tangent_read |= node.step.reads_input_tangent
                nodes[j].terms_read |= node.step.has_tangent_terms
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


class TracedPasses:
    """The hand-written passes of any body :func:`traced_unsupported` accepts: the forward state of
    the body at ``lam`` on ``x [N, ...]``; :meth:`cotangent` caches the backward signal of
    ``g [N, out]``; :meth:`tangent` and :meth:`pull` are the two passes of a product. ``plan``: the
    body's :class:`TracedPlan` at ``lam`` when one exists (:attr:`factory` shares it)."""

    tangent_reads_g = False  # J v is the same with or without g's signal (it only adds the terms)

    def __init__(self, model: FlatModel, lam: Tensor, x: Tensor, plan: TracedPlan | None = None) -> None:
        self.plan = plan if plan is not None else TracedPlan(model, lam)
        self.lam, self.num_params, self.nodes = self.plan.lam, model.num_params, self.plan.nodes
        self.factory = self.plan.passes  # the same passes on other inputs (holds none of this state)
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
        self._dot_v = SeenTensor()
        # the tangent terms of the latest tangent (None: not yet run: it came before g's signal)
        self._terms: Tensor | None = None
        self._inputs = (x, lam)

    def _delta(self, i: int, memo: dict[int, Tensor]) -> Tensor:
        """g's backward signal at node ``i``: kept, or derived from its consumer's."""
        if self._deltas[i] is not None:
            return self._deltas[i]
        if i not in memo:
            c = self.plan.derived[i]
            consumer = self.nodes[c]
            parts = consumer.step.backward(self.states[c], self._delta(c, memo), [j == i for j in consumer.inputs])
            memo[i] = parts[consumer.inputs.index(i)]
        return memo[i]

    def _release(self, values: list[Maybe], i: int, keep: tuple[str, ...] = ()) -> None:
        """Forget the values node ``i`` was the last to read, but those whose flags named in ``keep``
        (``"tangent_read"``, ``"terms_read"``) say that a later pass reads them."""
        for j in self.nodes[i].inputs:
            if self.nodes[j].last_use == i and not any(getattr(self.nodes[j], flag) for flag in keep):
                values[j] = None

    def kept_bytes(self) -> int:
        """Bytes of the per-image state these passes keep."""
        shared = [t for node in self.nodes for t in node.step.shared()]
        kept = [self.states, self.phi, self._deltas, self._dots, self._terms]
        return storage_bytes(tensors_in(kept), (*self._inputs, *shared))

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
                if i not in self.plan.kept_signals:
                    signals[i] = None
        self._deltas = signals
        if self._terms is not None:  # terms of another g: the tangent runs again
            self._dots, self._terms, self._dot_v = None, None, SeenTensor()

    def tangent(self, v: Tensor) -> Tensor:
        """``J v``, ``[N, out]``. Once g's signal is cached the pass also adds up the second-order
        terms that read the tangents (:meth:`~.steps.Step.tangent_terms`) for the :meth:`pull` of the
        same ``v``, which then reads only the tangents of smooth activations; before, the tangents
        those terms read are kept and the pull adds them up."""
        dots: list[Maybe] = [None]
        terms = self.lam.new_zeros(self.num_params) if self._deltas is not None else None
        keep = ("tangent_read",) if terms is not None else ("tangent_read", "terms_read")
        memo: dict[int, Tensor] = {}
        with torch.no_grad():
            for i, node in enumerate(self.nodes[1:], 1):
                dots.append(node.step.tangent(self.states[i], [dots[j] for j in node.inputs], v)
                            if node.depends else None)
                if terms is not None:
                    self._add_terms(i, dots, terms, memo)
                self._release(dots, i, keep)
        self._dots, self._terms = dots, terms
        self._dot_v.remember(v)
        return dots[-1]

    @property
    def terms_in_tangent(self) -> bool:
        """Whether a tangent pass after :meth:`cotangent` adds up every part of the second-order pull
        that reads tangents, so that :meth:`take_terms` and ``pull(m, v, terms=False)`` (no tangents
        needed) make the second-order pull: then passes recomputed for the pull need no second
        tangent pass."""
        return self.plan.terms_in_tangent

    def take_terms(self) -> Tensor:
        """Hand over the tangent terms ``[P]`` that the latest tangent pass (after :meth:`cotangent`)
        added up; a pull along the same ``v`` then runs the tangent again unless it leaves them out."""
        if self._terms is None:
            raise RuntimeError("take_terms needs a tangent pass after cotangent(g)")
        terms, self._terms, self._dot_v = self._terms, None, SeenTensor()
        return terms

    def _add_terms(self, i: int, dots: list[Maybe], terms: Tensor, memo: dict[int, Tensor]) -> None:
        """Node ``i``'s tangent terms into ``terms`` (g's derived signals in ``memo``, each dropped
        once its node is done: the nodes go in order, and a signal is derived from later nodes')."""
        node = self.nodes[i]
        if node.step.has_tangent_terms and node.depends:
            node.step.tangent_terms(self.states[i], [dots[j] for j in node.inputs], self._delta(i, memo), terms)
        memo.pop(i, None)

    def pull(self, m: Tensor, v: Tensor | None = None, terms: bool = True) -> Tensor:
        """``J^T m``, plus ``d/dlambda <g, J v>`` when ``v`` is given, ``[P]``. A second-order pull
        takes over what the tangent pass along ``v`` added up (another along ``v`` runs it again);
        ``terms=False`` leaves those tangent terms out (:meth:`take_terms` handed them over) and runs
        no tangent pass, where :attr:`terms_in_tangent`."""
        if v is not None and not terms and not self.terms_in_tangent:
            raise ValueError("pull(terms=False): this body's pull reads tangents (a smooth activation); "
                             "pull with its terms")
        if v is not None and self._deltas is None:
            raise RuntimeError("call cotangent(g) before a second-order pull")
        if v is not None and terms:
            if not self._dot_v.matches(v):
                self.tangent(v)
            if self._terms is None:  # the tangent came before g: its terms now, as the tangent pass adds them
                self._terms, memo = self.lam.new_zeros(self.num_params), {}
                with torch.no_grad():
                    for i in range(1, len(self.nodes)):
                        self._add_terms(i, self._dots, self._terms, memo)
                self._dots = [dot if node.tangent_read else None for dot, node in zip(self._dots, self.nodes)]
            # the pull takes the terms over (a later one along v runs the tangent again)
            grad, self._terms, self._dot_v = self._terms, None, SeenTensor()
        else:
            grad = self.lam.new_zeros(self.num_params)
        zetas: list[Maybe] = [None] * len(self.nodes)
        zetas[-1] = m.to(self.phi)
        memo: dict[int, Tensor] = {}  # derived signals of g, for this pull
        with torch.no_grad():
            for i in range(len(self.nodes) - 1, 0, -1):
                node = self.nodes[i]
                if zetas[i] is None or not node.depends:
                    continue
                dots = [None] * len(node.inputs) if v is None or not terms else [self._dots[j] for j in node.inputs]
                delta = self._delta(i, memo) if v is not None and node.step.uses_delta else None
                parts = node.step.pull(self.states[i], zetas[i], dots, delta, v, grad, self._wants(node))
                zetas[i] = None  # done: its memory goes
                for j, part in zip(node.inputs, parts):
                    if part is not None:
                        zetas[j] = part if zetas[j] is None else zetas[j] + part
        return grad
