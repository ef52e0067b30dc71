"""A resolved run config on the tiny synthetic dataset, for tests that train for real.

Test modules cannot import each other here (`--import-mode=importlib`); they share this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from eebench.pipelines.services.io import write_yaml
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.train import train_run
from eebench.recipes import RECIPES

#: 4 classes of 28×28 images: msdnet_fmnist trains an epoch on them in about a second.
SYNTHETIC = {"num_classes": 4, "image_size": 28, "n_train": 256, "n_val": 64, "n_test": 96}


def tiny_run(recipe: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """`standard` on msdnet_fmnist, 2 epochs of batch 32 of the `fmnist` recipe; `recipe`
    changes recipe fields, the other keywords change top-level keys."""
    fields = {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, **(recipe or {})}
    run = {
        "study": "test",
        "dataset": "synthetic",
        "data_root": "data",
        "split_seed": 0,
        "backbone": "msdnet_fmnist",
        "activation": "relu",
        "method": "standard",
        "variant": "",
        "seed": 0,
        "recipe": RECIPES.get("fmnist").with_overrides(fields).to_dict(),
        "hparams": {},
        "train_subset": None,
        "init_from": None,
        "source": None,
        "device": "cpu",
        "num_workers": 0,
        "checkpoint_every_steps": 3,
        "selection": "final",
        "features_subset": 64,
        "synthetic": dict(SYNTHETIC),
    }
    run.update(overrides)
    return run


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a finished run saved (model.pt's `method` state)."""
    return ckpt.load_torch(run_dir / "model.pt", ("method",))["method"]


def train_subprocess(config: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    """`eebench train --config` in a process of its own (to be killed), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eebench.pipelines.cli", "train", "--config", str(config)]
    cmd += ["--run-dir", str(run_dir), "--split-dir", str(run_dir.parent / "splits")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_after_first_checkpoint(proc: subprocess.Popen[bytes], run_dir: Path) -> None:
    """SIGKILL the trainer as soon as its first checkpoint is on disk."""
    deadline = time.monotonic() + 120
    while not ckpt.list_checkpoints(run_dir / "checkpoints"):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def reference_and_killed(run: dict[str, Any], tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """`run` trained whole in `reference`, and again in `killed`, SIGKILLed after its first
    checkpoint; returns both folders and the killed run's checkpoints, newest first."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train_run(run, reference, tmp_path / "splits")
    write_yaml(tmp_path / "killed.yaml", run)
    kill_after_first_checkpoint(train_subprocess(tmp_path / "killed.yaml", killed), killed)
    assert not (killed / "model.pt").exists(), "the kill came too late to test anything"
    return reference, killed, ckpt.list_checkpoints(killed / "checkpoints")
