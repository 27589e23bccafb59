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


def train_config_from_args(args: argparse.Namespace):
    from .meta.run import RunConfig, load_config

    config = load_config(args.config) if args.config else RunConfig()
    top = {k: getattr(args, k) for k in ("dataset", "root", "split", "form", "head", "model", "channels",
                                          "activation", "ways", "shots", "queries", "train_tasks", "test_tasks",
                                          "delta", "gamma", "seed") if getattr(args, k) is not None}
    inner = {k: getattr(args, k) for k in ("steps", "meta_batch", "lr") if getattr(args, k) is not None}
    if args.seed is not None:
        inner["seed"] = args.seed
    return replace(config, **top, train=replace(config.train, **inner))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaif", description="Data influence in meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(sub.add_parser("bench", help="benchmark the compiled ops against PyTorch baselines"))
    add_train_arguments(sub.add_parser("train", help="meta-train a model and report meta-test accuracy"))
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
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
