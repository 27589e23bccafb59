"""The ``metaif`` command."""

from __future__ import annotations

import argparse

import json
from dataclasses import replace

from . import bench


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a JSON RunConfig; flags below override it")
    parser.add_argument("--dataset", choices=["digits", "omniglot", "mnist", "miniimagenet"])
    parser.add_argument("--root", help="folder with the data set's files (not needed for digits)")
    parser.add_argument("--split", choices=["class", "image"])
    parser.add_argument("--form", choices=["anil", "imaml"])
    parser.add_argument("--head", choices=["logistic", "ridge"])
    parser.add_argument("--model", choices=["mlp", "conv4"])
    parser.add_argument("--channels", type=int)
    parser.add_argument("--activation", choices=["relu", "tanh", "softplus"])
    for name in ("ways", "shots", "queries", "train-tasks", "test-tasks", "steps", "meta-batch", "seed"):
        parser.add_argument(f"--{name}", type=int)
    for name in ("delta", "gamma", "lr"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--out", required=True, help="output folder (resumes from its checkpoint)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=["exact", "gn", "gamma", "direct"], help="total-Hessian variant")
    parser.add_argument("--solver", choices=["cg", "neumann", "dense", "lowrank"], help="total-Hessian solver")
    parser.add_argument("--damping", type=float, help="damping added to the total Hessian (raised x10 if needed)")
    parser.add_argument("--rank", type=int, help="Lanczos rank of the lowrank solver")
    parser.add_argument("--max-iter", type=int, help="solver iterations")
    parser.add_argument("--score-tasks", type=int, help="new tasks that define the scores' test loss")
    parser.add_argument("--polish", type=int, help="full-batch L-BFGS iterations to stationarity (0: off)")
    parser.add_argument("--retrain", choices=["lbfgs", "adam"], help="how ground-truth retraining runs")
    parser.add_argument("--retrain-steps", type=int, help="Adam steps of --retrain adam")
    parser.add_argument("--fraction", type=float, help="share of tasks / instances removed")
    parser.add_argument("--seeds", help="comma-separated seeds (table1)")


def experiment_config_from_args(args: argparse.Namespace, base):
    from .experiments.common import load_experiment_config

    if args.config:
        base = load_experiment_config(args.config)
        args.config = None  # the run part is in base now; flags still override

    names = {"variant": "variant", "solver": "solver", "damping": "damping", "rank": "rank", "max_iter": "max_iter",
             "score_tasks": "score_tasks", "polish": "polish", "retrain": "retrain", "retrain_steps": "retrain_steps"}
    analysis = replace(base.analysis, **{v: getattr(args, k) for k, v in names.items() if getattr(args, k) is not None})
    run = train_config_from_args(args, base.run)
    top = {}
    if args.fraction is not None:
        top["fraction"] = args.fraction
    if args.seeds:
        top["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    return replace(base, run=run, analysis=analysis, **top)


def train_config_from_args(args: argparse.Namespace, base=None):
    from .meta.run import RunConfig, load_config

    config = load_config(args.config) if args.config else (base or RunConfig())
    top = {k: getattr(args, k) for k in ("dataset", "root", "split", "form", "head", "model", "channels",
                                          "activation", "ways", "shots", "queries", "train_tasks", "test_tasks",
                                          "delta", "gamma", "seed") if getattr(args, k) is not None}
    inner = {k: getattr(args, k) for k in ("steps", "meta_batch", "lr") if getattr(args, k) is not None}
    if args.seed is not None:
        inner["seed"] = args.seed
    return replace(config, **top, train=replace(config.train, **inner))


def _items(text: str | None) -> list[tuple[int, int]]:
    """``"3:0,7:2"`` → ``[(3, 0), (7, 2)]`` (task position, index in the split)."""
    if not text:
        return []
    try:
        return [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"instances must look like 'position:index,...', got {text!r}") from None


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .experiments import commands
    from .experiments.common import ExperimentConfig
    from .experiments.demo import DEMO

    base = DEMO if args.command == "demo" else ExperimentConfig()
    try:
        config = experiment_config_from_args(args, base)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    progress = not args.quiet
    if args.command == "demo":
        return commands.demo(config, args.out, progress)
    if args.command == "influence":
        return commands.influence(config, args.out, args.deltas, progress)
    if args.command == "score":
        return commands.score(config, args.out, progress)
    if args.command == "edit":
        return commands.edit(config, args.out, [int(t) for t in args.remove_tasks.split(",")] if args.remove_tasks else [],
                             _items(args.remove_val), _items(args.remove_train), args.refine, progress)
    return commands.experiment(config, args.name, args.quick, args.out, progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaif", description="Data influence in meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(sub.add_parser("bench", help="benchmark the compiled ops against PyTorch baselines"))
    add_train_arguments(sub.add_parser("train", help="meta-train a model and report meta-test accuracy"))
    commands = {
        "demo": "meta-train on digits, find harmful tasks and instances, edit the model (a few minutes)",
        "influence": "task-IF and instance-IF of every training task and instance",
        "score": "influence scores of every task and instance on new tasks, ranked",
        "edit": "remove tasks / instances from a trained model without retraining",
        "experiment": "the paper's experiments: table1, harmful, effectiveness"}
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        if name == "experiment":
            p.add_argument("name", choices=["table1", "harmful", "effectiveness"])
            p.add_argument("--quick", action="store_true", help="small digits run that finishes in minutes")
        add_train_arguments(p)
        add_analysis_arguments(p)
        if name == "demo":
            p.set_defaults(out="runs/demo")
            p._option_string_actions["--out"].required = False
        if name == "influence":
            p.add_argument("--deltas", action="store_true", help="also save every task's removal prediction (m x p)")
        if name == "edit":
            p.add_argument("--remove-tasks", help="comma-separated task positions")
            p.add_argument("--remove-val", help="validation instances 'position:index,...'")
            p.add_argument("--remove-train", help="training instances 'position:index,...'")
            p.add_argument("--refine", type=int, default=0, help="Newton refinement steps (re-solving inner problems)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main_from_args(args)
    if args.command == "train":
        from .meta.run import run

        try:
            config = train_config_from_args(args)
        except (ValueError, TypeError) as err:
            parser.error(str(err))
        print(json.dumps(run(config, args.out, progress=not args.quiet), indent=2))
        return 0
    return run_command(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
