"""The ``metaif`` command: its parser, its dispatch to the experiment commands, and its exit codes.

Every flag maps onto one field of a config dataclass (:class:`~metaif.experiments.common.ExperimentConfig`
and the configs it embeds) through :mod:`metaif.utils.flags`; flags are validated by building the
config before any work starts. ``--nproc`` runs the command on local ranks
(:func:`metaif.parallel.launch_command`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from . import bench
from .utils.flags import Flag, add_flags, apply_flags
from .utils.progress import stage

__all__ = ["main"]


RUN_FLAGS = [Flag(name, ("run", name.replace("-", "_"))) for name in (
    "dataset", "root", "split", "form", "head", "model", "hidden", "channels", "widths", "activation", "ways", "shots",
    "queries", "train-tasks", "class-combinations", "test-tasks", "rotations", "delta", "gamma", "inner-steps",
    "inner-lr", "meta-sgd", "first-order", "seed")] + \
    [Flag(name, ("run", "train", name.replace("-", "_"))) for name in ("steps", "meta-batch", "lr", "device")]
ANALYSIS_FLAGS = [
    Flag("variant", ("analysis", "influence", "variant")),
    Flag("inner", ("analysis", "influence", "inner")),
    Flag("inner-damping", ("analysis", "influence", "inner_damping")),
    Flag("solver", ("analysis", "influence", "solver", "method")),
    Flag("damping", ("analysis", "influence", "solver", "damping")),
    Flag("rtol", ("analysis", "influence", "solver", "rtol")),
    Flag("max-iter", ("analysis", "influence", "solver", "max_iter")),
    Flag("rank", ("analysis", "influence", "solver", "rank")),
    Flag("precondition", ("analysis", "influence", "solver", "precondition")),
    Flag("retries", ("analysis", "influence", "solver", "retries")),
    Flag("on-failure", ("analysis", "influence", "solver", "on_failure")),
    Flag("memory-gb", ("analysis", "influence", "memory_gb")),
    Flag("score-tasks", ("analysis", "score_tasks")),
    Flag("polish", ("analysis", "polish")),
    Flag("polish-tol", ("analysis", "polish_tol")),
    Flag("retrain-rtol", ("analysis", "retrain_rtol")),
    Flag("retrain-floor", ("analysis", "retrain_floor")),
    Flag("anchor", ("analysis", "anchor"))]
RETRAIN_FLAGS = [Flag("retrain", ("analysis", "retrain")), Flag("retrain-steps", ("analysis", "retrain_steps"))]
FRACTION_FLAG = Flag("fraction", ("fraction",))
SEEDS_FLAG = Flag("seeds", ("seeds",))
PROTOCOLS_FLAG = Flag("protocols", ("protocols",))
LEVELS_FLAG = Flag("levels", ("levels",))
SCRATCH_FLAG = Flag("from-scratch", ("from_scratch",))


def _items(text: str | None) -> list[tuple[int, int]]:
    """``"3:0,7:2"`` → ``[(3, 0), (7, 2)]`` (task position, index in the split)."""
    if not text:
        return []
    try:
        return [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"instances must look like 'position:index,...', got {text!r}") from None


def _fractions(text: str | None, name: str) -> tuple[float, ...] | None:
    """``"0.2,0.4"`` → ``(0.0, 0.2, 0.4)``: a removal curve's shares, 0 first (``None``: the default)."""
    if text is None:
        return None
    if name == "table1":
        raise ValueError("--fractions sets the points of a removal curve (harmful, effectiveness, curate); table1 "
                         "removes --fraction")
    try:
        shares = sorted({float(part) for part in text.split(",")})
    except ValueError:
        raise ValueError(f"--fractions must look like '0.1,0.3', got {text!r}") from None
    if not all(0 < f < 1 for f in shares):
        raise ValueError(f"--fractions must be shares in (0, 1), got {text!r}")
    return (0.0, *shares)


COMMANDS = {
    "demo": "meta-train on digits, find harmful tasks and instances, edit the model (a few minutes)",
    "influence": "task-IF and instance-IF of every training task and instance",
    "score": "influence scores of every task and instance on new tasks, ranked",
    "edit": "remove tasks / instances from a trained model without retraining",
    "experiment": "the paper's experiments: table1, harmful, effectiveness; curate: train on the tasks influence "
                  "keeps"}
