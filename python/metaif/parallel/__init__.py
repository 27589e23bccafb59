"""Sharding over processes with torch.distributed: the process group a run belongs to, the
collectives the library sums through, and the launcher of local ranks (``--nproc``)."""

from .launch import init_from_env, launch, launch_command, run_in_group
from .world import World

__all__ = ["World", "init_from_env", "launch", "launch_command", "run_in_group"]
