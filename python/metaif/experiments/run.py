"""One meta-training run from a small config: data, split, tasks, model, form, training, evaluation,
and the files it leaves in its output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..curvature import get_loss
from ..data import (
    DATASETS,
    EMBEDDED,
    TaskConfig,
    TaskSet,
    hold_out,
    load_dataset,
    sample_tasks,
    split_classes,
    split_images,
    with_rotations,
)
from ..meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, MamlConfig, MamlProblem, TrainConfig, evaluate, meta_train
from ..meta.train import device_of
from ..meta.unrolled import default_model
from ..models import RESNET12_WIDTHS, FlatModel, conv4, mlp, resnet12
from ..utils.config import check, check_choice, config, finite, results_settings, setting
from ..utils.io import save_torch, write_json
from ..utils.store import Stage

HEAD_LOSSES = {"logistic": "softmax", "ridge": "squared", "binary": "binary"}

FORMS = ("anil", "imaml", "maml")
# the body of each --model, for images of `channels` x `size` x `size`
BODIES = {
    "mlp": lambda config, channels, size: mlp(channels * size * size, config.hidden, config.activation),
    "conv4": lambda config, channels, size: conv4(channels, config.channels, size),
    "resnet12": lambda config, channels, size: resnet12(channels, config.widths, size),
}
MODELS = tuple(BODIES)


@config
class RunConfig:
    """One meta-training run; saved as ``config.json`` next to its results."""

    dataset: str = setting("digits", "data set (digits is embedded, synthetic-miniimagenet is generated: 64 x 600 "
                                     "84x84 RGB images, not real data; the others read --root)", choices=DATASETS)
    root: str | None = setting(None, "folder with the data set's files (not needed for digits)")
    split: str = setting("class", "meta-train/test split: class (disjoint classes) or image (disjoint images of "
                                  "every class, the paper's MNIST setting)", choices=("class", "image"))
    form: str = setting("anil", "bilevel form: anil (shared body, per-task head), imaml (proximal inner problem) or "
                                "maml (K unrolled gradient steps)", choices=FORMS)
    head: str = setting("logistic", "loss of the task outputs: logistic (softmax), ridge (squared), binary",
                        choices=tuple(HEAD_LOSSES))
    model: str = setting("mlp", "body: mlp, conv4 or resnet12", choices=MODELS)
    hidden: tuple[int, ...] = setting((64, 64), "hidden widths of the mlp body")
    channels: int = setting(64, "channels of the conv4 body")
    widths: tuple[int, ...] = setting(RESNET12_WIDTHS, "widths of the resnet12 body's four residual blocks",
                                      added=True)
    activation: str = setting("relu", "activation of the mlp body", choices=("relu", "tanh", "softplus"))
    ways: int = setting(5, "classes per task (N-way)")
    shots: int = setting(1, "training examples per class (K-shot)")
    queries: int = setting(15, "validation examples per class")
    train_tasks: int = setting(1000, "meta-training tasks")
    class_combinations: bool = setting(False, "meta-training task i uses the i-th combination of ways classes (the "
                                              "paper's 252 MNIST tasks: every 5 of the 10 digits) instead of drawing "
                                              "classes")
    test_tasks: int = setting(500, "meta-test tasks (accuracy)")
    rotations: bool = setting(False, "every 90-degree turn of a class is a class of its own (4x the classes, the "
                                     "Omniglot practice); a class's turns stay on its side of the splits",
                                  added=True)
    delta: float = setting(1.0, "inner L2 weight (the head's for anil, the proximal weight for imaml)")
    inner_steps: int = setting(5, "maml: K, the inner gradient steps")
    inner_lr: float = setting(0.4, "maml: alpha, the inner step size (the initial one with meta_sgd)")
    meta_sgd: bool = setting(False, "maml: learn per-parameter inner step sizes (Meta-SGD)")
    first_order: bool = setting(False, "maml: train with first-order MAML (the analysis polishes with the exact "
                                       "gradient first)")
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
        check(len(self.widths) == 4 and all(isinstance(w, int) and w >= 1 for w in self.widths), self, "widths",
              "four positive widths", self.widths)
        check(finite(self.delta) and self.delta > 0, self, "delta", "a finite number > 0", self.delta)
        check(finite(self.gamma) and self.gamma >= 0, self, "gamma", "a finite number >= 0", self.gamma)
        check(isinstance(self.train, TrainConfig), self, "train", "a TrainConfig", self.train)
        check(isinstance(self.inner_steps, int) and self.inner_steps >= 0, self, "inner_steps", "an integer >= 0",
              self.inner_steps)
        check(finite(self.inner_lr) and self.inner_lr > 0, self, "inner_lr", "a finite number > 0", self.inner_lr)
        check(not (self.first_order and self.meta_sgd), self, "first_order", "off with meta_sgd", self.first_order)
        check(self.dataset in EMBEDDED or bool(self.root), self, "root",
              f"the folder with the {self.dataset} files (--root)", self.root)


def pools(config: RunConfig):
    """The (meta-train, meta-validation, meta-test) pools of ``config``'s data set and split (loaded
    once per process: experiments sample score, validation and test tasks from them after
    training). Validation holds out what meta-testing is new on: a fifth of the meta-train classes
    for a class split (of every class's images where there are too few classes), a fifth of
    every class's images for an image split (:func:`~metaif.data.hold_out`). With ``rotations`` every
    pool then holds the four turns of its classes (:func:`~metaif.data.with_rotations`)."""
    return _pools(config.dataset, config.root, config.split, config.seed, config.ways, config.rotations)


@lru_cache(maxsize=2)
def _pools(dataset: str, root: str | None, split: str, seed: int, ways: int, rotations: bool):
    splitter = split_classes if split == "class" else split_images
    train, test = splitter(load_dataset(dataset, root), 0.5, seed=seed)
    train, validation = hold_out(train, 0.2, ways, seed=seed, by="classes" if split == "class" else "images")
    return with_rotations(train, validation, test) if rotations else (train, validation, test)


def build(config: RunConfig):
    """(problem, meta-train task set, meta-test task set) for ``config``."""
    train_pool, _, test_pool = pools(config)
    data = train_pool.dataset
    spec = dict(ways=config.ways, shots=config.shots, queries=config.queries)
    train = sample_tasks(train_pool, TaskConfig(**spec, num_tasks=config.train_tasks, seed=config.seed,
                                                class_combinations=config.class_combinations))
    test = sample_tasks(test_pool, TaskConfig(**spec, num_tasks=config.test_tasks, seed=config.seed + 10_000))
    return FORM_BUILDERS[config.form](body_of(config, data.images.shape[1], data.images.shape[-1]), config), train, test


def body_of(config: RunConfig, channels: int, size: int) -> FlatModel:
    """The body ``config.model`` names, for ``channels`` x ``size`` x ``size`` images."""
    return BODIES[config.model](config, channels, size)


def _anil(body: FlatModel, config: RunConfig) -> AnilProblem:
    loss = HEAD_LOSSES[config.head]
    return AnilProblem(body, AnilConfig(ways=config.ways, loss=loss, delta=config.delta, gamma=config.gamma))


def _imaml(body: FlatModel, config: RunConfig) -> ImamlProblem:
    loss = HEAD_LOSSES[config.head]
    return ImamlProblem(body, ImamlConfig(ways=config.ways, loss=loss, delta=config.delta, gamma=config.gamma))


def _maml(body: FlatModel, config: RunConfig) -> MamlProblem:
    maml = MamlConfig(ways=config.ways, loss=HEAD_LOSSES[config.head], inner_steps=config.inner_steps,
                      inner_lr=config.inner_lr, meta_sgd=config.meta_sgd, first_order=config.first_order,
                      gamma=config.gamma)
    return MamlProblem(default_model(body, get_loss(maml.loss).outputs(config.ways)), maml)


FORM_BUILDERS = {"anil": _anil, "imaml": _imaml, "maml": _maml}


def validation_tasks(config: RunConfig, count: int) -> TaskSet:
    """Tasks of the meta-validation pool (held out from meta-training, never the meta-test pool):
    what settings are chosen on."""
    spec = dict(ways=config.ways, shots=config.shots, queries=config.queries)
    return sample_tasks(pools(config)[1], TaskConfig(**spec, num_tasks=count, seed=config.seed + 20_000))


@dataclass
class Run:
    """A finished run: the trained ``lam [p]`` (on the run's device) and its summary (accuracies with
    95% intervals, seconds, the task set's fingerprint)."""

    lam: torch.Tensor
    summary: dict


def run(config: RunConfig, out: str | Path, progress: bool = True, tasks: TaskSet | None = None,
        force: bool = False, built: tuple | None = None) -> Run:
    """Train (resuming from ``out/checkpoint.pt``), evaluate against the untrained baseline, and
    write ``config.json``, ``lambda.pt`` and ``results.json`` to ``out``; ``tasks`` replaces the
    sampled meta-train set (e.g. a label-corrupted copy); ``built`` is :func:`build`'s result when the
    caller has it already.

    The trained model is a :class:`~metaif.utils.store.Stage`: a finished run with the same settings
    is returned as recorded (not re-timed), a larger ``steps`` extends it, and other settings raise
    :class:`~metaif.utils.store.StaleResults` unless ``force`` (which trains again).
    """
    out = Path(out)
    problem, train, test = build(config) if built is None else built
    train = train if tasks is None else tasks
    identity = results_settings(config)
    settings = {"run": {**identity, "train": {k: v for k, v in identity["train"].items()
                                              if k not in ("steps", "checkpoint_every")}},
                "tasks": train.fingerprint()}
    stage = Stage(out, "train", settings, ["checkpoint.pt", "lambda.pt", "results.json", "config.json"], force)
    record = stage.open()
    if record is not None and record["steps"] == config.train.steps:
        lam = torch.load(out / "lambda.pt", weights_only=True, map_location=device_of(config.train))
        return Run(lam, record["summary"])
    write_json(out / "config.json", asdict(config))
    result = meta_train(problem, train, config.train, checkpoint=out / "checkpoint.pt", progress=progress)
    baseline = evaluate(problem, problem.init_lambda(config.train.seed).to(result.lam.device), test)
    trained = evaluate(problem, result.lam, test)
    save_torch(out / "lambda.pt", result.lam.cpu())  # portable: loaded onto any device
    summary = {"form": config.form, "dataset": config.dataset, "meta_test_accuracy": asdict(trained),
               "baseline_accuracy": asdict(baseline), "train_seconds": result.wall_time,
               "seconds_per_1000_tasks": result.wall_time / max(1, config.train.steps * max(1, config.train.meta_batch))
               * 1000, "final_outer_loss": result.losses[-1] if result.losses else None,
               "inner_grad_norm": result.inner_grad_norm, "task_set": train.fingerprint()}
    write_json(out / "results.json", summary)
    stage.finish(steps=config.train.steps, summary=summary)
    return Run(result.lam, summary)


def load_config(path: str | Path) -> RunConfig:
    return run_config_from_dict(json.loads(Path(path).read_text()))


def run_config_from_dict(raw: dict) -> RunConfig:
    """The RunConfig of its JSON form (lists back to the tuples of the tuple fields)."""
    fields = {name: tuple(value) if isinstance(value, list) else value for name, value in raw.items()}
    train = TrainConfig(**fields.pop("train", {}))
    return RunConfig(**fields, train=train)
