"""How much memory this machine has to spare: the default budget of the state that body passes keep
between products."""

from __future__ import annotations

import math
import os

__all__ = ["available_bytes"]


def available_bytes() -> float:
    """Bytes the system can give this process now: Linux's ``MemAvailable``, else the physical
    memory, else ``inf`` where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return math.inf
