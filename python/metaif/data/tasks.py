"""Few-shot task sets with stable identities.

A :class:`TaskSet` is a fixed, seeded collection of N-way K-shot tasks drawn from a
:class:`Pool` of images. Task ``i`` is drawn from its own random stream (seed, i), so it is the
same task whatever the number of tasks; instance ``(i, split, j)`` is the j-th example of task
i's ``train`` or ``val`` split. Removing "task 17" or "val instance (17, 3)" therefore means the
same thing in every run. Images are stored once and gathered by index.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from .datasets import ClassDataset
from .pixels import decode_pixels

__all__ = ["TaskConfig", "Pool", "TaskSet", "corrupt_labels", "hold_out", "rotate_classes", "sample_tasks",
           "split_classes", "split_images", "with_rotations"]


@dataclass(frozen=True)
class TaskConfig:
    """N-way (``ways``) K-shot (``shots``) tasks with ``queries`` validation points per class;
    ``class_combinations``: task i uses the i-th combination of ``ways`` classes (in
    ``itertools.combinations`` order, e.g. all 252 for 5 of 10 MNIST digits) instead of drawing them."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    num_tasks: int = 1000
    seed: int = 0
    class_combinations: bool = False

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries", "num_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaskConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.ways < 2:
            raise ValueError(f"TaskConfig.ways must be >= 2 for classification, got {self.ways}")


@dataclass(frozen=True)
class Pool:
    """The images tasks may use: the data set, its allowed classes and allowed image indices."""

    dataset: ClassDataset
    classes: tuple[int, ...]
    indices: torch.Tensor  # [k] ascending image indices

    def class_members(self) -> dict[int, np.ndarray]:
        allowed = np.zeros(len(self.dataset.labels), dtype=bool)
        allowed[self.indices.numpy()] = True
        labels = self.dataset.labels.numpy()
        return {c: np.flatnonzero(allowed & (labels == c)) for c in self.classes}


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def split_classes(dataset: ClassDataset, test_fraction: float = 0.5, seed: int = 0) -> tuple[Pool, Pool]:
    """Disjoint meta-train / meta-test classes (seeded); every image of a class goes with it."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = _rng(seed, 1).permutation(dataset.num_classes)
    n_test = max(1, round(test_fraction * dataset.num_classes))
    test, train = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    all_idx = torch.arange(len(dataset.labels))
    return Pool(dataset, tuple(train), all_idx), Pool(dataset, tuple(test), all_idx)


def split_images(dataset: ClassDataset, test_fraction: float = 0.5, seed: int = 0) -> tuple[Pool, Pool]:
    """All classes on both sides, disjoint halves of each class's images (the paper's MNIST setting)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = _rng(seed, 2)
    train, test = [], []
    for c in range(dataset.num_classes):
        members = dataset.indices_of(c).numpy()
        members = members[rng.permutation(len(members))]
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    classes = tuple(range(dataset.num_classes))

    def as_indices(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.sort(np.concatenate(parts))).long()

    return Pool(dataset, classes, as_indices(train)), Pool(dataset, classes, as_indices(test))


def hold_out(pool: Pool, fraction: float, ways: int, seed: int = 0, by: str = "classes") -> tuple[Pool, Pool]:
    """(kept, held-out) parts of ``pool`` for validation: whole classes (``by="classes"``, when the
    pool has enough of them for ``ways``-way tasks on both sides), else a ``fraction`` of every
    class's images."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if by not in ("classes", "images"):
        raise ValueError(f"by must be 'classes' or 'images', got {by!r}")
    classes = list(pool.classes)
    held = max(ways, round(fraction * len(classes)))
    if by == "classes" and len(classes) - held >= ways:
        order = _rng(seed, 4).permutation(len(classes))
        chosen = sorted(classes[i] for i in order[:held])
        return (Pool(pool.dataset, tuple(c for c in classes if c not in chosen), pool.indices),
                Pool(pool.dataset, tuple(chosen), pool.indices))
    rng = _rng(seed, 5)
    kept, out = [], []
    for members in pool.class_members().values():
        members = members[rng.permutation(len(members))]
        n_out = round(fraction * len(members))
        out.append(members[:n_out])
        kept.append(members[n_out:])

    def as_indices(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.sort(np.concatenate(parts))).long()

    return Pool(pool.dataset, pool.classes, as_indices(kept)), Pool(pool.dataset, pool.classes, as_indices(out))


TURNS = 4  # quarter turns: 0, 90, 180 and 270 degrees


def rotate_classes(dataset: ClassDataset) -> ClassDataset:
    """Every class of ``dataset`` four times, turned by 0, 90, 180 and 270 degrees, each turn a class
    of its own (the Omniglot practice since Santoro et al. 2016): turn ``k`` of class ``c`` is class
    ``c + k C`` and of image ``i`` image ``i + k N``, ``[4 N, C, H, W]``. Square images only."""
    x = dataset.images
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{dataset.name}: rotations need square images, got {x.shape[-2]}x{x.shape[-1]}")
    images = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(TURNS)]).contiguous()
    labels = torch.cat([dataset.labels + k * dataset.num_classes for k in range(TURNS)])
    names = tuple(f"{name} (turned {90 * k})" if k else name for k in range(TURNS) for name in dataset.class_names)
    return ClassDataset(dataset.name, images, labels, names)


def with_rotations(*pools: Pool) -> tuple[Pool, ...]:
    """``pools`` of one data set carried over to :func:`rotate_classes` of it: each holds the four turns
    of its own classes and images, so that a class's turns stay on its side of every split."""
    dataset = pools[0].dataset
    if any(pool.dataset is not dataset for pool in pools):
        raise ValueError("with_rotations: the pools must share one data set")
    rotated, n, c = rotate_classes(dataset), len(dataset.labels), dataset.num_classes
    return tuple(Pool(rotated, tuple(k * c + cls for k in range(TURNS) for cls in pool.classes),
                      torch.cat([pool.indices + k * n for k in range(TURNS)])) for pool in pools)


