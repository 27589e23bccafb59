"""Total-Hessian CG iterations with and without the spectral preconditioner, same solves.

Reads a finished experiment folder (its config.json and seed<N>/model: trained and polished
lambda*, resumed, not recomputed), builds the analyzer at lambda* once per preconditioner rank, and
solves the task-IF edit without a random 5% of the training tasks, plus the influence scores on
the experiment's fresh score tasks (one column per score task). Prints products per solve, the
preconditioner's up-front products, the true residual reached and the wall time.

    python benchmarks/cg_iterations.py --run runs/table1-mnist --seed 0 --ranks 0,20
    python benchmarks/cg_iterations.py --run runs/table1-omniglot --solves edit
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from metaif.experiments.common import Workspace, load_experiment_config, score_tasks, train_model
from metaif.influence import InfluenceAnalyzer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an experiment's --out folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranks", default="0,20", help="preconditioner ranks to compare")
    parser.add_argument("--solves", default="edit,scores", help="which solves to time: edit and/or scores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    if not set(args.solves.split(",")) <= {"edit", "scores"}:
        parser.error(f"--solves: edit and/or scores, comma-separated; got {args.solves!r}")
    torch.set_num_threads(args.threads)

    config = load_experiment_config(Path(args.run) / "config.json")
    run = replace(config.run, seed=args.seed, train=replace(config.run.train, seed=args.seed))
    trained = train_model(run, config.analysis, Workspace(Path(args.run) / f"seed{args.seed}" / "model", progress=False))
    removed = torch.randperm(len(trained.train), generator=torch.Generator().manual_seed(args.seed))
    removed = removed[: max(1, round(0.05 * len(trained.train)))].tolist()
    scored = score_tasks(trained, config.analysis)
    rows = []
    for rank in (int(r) for r in args.ranks.split(",")):
        solver = replace(config.analysis.influence.solver, precondition=rank)
        influence = replace(config.analysis.influence, solver=solver, progress=False)
        began = time.perf_counter()
        analyzer = InfluenceAnalyzer(trained.problem, trained.lam, trained.train, config=influence)
        setup = time.perf_counter() - began
        jobs = {"edit": ("edit (1 column)", lambda a=analyzer: a.edit(tasks=removed)),
                "scores": (f"scores ({len(scored)} columns)", lambda a=analyzer: a.scores(scored))}
        for name, job in (jobs[key] for key in args.solves.split(",")):
            began = time.perf_counter()
            job()
            seconds = time.perf_counter() - began
            result = analyzer.last_solve
            rows.append({"solve": name, "precondition": rank, "iterations_mean": float(result.iterations.float().mean()),
                         "iterations_max": int(result.iterations.max()), "true_residual_max": float(result.residual.max()),
                         "converged": result.converged, "seconds": seconds, "setup_seconds": setup,
                         "preconditioner_products": rank})
            print(f"{name:22s} precondition={rank:3d}: {rows[-1]['iterations_mean']:6.1f} products/column "
                  f"(max {rows[-1]['iterations_max']}), true residual <= {rows[-1]['true_residual_max']:.1e}, "
                  f"converged {result.converged}, {seconds:7.1f} s (analyzer set-up {setup:.1f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "seed": args.seed, "tasks": len(trained.train),
                                               "rtol": config.analysis.influence.solver.rtol, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
