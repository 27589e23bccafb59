"""What the experiments share: runs re-seeded per seed, the ledger that keeps each finished
measurement (tied to every setting it depends on), retrains checkpointed under ``retrain/`` until
their entry is written, and mean ± std over seeds."""

from __future__ import annotations

import statistics
from dataclasses import replace

from ..meta import TrainResult
from ..utils.io import Ledger, remove_files
from ..utils.store import Stage
from .common import AnalysisConfig, ExperimentConfig, Trained, Workspace
from .retrain import retrain_from_scratch, retrain_without
from .run import RunConfig

__all__ = ["checkpointed_retrain", "experiment_ledger", "mean_std", "seeded"]


def seeded(config: ExperimentConfig, seed: int) -> RunConfig:
    """The experiment's run with ``seed`` for the split, the task draws and training."""
    return replace(config.run, seed=seed, train=replace(config.run.train, seed=seed))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def experiment_ledger(ws: Workspace, settings: dict) -> Ledger:
    """The experiment's ledger, tied to ``settings`` (stale entries raise, or go with ``force``)."""
    stage = Stage(ws.out, "ledger", settings, ["ledger.json"], ws.force)
    if stage.open() is None:
        remove_files(list((ws.out / "retrain").glob("*.pt")) if (ws.out / "retrain").exists() else [])
        stage.finish()
    return Ledger(ws.out / "ledger.json")


def checkpointed_retrain(trained: Trained, analysis: AnalysisConfig, ws: Workspace, key: str, scratch: bool = False,
                         **removal) -> TrainResult:
    """Retraining for ledger entry ``key`` (warm-started, or from scratch), checkpointed until the
    entry is written."""
    path = ws.out / "retrain" / (key.replace("/", "_").replace(" ", "_") + ".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    how = retrain_from_scratch if scratch else retrain_without
    return how(trained, analysis, checkpoint=path, progress=ws.progress, **removal)
