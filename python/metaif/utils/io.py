"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

Over several ranks (torch.distributed) only rank 0 writes or removes files, between two barriers:
all ranks run the same code, so every read before a write (in program order) is done on every rank
before rank 0 changes the file, and every read after it sees the new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..parallel import World


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename; the file
    gets the permissions ``open`` would give it (0666 less the umask)."""
    path, world = Path(path), World.current()
    world.barrier()
    if world.writer:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = data.encode() if isinstance(data, str) else data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    world.barrier()
    return path


def remove_files(paths) -> None:
    """Delete ``paths`` (those that exist), on rank 0 only."""
    world = World.current()
    world.barrier()
    if world.writer:
        for path in paths:
            Path(path).unlink(missing_ok=True)
    world.barrier()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`write_atomic` of ``obj`` as indented JSON."""
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`write_atomic` of ``torch.save(obj)``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())


def save_npz(path: str | os.PathLike, arrays: dict, config: Any = None) -> Path:
    """:func:`write_atomic` of tensors/arrays as ``.npz``, with ``config`` as a JSON string entry."""
    import numpy as np

    payload = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in arrays.items()}
    if config is not None:
        payload["config"] = np.asarray(json.dumps(config))
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    return write_atomic(path, buffer.getvalue())


def write_csv(path: str | os.PathLike, header: list[str], rows) -> Path:
    """:func:`write_atomic` of a CSV table."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_atomic(path, buffer.getvalue())


class Ledger:
    """Finished results of a long run, keyed by name, in one JSON file rewritten atomically after
    each entry, so an interrupted run resumes without redoing finished work."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, key: str, compute) -> Any:
        """``compute()`` once per key (JSON-serialisable result); later calls return the stored one."""
        if key not in self.data:
            self.data[key] = compute()
            write_json(self.path, self.data)
        return self.data[key]
