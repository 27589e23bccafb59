"""Data sets, class/image splits and few-shot task sets with stable identities."""

from .datasets import ClassDataset, DataError, load_dataset, load_digits, load_miniimagenet, load_mnist, load_omniglot
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

__all__ = ["ClassDataset", "DataError", "Pool", "TaskConfig", "TaskSet", "corrupt_labels", "hold_out", "load_dataset",
           "load_digits", "load_miniimagenet", "load_mnist", "load_omniglot", "rotate_classes", "sample_tasks",
           "split_classes", "split_images", "with_rotations"]
