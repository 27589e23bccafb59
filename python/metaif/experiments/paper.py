"""The paper's §6 experiments: Table 1 (editing vs retraining), harmful-data detection (Figure 1)
and removal effectiveness (Figures 2–3). Each finished measurement is kept in ``ledger.json`` in
the output folder, a stage tied to every setting the measurements depend on, so an interrupted
experiment resumes where it stopped and a changed one recomputes (with ``--force``) instead of
reusing stale numbers. Retrainings checkpoint under ``retrain/``."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..data import corrupt_labels
from ..meta.run import build
from ..utils.io import Ledger, write_atomic, write_json
from ..utils.store import Stage
from . import plots
from .common import (
    AnalysisConfig,
    ExperimentConfig,
    Trained,
    Workspace,
    accuracy,
    retrain_without,
    save_config,
    score_all,
    train_model,
)


@dataclass(frozen=True)
class CurveConfig:
    """Removal fractions of the harmful/effectiveness curves and Figure 1's corruption
    (``task_fraction`` of the tasks get ``instance_fraction`` of their labels flipped)."""

    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    task_fraction: float = 0.4
    instance_fraction: float = 0.8
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


def _seeded(config: ExperimentConfig, seed: int):
    run = replace(config.run, seed=seed, train=replace(config.run.train, seed=seed))
    return run


def _flat_top(table: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """``count`` most negative entries of ``[m, n]`` as ``(position, index)`` (zero weights excluded)."""
    order = table.flatten().argsort()[:count]
    return [(int(i) // table.shape[1], int(i) % table.shape[1]) for i in order]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ledger(ws: Workspace, settings: dict) -> Ledger:
    """The experiment's ledger, tied to ``settings`` (stale entries raise, or go with ``force``)."""
    stage = Stage(ws.out, "ledger", settings, ["ledger.json"], ws.force)
    if stage.open() is None:
        for old in (ws.out / "retrain").glob("*.pt") if (ws.out / "retrain").exists() else []:
            old.unlink()
        stage.finish()
    return Ledger(ws.out / "ledger.json")


