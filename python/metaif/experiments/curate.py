"""Influence-guided task curation: score every meta-training task by its influence on held-out
meta-validation tasks (never the meta-test tasks), drop the most harmful first (or, separately, the
least helpful: the scores nearest zero), meta-train from scratch on the kept tasks, and compare the
meta-test accuracy with dropping the same fractions at random, with the compute each point cost.
Measurements go to ``ledger.json`` as in :mod:`.paper`, so a stopped run resumes."""

from __future__ import annotations

import time

import torch

from ..data import corrupt_labels
from ..utils.io import write_json
from ..utils.progress import stage
from . import plots
from .common import Workspace, accuracy, analyze, train_model
from .paper import CurveConfig, curve_ledger
from .records import checkpointed_retrain, mean_std, seeded
from .run import build, validation_tasks

__all__ = ["ORDERS", "curate", "removal_orders"]

ORDERS = ("most harmful first", "least helpful first", "random")
# the accuracy a curated set may lose and still count as "droppable" (issue 24's clean-data target)
TOLERATED_LOSS = 0.005


def removal_orders(scores: torch.Tensor, seed: int) -> dict[str, list[int]]:
    """Task positions in removal order for each of :data:`ORDERS`: ascending score (negative =
    harmful), ascending ``|score|``, and a seeded permutation."""
    random = torch.randperm(len(scores), generator=torch.Generator().manual_seed(30_000 + seed))
    return {"most harmful first": scores.argsort().tolist(), "least helpful first": scores.abs().argsort().tolist(),
            "random": random.tolist()}


def curate(config: CurveConfig, ws: Workspace) -> dict:
    """For each seed: train on all tasks (labels corrupted as ``config`` says: ``task_fraction`` 0
    keeps them clean), score the tasks on ``analysis.validation_tasks`` meta-validation tasks, and for
    each order and fraction in ``config.fractions`` retrain from scratch without that share of the
    tasks. Writes ``curate.json`` and ``curate_accuracy.png`` (accuracy, and the meta-training seconds
    each point cost beside the scoring's, against the share kept)."""
    exp = config.experiment
    ledger = curve_ledger(config, ws, "curate")
    nonzero = [f for f in config.fractions if f > 0]
    for seed in stage(exp.seeds, desc="curate seeds", disable=not ws.progress, leave=True):
        run = seeded(exp, seed)
        tasks = build(run)[1]
        if config.task_fraction > 0:
            tasks = corrupt_labels(tasks, config.task_fraction, config.instance_fraction, seed=seed)
        trained = train_model(run, exp.analysis, ws.sub(f"seed{seed}").sub("model"), train=tasks)

        def scored():
            began = time.perf_counter()
            analyzer = analyze(trained, exp.analysis, ws.progress)
            scores = analyzer.scores(validation_tasks(run, exp.analysis.validation_tasks)).tasks
            return {"scores": scores.tolist(), "seconds": time.perf_counter() - began}

        scores = ledger.run(f"{seed}/scores", scored)
        ledger.run(f"{seed}/all", lambda: {"accuracy": accuracy(trained, trained.lam).mean,
                                           "seconds": trained.summary["train_seconds"]
                                           + trained.summary.get("polish_seconds", 0.0)})
        m = len(trained.train)
        for name, order in removal_orders(torch.tensor(scores["scores"]), seed).items():
            for f in stage(nonzero, desc=f"seed {seed}: {name}", disable=not ws.progress):
                key = f"{seed}/{name}/{f:.3f}"
                removed = order[:round(f * m)]

                def retrained():
                    result = checkpointed_retrain(trained, exp.analysis, ws, key, scratch=True, tasks=removed)
                    found = float(tasks.corrupted[removed].float().mean()) if config.task_fraction > 0 else None
                    return {"accuracy": accuracy(trained, result.lam).mean, "seconds": result.wall_time,
                            "kept": m - len(removed), "corrupted_share_removed": found}

                ledger.run(key, retrained)
    result = _summarise(config, ledger.data)
    write_json(ws.out / "curate.json", result)
    kept = [100 * (1 - f) for f in config.fractions]

    def column(key: str, part: int) -> dict[str, list[float]]:
        """Each order's means (``part`` 0) or stds (1) of a ``[mean, std]``-per-fraction result."""
        return {name: [pair[part] for pair in points] for name, points in result[key].items()}

    plots.panels(ws.out / "curate_accuracy.png", kept, [
        plots.Panel("meta-test accuracy", column("accuracy", 0), column("accuracy", 1)),
        plots.Panel("meta-training seconds per point", column("train_seconds", 0), column("train_seconds", 1),
                    {"scoring every task (once)": result["scoring_seconds"][0]}, from_zero=True)],
        "tasks kept (%)", f"{exp.run.dataset}: curation"
        + (f", {config.task_fraction:.0%} corrupted" if config.task_fraction > 0 else "")
        + (f" (mean ± std over {len(exp.seeds)} seeds)" if len(exp.seeds) > 1 else ""))
    return result


def _summarise(config: CurveConfig, data: dict) -> dict:
    """Mean ± std over seeds per order and fraction, with each point's compute, and the largest
    fraction each order drops for at most :data:`TOLERATED_LOSS` of the all-task accuracy."""
    seeds = config.experiment.seeds
    full = [data[f"{s}/all"] for s in seeds]

    def entries(name: str, f: float) -> list[dict]:
        return full if f == 0 else [data[f"{s}/{name}/{f:.3f}"] for s in seeds]

    accuracy = {name: [mean_std([e["accuracy"] for e in entries(name, f)]) for f in config.fractions]
                for name in ORDERS}
    seconds = {name: [mean_std([e["seconds"] for e in entries(name, f)]) for f in config.fractions] for name in ORDERS}
    base = accuracy[ORDERS[0]][0][0]
    droppable = {name: max([f for f, (acc, _) in zip(config.fractions, accs) if acc >= base - TOLERATED_LOSS],
                           default=0.0) for name, accs in accuracy.items()}
    return {"dataset": config.experiment.run.dataset, "seeds": list(seeds), "fractions": list(config.fractions),
            "corrupted_task_fraction": config.task_fraction, "accuracy": accuracy, "train_seconds": seconds,
            "scoring_seconds": mean_std([data[f"{s}/scores"]["seconds"] for s in seeds]),
            "droppable_within_loss": {"loss": TOLERATED_LOSS, **droppable}}
