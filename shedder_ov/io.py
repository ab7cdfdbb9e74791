"""Atomic file and folder writes, so nothing half-written ever looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def remove_stale(target: Path, suffix: str) -> None:
    """Drop the temporaries a killed writer of `target` left behind (writers of one output hold
    its lock, so no live writer owns them)."""
    for stale in target.parent.glob(f".{target.name}.*{suffix}"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, ".tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    with atomic_file(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target, ".partial")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold a lock on `folder` so that two runs never write the same output at once."""
    import fcntl

    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds the lock, the other ranks write nothing
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from .errors import ShedderError

            raise ShedderError(f"output: another shedder-ov process is working in {folder}") from None
        yield