@dataclass(frozen=True)
class TaskSet:
    """m tasks; train split ``[m, N*K]``, validation split ``[m, N*Q]`` (indices into ``images``).

    Labels are task-local (0..N-1), class-major. ``flipped_*`` mark corrupted labels and
    ``corrupted`` the tasks chosen for corruption; ``task_ids`` survive :meth:`subset`. Task sets
    built from plain tensors (:meth:`from_tensors`) may hold real-valued targets and have no
    ``config`` (no N-way K-shot structure).
    """

    images: torch.Tensor          # [num_images, ...] inputs (float, or uint8 pixel codes), shared by all tasks
    train_index: torch.Tensor     # [m, n] int64
    val_index: torch.Tensor       # [m, v] int64
    y_train: torch.Tensor         # [m, n] int64 labels, or real-valued targets [m, n] / [m, n, K]
    y_val: torch.Tensor           # [m, v] likewise
    classes: torch.Tensor         # [m, N] dataset class of each task-local label
    task_ids: torch.Tensor        # [m]
    config: TaskConfig | None
    source: str                   # data set name and split, for provenance
    corrupted: torch.Tensor = field(default=None)       # [m] bool
    flipped_train: torch.Tensor = field(default=None)   # [m, N*K] bool
    flipped_val: torch.Tensor = field(default=None)     # [m, N*Q] bool

    def __post_init__(self) -> None:
        m = self.train_index.shape[0]
        defaults = {"corrupted": torch.zeros(m, dtype=torch.bool),
                    "flipped_train": torch.zeros_like(self.y_train, dtype=torch.bool),
                    "flipped_val": torch.zeros_like(self.y_val, dtype=torch.bool)}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return self.train_index.shape[0]

    @staticmethod
    def from_tensors(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                     source: str = "tensors") -> TaskSet:
        """Tasks from plain per-task tensors: inputs ``x_train [m, n, ...]``, ``x_val [m, v, ...]`` and
        targets ``y_train [m, n]``, ``y_val [m, v]`` (integer labels) or real values (``[m, n]`` or
        ``[m, n, K]``, for squared losses). Every input is stored once; inputs shared by several
        tasks are not detected (pass an index-based task set for the unique-input savings)."""
        if x_train.dim() < 2 or x_val.dim() < 2 or x_train.shape[0] != x_val.shape[0]:
            raise ValueError(f"x_train [m, n, ...] and x_val [m, v, ...] need the same m, got {tuple(x_train.shape)} "
                             f"and {tuple(x_val.shape)}")
        if x_train.shape[2:] != x_val.shape[2:]:
            raise ValueError(f"train and validation inputs must share their shape, got {tuple(x_train.shape[2:])} "
                             f"and {tuple(x_val.shape[2:])}")
        m, n, v = x_train.shape[0], x_train.shape[1], x_val.shape[1]
        if y_train.shape[:2] != (m, n) or y_val.shape[:2] != (m, v):
            raise ValueError(f"y_train must start with [m, n] = [{m}, {n}] and y_val with [m, v] = [{m}, {v}], got "
                             f"{tuple(y_train.shape)} and {tuple(y_val.shape)}")
        images = torch.cat([x_train.flatten(0, 1), x_val.flatten(0, 1)])
        index = torch.arange(m * (n + v)).view(-1)
        return TaskSet(images, index[: m * n].view(m, n), index[m * n:].view(m, v), y_train, y_val,
                       torch.zeros(m, 0, dtype=torch.int64), torch.arange(m), None, source)

    @property
    def x_train(self) -> torch.Tensor:
        """``[m, N*K, C, H, W]`` float (pixel codes decoded)."""
        return decode_pixels(self.images[self.train_index])

    @property
    def x_val(self) -> torch.Tensor:
        """``[m, N*Q, C, H, W]`` float (pixel codes decoded)."""
        return decode_pixels(self.images[self.val_index])

    def subset(self, rows: torch.Tensor | list[int]) -> TaskSet:
        """The tasks at positions ``rows`` (not ids), keeping their ids and corruption marks."""
        rows = torch.as_tensor(rows, dtype=torch.long, device="cpu")
        pick = lambda t: t[rows]  # noqa: E731
        return replace(self, train_index=pick(self.train_index), val_index=pick(self.val_index),
                       y_train=pick(self.y_train), y_val=pick(self.y_val), classes=pick(self.classes),
                       task_ids=pick(self.task_ids), corrupted=pick(self.corrupted),
                       flipped_train=pick(self.flipped_train), flipped_val=pick(self.flipped_val))

    def without_tasks(self, task_ids: list[int] | torch.Tensor) -> TaskSet:
        """The task set with the tasks of the given ids removed."""
        drop = torch.isin(self.task_ids, torch.as_tensor(task_ids, dtype=torch.long, device="cpu"))
        return self.subset(torch.nonzero(~drop).flatten())

    def fingerprint(self) -> str:
        """A short hash of the whole content: the identity checkpoints are tied to."""
        h = hashlib.sha256()
        for t in (self.images, self.train_index, self.val_index, self.y_train, self.y_val, self.task_ids):
            h.update(t.numpy().tobytes())
        config = asdict(self.config) if self.config is not None else None
        h.update(repr((config, self.source, tuple(self.images.shape))).encode())
        return h.hexdigest()[:16]


