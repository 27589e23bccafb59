"""What the ``metaif`` subcommands run (the CLI parses; this module computes and writes)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ..meta import TrainConfig
from ..utils.io import save_npz, save_torch, write_csv, write_json
from . import demo as demo_module
from . import paper, plots
from .common import ExperimentConfig, accuracy, analyze, save_config, score_all, train_model

QUICK = dict(train_tasks=200, test_tasks=200, train=TrainConfig(steps=50))


def quick(config: ExperimentConfig, name: str) -> ExperimentConfig:
    """The small digits version of experiment ``name`` (flags the user gives are applied on top)."""
    return replace(config, run=replace(config.run, **QUICK), seeds=config.seeds if name == "table1" else (0,))


def demo(config: ExperimentConfig, out: str, progress: bool) -> int:
    result = demo_module.run_demo(config, out, progress)
    print(demo_module.summary(result))
    print(f"results, CSV tables and plots in {out}/")
    return 0


def _scored(config: ExperimentConfig, out: Path, progress: bool):
    """The trained model of ``out`` and its scores; seconds count the scoring, not the set-up."""
    save_config(out, config)
    trained = train_model(config.run, config.analysis, out / "model", progress=progress)
    scored = score_all(trained, config.analysis)
    return trained, scored.analyzer, scored.scores, scored.damping, scored.seconds - scored.setup_seconds


def score(config: ExperimentConfig, out: str, progress: bool) -> int:
    """Influence scores on new tasks (math.md §12), ranked most harmful first."""
    out = Path(out)
    trained, analyzer, scores, damping, seconds = _scored(config, out, progress)
    ids = trained.train.task_ids
    ranked = sorted(((float(s), k, int(ids[k])) for k, s in enumerate(scores.tasks)))
    write_csv(out / "task_scores.csv", ["rank", "position", "task_id", "score"],
              [[r, k, tid, s] for r, (s, k, tid) in enumerate(ranked)])
    rows = demo_module.instance_rows(trained, scores.train, "train") + demo_module.instance_rows(trained, scores.val, "val")
    write_csv(out / "instance_scores.csv", ["position", "task_id", "split", "index", "score"], sorted(rows, key=lambda r: r[4]))
    save_npz(out / "scores.npz", {"tasks": scores.tasks, "train": scores.train, "val": scores.val},
             {"damping": damping, "variant": config.analysis.influence.variant})
    plots.histogram(out / "task_scores.png", scores.tasks, "predicted test-loss change on removal", "task scores")
    summary = {"seconds": seconds, "damping": damping, "diagnostics": analyzer.diagnostics,
               "most_harmful_tasks": [tid for _, _, tid in ranked[:10]],
               "most_helpful_tasks": [tid for _, _, tid in ranked[-10:][::-1]]}
    write_json(out / "scores.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def influence(config: ExperimentConfig, out: str, deltas: bool, progress: bool) -> int:
    """task-IF removal predictions of every task (norms; all of them with ``deltas``) and the
    direct-IF baseline, plus the instance scores of :func:`score`."""
    out = Path(out)
    trained, analyzer, scores, damping, seconds = _scored(config, out, progress)
    began = time.perf_counter()
    delta = analyzer.task_influence()
    task_s = time.perf_counter() - began
    direct = analyzer.direct_influence()
    ids = trained.train.task_ids
    write_csv(out / "task_influence.csv", ["position", "task_id", "delta_norm", "direct_delta_norm", "score"],
              [[k, int(ids[k]), float(delta[k].norm()), float(direct[k].norm()), float(scores.tasks[k])]
               for k in range(len(ids))])
    arrays = {"scores_tasks": scores.tasks, "scores_train": scores.train, "scores_val": scores.val}
    if deltas:
        arrays.update(task_delta=delta, direct_delta=direct)
    save_npz(out / "influence.npz", arrays, {"damping": analyzer.damping_used,
                                             "variant": config.analysis.influence.variant,
                                             "solver": config.analysis.influence.solver.method})
    summary = {"scores_seconds": seconds, "task_influence_seconds": task_s, "damping": analyzer.damping_used,
               "diagnostics": analyzer.diagnostics}
    write_json(out / "influence.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def edit(config: ExperimentConfig, out: str, tasks, val, train, refine: int, progress: bool) -> int:
    """λ̂ without the given items (math.md §11), saved as ``lambda_edited.pt``, with accuracies."""
    if not (tasks or val or train):
        raise SystemExit("edit: give --remove-tasks, --remove-val or --remove-train")
    out = Path(out)
    save_config(out, config)
    trained = train_model(config.run, config.analysis, out / "model", progress=progress)
    analyzer = analyze(trained, config.analysis)
    began = time.perf_counter()
    lam = analyzer.edit(tasks=tasks, val=val, train=train, refine=refine)
    damping = analyzer.damping_used
    seconds = time.perf_counter() - began
    save_torch(out / "lambda_edited.pt", lam)
    summary = {"removed": {"tasks": tasks, "val": val, "train": train}, "refine": refine, "seconds": seconds,
               "damping": damping, "accuracy_before": accuracy(trained, trained.lam),
               "accuracy_after": accuracy(trained, lam)}
    write_json(out / "edit.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def experiment(config: ExperimentConfig, name: str, out: str, progress: bool) -> int:
    if name == "table1":
        result = paper.table1(config, out, progress)
        print(paper.table1_markdown(result))
        return 0
    curve = paper.CurveConfig(experiment=config)
    result = (paper.harmful if name == "harmful" else paper.effectiveness)(curve, out, progress)
    print(json.dumps(result, indent=2))
    return 0
