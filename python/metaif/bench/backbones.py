"""Backbones (issue 20): one total-HVP body product (tangent, then the second-order pull-back) per
image, the traced hand-written passes against autograd's, for Conv-4 (64 channels) and ResNet-12
(64-160-320-640) on 28x28 gray and 84x84 RGB images, float32; and the same product over a set of
images whose state is recomputed inside each product (a memory budget of 0) against kept state.

The arithmetic bound of a product is 6 forward passes' worth of convolutions: the tangent is two
per layer (``conv(x', W) + conv(x, W')``), the pull-back four (the weight gradients of ``zeta`` and
of ``delta``, the input gradients through ``W`` and ``W'``). The GFLOP/s column counts those 6, so
that it reads against the one-thread sgemm peak; the note gives the product in measured forward
pass's time and throughput, and the state each implementation keeps per image.

    metaif bench --only backbones
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..curvature import AutogradPasses, ImageBody, TracedPasses
from ..models import conv4, resnet12
from .core import BenchConfig, Case

# (name, model maker, channels, image size, images per product, images in --quick)
BACKBONES = (
    ("conv4", lambda c, s: conv4(c, 64, s), 1, 28, 64, 16),
    ("conv4", lambda c, s: conv4(c, 64, s), 3, 84, 16, 4),
    ("resnet12", lambda c, s: resnet12(c, image_size=s), 1, 28, 16, 4),
    ("resnet12", lambda c, s: resnet12(c, image_size=s), 3, 84, 4, 2),
)
PRODUCT_FORWARDS = 6  # the arithmetic bound of a product, in forward passes
# (name, model maker, images, chunk) of the recompute cases: 28x28 gray, four chunks
RECOMPUTED = (("conv4", lambda: conv4(1, 64, 28), 256, 64), ("resnet12", lambda: resnet12(1, image_size=28), 32, 8))


def _product(passes, m: torch.Tensor, v: torch.Tensor):
    def run() -> torch.Tensor:
        passes.tangent(v)
        return passes.pull(m, v)
    return run


def _forward_ms(body, lam: torch.Tensor, x: torch.Tensor, repeats: int = 5) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            began = time.perf_counter()
            body(lam, x)
            times.append(time.perf_counter() - began)
    return statistics.median(times[1:]) * 1e3


def _forward_flops(body, lam: torch.Tensor, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        body(lam, x)
    return float(counter.get_total_flops())


def _state_mb(passes, n: int) -> float:
    """MB per image of what the passes keep once g's signal and a tangent exist, less what does not
    grow with the images (the traced passes' one gradient vector of the tangent terms)."""
    fixed = passes.lam.numel() * passes.lam.element_size() if isinstance(passes, TracedPasses) else 0
    return (passes.kept_bytes() - fixed) / n / 2 ** 20


def backbone_cases(cfg: BenchConfig) -> Iterator[Case]:
    for name, make, channels, size, images, quick in BACKBONES:
        n = quick if cfg.quick else images
        body = make(channels, size)
        gen = torch.Generator().manual_seed(0)
        lam = body.init(0)
        x = torch.randn(n, channels, size, size, generator=gen)
        g, m = (torch.randn(n, body.out_features, generator=gen) for _ in range(2))
        v = torch.randn(lam.numel(), generator=gen)
        ours, base = TracedPasses(body, lam, x), AutogradPasses(body, lam, x)
        for p in (ours, base):
            p.cotangent(g)
            p.tangent(v)
        kept = [_state_mb(p, n) for p in (ours, base)]
        forward, flops = _forward_ms(body, lam, x), _forward_flops(body, lam, x)
        yield Case("body_product", f"{name} {channels}x{size}x{size}, {n} images", "autograd passes",
                   _product(ours, m, v), _product(base, m, v), norm_check=True, flops=PRODUCT_FORWARDS * flops,
                   note=f"forward {forward:.1f} ms ({flops / forward / 1e6:.0f} GFLOP/s); state {kept[0]:.2f} "
                        f"MB/image vs {kept[1]:.2f} ({kept[0] / kept[1]:.2f}x)")
    for name, make, n, chunk in RECOMPUTED:
        n = n // 4 if cfg.quick else n
        body = make()
        gen = torch.Generator().manual_seed(1)
        lam = body.init(0)
        x = torch.randn(n, 1, 28, 28, generator=gen)
        g, m = (torch.randn(n, body.out_features, generator=gen) for _ in range(2))
        v = torch.randn(lam.numel(), generator=gen)
        kept, recomputed = (ImageBody(body, lam, x, chunk=max(1, chunk // (4 if cfg.quick else 1)), memory=memory)
                            for memory in (float("inf"), 0.0))

        def product(images: ImageBody):
            def run() -> torch.Tensor:  # as the analyzer's products run: g given to the tangent sweep
                images.tangent(v, g)
                return images.pull(m, g, v)
            return run

        yield Case("recomputed_product", f"{name} 1x28x28, {n} images, chunks of {kept.chunks[0].stop}",
                   "kept state", product(recomputed), product(kept), norm_check=True,
                   note=f"memory 0 (recomputed) vs everything kept ({kept.memory_report['kept_mb']:.0f} MB)")


backbone_cases.ops = ("body_product", "recomputed_product")
backbone_cases.aliases = ("backbones",)
backbone_cases.explicit = True
