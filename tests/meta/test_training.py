"""Outer training is deterministic, resumes from checkpoints, and retraining without a task moves lambda."""

import pytest
import torch

from metaif.data import TaskConfig, TaskSet, load_digits, sample_tasks, split_classes
from metaif.experiments.retrain import retrain
from metaif.meta import (
    AnilConfig,
    AnilProblem,
    Bound,
    ImamlConfig,
    ImamlProblem,
    TaskBatch,
    TrainConfig,
    evaluate,
    meta_train,
    solve_outer,
)
from metaif.models import mlp
from metaif.utils.store import StaleResults

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_training")


@pytest.fixture(scope="module")
def setting():
    train_pool, test_pool = split_classes(load_digits(), 0.5, seed=0)
    train = sample_tasks(train_pool, TaskConfig(ways=5, shots=1, queries=5, num_tasks=40, seed=0))
    test = sample_tasks(test_pool, TaskConfig(ways=5, shots=1, queries=5, num_tasks=30, seed=1))
    problem = AnilProblem(mlp(64, (16,)), AnilConfig(ways=5, delta=1.0))
    return problem, train, test


def test_training_is_deterministic_and_resumes(setting, tmp_path):
    problem, train, _ = setting
    config = TrainConfig(steps=6, meta_batch=4, lr=1e-2, checkpoint_every=3)
    straight = meta_train(problem, train, config, progress=False)
    again = meta_train(problem, train, config, progress=False)
    assert torch.equal(straight.lam, again.lam)
    ckpt = tmp_path / "run.pt"
    first = meta_train(problem, train, TrainConfig(steps=3, meta_batch=4, lr=1e-2, checkpoint_every=3),
                       checkpoint=ckpt, progress=False)
    resumed = meta_train(problem, train, config, checkpoint=ckpt, progress=False)
    torch.testing.assert_close(resumed.lam, straight.lam, rtol=0, atol=0)
    assert len(resumed.losses) == 6
    assert resumed.wall_time > first.wall_time  # the first session's seconds are kept
    with pytest.raises(StaleResults, match=r"checkpoint of another run \(config.lr: 0.01 -> 0.005\)"):
        meta_train(problem, train, TrainConfig(steps=6, meta_batch=4, lr=5e-3), checkpoint=ckpt, progress=False)
    with pytest.raises(StaleResults, match="has 6 steps, more than the 4 asked for"):
        meta_train(problem, train, TrainConfig(steps=4, meta_batch=4, lr=1e-2, checkpoint_every=3), checkpoint=ckpt,
                   progress=False)


def test_polish_resumes_from_its_checkpoint_bit_identically(setting, tmp_path):
    problem, train, _ = setting
    lam0 = meta_train(problem, train, TrainConfig(steps=5, meta_batch=4, lr=1e-2), progress=False).lam.double()
    straight = solve_outer(problem, train, lam0, tol=1e-7, max_iter=12, chunk=4)
    ckpt = tmp_path / "polish.pt"
    solve_outer(problem, train, lam0, tol=1e-7, max_iter=8, chunk=4, checkpoint=ckpt)  # "interrupted" after 8
    resumed = solve_outer(problem, train, lam0, tol=1e-7, max_iter=12, chunk=4, checkpoint=ckpt)
    assert resumed.iterations == straight.iterations == 12
    torch.testing.assert_close(resumed.lam, straight.lam, rtol=0, atol=0)
    again = solve_outer(problem, train, lam0, tol=1e-7, max_iter=12, chunk=4, checkpoint=ckpt)  # resumed at its cap
    assert again.iterations == 12 and again.stop["reason"] == "cap" and torch.equal(again.lam, straight.lam)
    assert again.stop["final_grad_max"] == pytest.approx(straight.stop["final_grad_max"])
    with pytest.raises(StaleResults, match="tol"):
        solve_outer(problem, train, lam0, tol=1e-5, max_iter=12, chunk=4, checkpoint=ckpt)


def test_retraining_without_a_task_changes_lambda_deterministically(setting):
    problem, train, _ = setting
    config = TrainConfig(steps=20, meta_batch=0, lr=1e-2)  # full batch
    lam_star = meta_train(problem, train, config, progress=False).lam
    removed = retrain(problem, train, config, lam_star, remove_tasks=[3], test=setting[2])
    assert removed.accuracy == evaluate(problem, removed.lam, setting[2]) and removed.wall_time > 0
    same = retrain(problem, train, config, lam_star, remove_tasks=[3])
    kept = retrain(problem, train, config, lam_star)
    assert torch.equal(removed.lam, same.lam)
    change = (removed.lam - kept.lam).norm() / kept.lam.norm()
    assert change > 1e-5
    instance = retrain(problem, train, config, lam_star, remove_instances=[(3, "val", 0)])
    assert (instance.lam - kept.lam).norm() > 0
    with pytest.raises(ValueError, match="needs lam_star"):
        retrain(problem, train, config, None)


