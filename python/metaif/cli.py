"""The ``metaif`` command."""

from __future__ import annotations

import argparse

from . import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaif", description="Data influence in meta-learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(sub.add_parser("bench", help="benchmark the compiled ops against PyTorch baselines"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main_from_args(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
