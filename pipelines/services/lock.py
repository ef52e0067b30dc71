"""One process per run directory: `eebench train`, `evaluate` and `calibrate` hold a lock.

The lock is an advisory `flock` on `<run>/.lock`, so the kernel releases it when its
process dies, however it dies (a killed Snakemake can leave a trainer running; a second
trainer started after `--unlock` then stops here instead of sharing the checkpoints).
The file names its holder (stage, pid, host, start time); a non-empty file that nobody
holds was left by a process that died, and is taken over with a log line. A workflow job
(`eebench train --wait`) waits for a live holder instead, so the rerun of a killed
Snakemake uses what its orphaned trainer finishes rather than failing or retraining.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


@contextlib.contextmanager
def run_lock(run_dir: Path, stage: str, wait: bool = False) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block; when another live process holds it, stop at once
    naming it, or with `wait`, wait until it ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle) or "another process"
            if not wait:
                raise RunLockedError(
                    f"{run_dir} is in use by {holder}: wait for it to end, or stop that "
                    "process; two processes never share a run directory"
                ) from None
            log.warning("%s is in use by %s: waiting for it to end", run_dir, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        left = _holder(handle)
        if left:
            log.warning("taking over the lock of %s, left by %s (no longer running)", run_dir, left)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        _write_holder(
            handle, f"eebench {stage}, pid {os.getpid()} on {socket.gethostname()} since {since}"
        )
        try:
            yield
        finally:
            _write_holder(handle, "")  # empty: released cleanly
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip()


def _write_holder(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
