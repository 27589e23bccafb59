"""Networks used functionally on flat parameter vectors."""

from .nets import RESNET12_WIDTHS, FlatModel, conv4, mlp, resnet12

__all__ = ["FlatModel", "RESNET12_WIDTHS", "conv4", "mlp", "resnet12"]
