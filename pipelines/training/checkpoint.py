"""Checkpoints that survive a kill at any instant.

Each checkpoint is written to a temporary file, fsynced and renamed (atomic);
the last two are kept. Loading uses `torch.load(weights_only=True)`, so no
pickled code ever runs; a truncated or corrupted file, or one whose bytes no longer
match the checksum written with it (pipelines/services/io.py), is reported by name and the
previous good one is used instead.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eebench.pipelines.services.io import DamagedFileError, read_checked, remove, write_checked

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d{9})\.pt$")
KEEP_LAST = 2


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read back."""


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    """Serialise to memory first, then write atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_checked(path, buffer.getvalue())


def load_torch(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a file written by `save_torch`; any damage raises CorruptCheckpointError."""
    remedy = "delete it to start that stage again"
    try:
        data = read_checked(path, remedy)
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except DamagedFileError as error:
        raise CorruptCheckpointError(str(error)) from None
    except Exception as error:  # truncated zip, bad pickle, unreadable file...
        raise CorruptCheckpointError(
            f"{path} is corrupted or truncated ({type(error).__name__}: {error}); {remedy}"
        ) from None
    missing = [key for key in required if key not in payload]
    if missing:
        raise CorruptCheckpointError(f"{path} lacks the keys {missing}; delete it to start again")
    return payload


def checkpoint_path(directory: Path, global_step: int) -> Path:
    return directory / f"ckpt_{global_step:09d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints, newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, reverse=True)


def save_checkpoint(directory: Path, global_step: int, payload: dict[str, Any]) -> Path:
    path = checkpoint_path(directory, global_step)
    save_torch(path, payload)
    for old in list_checkpoints(directory)[KEEP_LAST:]:
        remove(old)
    return path


def load_latest_checkpoint(
    directory: Path, required: tuple[str, ...]
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint; damaged ones are reported and skipped."""
    for path in list_checkpoints(directory):
        try:
            return path, load_torch(path, required)
        except CorruptCheckpointError as error:
            log.warning("%s; falling back to the previous checkpoint", error)
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, in tensors and plain numbers (weights_only-safe)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
            "name": str(np_name),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