EXPERIMENT_NAMES = ("table1", "harmful", "effectiveness", "curate")  # experiments.commands.EXPERIMENTS (checked)


def _flags_of(command: str) -> list[Flag]:
    flags = RUN_FLAGS if command == "train" else RUN_FLAGS + ANALYSIS_FLAGS
    if command == "demo":
        flags = flags + [FRACTION_FLAG]
    if command == "experiment":
        flags = flags + RETRAIN_FLAGS + [FRACTION_FLAG, SEEDS_FLAG, PROTOCOLS_FLAG, LEVELS_FLAG, SCRATCH_FLAG]
    return flags


def _base(command: str):
    from .experiments.common import ExperimentConfig
    from .experiments.demo import DEMO

    return DEMO if command == "demo" else ExperimentConfig()


EXIT_CODES = """exit codes: 0 done; 1 internal error (a bug: --debug shows the traceback); 2 bad flags or
settings; 3 missing or damaged data; 4 output folder in use, not writable, or holding results of
other settings (--force recomputes them); 5 a numerical failure (a solve that did not converge or
met an indefinite Hessian); 6 a missing optional package; 130 interrupted (rerun to resume)."""


def default_out(command: str, name: str | None = None, quick: bool = False) -> str:
    """The output folder of a command without ``--out``: ``runs/<command>``; the analyses (influence,
    score, edit) share ``runs/analysis`` and its trained model; experiments ``runs/<name>[-quick]``."""
    if command == "experiment":
        return f"runs/{name}-quick" if quick else f"runs/{name}"
    return "runs/analysis" if command in ("influence", "score", "edit") else f"runs/{command}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaif", description="Data influence in meta-learning.", epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(sub.add_parser("bench", help="benchmark the compiled ops against PyTorch baselines"))
    for command, text in {"train": "meta-train a model and report meta-test accuracy", **COMMANDS}.items():
        p = sub.add_parser(command, help=text, description=text, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command == "experiment":
            p.add_argument("name", choices=EXPERIMENT_NAMES)
            p.add_argument("--corrupt-tasks", type=float, default=None,
                           help="harmful, curate: share of the meta-training tasks whose labels Figure 1's corruption "
                                "flips (default: 0.4 for harmful, 0 for curate)")
            p.add_argument("--fractions", default=None,
                           help="harmful, effectiveness, curate: the shares removed along the curve, comma-separated, "
                                "each in (0, 1) (the share 0 is always measured; default: 0.1,0.2,0.3,0.4,0.5)")
            p.add_argument("--quick", action="store_true",
                           help="small digits run that finishes in minutes (flags you give still win)")
        p.add_argument("--config", help="a saved config.json; the flags you give override it")
        p.add_argument("--out", default=None, help=f"output folder (an interrupted run resumes from it; default: "
                                                   f"{default_out(command, '{name}')})")
        p.add_argument("--force", action="store_true",
                       help="recompute results in --out that were made with other settings (default: stop)")
        p.add_argument("--quiet", action="store_true",
                       help="no progress: neither bars on a terminal nor the stage and heartbeat lines of a log")
        p.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: METAIF_THREADS, else 1; see the README on shared machines)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.add_argument("--nproc", type=int, default=1,
                       help="processes on this machine sharing the work through torch.distributed (gloo on CPU, NCCL "
                            "on GPUs; rank 0 writes --out); under torchrun leave it at 1 (default: 1)")
        add_flags(p, _flags_of(command), _base(command))
        if command == "influence":
            p.add_argument("--deltas", action="store_true", help="also save every task's removal prediction (m x p)")
        if command == "edit":
            p.add_argument("--remove-tasks", help="comma-separated task positions")
            p.add_argument("--remove-val", help="validation instances 'position:index,...'")
            p.add_argument("--remove-train", help="training instances 'position:index,...'")
            p.add_argument("--refine", type=int, default=0, help="Newton refinement steps re-solving the inner problems, "
                                                                 "each halved until the objective without the removed "
                                                                 "items falls (default: 0)")
            p.add_argument("--polish-edit", type=int, default=0,
                           help="then at most this many iterations of the retrain's L-BFGS on the objective without the "
                                "removed items, stopping on its rule (--polish-tol, --retrain-rtol) (default: 0)")
    return parser


