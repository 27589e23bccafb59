"""What the ``metaif`` subcommands run (the CLI parses and locks the output folder; this module
computes and writes)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

from ..meta import TrainConfig
from ..utils.io import save_npz, save_torch, write_csv, write_json
from . import demo as demo_module
from . import paper, plots
from .common import (
    ExperimentConfig,
    Workspace,
    accuracy,
    analyze,
    save_config,
    score_all,
    solve_summary,
    train_model,
)
from .curate import curate
from .retrain import stop_floor

QUICK = dict(train_tasks=200, test_tasks=200, train=TrainConfig(steps=50))


def quick(config: ExperimentConfig, name: str) -> ExperimentConfig:
    """The small digits version of experiment ``name`` (flags the user gives are applied on top)."""
    return replace(config, run=replace(config.run, **QUICK), seeds=config.seeds if name == "table1" else (0,))


def validate_removal(config: ExperimentConfig, tasks, val, train) -> None:
    """Positions and indices of an edit must exist in the task set (checked before any training)."""
    run = config.run
    n, v = run.ways * run.shots, run.ways * run.queries
    for kind, items, width in (("--remove-val", val, v), ("--remove-train", train, n)):
        for k, j in items:
            if not (0 <= k < run.train_tasks and 0 <= j < width):
                raise ValueError(f"{kind}: {k}:{j} is out of range; positions lie in [0, {run.train_tasks}) and "
                                 f"indices in [0, {width})")
    for k in tasks:
        if not 0 <= k < run.train_tasks:
            raise ValueError(f"--remove-tasks: {k} is out of range; positions lie in [0, {run.train_tasks})")
    if not (tasks or val or train):
        raise ValueError("edit: give --remove-tasks, --remove-val or --remove-train")


def demo(config: ExperimentConfig, ws: Workspace) -> int:
    result = demo_module.run_demo(config, ws)
    print(demo_module.summary(result))
    print(f"results, CSV tables and plots in {ws.out}/")
    return 0


def _scored(config: ExperimentConfig, ws: Workspace):
    """The trained model of ``ws.out``, its :class:`Scored` and the seconds of the scoring (not the set-up)."""
    save_config(ws.out, config)
    trained = train_model(config.run, config.analysis, ws.sub("model"))
    scored = score_all(trained, config.analysis, ws.progress)
    return trained, scored, scored.seconds - scored.setup_seconds


def score(config: ExperimentConfig, ws: Workspace) -> int:
    """Influence scores on new tasks (math.md §12), ranked most harmful first."""
    trained, scored, seconds = _scored(config, ws)
    scores, damping = scored.scores, scored.damping
    ids = trained.train.task_ids
    ranked = sorted(((float(s), k, int(ids[k])) for k, s in enumerate(scores.tasks)))
    write_csv(ws.out / "task_scores.csv", ["rank", "position", "task_id", "score"],
              [[r, k, tid, s] for r, (s, k, tid) in enumerate(ranked)])
    rows = demo_module.instance_rows(trained, scores.train, "train") + \
        demo_module.instance_rows(trained, scores.val, "val")
    write_csv(ws.out / "instance_scores.csv", ["position", "task_id", "split", "index", "score"],
              sorted(rows, key=lambda r: r[4]))
    save_npz(ws.out / "scores.npz", {"tasks": scores.tasks, "train": scores.train, "val": scores.val},
             {"damping": damping, "variant": config.analysis.influence.variant})
    plots.histogram(ws.out / "task_scores.png", {"tasks": scores.tasks.tolist()},
                    "predicted test-loss change on removal", "task influence scores")
    plots.histogram(ws.out / "instance_scores.png", {"training instances": scores.train.flatten().tolist(),
                                                     "validation instances": scores.val.flatten().tolist()},
                    "predicted test-loss change on removal", "instance influence scores")
    summary = {"seconds": seconds, "damping": damping, "solve": scored.solve, "diagnostics": scored.analyzer.diagnostics,
               "most_harmful_tasks": [tid for _, _, tid in ranked[:10]],
               "most_helpful_tasks": [tid for _, _, tid in ranked[-10:][::-1]]}
    write_json(ws.out / "scores.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def influence(config: ExperimentConfig, ws: Workspace, deltas: bool) -> int:
    """task-IF removal predictions of every task (norms; all of them with ``deltas``) and the
    direct-IF baseline, plus the instance scores of :func:`score`."""
    trained, scored, seconds = _scored(config, ws)
    analyzer, scores = scored.analyzer, scored.scores
    began = time.perf_counter()
    delta = analyzer.task_influence()
    task_s = time.perf_counter() - began
    direct = analyzer.direct_influence()
    ids = trained.train.task_ids
    write_csv(ws.out / "task_influence.csv", ["position", "task_id", "delta_norm", "direct_delta_norm", "score"],
              [[k, int(ids[k]), float(delta[k].norm()), float(direct[k].norm()), float(scores.tasks[k])]
               for k in range(len(ids))])
    arrays = {"scores_tasks": scores.tasks, "scores_train": scores.train, "scores_val": scores.val}
    if deltas:
        arrays.update(task_delta=delta, direct_delta=direct)
    save_npz(ws.out / "influence.npz", arrays, {"damping": analyzer.damping_used,
                                                "variant": config.analysis.influence.variant,
                                                "solver": config.analysis.influence.solver.method})
    summary = {"scores_seconds": seconds, "task_influence_seconds": task_s, "damping": analyzer.damping_used,
               "scores_solve": scored.solve, "diagnostics": analyzer.diagnostics}
    write_json(ws.out / "influence.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def edit(config: ExperimentConfig, ws: Workspace, tasks, val, train, refine: int, polish: int = 0) -> int:
    """λ̂ without the given items (math.md §11), optionally polished by ``polish`` L-BFGS iterations
    of the retrain, saved as ``lambda_edited.pt``, with accuracies."""
    validate_removal(config, tasks, val, train)
    save_config(ws.out, config)
    trained = train_model(config.run, config.analysis, ws.sub("model"))
    analyzer = analyze(trained, config.analysis, ws.progress)
    began = time.perf_counter()
    analysis = config.analysis
    polish_tol = max(analysis.polish_tol, stop_floor(trained, analysis)) if polish else analysis.polish_tol
    lam = analyzer.edit(tasks=tasks, val=val, train=train, refine=refine, polish=polish, polish_tol=polish_tol,
                        polish_rtol=analysis.retrain_rtol)
    seconds = time.perf_counter() - began
    save_torch(ws.out / "lambda_edited.pt", lam)
    record = analyzer.editor.last_polish if polish else None
    polished = None if record is None else {"iterations": record.iterations, "seconds": record.wall_time,
                                            "stop": record.stop}
    summary = {"removed": {"tasks": tasks, "val": val, "train": train}, "refine": refine, "polish": polished,
               "seconds": seconds,
               "damping": analyzer.damping_used, "solve": solve_summary(analyzer),
               "accuracy_before": asdict(accuracy(trained, trained.lam)),
               "accuracy_after": asdict(accuracy(trained, lam))}
    write_json(ws.out / "edit.json", summary)
    print(json.dumps(summary, indent=2))
    return 0


def _table1(config: ExperimentConfig, ws: Workspace, corrupt_tasks: float | None,
            fractions: tuple[float, ...] | None) -> str:
    return paper.table1_markdown(paper.table1(config, ws))


def _curve(run, default_corruption: float):
    """A removal-curve experiment: ``--corrupt-tasks`` (else ``default_corruption``) of the tasks get
    Figure 1's label corruption; ``--fractions`` (else :class:`~.paper.CurveConfig`'s) are its points."""
    def experiment(config: ExperimentConfig, ws: Workspace, corrupt_tasks: float | None,
                   fractions: tuple[float, ...] | None) -> str:
        share = default_corruption if corrupt_tasks is None else corrupt_tasks
        curve = paper.CurveConfig(experiment=config, task_fraction=share)
        return json.dumps(run(curve if fractions is None else replace(curve, fractions=fractions), ws), indent=2)
    return experiment


CORRUPTION = paper.CurveConfig.task_fraction
# name -> (config, workspace, --corrupt-tasks) -> the text printed at the end
EXPERIMENTS = {"table1": _table1, "harmful": _curve(paper.harmful, CORRUPTION),
               "effectiveness": _curve(paper.effectiveness, CORRUPTION), "curate": _curve(curate, 0.0)}


def experiment(config: ExperimentConfig, name: str, ws: Workspace, corrupt_tasks: float | None = None,
               fractions: tuple[float, ...] | None = None) -> int:
    """Run experiment ``name``; ``fractions``: the removal curves' points (0 first), ``None`` the default."""
    print(EXPERIMENTS[name](config, ws, corrupt_tasks, fractions))
    return 0
