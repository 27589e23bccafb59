"""Networks used functionally on flat parameter vectors."""

from .nets import FlatModel, conv4, mlp

__all__ = ["FlatModel", "conv4", "mlp"]
