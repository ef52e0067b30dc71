"""A faster memory allocator for the workflow's jobs, where the machine has one.

A training step of the CPU studies' tiny models allocates and frees hundreds of small
activation tensors; tcmalloc serves them faster than glibc's malloc. Measured side by side
(benchmarks/job_speed.py, benchmarks/results/job_speed.csv), with byte-identical
models and outputs: the allocator changes where tensors live, never what is computed.
The Snakefile preloads it into every `eebench` job it starts (README, "Speed"); without
one (`apt-get install libtcmalloc-minimal4` gives tcmalloc) the jobs use the system's.
`EEBENCH_ALLOCATOR=system` turns it off; a path to a shared library picks that one.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Libraries tried in order (tcmalloc was the faster of the two here).
CANDIDATES: tuple[str, ...] = ("libtcmalloc_minimal.so.4", "libjemalloc.so.2")
LIBRARY_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


class AllocatorError(ValueError):
    """EEBENCH_ALLOCATOR names a library that does not exist."""


def fast_allocator(
    environ: Mapping[str, str] = os.environ, dirs: Iterable[str] = LIBRARY_DIRS
) -> Path | None:
    """The allocator library to preload: EEBENCH_ALLOCATOR's (`auto` by default: the first
    of CANDIDATES found), or None (`system`, or none installed)."""
    choice = environ.get("EEBENCH_ALLOCATOR", "auto")
    if choice == "system":
        return None
    if choice != "auto":
        path = Path(choice)
        if not path.is_file():
            raise AllocatorError(
                f"EEBENCH_ALLOCATOR={choice} is not a file: give the path of a malloc "
                "library (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4), "
                "or auto, or system"
            )
        return path
    dirs = list(dirs)
    for name in CANDIDATES:
        for folder in dirs:
            path = Path(folder) / name
            if path.is_file():
                return path
    return None


def preload_prefix(
    environ: Mapping[str, str] = os.environ, dirs: Iterable[str] = LIBRARY_DIRS
) -> str:
    """`env LD_PRELOAD=… ` to put before a job's command ("" without a faster allocator);
    an LD_PRELOAD already set is kept after it."""
    library = fast_allocator(environ, dirs)
    if library is None:
        return ""
    preload = ":".join(part for part in (str(library), environ.get("LD_PRELOAD", "")) if part)
    return f"env LD_PRELOAD={shlex.quote(preload)} "
