"""Data sets, class/image splits and few-shot task sets with stable identities."""

from .catalog import DATASETS, EMBEDDED, load_dataset
from .datasets import ClassDataset, DataError, load_digits, load_miniimagenet, load_mnist, load_omniglot
from .pixels import PIXEL_CODE, decode_pixels, encode_pixels
from .synthetic import SYNTHETIC_NAME, make_synthetic_images
from .tasks import (
    Pool,
    TaskConfig,
    TaskSet,
    corrupt_labels,
    hold_out,
    rotate_classes,
    sample_tasks,
    split_classes,
    split_images,
    with_rotations,
)

__all__ = ["DATASETS", "EMBEDDED", "PIXEL_CODE", "SYNTHETIC_NAME", "ClassDataset", "DataError", "Pool", "TaskConfig",
           "TaskSet", "corrupt_labels", "decode_pixels", "encode_pixels", "hold_out", "load_dataset", "load_digits",
           "load_miniimagenet", "load_mnist", "load_omniglot", "make_synthetic_images", "rotate_classes", "sample_tasks",
           "split_classes", "split_images", "with_rotations"]
