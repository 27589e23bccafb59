"""Table 1's edits with Newton refinement, beside the retrains the Table 1 run recorded.

Reads a finished (or partly finished) ``metaif experiment table1`` folder: its config.json, the
trained and polished lambda* of ``seed<N>/model`` (resumed, not recomputed) and ``ledger.json``.
Builds the analyzer at lambda* once, takes the same removal sets as Table 1 (``--protocol random``:
the seeded random 5 %; ``harmful``: the 5 % most harmful by the scores on the run's score tasks) and,
for each level, prints the meta-test accuracy and the cumulative seconds of the first-order edit and
of every Newton refinement step (``metaif edit --refine``: inner problems re-solved at the new lambda,
the total Hessian kept from lambda*), beside the ledger's retrain; and, for lambda*, every iterate and
the retrain's lambda (``retrain/`` checkpoint), the objective without the removed items, its largest
gradient entry and the distance to the retrain's lambda.

    python benchmarks/refine_edits.py --run runs/table1-omniglot --seed 0 --levels train --steps 3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from metaif.experiments.common import Workspace, accuracy, analyze, load_experiment_config, score_tasks, train_model
from metaif.experiments.paper import removal_sets
from metaif.meta import Weights, full_objective

LEVELS = {"task": ("tasks", "task/Retrain"), "train": ("train", "instance/Retrain (train)"),
          "val": ("val", "instance/Retrain (val)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `metaif experiment table1` --out folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", choices=("random", "harmful"), default="random")
    parser.add_argument("--levels", default="train", help=f"comma-separated, of {', '.join(LEVELS)}")
    parser.add_argument("--steps", type=int, default=3, help="Newton refinement steps after the edit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    levels = args.levels.split(",")
    if not set(levels) <= set(LEVELS):
        parser.error(f"--levels: comma-separated, of {', '.join(LEVELS)}; got {args.levels!r}")
    torch.set_num_threads(args.threads)

    folder = Path(args.run)
    config = load_experiment_config(folder / "config.json")
    ledger = json.loads((folder / "ledger.json").read_text())
    run = replace(config.run, seed=args.seed, train=replace(config.run.train, seed=args.seed))
    trained = train_model(run, config.analysis, Workspace(folder / f"seed{args.seed}" / "model", progress=False))
    began = time.perf_counter()
    analyzer = analyze(trained, config.analysis, progress=False)
    setup = time.perf_counter() - began
    scores = analyzer.scores(score_tasks(trained, config.analysis)) if args.protocol == "harmful" else None
    shapes = (len(trained.train), trained.train.y_train.shape[1], trained.train.y_val.shape[1])
    removal = removal_sets(args.protocol, config.fraction, args.seed, scores, shapes)
    print(f"analyzer set-up at lambda*: {setup:.1f} s", flush=True)
    rows = []
    for level in levels:
        name, retrain_key = LEVELS[level]
        items = {name: removal[name]}
        retrain = ledger.get(f"{args.seed}/{args.protocol}/{retrain_key}")
        saved = folder / "retrain" / f"{args.seed}_{args.protocol}_{level}.pt"
        retrained = torch.load(saved, weights_only=False)["lam"] if retrain and saved.exists() else None
        weights = Weights.uniform(trained.train, trained.lam.dtype).without_positions(**items)

        def row(label: str, lam: torch.Tensor, **extra) -> None:
            value, grad = full_objective(trained.problem, trained.train, lam, weights)
            rows.append({"level": level, "point": label, "accuracy": accuracy(trained, lam).mean,
                         "objective": value, "grad_max": float(grad.abs().max()),
                         "distance_to_retrain": None if retrained is None else float((lam - retrained).norm()),
                         **extra})
            far = "" if retrained is None else f", |lam - retrain| {rows[-1]['distance_to_retrain']:.3g}"
            spent = f" after {extra['seconds']:6.1f} s" if "seconds" in extra else ""
            print(f"{level:5s} {label:9s}: accuracy {rows[-1]['accuracy']:.4f}{spent}; objective without the items "
                  f"{value:.6g}, max |grad| {rows[-1]['grad_max']:.2e}{far}", flush=True)

        row("lambda*", trained.lam)
        began = time.perf_counter()
        steps = analyzer.newton_steps(analyzer.edit(**items), **items)
        spent = setup + time.perf_counter() - began
        for step in range(args.steps + 1):
            began = time.perf_counter()
            lam = next(steps)  # the evaluations in row() are not edit time
            spent += time.perf_counter() - began
            row(f"refine={step}", lam, seconds=spent, solve_products=int(analyzer.last_solve.iterations.max()))
        if retrained is not None:
            row("retrain", retrained, seconds=retrain["seconds"])
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "seed": args.seed, "protocol": args.protocol,
                                               "tasks": len(trained.train), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
