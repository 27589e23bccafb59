"""Task sets are deterministic, have stable identities, and record corruption."""

from itertools import combinations

import pytest
import torch

from metaif.data import TaskConfig, corrupt_labels, load_digits, sample_tasks, split_classes, split_images

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_tasks")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_class_split_is_disjoint_and_seeded(digits):
    train, test = split_classes(digits, 0.4, seed=3)
    assert not set(train.classes) & set(test.classes) and len(test.classes) == 4
    assert split_classes(digits, 0.4, seed=3)[0].classes == train.classes


def test_image_split_shares_classes_not_images(digits):
    train, test = split_images(digits, 0.5, seed=0)
    assert train.classes == test.classes
    assert not set(train.indices.tolist()) & set(test.indices.tolist())


def test_sampling_is_stable_per_task(digits):
    pool, _ = split_classes(digits, 0.5, seed=0)
    small = sample_tasks(pool, TaskConfig(ways=3, shots=2, queries=4, num_tasks=5, seed=7))
    large = sample_tasks(pool, TaskConfig(ways=3, shots=2, queries=4, num_tasks=9, seed=7))
    assert torch.equal(small.train_index, large.train_index[:5])  # task i does not depend on m
    assert small.x_train.shape == (5, 6, 1, 8, 8) and small.x_val.shape == (5, 12, 1, 8, 8)
    assert small.y_train[0].tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(5):  # labels match the dataset classes, splits are disjoint
        assert torch.equal(digits.labels[small.train_index[i]], small.classes[i][small.y_train[i]])
        assert not set(small.train_index[i].tolist()) & set(small.val_index[i].tolist())
    assert set(small.classes.flatten().tolist()) <= set(pool.classes)
    assert small.fingerprint() == sample_tasks(pool, small.config).fingerprint()
    assert small.fingerprint() != sample_tasks(pool, TaskConfig(3, 2, 4, 5, seed=8)).fingerprint()


def test_removal_keeps_identities(digits):
    pool, _ = split_classes(digits, 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=2, shots=1, queries=2, num_tasks=6))
    kept = tasks.without_tasks([1, 4])
    assert kept.task_ids.tolist() == [0, 2, 3, 5]
    assert torch.equal(kept.train_index[1], tasks.train_index[2])


def test_label_flip_corruption_is_recorded(digits):
    pool, _ = split_classes(digits, 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=2, queries=3, num_tasks=20))
    bad = corrupt_labels(tasks, task_fraction=0.8, instance_fraction=0.4, seed=1)
    assert int(bad.corrupted.sum()) == 16
    changed_train = bad.y_train != tasks.y_train
    assert torch.equal(changed_train, bad.flipped_train)  # every flip changes the label
    assert not bad.flipped_train[~bad.corrupted].any()
    assert int(bad.flipped_train[bad.corrupted].sum(1).max()) == 4  # 40% of 10
    with pytest.raises(ValueError, match="task_fraction must be in"):
        corrupt_labels(tasks, task_fraction=1.5)


def test_too_few_classes_is_a_clear_error(digits):
    pool, _ = split_classes(digits, 0.5, seed=0)
    with pytest.raises(ValueError, match="5-way tasks need|10-way tasks need"):
        sample_tasks(pool, TaskConfig(ways=10, shots=1, queries=1, num_tasks=1))


def test_class_combinations_enumerate_every_choice_once():
    pool, _ = split_images(load_digits(), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=2, num_tasks=252, class_combinations=True))
    assert [tuple(c) for c in tasks.classes.tolist()] == list(combinations(range(10), 5))
    with pytest.raises(ValueError, match="need more than the 252 combinations"):
        sample_tasks(pool, TaskConfig(ways=5, num_tasks=253, class_combinations=True))


def test_rotations_make_each_turn_a_class_and_keep_a_class_on_its_side(digits):
    from metaif.data import hold_out, rotate_classes, with_rotations

    turned = rotate_classes(digits)
    n, c = len(digits.labels), digits.num_classes
    assert turned.images.shape == (4 * n, *digits.images.shape[1:]) and turned.num_classes == 4 * c
    i = 17
    for k in range(4):  # image i turned k times is image i + k n, of class label + k c
        assert torch.equal(turned.images[i + k * n], torch.rot90(digits.images[i], k, dims=(1, 2)))
        assert int(turned.labels[i + k * n]) == int(digits.labels[i]) + k * c
    assert turned.class_names[c + 3] == f"{digits.class_names[3]} (turned 90)"
    train, test = split_classes(digits, 0.5, seed=0)
    train, validation = hold_out(train, 0.2, 2, seed=0)
    pools = with_rotations(train, validation, test)
    assert all(pool.dataset is pools[0].dataset for pool in pools)
    sides = [{cls % c for cls in pool.classes} for pool in pools]
    assert [len(pool.classes) for pool in pools] == [4 * len(p.classes) for p in (train, validation, test)]
    assert sides == [set(p.classes) for p in (train, validation, test)]  # every turn of a class on its side
    tasks = sample_tasks(pools[1], TaskConfig(ways=3, shots=1, queries=2, num_tasks=20, seed=0))
    drawn = {int(turned.labels[j]) for j in tasks.train_index.flatten()}
    assert drawn <= set(pools[1].classes) and any(label >= c for label in drawn)
    with pytest.raises(ValueError, match="square images"):
        rotate_classes(type(digits)("wide", torch.zeros(2, 1, 4, 6), torch.zeros(2, dtype=torch.long), ("a",)))
