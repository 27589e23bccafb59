"""A body's passes over a fixed set of images, in chunks of bounded memory.

Tasks resample the same images, so everything that runs through the body runs once per
*unique* image: the features, the tangent ``J v`` and the pull-back ``J^T m`` (plus the body's
own second-order term ``d/dlambda <g, J v>``) of cotangents summed over the tasks that use the
image. The meta layer (outer gradients) and the influence engine (total-Hessian products) share
this one implementation.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from ..data.pixels import decode_pixels
from ..models.nets import FlatModel
from ..parallel import ExactSum, World
from ..utils.memory import available_bytes
from ..utils.seen import SeenTensor
from .passes import body_passes

__all__ = ["INPUT_CHUNK", "ImageBody", "inputs_per_pass"]

# The share of the memory available at the start that the body state of one machine's processes
# may keep by default: a run at mini-ImageNet's scale would otherwise try to keep ~100 GB
DEFAULT_MEMORY_SHARE = 0.5

# Inputs per body pass by default: bounds the kept state, and is the unit ranks share (a run on R ranks
# wants R chunks or more); smaller chunks also ran faster on one thread (Conv-4, 200 Omniglot tasks).
INPUT_CHUNK = 256
# A pass takes at most chunk x this many input values (chunk 28x28 gray images): the transient memory
# of a pass grows with its pixels, and 256 84x84 RGB images in one pass held ~2 GB of activations
CHUNK_INPUT_VALUES = 28 * 28


def inputs_per_pass(chunk: int, input_values: int) -> int:
    """The inputs of ``input_values`` values each that one body pass of ``chunk`` takes: ``chunk``, or
    fewer for inputs larger than 28x28 (9 84x84 RGB images at 256)."""
    return min(chunk, max(1, chunk * CHUNK_INPUT_VALUES // max(input_values, 1)))


def features(body: FlatModel, lam: torch.Tensor, images: torch.Tensor, chunk: int = INPUT_CHUNK) -> torch.Tensor:
    """``body`` at ``lam`` on ``images [U, ...]`` (float, or 8-bit pixel codes), ``[U, h]``, without
    gradients and :func:`inputs_per_pass` images at a time: evaluation's forward pass in the transient
    memory of one training pass (all the images of 20 84x84 RGB tasks at once took 5 GB, Conv-4 64)."""
    step = inputs_per_pass(chunk, images[0].numel() if len(images) else 1)
    with torch.no_grad():
        parts = [body(lam, decode_pixels(images[start:start + step], lam.dtype))
                 for start in range(0, len(images), step)]
    return torch.cat(parts) if parts else lam.new_zeros(0, body.out_features)


class ImageBody:
    """``body`` at ``lam`` on ``images [U, ...]`` (float, or 8-bit pixel codes decoded chunk by chunk, as
    ``lam``'s dtype): features :attr:`phi` ``[U, h]`` and the passes of
    :mod:`~metaif.curvature.passes` (``passes``: "auto", "traced" or "autograd"), ``chunk``
    images per pass, fewer for images larger than 28x28 (:func:`inputs_per_pass`). The passes keep
    per-image state (about 270 KB per 28x28 image on 64-channel Conv-4, float32, and 3.1 MB per 84x84
    RGB image) while it fits ``memory`` (bytes, this process;
    default: half the memory available now, shared by the ranks);
    the chunks beyond it keep nothing and are recomputed inside each product: the same numbers, a
    forward (and, with ``g``, a backward) pass more per product. :attr:`memory_report` says which.

    The chunks are fixed by the data (from the first image); over several ranks (``world``) each
    rank runs the passes of its span of whole chunks: features and tangents are gathered, and a
    pull-back adds the chunks' pull-backs exactly, so that every rank returns the whole product, with
    the same bits on any number of ranks."""

    def __init__(self, body: FlatModel, lam: torch.Tensor, images: torch.Tensor, chunk: int = INPUT_CHUNK,
                 passes: str = "auto", world: World = World(), memory: float | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if memory is None:
            memory = DEFAULT_MEMORY_SHARE * available_bytes() / world.size
        if not memory >= 0:
            raise ValueError(f"memory must be a number of bytes >= 0 (inf: keep everything), got {memory}")
        if len(images):
            body.check_inputs(lam, decode_pixels(images[:1], lam.dtype))
        self.body, self.lam, self.images, self.world, self.memory = body, lam.detach(), images, world, memory
        chunk = inputs_per_pass(chunk, images[0].numel() if len(images) else 1)
        first, last = world.span(len(images), block=chunk)
        self.chunks = [slice(s, min(s + chunk, last)) for s in range(first, last, chunk)]
        self.kept: list = []  # each chunk's passes, None where they are recomputed
        phis = []
        self._make = None
        for rows in self.chunks:
            # "auto" resolved (and any warning given) once; the later chunks share the first's plan
            x = self._inputs(rows)
            made = body_passes(body, self.lam, x, passes) if self._make is None else self._make(x)
            self._make = made.factory
            phis.append(made.phi)
            self.kept.append(made)
            self._fit()
        self.phi = world.gather_parts(phis, self.lam, (body.out_features,))
        self._g = SeenTensor()
        self._g_value: torch.Tensor | None = None
        # the passes' tangent pass can add up the pull's tangent terms (TracedPasses.terms_in_tangent)
        self._split = bool(phis) and made.terms_in_tangent
        self._terms: ExactSum | None = None  # those terms of the latest tangent sweep, along _terms_v
        self._terms_v = SeenTensor()

    def __len__(self) -> int:
        return len(self.images)

    def _inputs(self, rows) -> torch.Tensor:
        """The images at ``rows`` as ``lam``'s dtype."""
        return decode_pixels(self.images[rows], self.lam.dtype)

    def _kept_bytes(self, i: int) -> int:
        """Chunk ``i``'s kept state, counting its decoded input (the passes leave out their inputs,
        taken as views of :attr:`images`, which a decoded or cast chunk is not)."""
        rows = self.chunks[i]
        own_input = 0 if self.images.dtype == self.lam.dtype else (rows.stop - rows.start) * self.images[0].numel()
        return self.kept[i].kept_bytes() + own_input * self.lam.element_size()

    def _fit(self) -> None:
        """Keep the first chunks' state while it fits :attr:`memory`; drop the rest."""
        used = 0
        for i, made in enumerate(self.kept):
            if made is not None:
                used += self._kept_bytes(i)
                if used > self.memory:
                    self.kept[i:] = [None] * (len(self.kept) - i)
                    return

    @property
    def memory_report(self) -> dict:
        """This process's chunks: how many keep their state, how many are recomputed, the bytes kept."""
        kept = [i for i, made in enumerate(self.kept) if made is not None]
        return {"kept_chunks": len(kept), "recomputed_chunks": len(self.kept) - len(kept),
                "kept_mb": sum(self._kept_bytes(i) for i in kept) / 2 ** 20,
                "budget_mb": self.memory / 2 ** 20}

    def _passes(self, i: int, pulling: bool = True):
        """Chunk ``i``'s passes: the kept ones, or made afresh, given ``g`` once one is set when a
        pull follows or its terms are wanted (``pulling``) or their tangent reads it (autograd's runs
        through g's graph then, and must take the same path as when kept)."""
        made = self.kept[i]
        if made is None:
            made = self._make(self._inputs(self.chunks[i]))
            if self._g_value is not None and (pulling or made.tangent_reads_g):
                made.cotangent(self._g_value[self.chunks[i]])
        return made

    def _take_g(self, g: torch.Tensor | None) -> None:
        if g is not None and not self._g.matches(g):
            self._g_value, self._terms = g, None
            for rows, made in zip(self.chunks, self.kept):
                if made is not None:
                    made.cotangent(g[rows])
            self._fit()  # the backward signal of g is kept too
            self._g.remember(g)

    def tangent(self, v: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Feature tangents ``J v`` of every image along ``v [p]``, ``[U, h]``. Given the ``g [U, h]`` of
        the :meth:`pull` that follows along ``v``, passes that can (:attr:`TracedPasses.terms_in_tangent`)
        add up that pull's tangent terms in this sweep: a chunk recomputed for both sweeps then runs
        one tangent pass per product, not two."""
        self._take_g(g)
        split = g is not None and self._split
        self._terms = ExactSum(self.lam.new_zeros(self.body.num_params)) if split else None
        parts = []
        for i in range(len(self.chunks)):
            made = self._passes(i, pulling=split)
            parts.append(made.tangent(v))
            if split:
                self._terms.add(made.take_terms())
        self._terms_v.remember(v)
        return self.world.gather_parts(parts, self.phi, self.phi.shape[1:])

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """``J^T m`` (``m [U, h]``), plus ``d/dlambda <g, J v>`` when ``g [U, h]`` and ``v [p]`` are given, ``[p]``.

        ``g`` is usually the same for every product of a solve: pass the same tensor, and the passes
        take it once and keep what depends on it. Over several ranks ``m`` and ``g`` are whole (the
        same on every rank) and so is the result.
        """
        self._take_g(g)
        split = v is not None and self._terms is not None and self._terms_v.matches(v)
        total = self._terms if split else ExactSum(self.lam.new_zeros(self.body.num_params))
        self._terms = None
        for i, rows in enumerate(self.chunks):
            made = self._passes(i)
            total.add(made.pull(m[rows], v, terms=False) if split else made.pull(m[rows], v))
        return self.world.total(total)

    def pull_rows(self, cot: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One ``J^T`` per row through the row's own images: ``cot [B, k, h]`` at image rows
        ``positions [B, k]`` → ``[B, p]``."""
        def one(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return grad(lambda la: (c * self.body(la, x)).sum())(self.lam)

        return vmap(one)(self._inputs(positions), cot)
