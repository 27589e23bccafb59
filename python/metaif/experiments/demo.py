"""``metaif demo``: meta-train on the embedded digits, polish to a stationary point that generalises,
score every task and instance, flag the most harmful ones, edit the model without them, and write
results and plots."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..meta import TrainConfig
from ..utils.io import write_csv, write_json
from . import plots
from .common import AnalysisConfig, ExperimentConfig, Workspace, accuracy, save_config, score_all, train_model
from .run import RunConfig

# Tasks from all ten digits; meta-test draws from the other half of every class's images, and
# meta-validation (which chooses the polish's anchor) holds out a fifth of the first half.
DEMO = ExperimentConfig(run=RunConfig(split="image", train_tasks=300, test_tasks=200, train=TrainConfig(steps=50)),
                        analysis=AnalysisConfig(score_tasks=100))


def instance_rows(trained, table: torch.Tensor, split: str) -> list[list]:
    """``[position, task_id, split, index, score]`` for every instance of one split."""
    ids = trained.train.task_ids
    return [[k, int(ids[k]), split, j, float(table[k, j])] for k in range(table.shape[0])
            for j in range(table.shape[1])]


def run_demo(config: ExperimentConfig, ws: Workspace) -> dict:
    save_config(ws.out, config)
    trained = train_model(config.run, config.analysis, ws.sub("model"))
    scored = score_all(trained, config.analysis, ws.progress)
    analyzer, scores = scored.analyzer, scored.scores

    m = len(trained.train)
    order = scores.tasks.argsort()
    # the most harmful fraction of the tasks, but only those predicted to be harmful at all
    harmful = [int(i) for i in order[:max(1, round(config.fraction * m))] if float(scores.tasks[i]) < 0]
    began = time.perf_counter()
    edited = analyzer.edit(tasks=harmful) if harmful else trained.lam
    edit_s = time.perf_counter() - began

    ids = trained.train.task_ids
    write_csv(ws.out / "task_scores.csv", ["position", "task_id", "score", "flagged"],
              [[k_, int(ids[k_]), float(s), k_ in harmful] for k_, s in enumerate(scores.tasks)])
    rows = instance_rows(trained, scores.train, "train") + instance_rows(trained, scores.val, "val")
    write_csv(ws.out / "instance_scores.csv", ["position", "task_id", "split", "index", "score"], rows)
    cutoff = float(scores.tasks[harmful[-1]]) if harmful else None
    plots.histogram(ws.out / "task_scores.png", {"tasks": scores.tasks.tolist()},
                    "predicted test-loss change on removal", "task influence scores", cutoff,
                    f"{len(harmful)} most harmful, removed by the edit")
    worst = sorted(rows, key=lambda r: r[4])[:10]
    plots.histogram(ws.out / "instance_scores.png", {"training instances": scores.train.flatten().tolist(),
                                                     "validation instances": scores.val.flatten().tolist()},
                    "predicted test-loss change on removal", "instance influence scores",
                    worst[-1][4] if worst else None, f"{len(worst)} most harmful (results.json)")
    summary = trained.summary
    result = {"trained_accuracy": summary["meta_test_accuracy"], "analysed_accuracy": asdict(accuracy(trained, trained.lam)),
              "edited_accuracy": asdict(accuracy(trained, edited)), "anchor_rho": summary["rho"],
              "stationarity": analyzer.diagnostics["total_grad_norm"], "removed_tasks": [int(ids[i]) for i in harmful],
              "most_harmful_instances": [{"task_id": r[1], "split": r[2], "index": r[3], "score": r[4]} for r in worst],
              "train_seconds": summary["train_seconds"], "polish_seconds": summary["polish_seconds"],
              "influence_seconds": scored.seconds, "edit_seconds": edit_s, "damping": scored.damping,
              "solve": scored.solve,
              "diagnostics": analyzer.diagnostics, "anchor_candidates": summary["anchor_candidates"]}
    write_json(ws.out / "results.json", result)
    return result


def _acc(record: dict) -> str:
    return f"{record['mean']:.4f} ± {record['ci95']:.4f}"


def summary(result: dict) -> str:
    """The demo's report, a line per finding."""
    return "\n".join([
        f"meta-test accuracy: trained {_acc(result['trained_accuracy'])} (in {result['train_seconds']:.1f} s), "
        f"analysed (polished, rho {result['anchor_rho']:g}) {_acc(result['analysed_accuracy'])} "
        f"(in {result['polish_seconds']:.1f} s, ||D L|| = {result['stationarity']:.1e})",
        f"influence of every task and instance: {result['influence_seconds']:.1f} s (damping {result['damping']:g})",
        f"most harmful tasks removed by editing ({len(result['removed_tasks'])}): {result['removed_tasks'][:10]}",
        f"accuracy after the edit: {_acc(result['edited_accuracy'])} (edit: {result['edit_seconds']:.2f} s)",
        "most harmful instances: " + ", ".join(f"task {r['task_id']} {r['split']}[{r['index']}]"
                                               for r in result["most_harmful_instances"][:5])])
