"""One progress line per phase of a stage that takes minutes at real sizes (export, parity,
compress): what ran, for how long, and the process's resident memory now and at its peak, so a
user sees progress and a 2.7B run shows where its memory goes. Running out of memory or disk
inside a phase ends with one line naming the stage, the phase and the size it needed."""

from __future__ import annotations

import errno
import gc
import os
import re
import resource
import sys
import time
from contextlib import contextmanager

from ..errors import ShedderError

GIB = 2**30
TORCH_OOM = re.compile(r"allocate (\d+) bytes")


def resident_bytes() -> int:
    """Resident set size now (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM; what `/usr/bin/time -v` reports)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


LIMIT = {"bytes": None}  # what this process may hold at most (limit_memory); None: what the machine has


def limit_memory(size: int) -> None:
    """Plan every later phase to keep this process's resident memory below `size` bytes."""
    LIMIT["bytes"] = size


def available_bytes() -> int | None:
    """Memory this process may still take: what the kernel could give it now (MemAvailable),
    within limit_memory's bound; None where unknown."""
    free = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if LIMIT["bytes"] is not None:
        free = min(free if free is not None else LIMIT["bytes"], LIMIT["bytes"] - resident_bytes())
    return free


def fits(size: int) -> bool:
    """Whether `size` bytes, plus a margin for activations and the interpreter, are free now."""
    free = available_bytes()
    return free is not None and size + GIB < free


def release(size: int) -> None:
    """Collect garbage after dropping `size` bytes (a model, a compile) when that is a real share of
    the free memory: a full collection costs up to a second in a process holding torch and
    transformers, which small models pay on every export for nothing."""
    free = available_bytes()
    if free is None or size * 8 > free:
        gc.collect()


def require_memory(stage: str, what: str, needed: int) -> None:
    """Refuse, in one line, work that would need more memory than the machine has free now."""
    free = available_bytes()
    if free is not None and needed > free:
        raise ShedderError(f"{stage}: {what} needs ~{needed / GIB:.1f} GiB of memory, {free / GIB:.1f} GiB available")


def require_disk(stage: str, folder, needed: int) -> None:
    """Refuse, in one line, output that would not fit on the disk of `folder`."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ShedderError(f"{stage}: the output needs ~{needed / GIB:.1f} GiB of disk, {free / GIB:.1f} GiB free at {folder}")


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def phase(stage: str, name: str):
    """Time `name`, print one line when it ends; out of memory / disk becomes one ShedderError."""
    start = time.perf_counter()
    try:
        yield
    except MemoryError as error:
        needed = f" ({int(error.args[0]) / GIB:.1f} GiB more)" if error.args and str(error.args[0]).isdigit() else ""
        raise ShedderError(f"{stage}: out of memory in {name}{needed}; resident {resident_bytes() / GIB:.1f} GiB") from None
    except RuntimeError as error:
        found = TORCH_OOM.search(str(error))
        if found is None and "bad_alloc" not in str(error):
            raise
        needed = f" (one allocation of {int(found.group(1)) / GIB:.1f} GiB)" if found else ""
        raise ShedderError(f"{stage}: out of memory in {name}{needed}; resident {resident_bytes() / GIB:.1f} GiB") from None
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise ShedderError(f"{stage}: disk full in {name} ({error.filename or 'output'})") from None
    report(
        f"{stage}: {name} {time.perf_counter() - start:.1f} s "
        f"(resident {resident_bytes() / GIB:.2f} GiB, peak {peak_bytes() / GIB:.2f} GiB)"
    )