def sample_tasks(pool: Pool, config: TaskConfig, source: str | None = None) -> TaskSet:
    """Draw ``config.num_tasks`` tasks from ``pool``; task i uses the random stream (seed, i)."""
    members = pool.class_members()
    need = config.shots + config.queries
    eligible = [c for c in pool.classes if len(members[c]) >= need]
    if len(eligible) < config.ways:
        raise ValueError(f"only {len(eligible)} classes of the pool have >= {need} images "
                         f"(shots + queries); {config.ways}-way tasks need {config.ways}")
    m, n, k, q = config.num_tasks, config.ways, config.shots, config.queries
    combos = None
    if config.class_combinations:
        combos = list(itertools.islice(itertools.combinations(range(len(eligible)), n), m))
        if len(combos) < m:
            raise ValueError(f"{m} tasks of distinct {n}-class combinations need more than the {len(combos)} "
                             f"combinations of the pool's {len(eligible)} classes")
    train_index = np.empty((m, n * k), dtype=np.int64)
    val_index = np.empty((m, n * q), dtype=np.int64)
    classes = np.empty((m, n), dtype=np.int64)
    for i in range(m):
        rng = _rng(config.seed, 1000, i)
        chosen = combos[i] if combos is not None else rng.choice(len(eligible), size=n, replace=False)
        for label, pos in enumerate(chosen):
            c = eligible[pos]
            picks = rng.choice(members[c], size=need, replace=False)
            classes[i, label] = c
            train_index[i, label * k:(label + 1) * k] = picks[:k]
            val_index[i, label * q:(label + 1) * q] = picks[k:]
    local = lambda per: torch.arange(n).repeat_interleave(per).expand(m, -1).clone()  # noqa: E731
    return TaskSet(pool.dataset.images, torch.from_numpy(train_index), torch.from_numpy(val_index),
                   local(k), local(q), torch.from_numpy(classes), torch.arange(m), config,
                   source or pool.dataset.name)


def corrupt_labels(tasks: TaskSet, task_fraction: float = 0.0, instance_fraction: float = 0.0,
                   seed: int = 0) -> TaskSet:
    """Label-flip corruption, recorded in the returned task set.

    A ``task_fraction`` of the tasks is chosen; in each chosen task a ``instance_fraction`` of
    the examples of both splits (all of them when ``instance_fraction`` is 0) get a label drawn
    uniformly from the task's other classes.
    """
    for name, value in (("task_fraction", task_fraction), ("instance_fraction", instance_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rng = _rng(seed, 3)
    m, ways = len(tasks), tasks.config.ways
    chosen = np.zeros(m, dtype=bool)
    chosen[rng.choice(m, size=round(task_fraction * m), replace=False)] = True
    labels, flips = [], []
    for y in (tasks.y_train, tasks.y_val):
        y = y.numpy().copy()
        flip = np.zeros_like(y, dtype=bool)
        for i in np.flatnonzero(chosen):
            count = y.shape[1] if instance_fraction == 0 else max(1, round(instance_fraction * y.shape[1]))
            flip[i, rng.choice(y.shape[1], size=count, replace=False)] = True
        shift = rng.integers(1, ways, size=y.shape)
        y[flip] = (y[flip] + shift[flip]) % ways
        labels.append(torch.from_numpy(y))
        flips.append(torch.from_numpy(flip))
    return replace(tasks, y_train=labels[0], y_val=labels[1], corrupted=torch.from_numpy(chosen),
                   flipped_train=flips[0] | tasks.flipped_train, flipped_val=flips[1] | tasks.flipped_val)
