"""The paper's §6 experiments: Table 1 (editing vs retraining), harmful-data detection (Figure 1)
and removal effectiveness (Figures 2–3). Each finished measurement is kept in ``ledger.json`` in
the output folder, a stage tied to every setting the measurements depend on, so an interrupted
experiment resumes where it stopped and a changed one recomputes (with ``--force``) instead of
reusing stale numbers. Retrainings checkpoint under ``retrain/``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data import corrupt_labels
from ..utils.config import results_settings
from ..utils.io import Ledger, write_atomic, write_json
from ..utils.progress import stage
from . import plots
from .common import (
    AnalysisConfig,
    ExperimentConfig,
    Trained,
    Workspace,
    accuracy,
    analyze,
    save_config,
    score_all,
    score_tasks,
    solve_summary,
    train_model,
)
from .records import checkpointed_retrain, experiment_ledger, mean_std, seeded
from .run import build


@dataclass(frozen=True)
class CurveConfig:
    """Removal fractions of the harmful/effectiveness curves and Figure 1's corruption
    (``task_fraction`` of the tasks get ``instance_fraction`` of their labels flipped)."""

    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    task_fraction: float = 0.4
    instance_fraction: float = 0.8
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


def _flat_top(table: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """``count`` most negative entries of ``[m, n]`` as ``(position, index)`` (zero weights excluded)."""
    order = table.flatten().argsort()[:count]
    return [(int(i) // table.shape[1], int(i) % table.shape[1]) for i in order]


# ---- Table 1 ----------------------------------------------------------------------------------

TABLE1_METHODS = [("task", "Retrain"), ("task", "Direct IF"), ("task", "task-IF"), ("task", "task-IF + polish"),
                  ("instance", "Retrain (train)"), ("instance", "instance-IF (train)"),
                  ("instance", "instance-IF + polish (train)"),
                  ("instance", "Retrain (val)"), ("instance", "instance-IF (val)"),
                  ("instance", "instance-IF + polish (val)")]
SCRATCH_METHODS = [("task", "Retrain (from scratch)"), ("instance", "Retrain (from scratch, train)"),
                   ("instance", "Retrain (from scratch, val)")]
PROTOCOLS = ("harmful", "random")


def table1_methods(config: ExperimentConfig) -> list[tuple[str, str]]:
    """Table 1's (level, method) rows at ``config.levels``: the from-scratch retrains when
    ``config.from_scratch``."""
    methods = TABLE1_METHODS + (SCRATCH_METHODS if config.from_scratch else [])
    return [(level, name) for level, name in methods if level in config.levels]


def removal_sets(protocol: str, fraction: float, seed: int, scores=None, shapes=None) -> dict:
    """Task positions and ``(position, index)`` training / validation instances to remove: the
    ``fraction`` with the most negative influence scores ("harmful"), or drawn at random with
    ``seed`` ("random", the paper's protocol)."""
    m, n, v = shapes
    counts = [max(1, round(fraction * size)) for size in (m, m * n, m * v)]
    if protocol == "harmful":
        return {"tasks": scores.tasks.argsort()[:counts[0]].tolist(), "train": _flat_top(scores.train, counts[1]),
                "val": _flat_top(scores.val, counts[2])}
    gen = torch.Generator().manual_seed(10_000 + seed)

    def pick(total: int, count: int, width: int):
        flat = torch.randperm(total, generator=gen)[:count].tolist()
        return flat if width == 1 else [(i // width, i % width) for i in flat]

    return {"tasks": pick(m, counts[0], 1), "train": pick(m * n, counts[1], n), "val": pick(m * v, counts[2], v)}


def table1(config: ExperimentConfig, ws: Workspace) -> dict:
    """For each seed and removal protocol (``config.protocols``: the ``fraction`` most harmful
    tasks / training instances / validation instances by their influence scores, or a random
    ``fraction`` as the paper removes), the meta-test accuracy and runtime of warm-started
    retraining against the IF edits, and against the edits polished by the retrain's L-BFGS down to
    the threshold the retrain stopped at ("IF + polish": the edit as the retrain's warm start). An
    edit's runtime counts the analyzer's set-up (inner solves at lambda*), the solves it needs and
    the edit; the harmful protocol's IF rows also count the scores that chose what to remove (Direct
    IF and retraining do not). Retrain and polish rows record their iterations (L-BFGS; Adam steps
    for retrain=adam)."""
    out = ws.out
    save_config(out, config)
    ledger = experiment_ledger(ws, {"experiment": "table1", "config": results_settings(config)})
    methods = table1_methods(config)
    keys = [f"{protocol}/{level}/{name}" for protocol in config.protocols for level, name in methods]
    for seed in stage(config.seeds, desc="table1 seeds", disable=not ws.progress, leave=True):
        run = seeded(config, seed)
        trained = train_model(run, config.analysis, ws.sub(f"seed{seed}").sub("model"))
        ledger.run(f"{seed}/base", lambda: {"accuracy": accuracy(trained, trained.lam).mean,
                                            "rho": trained.summary.get("rho")})
        if all(f"{seed}/{key}" in ledger.data for key in keys):
            continue
        began = time.perf_counter()
        analyzer = analyze(trained, config.analysis, ws.progress)
        setup_s = time.perf_counter() - began
        shapes = (len(trained.train), trained.train.y_train.shape[1], trained.train.y_val.shape[1])
        for protocol in config.protocols:
            if all(f"{seed}/{protocol}/{level}/{name}" in ledger.data for level, name in methods):
                continue
            scores, counted = None, setup_s
            if protocol == "harmful":
                began = time.perf_counter()
                scores = analyzer.scores(score_tasks(trained, config.analysis))
                counted = setup_s + time.perf_counter() - began
            removal = removal_sets(protocol, config.fraction, seed, scores, shapes)

            def edited(counted: float, polish_to: str | None = None, after: str | None = None, **items):
                """An edit's accuracy; its runtime adds the ``counted`` analysis seconds. ``polish_to``:
                the ledger key of the retrain whose stopping threshold the polish goes down to (polish_tol
                for an Adam retrain, which has none, and for entries from before thresholds were recorded);
                a polished edit's runtime is that of the edit it continues (ledger key ``after``, whose
                solve the analyzer has kept) plus the polish."""
                began = time.perf_counter()
                polish = {}
                if polish_to is not None:
                    threshold = ledger.data[f"{seed}/{protocol}/{polish_to}"].get("threshold") or config.analysis.polish_tol
                    polish = {"polish": max(config.analysis.polish, 1), "polish_tol": threshold}
                lam = analyzer.edit(**items, **polish)
                entry = {"accuracy": accuracy(trained, lam).mean, "seconds": counted + time.perf_counter() - began,
                         "damping": analyzer.damping_used, "solve": solve_summary(analyzer)}
                if polish:
                    record = analyzer.editor.last_polish
                    entry.update(iterations=record.iterations, polish_seconds=record.wall_time, stop=record.stop,
                                 seconds=ledger.data[f"{seed}/{protocol}/{after}"]["seconds"] + record.wall_time)
                return entry

            def retrained(key, scratch=False, **items):
                result = checkpointed_retrain(trained, config.analysis, ws, f"{seed}/{protocol}/{key}", scratch, **items)
                return {"accuracy": accuracy(trained, result.lam).mean, "seconds": result.wall_time,
                        "iterations": result.iterations, "grad_norm": result.grad_norm,
                        "threshold": result.stop.get("threshold"), "stop": result.stop}

            tasks, train, val = ({"tasks": removal["tasks"]}, {"train": removal["train"]}, {"val": removal["val"]})
            jobs = {"task/Retrain": lambda: retrained("task", **tasks),
                    "task/Direct IF": lambda: edited(setup_s, method="direct", **tasks),
                    "task/task-IF": lambda: edited(counted, **tasks),
                    "task/task-IF + polish": lambda: edited(counted, "task/Retrain", "task/task-IF", **tasks),
                    "instance/Retrain (train)": lambda: retrained("train", **train),
                    "instance/instance-IF (train)": lambda: edited(counted, **train),
                    "instance/instance-IF + polish (train)": lambda: edited(counted, "instance/Retrain (train)",
                                                                           "instance/instance-IF (train)", **train),
                    "instance/Retrain (val)": lambda: retrained("val", **val),
                    "instance/instance-IF (val)": lambda: edited(counted, **val),
                    "instance/instance-IF + polish (val)": lambda: edited(counted, "instance/Retrain (val)",
                                                                         "instance/instance-IF (val)", **val)}
            if config.from_scratch:
                jobs.update({"task/Retrain (from scratch)": lambda: retrained("scratch_task", True, **tasks),
                             "instance/Retrain (from scratch, train)": lambda: retrained("scratch_train", True, **train),
                             "instance/Retrain (from scratch, val)": lambda: retrained("scratch_val", True, **val)})
            for level, name in methods:
                ledger.run(f"{seed}/{protocol}/{level}/{name}", jobs[f"{level}/{name}"])

    protocols = {}
    for protocol in config.protocols:
        rows = {}
        for level, name in methods:
            entries = [ledger.data[f"{s}/{protocol}/{level}/{name}"] for s in config.seeds]
            rows[f"{level}/{name}"] = {"accuracy": mean_std([e["accuracy"] for e in entries]),
                                       "seconds": mean_std([e["seconds"] for e in entries])}
            if all("iterations" in e for e in entries):
                rows[f"{level}/{name}"]["iterations"] = mean_std([e["iterations"] for e in entries])
        protocols[protocol] = rows
    base = mean_std([ledger.data[f"{s}/base"]["accuracy"] for s in config.seeds])
    result = {"dataset": config.run.dataset, "seeds": list(config.seeds), "fraction_removed": config.fraction,
              "trained_accuracy": base, "protocols": protocols}
    write_json(out / "table1.json", result)
    write_atomic(out / "table1.md", table1_markdown(result))
    for protocol, rows in protocols.items():
        names = [k.split("/", 1)[1] for k in rows]
        plots.bars(out / f"table1_{protocol}.png", names, [r["accuracy"][0] for r in rows.values()],
                   [r["accuracy"][1] for r in rows.values()], "meta-test accuracy",
                   f"{config.run.dataset}: accuracy after removing {config.fraction:.0%} ({protocol})")
    return result


def table1_markdown(result: dict) -> str:
    acc, std = result["trained_accuracy"]
    out = [f"### {result['dataset']} (removing {result['fraction_removed']:.0%}, seeds {result['seeds']}; "
           f"trained model {acc:.4f} ± {std:.4f})\n"]
    for protocol, rows in result["protocols"].items():
        out.append(f"\n{protocol} removal\n\n| level | method | meta-test accuracy | runtime (s) | iterations |\n"
                   "|---|---|---|---|---|\n")
        out += [f"| {key.split('/')[0]} | {key.split('/', 1)[1]} | {r['accuracy'][0]:.4f} ± {r['accuracy'][1]:.4f} "
                f"| {r['seconds'][0]:.2f} ± {r['seconds'][1]:.2f} | "
                f"{'{:.1f}'.format(r['iterations'][0]) if 'iterations' in r else ''} |\n" for key, r in rows.items()]
    return "".join(out)


# ---- removal curves (Figures 1–3) -------------------------------------------------------------

def _curve(ledger: Ledger, key: str, trained: Trained, analysis: AnalysisConfig, order: list, kind: str,
           fractions, ws: Workspace) -> list[float]:
    """Meta-test accuracy after retraining without the first ``f`` of ``order`` for each fraction."""
    accs = []
    for f in stage(fractions, desc=key, disable=not ws.progress):
        def job():
            count = round(f * len(order))
            if count == 0:
                return accuracy(trained, trained.lam).mean
            lam = checkpointed_retrain(trained, analysis, ws, f"{key}/{f:.3f}", **{kind: order[:count]}).lam
            return accuracy(trained, lam).mean
        accs.append(ledger.run(f"{key}/{f:.3f}", job))
    return accs


def curve_ledger(config: CurveConfig, ws: Workspace, name: str) -> Ledger:
    exp = config.experiment
    save_config(ws.out, exp)
    settings = {"experiment": name, "config": results_settings(exp), "fractions": list(config.fractions),
                "task_fraction": config.task_fraction, "instance_fraction": config.instance_fraction}
    write_json(ws.out / "curve_config.json", settings)
    return experiment_ledger(ws, settings)


def harmful(config: CurveConfig, ws: Workspace) -> dict:
    """Figure 1: corrupt labels, rank tasks by influence score (most harmful first), and compare
    with random order: accuracy after removing the top fraction, and corrupted tasks found."""
    exp, out = config.experiment, ws.out
    ledger = curve_ledger(config, ws, "harmful")
    seed = exp.seeds[0]
    run = seeded(exp, seed)
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
    ledger = curve_ledger(config, ws, "effectiveness")
    seed = exp.seeds[0]
    trained = train_model(seeded(exp, seed), exp.analysis, ws.sub("model"))
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
