"""The float32 rounding floor of the total-Hessian CG on a trained lambda*, and what stopping there costs.

Reads a ``metaif experiment table1`` folder (its config.json and the trained and polished lambda*
of ``seed<N>/model``, resumed, not recomputed), builds the analyzer at lambda* in float32 and,
as the reference, in float64, and solves Table 1's two kinds of right-hand side: the scores' test
gradient and the task-IF edit's removal gradient (the seeded random 5 % of the tasks). For each
float32 solver setting (the default, which stops at the measured floor, and ``--rtol 1e-3``, the
work-around the Table 1 runs used) it prints the true residual reached, the floor measured, the
products, the seconds, the solution's error against the float64 solve (same damping, rtol 1e-8),
and the meta-test accuracy of the edited lambda beside the float64 edit's.

    python benchmarks/solver_floor.py --run runs/table1-omniglot --seed 0 --json benchmarks/solver-floor-omniglot.json
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from metaif.experiments.common import (
    AnalysisConfig,
    Workspace,
    accuracy,
    load_experiment_config,
    score_tasks,
    train_model,
)
from metaif.experiments.paper import removal_sets
from metaif.influence import InfluenceAnalyzer
from metaif.linalg import MetaifWarning
from metaif.utils.io import write_json

SETTINGS = {"default (stops at the floor)": {}, "rtol 1e-3 (the old work-around)": {"rtol": 1e-3}}


def float64_reference(path: Path, trained, test, removal, make, damping: float):
    """The float64 solves of both right-hand sides and the float64 edit, kept in ``path`` for reruns
    (recomputed when lambda*, the removal set or the damping differ)."""
    key = {"lam": trained.lam.double().sum().item(), "removal": list(removal), "damping": damping}
    if path.exists():
        saved = torch.load(path, weights_only=False)
        if saved["key"] == key:
            return saved["reference"], saved["lam64"]
    f64 = make()
    began = time.perf_counter()
    reference = {"scores": f64.solve(f64.test_gradient(test)[None])[0],
                 "edit": f64.solve(f64.removal_gradient(tasks=removal)[None])[0]}
    print(f"float64 reference: residual {float(f64.last_solve.residual.max()):.1e} after "
          f"{int(f64.last_solve.iterations.max())} products, {time.perf_counter() - began:.0f} s", flush=True)
    lam64 = f64.edit(tasks=removal)
    torch.save({"key": key, "reference": reference, "lam64": lam64}, path)
    return reference, lam64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `metaif experiment table1` --out folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", MetaifWarning)  # the rows below say what the warnings would

    folder = Path(args.run)
    config = load_experiment_config(folder / "config.json")
    run = replace(config.run, seed=args.seed, train=replace(config.run.train, seed=args.seed))
    trained = train_model(run, config.analysis, Workspace(folder / f"seed{args.seed}" / "model", progress=False))
    shapes = (len(trained.train), trained.train.y_train.shape[1], trained.train.y_val.shape[1])
    removal = removal_sets("random", config.fraction, args.seed, None, shapes)["tasks"]
    test = score_tasks(trained, config.analysis)
    base = AnalysisConfig().influence.solver  # today's defaults, not the folder's
    influence = replace(config.analysis.influence, solver=base, progress=False)

    def analyzer(dtype: torch.dtype, **solver) -> InfluenceAnalyzer:
        cfg = replace(influence, solver=replace(base, **solver))
        return InfluenceAnalyzer(trained.problem, trained.lam.to(dtype), trained.train, config=cfg)

    f32 = analyzer(torch.float32)
    rhs = {"scores": f32.test_gradient(test), "edit": f32.removal_gradient(tasks=removal)}
    rows = []
    for label, solver in SETTINGS.items():
        f32.set_solver(replace(base, **solver))
        for kind, b in rhs.items():
            began = time.perf_counter()
            x = f32.solve(b[None])[0]
            seconds = time.perf_counter() - began
            result = f32.last_solve
            rows.append({"setting": label, "rhs": kind, "residual": float(result.residual.max()),
                         "floor": result.summary().get("floor_max"), "products": int(result.iterations.max()),
                         "seconds": seconds, "damping": result.damping, "x": x})
            print(f"{label:32s} {kind:6s}: residual {rows[-1]['residual']:.2e} (floor {rows[-1]['floor'] or 0:.1e}) "
                  f"after {rows[-1]['products']:3d} products, {seconds:6.1f} s, damping {result.damping:g}", flush=True)
        began = time.perf_counter()
        lam = f32.edit(tasks=removal)
        rows.append({"setting": label, "rhs": "edit lambda", "lam": lam, "seconds": time.perf_counter() - began,
                     "accuracy": accuracy(trained, lam).mean})

    damping = f32.damping_used
    reference, lam64 = float64_reference(folder / f"seed{args.seed}" / "solver_floor_reference.pt", trained, test,
                                         removal, lambda: analyzer(torch.float64, rtol=1e-8, max_iter=2000,
                                                                   damping=damping, retries=0), damping)
    step64 = lam64 - trained.lam.double()
    print(f"float64 edit: accuracy {accuracy(trained, lam64.float()).mean:.4f}", flush=True)
    for row in rows:
        if "x" in row:
            ref = reference[row["rhs"]]
            row["error_vs_float64"] = float((row.pop("x").double() - ref).norm() / ref.norm())
            print(f"{row['setting']:32s} {row['rhs']:6s}: relative error against float64 {row['error_vs_float64']:.2e}")
        else:
            row["step_error_vs_float64"] = float((row.pop("lam").double() - lam64).norm() / step64.norm())
            print(f"{row['setting']:32s} edit  : accuracy {row['accuracy']:.4f}, edit step's relative error "
                  f"against float64 {row['step_error_vs_float64']:.2e}")
    if args.json:
        write_json(args.json, {"run": str(folder), "seed": args.seed, "damping": damping,
                               "float64_edit_accuracy": accuracy(trained, lam64.float()).mean, "rows": rows})


if __name__ == "__main__":
    main()
