"""Per-example losses of a model's outputs (logits), with the derivatives the head curvature
needs: the gradient in the logits (``residual``) and the Hessian in the logits, which for these
losses does not depend on the targets.

Targets are integer class labels ``y [...]`` (one-hot encoded where the loss needs a vector) or,
for the squared loss, real-valued targets ``[..., K]`` (or ``[...]`` when ``K = 1``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "BinaryLogistic", "Loss", "SoftmaxCrossEntropy", "SquaredError", "get_loss"]


def _onehot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # F.one_hot reads the labels' maximum, which vmap cannot do.
    return (y[..., None] == torch.arange(like.shape[-1], device=y.device)).to(like)


def psd_root(matrix: torch.Tensor) -> torch.Tensor:
    """``R [..., K, K]`` with ``R R^T = matrix`` for batched symmetric PSD ``matrix [..., K, K]``
    (eigenvectors scaled by the square roots of the clamped eigenvalues)."""
    vals, vecs = torch.linalg.eigh(matrix)
    return vecs * vals.clamp_min(0).sqrt()[..., None, :]


class Loss(ABC):
    """``value(logits [..., K], y) -> [...]``, ``residual`` (its logit gradient, ``[..., K]``),
    ``hessian(logits) -> [..., K, K]``; ``outputs(classes)`` is K for a task of ``classes``
    classes (or target dimensions); ``quadratic`` losses make a linear head's problem quadratic."""

    name: ClassVar[str]
    quadratic: ClassVar[bool] = False

    def outputs(self, classes: int) -> int:
        return classes

    @abstractmethod
    def value(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def residual(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def hessian(self, logits: torch.Tensor) -> torch.Tensor: ...

    def hessian_root(self, logits: torch.Tensor) -> torch.Tensor:
        """``R [..., K, K]`` with ``R R^T = hessian(logits)`` (the few-shot factor's per-example
        block); by a batched eigendecomposition unless the loss has a closed form."""
        return psd_root(self.hessian(logits))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted class per example (argmax of the logits)."""
        return logits.argmax(-1)


class SoftmaxCrossEntropy(Loss):
    name = "softmax"

    def value(self, logits, y):
        return torch.logsumexp(logits, -1) - (logits * _onehot(y, logits)).sum(-1)

    def residual(self, logits, y):
        return torch.softmax(logits, -1) - _onehot(y, logits)

    def hessian(self, logits):
        p = torch.softmax(logits, -1)
        return torch.diag_embed(p) - p[..., :, None] * p[..., None, :]

    def hessian_root(self, logits):
        # (diag(s) - p s^T)(diag(s) - s p^T) = diag(p) - p p^T for s = sqrt(p), since s^T s = 1:
        # no eigendecomposition (thousands of tiny batched ones dominated the head solves)
        p = torch.softmax(logits, -1)
        s = p.sqrt()
        return torch.diag_embed(s) - p[..., :, None] * s[..., None, :]


class SquaredError(Loss):
    """``0.5 ||logits - t||^2``: one-hot targets for integer labels, else the real-valued targets."""

    name = "squared"
    quadratic = True

    @staticmethod
    def targets(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            return (y if y.dim() == logits.dim() else y[..., None]).to(logits)
        return _onehot(y, logits)

    def value(self, logits, y):
        return 0.5 * (logits - self.targets(logits, y)).pow(2).sum(-1)

    def residual(self, logits, y):
        return logits - self.targets(logits, y)

    def hessian(self, logits):
        eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        return eye.expand(*logits.shape, logits.shape[-1])

    def hessian_root(self, logits):
        return self.hessian(logits)


class BinaryLogistic(Loss):
    """Two classes with one logit z: ``softplus(z) - y z`` for labels y in {0, 1} (no 2-class
    softmax reparametrisation, so the head has half the parameters)."""

    name = "binary"

    def outputs(self, classes: int) -> int:
        if classes != 2:
            raise ValueError(f"the binary logistic loss needs 2 classes, got {classes}")
        return 1

    def value(self, logits, y):
        z = logits[..., 0]
        return F.softplus(z) - y.to(z) * z

    def residual(self, logits, y):
        return torch.sigmoid(logits) - y.to(logits)[..., None]

    def hessian(self, logits):
        s = torch.sigmoid(logits)
        return (s * (1 - s))[..., None]

    def hessian_root(self, logits):
        return self.hessian(logits).sqrt()

    def predict(self, logits):
        return (logits[..., 0] > 0).long()


LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in (SoftmaxCrossEntropy, SquaredError, BinaryLogistic)}


def get_loss(name: str) -> Loss:
    """The registered loss ``name`` (``softmax``, ``squared``, ``binary``)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]()
