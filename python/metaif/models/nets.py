"""Conv-4, ResNet-12 and MLP feature extractors, called functionally with a flat parameter vector.

Parameters at the meta and influence layers are flat vectors; :class:`FlatModel` maps one to the
module's parameters (``torch.func.functional_call``), so that a model can be evaluated, and
differentiated, at any parameter vector, and vmapped over tasks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FlatModel:
    """A module evaluated at flat parameter vectors ``[P]``; ``out_features`` is its output width.
    Batch norms must be in eval mode (frozen statistics: a per-channel affine map of each example);
    in train mode their batch statistics would couple a task's examples, and they are refused."""

    def __init__(self, module: nn.Module, out_features: int) -> None:
        coupled = [name for name, m in module.named_modules() if isinstance(m, _NORMS) and m.training]
        if coupled:
            raise ValueError(f"batch norm in train mode ({', '.join(coupled)}): its batch statistics couple a task's "
                             f"examples, which per-example curvature cannot express; call .eval() on the module "
                             f"(frozen statistics, an affine map)")
        owners = dict(module.named_modules())
        self.norm_params = {name for name, _ in module.named_parameters()
                            if isinstance(owners[name.rpartition(".")[0]], _NORMS)}
        self.module = module
        # frozen statistics, served in the parameters' dtype and device
        self.buffers = {name: b for name, b in module.named_buffers() if b.is_floating_point()}
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
            if name in self.norm_params:  # a norm starts as the identity: scale 1, shift 0
                parts.append(torch.full(shape, 0.0 if name.endswith("bias") else 1.0))
            elif name.endswith("bias"):
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

    def check_inputs(self, flat: torch.Tensor, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` that names the shapes unless the model maps ``x [N, ...]``'s first
        input to ``[1, out_features]`` (one input: cheap, before any long work)."""
        name = type(self.module).__name__
        try:
            with torch.no_grad():
                out = self(flat, x[:1])
        except RuntimeError as err:
            raise ValueError(f"the body ({name}) cannot take inputs of shape {tuple(x.shape[1:])}: {err}; give it "
                             f"images of the size it was built for (e.g. conv4(image_size=...))") from None
        if out.shape != (1, self.out_features):
            raise ValueError(f"the body ({name}) maps an input of shape {tuple(x.shape[1:])} to {tuple(out.shape[1:])}, "
                             f"not to [{self.out_features}] features (its out_features): end it with a Flatten (or "
                             f"pooling) to a vector of out_features")

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x [N, ...]`` → ``[N, out_features]``."""
        state = self.unflatten(flat)
        state.update((name, b.to(device=flat.device, dtype=flat.dtype)) for name, b in self.buffers.items())
        return functional_call(self.module, state, (x,))


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


class _ResidualBlock(nn.Module):
    """Three 3x3 convolutions with batch norm and LeakyReLU(0.1), a 1x1 convolution shortcut, the sum
    through LeakyReLU, a 2x max-pool."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()

        def conv_bn(c: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out))

        self.body = nn.Sequential(conv_bn(c_in, 3), nn.LeakyReLU(0.1), conv_bn(c_out, 3), nn.LeakyReLU(0.1),
                                  conv_bn(c_out, 3))
        self.shortcut = conv_bn(c_in, 1)
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


RESNET12_WIDTHS = (64, 160, 320, 640)


def resnet12(in_channels: int = 3, widths: tuple[int, ...] = RESNET12_WIDTHS, image_size: int = 84) -> FlatModel:
    """The few-shot ResNet-12 (MetaOptNet, Lee et al. 2019): four residual blocks of ``widths``, then
    global average pooling to ``widths[-1]`` features. Batch norms in eval mode (frozen statistics:
    an affine map per channel, starting as the identity), so a task's examples stay independent."""
    if len(widths) != 4 or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"resnet12 needs four positive widths, got {widths}")
    if image_size < 16:
        raise ValueError(f"resnet12 needs images of at least 16x16 (four 2x max-pools), got {image_size}x{image_size}")
    blocks, c_in = [], in_channels
    for width in widths:
        blocks.append(_ResidualBlock(c_in, width))
        c_in = width
    module = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return FlatModel(module, widths[-1])


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
