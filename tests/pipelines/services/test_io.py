"""Atomic writes keep the user's umask (mkstemp alone would make every result 0600), name
the file meant when they fail, and checksums refuse a damaged or truncated file."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.pipelines.evaluation.outputs import OutputsFormatError, read_outputs
from eebench.pipelines.services.io import (
    DamagedFileError,
    WriteError,
    read_checked,
    write_csv,
    write_npz,
)
from eebench.pipelines.training import checkpoint as ckpt

WRITE = (
    "import sys; from eebench.pipelines.services.io import write_text; write_text(sys.argv[1], 'x')"
)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    path = tmp_path / "result.csv"
    subprocess.run(
        [sys.executable, "-c", WRITE, str(path)], check=True, preexec_fn=lambda: os.umask(umask)
    )
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "x"


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


WRITERS: dict[str, Callable[[Path], None]] = {
    "checkpoint": lambda path: ckpt.save_checkpoint(path.parent, 7, {"w": torch.zeros(3)}),
    "outputs": lambda path: write_npz(path, flops=np.zeros(3)),
    "table": lambda path: write_csv(path, pd.DataFrame({"top1": [1.0]})),
}
TARGETS = {"checkpoint": "ckpt_000000007.pt", "outputs": "outputs.npz", "table": "anytime.csv"}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_full_disk_names_the_file_meant_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Issue 26 (3): ENOSPC while writing a checkpoint, outputs or a table is one line naming
    the real target (not `.anytime.csv.3p9q4mk1.tmp`) and the fix."""
    monkeypatch.setattr(os, "fsync", _no_space)
    target = tmp_path / TARGETS[kind]
    with pytest.raises(WriteError) as error:
        WRITERS[kind](target)
    message = str(error.value)
    assert message.startswith(f"cannot write {target} (No space left on device): free space")
    assert ".tmp" not in message and not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_file_is_refused_by_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    write_npz(path, flops=np.arange(4.0))
    assert read_checked(path, "evaluate it again") == path.read_bytes()
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=r"outputs\.npz is damaged: .*; evaluate it again"):
        read_checked(path, "evaluate it again")


def test_a_truncated_outputs_file_is_one_line(tmp_path: Path) -> None:
    """Without its checksum (an older eebench wrote it), a truncated outputs.npz still gives
    one line naming it and the command that writes it again (not zipfile.BadZipFile)."""
    path = tmp_path / "outputs.npz"
    write_npz(path, flops=np.arange(4.0), format_version=np.int64(2))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"outputs\.npz is damaged"):
        read_outputs(tmp_path)
    (tmp_path / "outputs.npz.sha256").unlink()
    with pytest.raises(OutputsFormatError, match=r"outputs\.npz is unreadable .*eebench evaluate"):
        read_outputs(tmp_path)
