"""Starting the ranks of a run: ``launch`` spawns ``nproc`` local processes on loopback and
:func:`launch_command` runs a command line on them (what ``metaif ... --nproc N`` does);
:func:`init_from_env` joins the group that torchrun describes in the environment and
:func:`run_in_group` runs a function inside it, leaving it cleanly. Collectives time out
(``METAIF_DIST_TIMEOUT`` seconds, default 300), so a rank that dies or hangs stops the others with an
error instead of a hang."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .world import World

__all__ = ["DEFAULT_TIMEOUT_S", "init_from_env", "launch", "launch_command", "run_in_group"]

DEFAULT_TIMEOUT_S = 300.0


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("METAIF_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() and os.environ.get("METAIF_DIST_BACKEND") != "gloo" else "gloo"


def init_from_env() -> World:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) unless already joined; a group of one without them. NCCL when CUDA is available
    (unless METAIF_DIST_BACKEND=gloo), gloo otherwise."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if _backend() == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(_backend(), timeout=_timeout())
    return World.current()


def run_in_group(fn: Callable[[], int]) -> int:
    """``fn()`` (an exit code) inside the group torchrun's environment describes. A group joined here is
    left at the end: after a barrier where ``fn`` succeeded (returned 0), so that no rank closes its
    connections while another is still inside a collective (a gloo peer that loses a connection
    mid-operation may abort instead of raising), then destroyed. A group joined before (or none) is
    left as it is."""
    joining = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    init_from_env()
    try:
        code = fn()
        if joining and code == 0:
            dist.barrier()
        return code
    finally:
        if joining:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, nproc: int, port: int, target: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nproc))
    run_in_group(lambda: target(*args) or 0)
    # done, the group left: end without interpreter finalization, where a rank aborted in CI with
    # "terminate called without an active exception" (1 in ~100 runs; gloo state meeting the
    # interpreter's teardown, cf. pytorch#179291). A failure above raises and is reported as before.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(nproc: int, target: Callable, *args) -> None:
    """Run ``target(*args)`` on ranks ``0..nproc-1`` of one machine. Returns when every rank has
    finished; raises (torch.multiprocessing's ProcessExitedException / ProcessRaisedException, naming
    the rank) as soon as one fails, after stopping the others."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    mp.spawn(_rank_entry, args=(nproc, _free_port(), target, args), nprocs=nproc, join=True)


def _rank_command(command: Callable[[list[str]], int], argv: list[str]) -> None:
    """One rank of :func:`launch_command`: the command; a failure ends the process with the command's
    exit code (the launcher reports it)."""
    code = command(argv)
    if code:
        sys.exit(code)


def launch_command(command: Callable[[list[str]], int], argv: list[str], nproc: int, flag: str = "--nproc") -> int:
    """``command(argv)`` (a module-level function returning an exit code) on ``nproc`` local ranks,
    without ``flag`` and its value in ``argv`` (the ranks must not launch again); the exit code of the
    run: 0, or the failing rank's, with one line on stderr saying which rank stopped it."""
    rank_argv = []
    skip = False
    for arg in argv:
        if skip or arg.startswith(f"{flag}="):
            skip = False
            continue
        skip = arg == flag
        if not skip:
            rank_argv.append(arg)
    try:
        launch(nproc, _rank_command, command, rank_argv)
    except mp.ProcessExitedException as err:
        print(f"metaif: rank {err.error_index} of {nproc} exited with code {err.exit_code}; the run stopped "
              f"(rerun to resume from --out)", file=sys.stderr)
        return err.exit_code if err.exit_code and err.exit_code > 0 else 1
    except mp.ProcessRaisedException as err:
        print(f"metaif: rank {err.error_index} of {nproc} failed: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    return 0
