"""What the experiments share: a trained lambda*, an analyzer with enough damping, removal by
retraining or editing, and the meta-test accuracy of the result."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..data.tasks import TaskSet
from ..influence import InfluenceAnalyzer, InfluenceConfig, Scores, SolverConfig, SolverError
from ..meta import TrainConfig, Weights, evaluate, meta_train, solve_outer
from ..data import sample_tasks
from ..meta.run import RunConfig, build, load_config, pools, run
from ..utils.io import save_torch, write_json


@dataclass(frozen=True)
class AnalysisConfig:
    """Influence settings of an experiment. Adam-trained lambda is not an exact minimum, so the
    total Hessian gets ``damping`` (raised x10, up to 3 times, where it is not positive
    definite); ``score_tasks`` fresh meta-test tasks define the test loss f of the scores;
    ``polish`` full-batch L-BFGS iterations bring the Adam-trained lambda to stationarity (the
    point influence functions linearise around); retraining is warm-started from lambda* and is
    ``retrain`` "lbfgs" (``polish`` iterations, math.md's ground truth) or "adam"
    (``retrain_steps`` steps, meta-batch as in training; for large task sets)."""

    variant: str = "exact"
    solver: str = "cg"
    damping: float = 0.01
    rtol: float = 1e-4
    max_iter: int = 100
    rank: int = 20
    score_tasks: int = 100
    retrain_steps: int = 30
    polish: int = 200
    retrain: str = "lbfgs"

    def __post_init__(self) -> None:
        if self.retrain not in ("lbfgs", "adam"):
            raise ValueError(f"AnalysisConfig.retrain must be 'lbfgs' or 'adam', got {self.retrain!r}")

    def influence(self) -> InfluenceConfig:
        return InfluenceConfig(variant=self.variant, progress=True, solver=SolverConfig(
            method=self.solver, damping=self.damping, rtol=self.rtol, max_iter=self.max_iter, rank=self.rank))


@dataclass(frozen=True)
class ExperimentConfig:
    """A run (data, model, training) plus the analysis; saved as ``config.json``."""

    run: RunConfig = field(default_factory=RunConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seeds: tuple[int, ...] = (0,)
    fraction: float = 0.05   # share of tasks / instances removed (table1, demo)


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
    return InfluenceAnalyzer(trained.problem, trained.lam, trained.train, config=analysis.influence())


def with_damping(analyzer: InfluenceAnalyzer, compute):
    """``compute()``, raising the damping x10 (at most 3 times) while the damped total Hessian is
    not positive definite; returns the result and the damping used."""
    solver = analyzer.config.solver
    for attempt in range(4):
        try:
            return compute(), analyzer.config.solver.damping
        except SolverError as err:
            if attempt == 3:
                raise
            analyzer.set_solver(replace(solver, damping=analyzer.config.solver.damping * 10))
            warnings.warn(f"{err}; retrying with damping {analyzer.config.solver.damping:g}", stacklevel=2)


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
    scores, damping = with_damping(analyzer, lambda: analyzer.scores(score_tasks(trained, analysis)))
    return Scored(analyzer, scores, damping, setup, time.perf_counter() - began)


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
    return ExperimentConfig(run=RunConfig(**run, train=train), analysis=AnalysisConfig(**raw.pop("analysis", {})),
                            seeds=tuple(raw.pop("seeds", (0,))), **raw)
