"""Sharding over processes with torch.distributed: the process group a run belongs to, the
collectives the library sums through (exact: the same bits on any number of ranks), and the
launcher of local ranks (``--nproc``)."""

from .exact import ExactSum
from .launch import init_from_env, launch, launch_command, run_in_group
from .world import World

__all__ = ["ExactSum", "World", "init_from_env", "launch", "launch_command", "run_in_group"]
