"""Atomic writes keep the user's umask (mkstemp alone would make every result 0600)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

WRITE = "import sys; from eebench.pipelines.io import write_text; write_text(sys.argv[1], 'x')"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    path = tmp_path / "result.csv"
    subprocess.run(
        [sys.executable, "-c", WRITE, str(path)], check=True, preexec_fn=lambda: os.umask(umask)
    )
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "x"
