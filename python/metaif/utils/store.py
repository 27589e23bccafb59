"""Output folders that resume honestly: an exclusive lock per folder, and resumable artefacts that
carry the fingerprint of exactly the settings they were made with.

A :class:`Stage` is one resumable artefact (a trained model, a polished lambda, a ledger of
finished measurements) recorded in ``<name>.stage.json`` next to its files. Resuming with other
settings stops with a :class:`StaleResults` that names every differing setting, unless ``force``
is given, which deletes the stage's files so that it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .io import remove_files, write_json

__all__ = ["FolderBusy", "OutputError", "Stage", "StaleResults", "differences", "fingerprint", "folder_contents",
           "lock_folder"]


class OutputError(RuntimeError):
    """The output folder cannot be used as asked."""


class FolderBusy(OutputError):
    """Another live process holds the folder's lock."""


class StaleResults(OutputError):
    """A resumable artefact was made with other settings."""


def fingerprint(settings: Any) -> str:
    """A short hash of JSON-able ``settings`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for every leaf where two nested JSON-able settings differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{name}: {old[key]!r} -> (absent)")
            else:
                out.extend(differences(old[key], new[key], name))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix or 'settings'}: {old!r} -> {new!r}"]


class Stage:
    """A resumable artefact ``folder/<name>`` made from ``settings`` (JSON-able), with its files."""

    def __init__(self, folder: str | os.PathLike, name: str, settings: Any, files: list[str], force: bool = False) -> None:
        self.folder, self.name, self.files = Path(folder), name, files
        self.settings = json.loads(json.dumps(settings, default=str))
        self.record_path = self.folder / f"{name}.stage.json"
        self.force = force

    def _record(self) -> dict | None:
        if not self.record_path.exists():
            return None
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StaleResults(f"{self.record_path}: unreadable stage record ({err}); rerun with --force to "
                               f"recompute") from None

    def open(self) -> dict | None:
        """The stage's record when its files were completed with these settings (resume), ``None``
        when the stage is to be computed; raises :class:`StaleResults` on other settings (without
        force). A stage to be computed is marked as begun with these settings first, so that the
        partial files (checkpoints) an interrupted run leaves are resumed by the same command and
        refused by any other."""
        record = self._record()
        ours = record is not None and record.get("fingerprint") == fingerprint(self.settings)
        if ours and record.get("complete", True):
            return record
        present = [f for f in self.files if (self.folder / f).exists()]
        if not ours and (record is not None or present):
            if not self.force:
                changed = differences(record["settings"], self.settings) if record is not None else \
                    [f"{', '.join(present)} without a record of their settings"]
                shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
                raise StaleResults(f"{self.folder / self.name} was made with other settings ({shown}); rerun "
                                   f"with --force to recompute it, or use another --out")
            self.clear()
        write_json(self.record_path, {"fingerprint": fingerprint(self.settings), "settings": self.settings,
                                      "complete": False})
        return None

    def clear(self) -> None:
        remove_files([*(self.folder / f for f in self.files), self.record_path])

    def finish(self, **summary: Any) -> dict:
        """Record that the stage's files are complete for these settings (with a summary)."""
        record = {"fingerprint": fingerprint(self.settings), "settings": self.settings, "complete": True, **summary}
        write_json(self.record_path, record)
        return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_NAME = ".metaif.lock"


def folder_contents(folder: str | os.PathLike) -> str:
    """A fingerprint of the files under ``folder`` (relative paths and sizes; the lock left out): what
    a resumed run would read there. ``""`` for a folder that does not exist."""
    root = Path(folder)
    if not root.is_dir():
        return ""
    files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                   if p.is_file() and p.name != LOCK_NAME)
    return fingerprint(files) if files else ""


class lock_folder:
    """Exclusive use of an output folder: creates it (checking that it is writable) and a lock file
    ``.metaif.lock`` holding this process's pid and command; another live holder raises
    :class:`FolderBusy` naming it; a lock left by a dead process is taken over."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME

    def __enter__(self) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{self.folder}: cannot create the output folder ({err.strerror})") from None
        if not self.folder.is_dir():
            raise OutputError(f"{self.folder}: not a folder")
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise OutputError(f"{self.folder}: the output folder is not writable")
        holder = f"{os.getpid()} {' '.join(sys.argv)[:200]}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text = self.path.read_text(errors="replace").strip() if self.path.exists() else ""
                pid = int(text.split()[0]) if text.split() and text.split()[0].isdigit() else -1
                if pid > 0 and _alive(pid):
                    raise FolderBusy(f"{self.folder} is in use by process {pid} ({' '.join(text.split()[1:])}); "
                                     f"wait for it to finish or use another --out") from None
                self.path.unlink(missing_ok=True)  # left by a process that is gone
                continue
            except OSError as err:
                raise OutputError(f"{self.folder}: cannot write the lock file ({err.strerror})") from None
            with os.fdopen(fd, "w") as f:
                f.write(holder)
            return self.folder
        raise FolderBusy(f"{self.folder}: another process took the lock at the same moment; try again")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
