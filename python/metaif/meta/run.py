"""One meta-training run from a small config: data, split, tasks, model, form, training, evaluation."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..data import TaskConfig, TaskSet, load_dataset, sample_tasks, split_classes, split_images
from ..models import conv4, mlp
from ..utils.io import save_torch, write_json
from .anil import AnilConfig, AnilProblem
from .imaml import ImamlConfig, ImamlProblem
from .train import TrainConfig, evaluate, meta_train


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json`` next to its results."""

    dataset: str = "digits"
    root: str | None = None
    split: str = "class"          # "class": disjoint classes; "image": disjoint images (MNIST, as the paper)
    form: str = "anil"            # "anil" or "imaml"
    head: str = "logistic"        # ANIL head: "logistic" or "ridge"
    model: str = "mlp"            # "mlp" or "conv4"
    hidden: tuple[int, ...] = (64, 64)
    channels: int = 64
    activation: str = "relu"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_tasks: int = 1000
    test_tasks: int = 500
    delta: float = 1.0
    gamma: float = 1e-4
    train: TrainConfig = TrainConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("class", "image"):
            raise ValueError(f"split must be 'class' or 'image', got {self.split!r}")
        if self.form not in ("anil", "imaml"):
            raise ValueError(f"form must be 'anil' or 'imaml', got {self.form!r}")
        if self.model not in ("mlp", "conv4"):
            raise ValueError(f"model must be 'mlp' or 'conv4', got {self.model!r}")


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
    if config.form == "anil":
        problem = AnilProblem(body, AnilConfig(ways=config.ways, head=config.head, delta=config.delta, gamma=config.gamma))
    else:
        problem = ImamlProblem(body, ImamlConfig(ways=config.ways, delta=config.delta, gamma=config.gamma))
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
    summary = {"form": problem.form, "dataset": config.dataset, "meta_test_accuracy": asdict(trained),
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
