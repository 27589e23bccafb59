"""What the experiments and commands share: an output folder that resumes honestly, a trained and
polished lambda*, an analyzer and its scores, and the meta-test accuracy of a lambda (retraining
without items is :mod:`.retrain`, one training run :mod:`.run`).

Polishing (math.md §15.10): influence functions linearise around a stationary point, so the
Adam-trained lambda is polished by full-batch L-BFGS. The objective polished is the training
objective plus a proximal anchor ``rho/2 ||lambda - lambda_trained||^2`` (:func:`~metaif.meta.anchored`),
which every formula and every re-solve then sees exactly: without it the polish of a few-shot
problem drives the training tasks to 100% and overfits. ``rho`` is chosen on held-out tasks of
the meta-train pool (never the meta-test tasks): the largest accuracy wins.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..data import sample_tasks
from ..data.tasks import TaskSet
from ..influence import InfluenceAnalyzer, InfluenceConfig, Scores, SolverConfig
from ..linalg import MetaifWarning
from ..meta import Accuracy, anchored, evaluate, solve_outer
from ..meta.train import device_of
from ..utils.config import check, check_choice, config, finite, results_settings, setting
from ..utils.io import save_torch, write_json
from ..utils.store import Stage
from .run import RunConfig, build, load_config, pools, run, run_config_from_dict, validation_tasks


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
    polish: int = setting(200, "full-batch L-BFGS iterations at most that bring the Adam-trained lambda to "
                               "stationarity, the point influence functions linearise around (0: off)")
    polish_tol: float = setting(1e-5, "the polish stops at max |D_lambda L| <= polish_tol")
    retrain_rtol: float = setting(0.0, "retraining, and the polish that continues an edit, also stop once max "
                                       "|D_lambda L| has fallen to this fraction of its value where they start (0: "
                                       "polish_tol alone, which float32 cannot reach over thousands of tasks)",
                                  added=True)
    retrain_floor: bool = setting(False, "retraining (warm or from scratch) and the polish that continues an edit "
                                         "also stop once max |D_lambda L| is down to lambda*'s own: the level its "
                                         "polish reached, float32's floor over thousands of tasks", added=True)
    stationarity_tol: float = setting(5e-3, "a warning says when the analysed ||D_lambda L|| is above this")
    anchor: float | None = setting(None, "rho of the proximal anchor rho/2 ||lambda - lambda_trained||^2 that the "
                                         "polish adds (None: chosen on held-out tasks from anchor_grid; 0: none)")
    anchor_grid: tuple[float, ...] = setting((1.0, 0.1, 0.01), "rho candidates, strongest first, each polished "
                                                               "from the last")
    validation_tasks: int = setting(100, "held-out meta-train tasks that choose rho")
    retrain: str = setting("lbfgs", "ground-truth retraining, warm-started from lambda*: lbfgs (polish iterations, "
                                    "math.md's ground truth) or adam (retrain_steps steps; for large task sets)",
                           choices=("lbfgs", "adam"))
    retrain_steps: int = setting(30, "Adam steps of retrain=adam")

    def __post_init__(self) -> None:
        check(isinstance(self.influence, InfluenceConfig), self, "influence", "an InfluenceConfig", self.influence)
        check_choice(self, "retrain", self.retrain, ("lbfgs", "adam"))
        for name in ("score_tasks", "retrain_steps", "validation_tasks"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, self, name, "an integer >= 1",
                  getattr(self, name))
        check(isinstance(self.polish, int) and self.polish >= 0, self, "polish", "an integer >= 0", self.polish)
        check(finite(self.retrain_rtol) and 0 <= self.retrain_rtol < 1, self, "retrain_rtol", "a fraction in [0, 1)",
              self.retrain_rtol)
        for name in ("polish_tol", "stationarity_tol"):
            check(finite(getattr(self, name)) and getattr(self, name) > 0, self, name, "a finite number > 0",
                  getattr(self, name))
        check(self.anchor is None or finite(self.anchor) and self.anchor >= 0, self, "anchor", "None or >= 0",
              self.anchor)
        check(len(self.anchor_grid) >= 1 and all(finite(r) and r > 0 for r in self.anchor_grid), self,
              "anchor_grid", "one or more numbers > 0", self.anchor_grid)


@config
class ExperimentConfig:
    """A run (data, model, training) plus the analysis; saved as ``config.json``."""

    run: RunConfig = setting(help="data, model, form and training", factory=RunConfig)
    analysis: AnalysisConfig = setting(help="influence settings", factory=AnalysisConfig)
    seeds: tuple[int, ...] = setting((0,), "seeds of the repeated runs (table1)")
    fraction: float = setting(0.05, "share of the tasks / instances removed (table1, demo), in (0, 1)")
    protocols: tuple[str, ...] = setting(("harmful",), "table1: what is removed, harmful (the most negative influence "
                                                       "scores) and/or random (the paper's protocol)")
    levels: tuple[str, ...] = setting(("task", "instance"), "table1: the levels whose rows run, task and/or instance "
                                      "(a run resumed with other levels keeps the rows it has)", shapes_results=False)
    from_scratch: bool = setting(False, "table1: also retrain from the seeded initialisation (the paper's protocol: the "
                                        "run's Adam steps, then the polish) at each level", added=True)

    def __post_init__(self) -> None:
        check(len(self.protocols) >= 1 and set(self.protocols) <= {"harmful", "random"}, self, "protocols",
              "one or both of harmful, random", self.protocols)
        check(len(self.levels) >= 1 and set(self.levels) <= {"task", "instance"}, self, "levels",
              "one or both of task, instance", self.levels)
        check(len(self.seeds) >= 1 and all(isinstance(s, int) and s >= 0 for s in self.seeds), self, "seeds",
              "one or more integers >= 0", self.seeds)
        check(isinstance(self.fraction, (int, float)) and 0 < self.fraction < 1, self, "fraction",
              "a share in (0, 1)", self.fraction)


@dataclass(frozen=True)
class Workspace:
    """An output folder (locked by the caller), whether stale results may be overwritten, and
    whether long steps show progress."""

    out: Path
    force: bool = False
    progress: bool = True

    def sub(self, name: str) -> Workspace:
        return replace(self, out=self.out / name)


@dataclass
class Trained:
    """A trained and polished model: ``problem`` is the analysed one (anchored when the polish
    anchored it), ``lam`` lambda*, ``lam_trained`` Adam's lambda; ``summary`` records training and
    polish (accuracies with 95% intervals, rho, stationarity, seconds)."""

    run: RunConfig
    problem: object
    train: TaskSet
    test: TaskSet
    lam: torch.Tensor
    lam_trained: torch.Tensor
    summary: dict


def train_model(config: RunConfig, analysis: AnalysisConfig, ws: Workspace, train: TaskSet | None = None) -> Trained:
    """Meta-train (resuming from ``ws.out``), polish to stationarity with the anchor chosen on held-out
    tasks, and return lambda*; ``train`` replaces the sampled task set (e.g. a corrupted copy)."""
    problem, sampled, test = build(config)
    tasks = sampled if train is None else train
    trained = run(config, ws.out, progress=ws.progress, tasks=train, force=ws.force, built=(problem, sampled, test))
    summary, lam_trained = dict(trained.summary), trained.lam
    device = device_of(config.train)
    settings = {"model": summary["task_set"], "steps": config.train.steps, "run": results_settings(config),
                "polish": {k: getattr(analysis, k) for k in ("polish", "polish_tol", "anchor", "anchor_grid",
                                                             "validation_tasks")}}
    rhos = [0.0] if analysis.polish == 0 else [analysis.anchor] if analysis.anchor is not None else \
        list(analysis.anchor_grid)
    files = ["lambda_star.pt", *(f"polish_rho{rho:g}.pt" for rho in rhos)]
    stage = Stage(ws.out, "polish", settings, files, ws.force)
    record = stage.open()
    if record is None:
        record = _polish(problem, tasks, config, analysis, lam_trained, rhos, ws)
        save_torch(ws.out / "lambda_star.pt", record.pop("lam").cpu())
        record = stage.finish(**record)
    lam = torch.load(ws.out / "lambda_star.pt", weights_only=True, map_location=device)
    summary.update({k: v for k, v in record.items() if k not in ("fingerprint", "settings", "complete")})
    return Trained(config, anchored(problem, record["rho"], lam_trained), tasks, test, lam, lam_trained, summary)


def _polish(problem, tasks: TaskSet, config: RunConfig, analysis: AnalysisConfig, lam_trained: torch.Tensor,
            rhos: list[float], ws: Workspace) -> dict:
    """Polish once per rho (strongest anchor first, each from the last) and keep the best on
    held-out tasks; a polish with no rho to choose skips the held-out evaluation."""
    choose = len(rhos) > 1
    held_out = validation_tasks(config, analysis.validation_tasks) if choose else None
    candidates, start, seconds = [], lam_trained, 0.0
    for rho in rhos:
        if analysis.polish == 0:
            candidates.append({"rho": 0.0, "lam": lam_trained, "iterations": 0, "grad_norm": float("nan")})
            break
        result = solve_outer(anchored(problem, rho, lam_trained), tasks, start, tol=analysis.polish_tol,
                             max_iter=analysis.polish, checkpoint=ws.out / f"polish_rho{rho:g}.pt",
                             progress=ws.progress, desc=f"polish rho={rho:g}")
        seconds += result.wall_time
        entry = {"rho": rho, "lam": result.lam, "iterations": result.iterations, "grad_norm": result.grad_norm}
        if choose:
            entry["validation_accuracy"] = asdict(evaluate(problem, result.lam, held_out))
        candidates.append(entry)
        start = result.lam
    best = max(candidates, key=lambda e: e.get("validation_accuracy", {}).get("mean", 0.0))
    out = {"rho": best["rho"], "lam": best["lam"], "polish_seconds": seconds, "polish_iterations": best["iterations"],
           "polish_grad_norm": best["grad_norm"],
           "anchor_candidates": [{k: v for k, v in e.items() if k != "lam"} for e in candidates]}
    if choose:
        out["trained_validation_accuracy"] = asdict(evaluate(problem, lam_trained, held_out))
    return out


def analyze(trained: Trained, analysis: AnalysisConfig, progress: bool = True) -> InfluenceAnalyzer:
    """The analyzer at lambda*; warns (one line) when lambda* is not stationary."""
    config = replace(analysis.influence, progress=progress and analysis.influence.progress)
    analyzer = InfluenceAnalyzer(trained.problem, trained.lam, trained.train, config=config)
    norm = analyzer.diagnostics["total_grad_norm"]
    if norm > analysis.stationarity_tol:
        warnings.warn(f"the analysed lambda is not stationary (||D_lambda L|| = {norm:.2e} > {analysis.stationarity_tol:g}):"
                      f" influence estimates linearise around a point the objective would still move from; raise "
                      f"--polish", MetaifWarning, stacklevel=2)
    return analyzer


@dataclass
class Scored:
    """An analyzer at lambda* and its influence scores on fresh tasks, with the damping that
    worked, the set-up time (inner solves) and the total time (set-up + scores), in seconds, and
    the scores' solve (:func:`solve_summary`)."""

    analyzer: InfluenceAnalyzer
    scores: Scores
    damping: float
    setup_seconds: float
    seconds: float
    solve: dict = field(default_factory=dict)