def _retrained(trained: Trained, analysis: AnalysisConfig, ws: Workspace, key: str, **removal) -> tuple:
    """Warm-started retraining for ledger entry ``key``, checkpointed until the entry is written."""
    path = ws.out / "retrain" / (key.replace("/", "_").replace(" ", "_") + ".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    return retrain_without(trained, analysis, checkpoint=path, progress=ws.progress, **removal)


# ---- Table 1 ----------------------------------------------------------------------------------

TABLE1_METHODS = [("task", "Retrain"), ("task", "Direct IF"), ("task", "task-IF"),
                  ("instance", "Retrain (train)"), ("instance", "instance-IF (train)"),
                  ("instance", "Retrain (val)"), ("instance", "instance-IF (val)")]


def table1(config: ExperimentConfig, ws: Workspace) -> dict:
    """Remove the ``fraction`` most harmful tasks (by task-IF scores) / training instances /
    validation instances; meta-test accuracy and runtime of retraining vs the IF edits. An edit's
    runtime counts the analyzer's set-up (inner solves at lambda*), the solves it needs and the
    edit; the scores that chose the removal set are counted for the IF methods, not for Direct IF
    or retraining."""
    out = ws.out
    save_config(out, config)
    ledger = _ledger(ws, {"experiment": "table1", "config": asdict(config)})
    for seed in tqdm(config.seeds, desc="table1 seeds", disable=not ws.progress):
        run = _seeded(config, seed)
        trained = train_model(run, config.analysis, ws.sub(f"seed{seed}").sub("model"))
        ledger.run(f"{seed}/base", lambda: {"accuracy": accuracy(trained, trained.lam).mean})
        if all(f"{seed}/{level}/{name}" in ledger.data for level, name in TABLE1_METHODS):
            continue
        scored = score_all(trained, config.analysis, ws.progress)
        analyzer, scores = scored.analyzer, scored.scores
        setup_s, analysis_s = scored.setup_seconds, scored.seconds
        m = len(trained.train)
        tasks = scores.tasks.argsort()[:max(1, round(config.fraction * m))].tolist()
        train_items = _flat_top(scores.train, max(1, round(config.fraction * scores.train.numel())))
        val_items = _flat_top(scores.val, max(1, round(config.fraction * scores.val.numel())))

        def edited(counted: float, **removal):
            """An edit's accuracy; its runtime adds the ``counted`` analysis seconds."""
            began = time.perf_counter()
            lam = analyzer.edit(**removal)
            return {"accuracy": accuracy(trained, lam).mean, "seconds": counted + time.perf_counter() - began}

        def retrained(key, **removal):
            lam, seconds = _retrained(trained, config.analysis, ws, f"{seed}/{key}", **removal)
            return {"accuracy": accuracy(trained, lam).mean, "seconds": seconds}

        jobs = {"task/Retrain": lambda: retrained("task", tasks=tasks),
                "task/Direct IF": lambda: edited(setup_s, tasks=tasks, method="direct"),
                "task/task-IF": lambda: edited(analysis_s, tasks=tasks),
                "instance/Retrain (train)": lambda: retrained("train", train=train_items),
                "instance/instance-IF (train)": lambda: edited(analysis_s, train=train_items),
                "instance/Retrain (val)": lambda: retrained("val", val=val_items),
                "instance/instance-IF (val)": lambda: edited(analysis_s, val=val_items)}
        for key, job in jobs.items():
            ledger.run(f"{seed}/{key}", job)

    rows = {}
    for level, name in TABLE1_METHODS:
        acc = [ledger.data[f"{s}/{level}/{name}"]["accuracy"] for s in config.seeds]
        sec = [ledger.data[f"{s}/{level}/{name}"]["seconds"] for s in config.seeds]
        rows[f"{level}/{name}"] = {"accuracy": _mean_std(acc), "seconds": _mean_std(sec)}
    base = _mean_std([ledger.data[f"{s}/base"]["accuracy"] for s in config.seeds])
    result = {"dataset": config.run.dataset, "seeds": list(config.seeds), "fraction_removed": config.fraction,
              "trained_accuracy": base, "methods": rows}
    write_json(out / "table1.json", result)
    write_atomic(out / "table1.md", table1_markdown(result))
    names = [k.split("/", 1)[1] for k in rows]
    plots.bars(out / "table1.png", names, [r["accuracy"][0] for r in rows.values()],
               [r["accuracy"][1] for r in rows.values()], "meta-test accuracy",
               f"{config.run.dataset}: accuracy after removal ({config.fraction:.0%})")
    return result


def table1_markdown(result: dict) -> str:
    head = "| level | method | meta-test accuracy | runtime (s) |\n|---|---|---|---|\n"
    body = "".join(f"| {key.split('/')[0]} | {key.split('/', 1)[1]} | {r['accuracy'][0]:.4f} ± {r['accuracy'][1]:.4f} "
                   f"| {r['seconds'][0]:.2f} ± {r['seconds'][1]:.2f} |\n" for key, r in result["methods"].items())
    acc, std = result["trained_accuracy"]
    return (f"### {result['dataset']} (removing {result['fraction_removed']:.0%}, seeds {result['seeds']}; "
            f"trained model {acc:.4f} ± {std:.4f})\n\n" + head + body)


# ---- removal curves (Figures 1–3) -------------------------------------------------------------

def _curve(ledger: Ledger, key: str, trained: Trained, analysis: AnalysisConfig, order: list, kind: str,
           fractions, ws: Workspace) -> list[float]:
    """Meta-test accuracy after retraining without the first ``f`` of ``order`` for each fraction."""
    accs = []
    for f in tqdm(fractions, desc=key, disable=not ws.progress, leave=False):
        def job():
            count = round(f * len(order))
            if count == 0:
                return accuracy(trained, trained.lam).mean
            lam, _ = _retrained(trained, analysis, ws, f"{key}/{f:.3f}", **{kind: order[:count]})
            return accuracy(trained, lam).mean
        accs.append(ledger.run(f"{key}/{f:.3f}", job))
    return accs


def _curve_ledger(config: CurveConfig, ws: Workspace, name: str) -> Ledger:
    exp = config.experiment
    save_config(ws.out, exp)
    settings = {"experiment": name, "config": asdict(exp), "fractions": list(config.fractions),
                "task_fraction": config.task_fraction, "instance_fraction": config.instance_fraction}
    write_json(ws.out / "curve_config.json", settings)
    return _ledger(ws, settings)


def harmful(config: CurveConfig, ws: Workspace) -> dict:
    """Figure 1: corrupt labels, rank tasks by influence score (most harmful first), and compare
    with random order: accuracy after removing the top fraction, and corrupted tasks found."""
    exp, out = config.experiment, ws.out
    ledger = _curve_ledger(config, ws, "harmful")
    seed = exp.seeds[0]
    run = _seeded(exp, seed)
    _, clean, _ = build(run)
    corrupted = corrupt_labels(clean, config.task_fraction, config.instance_fraction, seed=seed)
    trained = train_model(run, exp.analysis, ws.sub("model"), train=corrupted)
    scored = score_all(trained, exp.analysis, ws.progress)
    scores, damping, analysis_s = scored.scores, scored.damping, scored.seconds
    m = len(trained.train)
    is_order = scores.tasks.argsort().tolist()
    random_order = torch.randperm(m, generator=torch.Generator().manual_seed(seed)).tolist()
    bad = corrupted.corrupted
    found = {name: [float(bad[order[:round(f * m)]].sum() / bad.sum()) for f in config.fractions]
             for name, order in (("influence score", is_order), ("random", random_order))}
    acc = {"influence score": _curve(ledger, "is", trained, exp.analysis, is_order, "tasks", config.fractions, ws),
           "random": _curve(ledger, "random", trained, exp.analysis, random_order, "tasks", config.fractions, ws)}
    x = [100 * f for f in config.fractions]
    plots.curves(out / "harmful_accuracy.png", x, acc, "tasks removed (%)", "meta-test accuracy",
                 "accuracy after removing tasks")
    plots.curves(out / "harmful_detection.png", x, found, "tasks checked (%)", "corrupted tasks found",
                 "finding mislabeled tasks")
    plots.histogram(out / "harmful_scores.png", {"clean": scores.tasks[~bad].tolist(),
                                                 "corrupted": scores.tasks[bad].tolist()},
                    "task influence score", "scores by corruption")
    result = {"fractions": list(config.fractions), "accuracy": acc, "found": found, "analysis_seconds": analysis_s,
              "damping": damping, "corrupted_tasks": int(bad.sum()), "tasks": m}
    write_json(out / "harmful.json", result)
    return result


def effectiveness(config: CurveConfig, ws: Workspace) -> dict:
    """Figures 2–3: remove tasks (and training instances) in descending influence order (most
    helpful first) and retrain, against random removal."""
    exp, out = config.experiment, ws.out
    ledger = _curve_ledger(config, ws, "effectiveness")
    seed = exp.seeds[0]
    trained = train_model(_seeded(exp, seed), exp.analysis, ws.sub("model"))
    scored = score_all(trained, exp.analysis, ws.progress)
    scores, damping, analysis_s = scored.scores, scored.damping, scored.seconds
    gen = torch.Generator().manual_seed(seed)
    task_order = scores.tasks.argsort(descending=True).tolist()
    inst_order = _flat_top(-scores.train, scores.train.numel())
    inst_random = [inst_order[i] for i in torch.randperm(len(inst_order), generator=gen).tolist()]
    x = [100 * f for f in config.fractions]
    fr = config.fractions
    curves = {
        "tasks": {"influence order": _curve(ledger, "tasks-is", trained, exp.analysis, task_order, "tasks", fr, ws),
                  "random": _curve(ledger, "tasks-random", trained, exp.analysis,
                                   torch.randperm(len(task_order), generator=gen).tolist(), "tasks", fr, ws)},
        "train instances": {"influence order": _curve(ledger, "inst-is", trained, exp.analysis, inst_order, "train",
                                                      fr, ws),
                            "random": _curve(ledger, "inst-random", trained, exp.analysis, inst_random, "train",
                                             fr, ws)}}
    plots.curves(out / "effectiveness_tasks.png", x, curves["tasks"], "tasks removed (%)", "meta-test accuracy",
                 "removing the most helpful tasks first")
    plots.curves(out / "effectiveness_instances.png", x, curves["train instances"], "training instances removed (%)",
                 "meta-test accuracy", "removing the most helpful instances first")
    result = {"fractions": list(config.fractions), "curves": curves, "analysis_seconds": analysis_s, "damping": damping}
    write_json(out / "effectiveness.json", result)
    return result
