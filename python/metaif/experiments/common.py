"""What the experiments share: a trained lambda*, an analyzer with enough damping, removal by
retraining or editing, and the meta-test accuracy of the result."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data import sample_tasks
from ..data.tasks import TaskSet
from ..influence import InfluenceAnalyzer, InfluenceConfig, Scores, SolverConfig
from ..meta import TrainConfig, Weights, evaluate, meta_train, solve_outer
from ..meta.run import RunConfig, build, load_config, pools, run
from ..utils.config import check, check_choice, config, setting
from ..utils.io import save_torch, write_json


def _influence_default() -> InfluenceConfig:
    # Adam-trained lambda is not an exact minimum: damp the total Hessian, and raise the damping
    # x10 (up to 3 times) where it is still not positive definite
    return InfluenceConfig(progress=True, solver=SolverConfig(damping=0.01, rtol=1e-4, max_iter=100, rank=20,
                                                              retries=3))


@config
class AnalysisConfig:
    """Influence settings of an experiment or command."""

    influence: InfluenceConfig = setting(help="the influence engine (variant, solver, inner solves)",
                                         factory=_influence_default)
    score_tasks: int = setting(100, "fresh meta-test tasks that define the test loss f of the scores")
    polish: int = setting(200, "full-batch L-BFGS iterations that bring the Adam-trained lambda to stationarity, "
                               "the point influence functions linearise around (0: off)")
    retrain: str = setting("lbfgs", "ground-truth retraining, warm-started from lambda*: lbfgs (polish iterations, "
                                    "math.md's ground truth) or adam (retrain_steps steps; for large task sets)",
                           choices=("lbfgs", "adam"))
    retrain_steps: int = setting(30, "Adam steps of retrain=adam")

    def __post_init__(self) -> None:
        check(isinstance(self.influence, InfluenceConfig), self, "influence", "an InfluenceConfig", self.influence)
        check_choice(self, "retrain", self.retrain, ("lbfgs", "adam"))
        for name in ("score_tasks", "retrain_steps"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, self, name, "an integer >= 1",
                  getattr(self, name))
        check(isinstance(self.polish, int) and self.polish >= 0, self, "polish", "an integer >= 0", self.polish)


@config
class ExperimentConfig:
    """A run (data, model, training) plus the analysis; saved as ``config.json``."""

    run: RunConfig = setting(help="data, model, form and training", factory=RunConfig)
    analysis: AnalysisConfig = setting(help="influence settings", factory=AnalysisConfig)
    seeds: tuple[int, ...] = setting((0,), "seeds of the repeated runs (table1)")
    fraction: float = setting(0.05, "share of the tasks / instances removed (table1, demo), in (0, 1)")

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1 and all(isinstance(s, int) and s >= 0 for s in self.seeds), self, "seeds",
              "one or more integers >= 0", self.seeds)
        check(isinstance(self.fraction, (int, float)) and 0 < self.fraction < 1, self, "fraction",
              "a share in (0, 1)", self.fraction)


@dataclass
class Trained:
    run: RunConfig
    problem: object
    train: TaskSet
    test: TaskSet
    lam: torch.Tensor
    summary: dict


def train_model(config: RunConfig, analysis: AnalysisConfig, out: Path, train: TaskSet | None = None,
                progress: bool = True) -> Trained:
    """Meta-train (resuming from ``out``), polish to stationarity and load lambda*; ``train``
    replaces the sampled task set (e.g. a corrupted copy)."""
    problem, sampled, test = build(config)
    tasks = sampled if train is None else train
    summary = run(config, out, progress=progress, tasks=train)
    polished = Path(out) / "lambda_star.pt"
    if polished.exists():
        lam = torch.load(polished, weights_only=True)
    else:
        lam = torch.load(Path(out) / "lambda.pt", weights_only=True)
        if analysis.polish:
            began = time.perf_counter()
            lam = solve_outer(problem, tasks, lam, tol=1e-6, max_iter=analysis.polish).lam
            summary["polish_seconds"] = time.perf_counter() - began
        save_torch(polished, lam)
    return Trained(config, problem, tasks, test, lam, summary)


def analyze(trained: Trained, analysis: AnalysisConfig) -> InfluenceAnalyzer:
    return InfluenceAnalyzer(trained.problem, trained.lam, trained.train, config=analysis.influence)


@dataclass
class Scored:
    """An analyzer at lambda* and its influence scores on fresh tasks, with the damping that
    worked, the set-up time (inner solves) and the total time (set-up + scores), in seconds."""

    analyzer: InfluenceAnalyzer
    scores: Scores
    damping: float
    setup_seconds: float
    seconds: float


def score_all(trained: Trained, analysis: AnalysisConfig) -> Scored:
    """Build the analyzer and score every task and instance on :func:`score_tasks` (one solve)."""
    began = time.perf_counter()
    analyzer = analyze(trained, analysis)
    setup = time.perf_counter() - began
    scores = analyzer.scores(score_tasks(trained, analysis))
    return Scored(analyzer, scores, analyzer.damping_used, setup, time.perf_counter() - began)


def score_tasks(trained: Trained, analysis: AnalysisConfig) -> TaskSet:
    """Fresh meta-test tasks (not the evaluation ones) that define the scores' test loss."""
    config = replace(trained.test.config, num_tasks=analysis.score_tasks, seed=trained.run.seed + 50_000)
    return sample_tasks(pools(trained.run)[1], config)


def accuracy(trained: Trained, lam: torch.Tensor) -> float:
    return evaluate(trained.problem, lam, trained.test).mean


def retrain_without(trained: Trained, analysis: AnalysisConfig, tasks=(), val=(), train=()):
    """Warm-started retraining without the given task positions / ``(position, j)`` instances;
    returns (lambda, wall seconds)."""
    weights = Weights.uniform(trained.train, trained.lam.dtype).without_positions(tasks, val, train)
    began = time.perf_counter()
    if analysis.retrain == "lbfgs":
        lam = solve_outer(trained.problem, trained.train, trained.lam, weights, tol=1e-6, max_iter=analysis.polish).lam
    else:
        config = replace(trained.run.train, steps=analysis.retrain_steps)
        lam = meta_train(trained.problem, trained.train, config, lam0=trained.lam, weights=weights, progress=False).lam
    return lam, time.perf_counter() - began


def save_config(out: Path, config: ExperimentConfig) -> None:
    write_json(Path(out) / "config.json", asdict(config))


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """An ``ExperimentConfig`` from a saved ``config.json`` (or a bare ``RunConfig`` JSON)."""
    raw = json.loads(Path(path).read_text())
    if "run" not in raw:
        return ExperimentConfig(run=load_config(path))
    run = raw.pop("run")
    train = TrainConfig(**run.pop("train", {}))
    if "hidden" in run:
        run["hidden"] = tuple(run["hidden"])
    return ExperimentConfig(run=RunConfig(**run, train=train), analysis=analysis_from_dict(raw.pop("analysis", {})),
                            seeds=tuple(raw.pop("seeds", (0,))), **raw)


def analysis_from_dict(raw: dict) -> AnalysisConfig:
    """An :class:`AnalysisConfig` from its ``asdict`` form."""
    raw = dict(raw)
    influence = dict(raw.pop("influence", {}))
    solver = SolverConfig(**influence.pop("solver", {}))
    return AnalysisConfig(influence=InfluenceConfig(**influence, solver=solver), **raw)