def score_all(trained: Trained, analysis: AnalysisConfig, progress: bool = True) -> Scored:
    """Build the analyzer and score every task and instance on :func:`score_tasks` (one solve)."""
    began = time.perf_counter()
    analyzer = analyze(trained, analysis, progress)
    setup = time.perf_counter() - began
    scores = analyzer.scores(score_tasks(trained, analysis))
    return Scored(analyzer, scores, analyzer.damping_used, setup, time.perf_counter() - began, solve_summary(analyzer))


def solve_summary(analyzer: InfluenceAnalyzer) -> dict:
    """How the analyzer's latest total-Hessian solve went (residual, products, damping, the rounding
    floor where it stopped there), for the results files."""
    return analyzer.last_solve.summary() if analyzer.last_solve is not None else {}


def score_tasks(trained: Trained, analysis: AnalysisConfig) -> TaskSet:
    """Fresh meta-test tasks (not the evaluation ones) that define the scores' test loss."""
    config = replace(trained.test.config, num_tasks=analysis.score_tasks, seed=trained.run.seed + 50_000)
    return sample_tasks(pools(trained.run)[2], config)


def accuracy(trained: Trained, lam: torch.Tensor) -> Accuracy:
    """Meta-test accuracy of ``lam`` with its 95% interval."""
    return evaluate(trained.problem, lam, trained.test)


def save_config(out: Path, config: ExperimentConfig) -> None:
    write_json(Path(out) / "config.json", asdict(config))


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """An ``ExperimentConfig`` from a saved ``config.json`` (or a bare ``RunConfig`` JSON)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {path}: not a readable JSON config ({err})") from None
    if "run" not in raw:
        return ExperimentConfig(run=load_config(path))
    return ExperimentConfig(run=run_config_from_dict(raw.pop("run")),
                            analysis=analysis_from_dict(raw.pop("analysis", {})),
                            seeds=tuple(raw.pop("seeds", (0,))), protocols=tuple(raw.pop("protocols", ("harmful",))),
                            levels=tuple(raw.pop("levels", ("task", "instance"))), **raw)


def analysis_from_dict(raw: dict) -> AnalysisConfig:
    """An :class:`AnalysisConfig` from its ``asdict`` form."""
    raw = dict(raw)
    influence = dict(raw.pop("influence", {}))
    solver = SolverConfig(**influence.pop("solver", {}))
    if "anchor_grid" in raw:
        raw["anchor_grid"] = tuple(raw["anchor_grid"])
    return AnalysisConfig(influence=InfluenceConfig(**influence, solver=solver), **raw)
