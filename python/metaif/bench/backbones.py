"""Backbones (issue 20): one total-HVP body product (tangent, then the second-order pull-back) per
image, the traced hand-written passes against autograd's, for Conv-4 (64 channels) and ResNet-12
(64-160-320-640) on 28x28 gray and 84x84 RGB images, float32, with the per-image state each keeps.

    metaif bench --only backbones
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..curvature import AutogradPasses, body_passes, passes_for
from ..models import conv4, resnet12
from .core import BenchConfig, Case

# (name, model maker, channels, image size, images per product, images in --quick)
BACKBONES = (
    ("conv4", lambda c, s: conv4(c, 64, s), 1, 28, 64, 16),
    ("conv4", lambda c, s: conv4(c, 64, s), 3, 84, 16, 4),
    ("resnet12", lambda c, s: resnet12(c, image_size=s), 1, 28, 16, 4),
    ("resnet12", lambda c, s: resnet12(c, image_size=s), 3, 84, 4, 2),
)


def _product(passes, m: torch.Tensor, v: torch.Tensor):
    def run() -> torch.Tensor:
        passes.tangent(v)
        return passes.pull(m, v)
    return run


def backbone_cases(cfg: BenchConfig) -> Iterator[Case]:
    for name, make, channels, size, images, quick in BACKBONES:
        n = quick if cfg.quick else images
        body = make(channels, size)
        gen = torch.Generator().manual_seed(0)
        lam = body.init(0)
        x = torch.randn(n, channels, size, size, generator=gen)
        g, m = (torch.randn(n, body.out_features, generator=gen) for _ in range(2))
        v = torch.randn(lam.numel(), generator=gen)
        ours, base = body_passes(body, lam, x), AutogradPasses(body, lam, x)
        for p in (ours, base):
            p.cotangent(g)
            p.tangent(v)  # the pull keeps the tangents: count them with the state
        kept = [p.kept_bytes() / n / 2 ** 20 for p in (ours, base)]
        yield Case("body_product", f"{name} {channels}x{size}x{size}, {n} images", "autograd passes",
                   _product(ours, m, v), _product(base, m, v), norm_check=True,
                   note=f"{passes_for(body)[0]} passes; kept {kept[0]:.2f} MB/image vs {kept[1]:.2f} "
                        f"({kept[0] / kept[1]:.2f}x)")


backbone_cases.ops = ("body_product",)
backbone_cases.aliases = ("backbones",)
backbone_cases.explicit = True