def config_from_args(args: argparse.Namespace):
    """The ExperimentConfig of a command: its base (or ``--config``), ``--quick`` underneath, then the flags."""
    from .experiments.commands import quick
    from .experiments.common import load_experiment_config

    base = load_experiment_config(args.config) if args.config else _base(args.command)
    if getattr(args, "quick", False):
        base = quick(base, args.name)
    return apply_flags(args, _flags_of(args.command), base, also={"seed": ("run", "train", "seed")})


def _positions(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--remove-tasks must be comma-separated task positions, got {text!r}") from None


def run_command(args: argparse.Namespace, config) -> int:
    """Lock ``--out`` (rank 0 of a distributed run) and run the command in it."""
    from .experiments import commands
    from .experiments.common import Workspace
    from .parallel import World
    from .utils.store import OutputError, folder_contents, lock_folder

    removal, fractions = None, None
    if args.command == "experiment":
        fractions = _fractions(args.fractions, args.name)
    if args.command == "edit":
        removal = (_positions(args.remove_tasks), _items(args.remove_val), _items(args.remove_train))
        commands.validate_removal(config, *removal)
    writer = World.current().writer
    label = f"experiment {args.name}" if args.command == "experiment" else args.command
    if writer and not args.quiet:
        print(f"metaif {label}: output folder {args.out}", file=sys.stderr, flush=True)
    with lock_folder(args.out) if writer else contextlib.nullcontext(Path(args.out)) as out, \
            stage(desc=label, disable=not writer or args.quiet, bar=False):
        # every rank reads the checkpoints and records rank 0 writes: a rank that sees another folder
        # would resume elsewhere (or start afresh) and add its sums to the others' at another lambda
        others = World.current().disagreeing(folder_contents(out))
        if others:
            raise OutputError(f"{out}: rank(s) {others} see other files there than rank 0; put --out on storage "
                              f"every node shares (rank 0 writes it, every rank reads it to resume)")
        ws = Workspace(out, force=args.force, progress=writer and not args.quiet)
        if args.command == "train":
            from .experiments.run import run

            print(json.dumps(run(config.run, out, progress=ws.progress, force=ws.force).summary, indent=2))
            return 0
        if args.command == "demo":
            return commands.demo(config, ws)
        if args.command == "influence":
            return commands.influence(config, ws, args.deltas)
        if args.command == "score":
            return commands.score(config, ws)
        if args.command == "edit":
            return commands.edit(config, ws, *removal, args.refine, args.polish_edit)
        return commands.experiment(config, args.name, ws, args.corrupt_tasks, fractions)


def _one_line_warnings() -> None:
    """metaif's own warnings as ``metaif: warning: ...`` (no source line that looks like a crash)."""
    from .linalg import MetaifWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MetaifWarning):
            print(f"metaif: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _error_code(err: BaseException) -> int | None:
    """The exit code of an error a user can act on, ``None`` for a bug."""
    from .data import DataError
    from .linalg import SolverError
    from .utils.extras import MissingExtra
    from .utils.store import OutputError

    for kind, code in ((MissingExtra, 6), (DataError, 3), (OutputError, 4), (SolverError, 5),
                       ((ValueError, TypeError), 2)):
        if isinstance(err, kind):
            return code
    return None


def _threads(requested: int | None) -> int:
    value = requested if requested is not None else int(os.environ.get("METAIF_THREADS", "1"))
    if value < 1:
        raise ValueError(f"--threads must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main_from_args(args)
    if args.out is None:
        args.out = default_out(args.command, getattr(args, "name", None), getattr(args, "quick", False))
    if args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        from .parallel import launch_command

        return launch_command(main, argv, args.nproc)
    from .parallel import run_in_group

    return run_in_group(lambda: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command of ``args`` on this rank (of the group it is in), as an exit code."""
    from .parallel import World

    if not World.current().writer:  # one rank speaks for the run
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (the rank's whole life)
    _one_line_warnings()
    try:
        config = config_from_args(args)
        import torch

        from .meta.train import device_of

        torch.set_num_threads(_threads(args.threads))
        device_of(config.run.train)  # a device this machine has, before any work
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    try:
        return run_command(args, config)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this into a traceback
        print(f"metaif: interrupted; run the same command again to resume from {args.out}", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        code = _error_code(err)
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if code is None:
            print(f"metaif: internal error: {type(err).__name__}: {text} (--debug shows the traceback)",
                  file=sys.stderr)
            return 1
        print(f"metaif: error: {text}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