def test_meta_training_beats_random_features_on_digits(setting):
    problem, train, test = setting
    before = evaluate(problem, problem.init_lambda(0), test)
    after = evaluate(problem, meta_train(problem, train, TrainConfig(steps=40, meta_batch=8, lr=3e-3), progress=False).lam, test)
    assert after.mean > before.mean


@pytest.mark.slow
def test_imaml_trains(setting):
    _, train, test = setting
    problem = ImamlProblem(mlp(64, (16,), "tanh"), ImamlConfig(ways=5, delta=1.0, inner_max_iter=30))
    result = meta_train(problem, train.subset(list(range(8))), TrainConfig(steps=3, meta_batch=4, lr=1e-2),
                        progress=False)
    assert result.losses[-1] < result.losses[0] and result.inner_grad_norm < 1e-4
    accuracy = evaluate(problem, result.lam, test)  # 5-way: chance is 0.2
    assert accuracy.tasks == len(test) and accuracy.mean - accuracy.ci95 > 0.2, accuracy


def test_full_objective_is_what_the_polish_minimises():
    """Its gradient is the derivative of its value (central differences, float64, with a task and
    two instances weighted out), and a polish from lambda ends where that gradient vanishes."""
    from metaif.meta import Weights, full_objective
    from tests.helpers import make_problem, make_taskset

    tasks, problem = make_taskset(6, seed=2), make_problem("logistic", gamma=0.05)
    weights = Weights.uniform(tasks, torch.float64).without_positions(tasks=[1], val=[(2, 0)], train=[(3, 1)])
    lam = problem.init_lambda(0, torch.float64)
    value, grad = full_objective(problem, tasks, lam, weights)
    d = torch.randn(lam.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5
    slope = (full_objective(problem, tasks, lam + eps * d, weights)[0]
             - full_objective(problem, tasks, lam - eps * d, weights)[0]) / (2 * eps)
    assert abs(slope - float(grad @ d)) <= 1e-6 * abs(slope)
    assert value != full_objective(problem, tasks, lam)[0]  # the weights count
    polished = solve_outer(problem, tasks, lam, weights, tol=1e-10, max_iter=500).lam
    assert float(full_objective(problem, tasks, polished, weights)[1].abs().max()) <= 1e-9


def test_a_batch_over_every_image_shares_the_task_sets_tensor():
    """The unique inputs of a batch are a gather of the used images, except when every image is used:
    then the task set's own tensor (no 3.3 GB copy at mini-ImageNet's size)."""
    images = torch.randn(6, 1, 4, 4)

    def tasks(train_index):
        val_index = torch.tensor([[2], [5]])
        return TaskSet(images, train_index, val_index, torch.zeros_like(train_index), torch.zeros_like(val_index),
                       torch.tensor([[0, 1], [0, 1]]), torch.arange(2), None, "test")

    batch = TaskBatch.from_taskset(tasks(torch.tensor([[0, 1], [3, 4]])))
    assert batch.inputs.data_ptr() == images.data_ptr()
    batch = TaskBatch.from_taskset(tasks(torch.tensor([[0], [3]])))
    assert torch.equal(batch.inputs, images[[0, 2, 3, 5]]) and batch.inputs.data_ptr() != images.data_ptr()
    assert torch.equal(batch.inputs[batch.pos_tr], images[torch.tensor([[0], [3]])])


def test_feature_head_rows_gather_their_features_on_use():
    """A chunk of tasks keeps positions, not its per-slot features (5 GB at 10,000 mini-ImageNet tasks):
    the context is gathered from the unique inputs' features each time it is read."""
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=3, shots=2, queries=3, num_tasks=4, seed=0))
    problem = AnilProblem(mlp(64, (8,)), AnilConfig(ways=3))
    batch = TaskBatch.from_taskset(tasks)
    bound = Bound(problem, problem.init_lambda(0), batch)
    rows, phi = bound.rows[0], bound.binding.phi
    assert callable(rows.source)
    assert torch.equal(rows.xi[0], phi[batch.pos_tr]) and torch.equal(rows.xi[1], phi[batch.pos_val])
    heads = bound.binding.theta  # a chunk's heads are a view of every task's; other rows are copies
    assert rows.theta.untyped_storage().data_ptr() == heads.untyped_storage().data_ptr()
    picked = bound.binding.rows(torch.tensor([3, 1]))
    assert picked.theta.untyped_storage().data_ptr() != heads.untyped_storage().data_ptr()
    assert torch.equal(picked.theta, heads[[3, 1]])
