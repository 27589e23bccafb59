"""Conv-4 and MLP feature extractors, called functionally with a flat parameter vector.

Parameters at the meta and influence layers are flat vectors; :class:`FlatModel` maps one to the
module's parameters (``torch.func.functional_call``), so that a model can be evaluated, and
differentiated, at any parameter vector, and vmapped over tasks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call


class FlatModel:
    """A module evaluated at flat parameter vectors ``[P]``; ``out_features`` is its output width."""

    def __init__(self, module: nn.Module, out_features: int) -> None:
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.out_features = out_features

    @property
    def num_params(self) -> int:
        return sum(self.numels)

    def init(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A fresh flat parameter vector ``[P]`` on the CPU (PyTorch's default initialisation, seeded: the
        same values whatever the device the caller moves it to)."""
        gen = torch.Generator().manual_seed(seed)
        parts = []
        for name, shape in zip(self.names, self.shapes):
            if name.endswith("bias"):
                parts.append(torch.zeros(shape, device="cpu"))
            else:
                fan_in = math.prod(shape[1:])
                bound = math.sqrt(6.0 / fan_in)  # He-uniform for the ReLU nets used here
                parts.append((torch.rand(shape, generator=gen, device="cpu") * 2 - 1) * bound)
        return torch.cat([p.flatten() for p in parts]).to(dtype)

    def flatten(self, module: nn.Module | None = None) -> torch.Tensor:
        """The current parameters of ``module`` (default: this model's own) as one flat vector ``[P]``,
        in the order :meth:`unflatten` reads: a trained ``nn.Module``'s lambda."""
        params = dict((module or self.module).named_parameters())
        if list(params) != self.names:
            raise ValueError(f"the module's parameters {list(params)} are not this model's {self.names}")
        return torch.cat([p.detach().flatten() for p in params.values()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.shape != (self.num_params,):
            raise ValueError(f"flat parameters must have shape [{self.num_params}], got {tuple(flat.shape)}")
        return {name: part.view(shape) for name, part, shape in
                zip(self.names, torch.split(flat, self.numels), self.shapes)}

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x [N, ...]`` → ``[N, out_features]``."""
        return functional_call(self.module, self.unflatten(flat), (x,))


def conv4(in_channels: int = 1, channels: int = 64, image_size: int = 28) -> FlatModel:
    """4 x [conv 3x3 (padding 1), ReLU, max-pool 2]: no batch-statistics norm, which would couple
    the examples of a task and break per-example curvature."""
    layers: list[nn.Module] = []
    size, c_in = image_size, in_channels
    for _ in range(4):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        size, c_in = size // 2, channels
    if size < 1:
        raise ValueError(f"conv4 needs images of at least 16x16, got {image_size}x{image_size}")
    return FlatModel(nn.Sequential(*layers, nn.Flatten()), channels * size * size)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(in_features: int, hidden: tuple[int, ...] = (64, 64), activation: str = "relu") -> FlatModel:
    """Flatten, then Linear + activation per hidden width. A smooth activation (``tanh``,
    ``softplus``) keeps an inner problem over the whole network twice differentiable, which
    quasi-Newton inner solves and third-order influence terms need; ReLU is piecewise linear."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    return FlatModel(nn.Sequential(*layers), width)
