"""Leave-one-out validation of the influence estimates (issue 4): Spearman over items between
predicted and warm-started re-solved projections ``d^T (lambda_{-X} - lambda*)`` on random unit
directions, for tasks, validation instances and training instances, per Hessian variant; the
direct IF; and the low-rank solver's error against the exact solve. float64, digits, small MLP.

    python benchmarks/validate_loo.py --form ridge --tasks 30 --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.experiments.loo import leave_one_out, random_directions, spearman
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig, SolverError
from metaif.meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, solve_outer
from metaif.models import mlp
from metaif.utils.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--form", choices=["ridge", "logistic", "imaml"], default="ridge")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--directions", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-11,
                        help="gradient tolerance of lambda* (re-solves stop at 10x it)")
    parser.add_argument("--every", type=int, default=3, help="instances are sampled from every k-th task")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=5, num_tasks=args.tasks, seed=3))
    if args.form == "imaml":
        problem = ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, delta=2.0, gamma=args.gamma, inner_tol=1e-12,
                                                                  inner_max_iter=500, cg_rtol=1e-13, cg_max_iter=500))
    else:
        loss = {"logistic": "softmax", "ridge": "squared"}[args.form]
        problem = AnilProblem(mlp(64, (6,), "tanh"), AnilConfig(ways=3, loss=loss, delta=0.3, gamma=args.gamma,
                                                                inner_tol=1e-12))
    lam = solve_outer(problem, tasks, problem.init_lambda(0, torch.float64), tol=args.tol, max_iter=3000).lam
    d = random_directions(lam.numel(), args.directions, seed=1)
    m = len(tasks)
    items = {"tasks": list(range(m)), "val": [(k, j) for k in range(0, m, args.every) for j in (0, 7, 14)],
             "train": [(k, j) for k in range(0, m, args.every) for j in (0, 4, 8)]}
    report = {"form": args.form, "tasks": m, "p": lam.numel(), "gamma": args.gamma, "variants": {}}
    actual = {}
    for variant in ("exact", "gn", "gamma"):
        analyzer = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(
            variant=variant, solver=SolverConfig(method="dense")))
        report.setdefault("diagnostics", analyzer.diagnostics)
        row = {}
        try:
            for kind, chosen in items.items():
                if kind not in actual:
                    res = leave_one_out(analyzer, kind, chosen, d, tol=10 * args.tol, progress=True)
                    actual[kind] = res.actual
                    row[kind] = res.summary()
                else:
                    pred = analyzer.projections(d)
                    p = torch.stack([torch.stack([getattr(s, kind)[i] if isinstance(i, int) else getattr(s, kind)[i[0], i[1]]
                                                  for i in chosen]) for s in pred])
                    row[kind] = {"spearman": [spearman(a, b) for a, b in zip(p, actual[kind])],
                                 "relative_error": float((p - actual[kind]).norm() / actual[kind].norm())}
                    row[kind]["spearman_min"] = min(row[kind]["spearman"])
        except SolverError as err:
            row = {"error": str(err)}
        report["variants"][variant] = row
        if variant == "exact":
            exact = analyzer
    if args.form != "imaml":
        direct = exact.direct_influence() @ d.T
        report["direct_task_spearman"] = [spearman(direct[:, k], actual["tasks"][k]) for k in range(len(d))]
    reference = exact.task_influence()
    report["lowrank"] = {}
    for rank in (10, 40, 120):
        low = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(
            solver=SolverConfig(method="lowrank", rank=rank)))
        approx = low.task_influence()
        report["lowrank"][rank] = float((approx - reference).norm() / reference.norm())
    print(json.dumps(report, indent=1))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
