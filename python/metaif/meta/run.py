"""One meta-training run from a small config: data, split, tasks, model, form, training, evaluation."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import torch

from ..data import TaskConfig, TaskSet, load_dataset, sample_tasks, split_classes, split_images
from ..models import conv4, mlp
from ..utils.config import check, check_choice, config, finite, setting
from ..utils.io import save_torch, write_json
from .anil import AnilConfig, AnilProblem
from .imaml import ImamlConfig, ImamlProblem
from .train import TrainConfig, evaluate, meta_train

HEAD_LOSSES = {"logistic": "softmax", "ridge": "squared", "binary": "binary"}
DATASETS = ("digits", "omniglot", "mnist", "miniimagenet")
FORMS = ("anil", "imaml")
MODELS = ("mlp", "conv4")


@config
class RunConfig:
    """One meta-training run; saved as ``config.json`` next to its results."""

    dataset: str = setting("digits", "data set (digits is embedded; the others read --root)", choices=DATASETS)
    root: str | None = setting(None, "folder with the data set's files (not needed for digits)")
    split: str = setting("class", "meta-train/test split: class (disjoint classes) or image (disjoint images of "
                                  "every class, the paper's MNIST setting)", choices=("class", "image"))
    form: str = setting("anil", "bilevel form: anil (shared body, per-task head) or imaml (proximal inner problem)",
                        choices=FORMS)
    head: str = setting("logistic", "loss of the task outputs: logistic (softmax), ridge (squared), binary",
                        choices=tuple(HEAD_LOSSES))
    model: str = setting("mlp", "body: mlp or conv4", choices=MODELS)
    hidden: tuple[int, ...] = setting((64, 64), "hidden widths of the mlp body")
    channels: int = setting(64, "channels of the conv4 body")
    activation: str = setting("relu", "activation of the mlp body", choices=("relu", "tanh", "softplus"))
    ways: int = setting(5, "classes per task (N-way)")
    shots: int = setting(1, "training examples per class (K-shot)")
    queries: int = setting(15, "validation examples per class")
    train_tasks: int = setting(1000, "meta-training tasks")
    test_tasks: int = setting(500, "meta-test tasks (accuracy)")
    delta: float = setting(1.0, "inner L2 weight (the head's for anil, the proximal weight for imaml)")
    gamma: float = setting(1e-4, "outer L2 weight on lambda")
    train: TrainConfig = setting(help="outer training (Adam)", factory=TrainConfig)
    seed: int = setting(0, "seed of the split and the task draws")

    def __post_init__(self) -> None:
        for name, choices in (("dataset", DATASETS), ("split", ("class", "image")), ("form", FORMS),
                              ("head", HEAD_LOSSES), ("model", MODELS), ("activation", ("relu", "tanh", "softplus"))):
            check_choice(self, name, getattr(self, name), choices)
        for name in ("channels", "ways", "shots", "queries", "train_tasks", "test_tasks"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, self, name, "an integer >= 1", value)
        check(self.ways >= 2, self, "ways", ">= 2 (classification tasks)", self.ways)
        check(all(isinstance(h, int) and h >= 1 for h in self.hidden), self, "hidden", "positive widths", self.hidden)
        check(finite(self.delta) and self.delta > 0, self, "delta", "a finite number > 0", self.delta)
        check(finite(self.gamma) and self.gamma >= 0, self, "gamma", "a finite number >= 0", self.gamma)
        check(isinstance(self.train, TrainConfig), self, "train", "a TrainConfig", self.train)


def pools(config: RunConfig):
    """The (meta-train, meta-test) pools of ``config``'s data set and split (loaded once per
    process: experiments sample score and test tasks from them after training)."""
    return _pools(config.dataset, config.root, config.split, config.seed)


@lru_cache(maxsize=2)
def _pools(dataset: str, root: str | None, split: str, seed: int):
    splitter = split_classes if split == "class" else split_images
    return splitter(load_dataset(dataset, root), 0.5, seed=seed)


def build(config: RunConfig):
    """(problem, meta-train task set, meta-test task set) for ``config``."""
    train_pool, test_pool = pools(config)
    data = train_pool.dataset
    spec = dict(ways=config.ways, shots=config.shots, queries=config.queries)
    train = sample_tasks(train_pool, TaskConfig(**spec, num_tasks=config.train_tasks, seed=config.seed))
    test = sample_tasks(test_pool, TaskConfig(**spec, num_tasks=config.test_tasks, seed=config.seed + 10_000))
    channels, size = data.images.shape[1], data.images.shape[-1]
    body = (conv4(channels, config.channels, size) if config.model == "conv4"
            else mlp(channels * size * size, config.hidden, config.activation))
    loss = HEAD_LOSSES[config.head]
    if config.form == "anil":
        problem = AnilProblem(body, AnilConfig(ways=config.ways, loss=loss, delta=config.delta, gamma=config.gamma))
    else:
        problem = ImamlProblem(body, ImamlConfig(ways=config.ways, loss=loss, delta=config.delta, gamma=config.gamma))
    return problem, train, test


def run(config: RunConfig, out: str | Path, progress: bool = True, tasks: TaskSet | None = None) -> dict:
    """Train (resuming from ``out/checkpoint.pt``), evaluate against the untrained baseline, and
    write ``config.json``, ``lambda.pt`` and ``results.json`` to ``out``; ``tasks`` replaces the
    sampled meta-train set (e.g. a label-corrupted copy)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(config))
    torch.manual_seed(config.seed)
    problem, train, test = build(config)
    train = train if tasks is None else tasks
    began = time.perf_counter()
    result = meta_train(problem, train, config.train, checkpoint=out / "checkpoint.pt", progress=progress)
    wall = time.perf_counter() - began
    baseline = evaluate(problem, problem.init_lambda(config.train.seed), test)
    trained = evaluate(problem, result.lam, test)
    save_torch(out / "lambda.pt", result.lam)
    summary = {"form": config.form, "dataset": config.dataset, "meta_test_accuracy": asdict(trained),
               "baseline_accuracy": asdict(baseline), "train_seconds": wall,
               "seconds_per_1000_tasks": wall / max(1, config.train.steps * max(1, config.train.meta_batch)) * 1000,
               "final_outer_loss": result.losses[-1] if result.losses else None,
               "inner_grad_norm": result.inner_grad_norm, "task_set": train.fingerprint()}
    write_json(out / "results.json", summary)
    return summary


def load_config(path: str | Path) -> RunConfig:
    raw = json.loads(Path(path).read_text())
    train = TrainConfig(**raw.pop("train", {}))
    if "hidden" in raw:
        raw["hidden"] = tuple(raw["hidden"])
    return RunConfig(**raw, train=train)
