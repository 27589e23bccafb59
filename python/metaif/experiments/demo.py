"""``metaif demo``: meta-train on the embedded digits, score every task and instance, flag the
most harmful ones, edit the model without them, and write results and plots."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from ..meta import TrainConfig
from ..meta.run import RunConfig
from ..utils.io import write_csv, write_json
from . import plots
from .common import AnalysisConfig, ExperimentConfig, accuracy, save_config, score_all, train_model

DEMO = ExperimentConfig(run=RunConfig(train_tasks=300, test_tasks=200, train=TrainConfig(steps=50)),
                        analysis=AnalysisConfig(score_tasks=100))


def instance_rows(trained, table: torch.Tensor, split: str) -> list[list]:
    ids = trained.train.task_ids
    return [[k, int(ids[k]), split, j, float(table[k, j])] for k in range(table.shape[0]) for j in range(table.shape[1])]


def run_demo(config: ExperimentConfig, out: str | Path, progress: bool = True) -> dict:
    out = Path(out)
    save_config(out, config)
    trained = train_model(config.run, config.analysis, out / "model", progress=progress)
    scored = score_all(trained, config.analysis)
    analyzer, scores = scored.analyzer, scored.scores

    m = len(trained.train)
    k = max(1, round(config.fraction * m))
    harmful = scores.tasks.argsort()[:k].tolist()
    began = time.perf_counter()
    edited = analyzer.edit(tasks=harmful)
    edit_s = time.perf_counter() - began
    before, after = accuracy(trained, trained.lam), accuracy(trained, edited)

    ids = trained.train.task_ids
    write_csv(out / "task_scores.csv", ["position", "task_id", "score"],
              [[k_, int(ids[k_]), float(s)] for k_, s in enumerate(scores.tasks)])
    rows = instance_rows(trained, scores.train, "train") + instance_rows(trained, scores.val, "val")
    write_csv(out / "instance_scores.csv", ["position", "task_id", "split", "index", "score"], rows)
    plots.histogram(out / "task_scores.png", scores.tasks, "predicted test-loss change on removal (negative = harmful)",
                    "task influence scores")
    plots.histogram(out / "train_instance_scores.png", scores.train.flatten(), "predicted test-loss change on removal",
                    "training-instance influence scores")
    worst = sorted(rows, key=lambda r: r[4])[:10]
    result = {"meta_test_accuracy": before, "edited_accuracy": after, "removed_tasks": [int(ids[i]) for i in harmful],
              "most_harmful_instances": [{"task_id": r[1], "split": r[2], "index": r[3], "score": r[4]} for r in worst],
              "influence_seconds": scored.seconds, "edit_seconds": edit_s,
              "train_seconds": trained.summary["train_seconds"], "damping": scored.damping, "diagnostics": analyzer.diagnostics}
    write_json(out / "results.json", result)
    return result


def summary(result: dict) -> str:
    lines = [f"meta-test accuracy: {result['meta_test_accuracy']:.4f} (trained in {result['train_seconds']:.1f} s)",
             f"influence of every task and instance: {result['influence_seconds']:.1f} s "
             f"(damping {result['damping']:g}, ||D L(lambda*)|| = {result['diagnostics']['total_grad_norm']:.2e})",
             f"most harmful tasks removed by editing ({len(result['removed_tasks'])}): {result['removed_tasks'][:10]}",
             f"accuracy after the edit: {result['edited_accuracy']:.4f} (edit: {result['edit_seconds']:.2f} s)",
             "most harmful instances: " + ", ".join(f"task {r['task_id']} {r['split']}[{r['index']}]"
                                                   for r in result["most_harmful_instances"][:5])]
    return "\n".join(lines)


def demo_config(**overrides) -> ExperimentConfig:
    return replace(DEMO, **overrides)
