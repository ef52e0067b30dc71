"""One process per run directory: a live holder stops a second one, a dead one's lock is
taken over with a log line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eebench.pipelines.services.lock import LOCK_NAME, RunLockedError, run_lock

HOLD = """
import sys, time
from pathlib import Path
from eebench.pipelines.services.lock import run_lock
with run_lock(Path(sys.argv[1]), "train"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as error, run_lock(tmp_path, "evaluate"):
            pass
        assert f"{tmp_path} is in use by eebench train, pid {holder.pid} on" in str(error.value)
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the kernel dropped its lock; its note is stale.
    assert f"pid {holder.pid}" in (tmp_path / LOCK_NAME).read_text()


def test_a_dead_holders_lock_is_taken_over_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LOCK_NAME).write_text("eebench train, pid 999999 on elsewhere since then")
    with caplog.at_level("WARNING"), run_lock(tmp_path, "train"):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    assert "taking over the lock" in caplog.text and "pid 999999" in caplog.text
    assert (tmp_path / LOCK_NAME).read_text() == "", "released cleanly: the note is emptied"


def test_the_lock_is_released_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), run_lock(tmp_path, "train"):
        raise KeyboardInterrupt
    started = time.monotonic()
    with run_lock(tmp_path, "train"):
        pass
    assert time.monotonic() - started < 1.0
