"""Benchmarks: metaif against baselines, side by side, on the same inputs, in one process.

    python -m metaif.bench [--quick] [--threads 1] [--repeats N] [--only SUBSTR] [--json FILE]
    metaif bench --only scale --root ../shared/data/omniglot
    metaif bench --device cuda --only gpu --root <omniglot folder>
    metaif bench --only distributed --root ../shared/data/omniglot
    metaif bench --only backbones

Single-threaded by default (the machine is shared), median of repeats; prints one table row
per case with both timings, the speed-up and, for GEMM-bound kernels, the achieved GFLOP/s
next to the measured single-thread sgemm peak. Outputs are checked for agreement first. The op
cases (:mod:`.ops`) run by default; the data-set scale runs (:mod:`.scale`), the CUDA kernel
cases (:mod:`.gpu`), the processes (:mod:`.distributed`) and the backbones (:mod:`.backbones`)
when named.
"""

from __future__ import annotations

import argparse

from ..utils.io import write_json
from .backbones import backbone_cases
from .core import BenchConfig, run
from .distributed import distributed_cases
from .gpu import gpu_cases
from .ops import OP_GROUPS
from .scale import scale_cases

__all__ = ["GROUPS", "BenchConfig", "add_arguments", "main", "main_from_args", "run"]

GROUPS = (*OP_GROUPS, scale_cases, gpu_cases, distributed_cases, backbone_cases)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller slow cases; under 2 minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 3 quick, 7 full)")
    parser.add_argument("--only", default=None,
                        help="run only ops whose name contains this; 'scale' runs the task-count scaling cases")
    parser.add_argument("--root", default=None, help="the Omniglot folder the scale cases read")
    parser.add_argument("--device", default="cpu",
                        help="cuda: time with CUDA events against the GPU's peaks; 'gpu' runs the CUDA kernel cases")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def main_from_args(args: argparse.Namespace) -> int:
    results = run(BenchConfig(quick=args.quick, threads=args.threads, repeats=args.repeats, only=args.only,
                              root=args.root, device=args.device), GROUPS)
    if args.json:
        print(f"wrote {write_json(args.json, results)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaif.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
