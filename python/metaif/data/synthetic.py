"""A synthetic image set of mini-ImageNet's shape, for benchmarks at users' image sizes without the
real files: procedurally generated, learnable, and named as synthetic wherever it appears."""

from __future__ import annotations

import math

import torch

from .datasets import ClassDataset
from .pixels import PIXEL_CODE, encode_pixels

__all__ = ["SYNTHETIC_NAME", "make_synthetic_images"]

SYNTHETIC_NAME = "synthetic-miniimagenet"
_BLOBS = 3  # coloured blobs per class
_CHUNK = 512  # images generated at a time (bounds the temporaries)
# per-image variation, set so that a nearest neighbour in pixel space is far from perfect on 5-way
# 1-shot tasks (as on mini-ImageNet) while a trained body can learn the classes
_SHIFT, _NOISE = 0.25, 0.2


def make_synthetic_images(classes: int = 64, per_class: int = 600, size: int = 84, seed: int = 0) -> ClassDataset:
    """``classes`` x ``per_class`` RGB images of ``size`` x ``size`` (default: mini-ImageNet's
    meta-training split, 64 x 600 at 84x84: 0.8 GB of 8-bit pixel codes, as the real set's JPEGs
    hold), the same bits for the same ``seed``. A class is a background colour, three coloured
    Gaussian blobs at class-specific places and sizes, and a stripe texture of class-specific
    frequency, angle and colour; an image draws them with its own shift (up to a quarter of the
    image), blob scales, stripe phase, tint and brightness, adds a distractor blob of its own and
    pixel noise, so that classes are learnable but not separable in pixel space."""
    for name, value in (("classes", classes), ("per_class", per_class), ("size", size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    background = 0.2 + 0.6 * torch.rand(classes, 3, generator=gen)
    centers = 0.2 + 0.6 * torch.rand(classes, _BLOBS, 2, generator=gen)
    radii = 0.06 + 0.12 * torch.rand(classes, _BLOBS, generator=gen)
    colours = torch.rand(classes, _BLOBS, 3, generator=gen)
    frequency = 2 + 8 * torch.rand(classes, generator=gen)
    angle = math.pi * torch.rand(classes, generator=gen)
    stripe = torch.rand(classes, 3, generator=gen) - 0.5
    labels = torch.arange(classes).repeat_interleave(per_class)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")  # [S, S]
    images = torch.empty(len(labels), 3, size, size, dtype=PIXEL_CODE)
    for start in range(0, len(labels), _CHUNK):
        c = labels[start:start + _CHUNK]
        n = len(c)
        shift = _SHIFT * (torch.rand(n, 1, 2, generator=gen) * 2 - 1)
        scale = 0.6 + 0.8 * torch.rand(n, _BLOBS, generator=gen)
        phase = 2 * math.pi * torch.rand(n, generator=gen)
        brightness = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
        tint = 0.3 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
        at = centers[c] + shift  # [n, B, 2]
        dist2 = (xx - at[..., 0, None, None]) ** 2 + (yy - at[..., 1, None, None]) ** 2  # [n, B, S, S]
        blobs = torch.exp(-dist2 / (2 * (radii[c] * scale)[..., None, None] ** 2))
        picture = background[c][:, :, None, None] + tint + torch.einsum("nbhw,nbc->nchw", blobs, colours[c] - 0.5)
        # a distractor blob of the image's own place, size and colour
        spot = torch.rand(n, 2, generator=gen)
        spot_radius = 0.06 + 0.12 * torch.rand(n, generator=gen)
        spot_dist2 = (xx - spot[:, 0, None, None]) ** 2 + (yy - spot[:, 1, None, None]) ** 2
        spot_colour = torch.rand(n, 3, generator=gen) - 0.5
        spot_shape = torch.exp(-spot_dist2 / (2 * spot_radius[:, None, None] ** 2))
        picture = picture + spot_colour[:, :, None, None] * spot_shape[:, None]
        along = xx * torch.cos(angle[c])[:, None, None] + yy * torch.sin(angle[c])[:, None, None]
        waves = torch.sin(2 * math.pi * frequency[c][:, None, None] * along + phase[:, None, None])  # [n, S, S]
        picture = picture + 0.3 * stripe[c][:, :, None, None] * waves[:, None]
        noise = _NOISE * torch.randn(n, 3, size, size, generator=gen)
        images[start:start + n] = encode_pixels(brightness * picture + noise)
    names = tuple(f"synthetic_{k:03d}" for k in range(classes))
    return ClassDataset(SYNTHETIC_NAME, images, labels, names)
