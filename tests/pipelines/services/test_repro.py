"""The reproducible CPU mode: pinned before torch loads, recorded per run, and checked by
`eebench repro-check` against committed hashes whatever caps the user set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eebench.methods import TRAIN_METHODS
from eebench.pipelines.cli import main
from eebench.pipelines.evaluation.evaluate import evaluate_run
from eebench.pipelines.services import repro
from eebench.pipelines.training.train import train_run
from tests.tiny_runs import tiny_run, trained_weights

#: Lower caps than this host's (AVX-512), and 2 threads, requested from outside.
LOWER_CAPS = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": "",
    "OMP_NUM_THREADS": "2",
}
REQUIRED_KEYS = {
    "reproducible": bool,
    "mode": str,
    "torch": str,
    "device": str,
    "threads": int,
    "aten_cpu_capability": str,
    "onednn_max_cpu_isa": str,
    "mkl_cbwr": str,
    "cpu_model": str,
}


def test_the_mode_overrides_caps_set_from_outside() -> None:
    environ = dict(LOWER_CAPS)
    assert repro.apply_env(environ)
    assert environ["ATEN_CPU_CAPABILITY"] == "avx2" and environ["OMP_NUM_THREADS"] == "1"
    assert environ["ONEDNN_MAX_CPU_ISA"] == environ["MKL_CBWR"] == "AVX2"


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_switch_turns_the_mode_off(value: str) -> None:
    environ = {**LOWER_CAPS, repro.SWITCH: value}
    assert not repro.apply_env(environ)
    assert environ == {**LOWER_CAPS, repro.SWITCH: value}


def test_the_mode_refuses_to_start_after_torch_loaded_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    with pytest.raises(RuntimeError, match="before torch is imported"):
        repro.apply_env()


def test_the_tests_run_under_the_mode() -> None:
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()


def test_each_run_records_its_environment(tmp_path: Path) -> None:
    run = tiny_run(recipe={"epochs": 1})
    train_run(run, tmp_path / "run", tmp_path / "splits")
    evaluate_run(run, tmp_path / "run", tmp_path / "splits", with_features=False)
    record = json.loads((tmp_path / "run" / repro.ENVIRONMENT_FILE).read_text())
    assert {key: type(record[key]) for key in REQUIRED_KEYS} == REQUIRED_KEYS
    assert record["reproducible"] and record["mode"] == repro.MODE
    assert record["stages"] == {"evaluate": repro.MODE, "train": repro.MODE}
    assert (record["device"], record["threads"], record["torch"]) == ("cpu", 1, torch.__version__)


def test_a_stage_outside_the_mode_makes_the_run_not_reproducible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert repro.record_environment(tmp_path, "train", "cpu")["reproducible"]
    monkeypatch.setenv(repro.SWITCH, "0")
    record = repro.record_environment(tmp_path, "evaluate", "cpu")
    assert not record["reproducible"] and record["stages"]["evaluate"] == "off"
    assert not repro.record_environment(tmp_path, "train", "cuda")["reproducible"]


def repro_check(**env: str | None) -> subprocess.CompletedProcess[str]:
    """`eebench repro-check` in a fresh process whose environment starts without the mode's
    pins (this host's native instruction set exposed), then takes `env`."""
    environ = {key: value for key, value in os.environ.items() if key not in repro.PINNED_ENV}
    environ.update({key: value for key, value in env.items() if value is not None})
    cmd = [sys.executable, "-m", "eebench.pipelines.cli", "repro-check"]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("caps", [{}, LOWER_CAPS], ids=["native", "lower-caps"])
def test_repro_check_gives_the_committed_hashes(caps: dict[str, str]) -> None:
    result = repro_check(**caps)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.startswith("repro-check: identical:") and result.stdout.count("\n") == 1


@pytest.mark.slow
def test_repro_check_sees_other_kernels_without_the_mode() -> None:
    # one thread: 2 spinning OpenMP threads on 2 shared cores take minutes
    result = repro_check(**{**LOWER_CAPS, "OMP_NUM_THREADS": "1", repro.SWITCH: "0"})
    assert result.returncode == 1
    assert "not comparable" in result.stdout and " 0 of " not in result.stdout


@pytest.mark.parametrize(
    ("switch", "says"),
    [("1", f"on ({repro.MODE}); turn it off for speed with EEBENCH_REPRODUCIBLE=0"), ("0", "off")],
)
def test_check_says_whether_the_mode_is_on_and_how_to_turn_it_off(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    switch: str,
    says: str,
) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "study: s\ndevice: cpu\ndatasets:\n  fashion_mnist: {backbones: [msdnet_fmnist], "
        "recipe: fmnist}\nruns: [{method: standard}]\n"
    )
    monkeypatch.setenv(repro.SWITCH, switch)
    assert main(["check", "--study", str(study)]) == 0
    assert f"reproducible CPU mode: {says}" in capsys.readouterr().out


def test_hashes_are_not_written_outside_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(repro.SWITCH, "0")
    assert main(["repro-check", "--write"]) == 2


@pytest.mark.parametrize("method", TRAIN_METHODS.names())
def test_no_kernel_reads_memory_it_never_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The mode skips deterministic mode's NaN fill of new tensors (a speed-up): every train
    method's weights and outputs must be the same bits with the fill as without it."""
    assert not torch.utils.deterministic.fill_uninitialized_memory
    hparams = TRAIN_METHODS.get(method).resolve_hparams("synthetic")
    run = tiny_run(recipe={"epochs": 1}, method=method, hparams=hparams)
    outputs = {}
    for fill in (False, True):
        monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", fill)
        run_dir = tmp_path / f"fill_{fill}"
        train_run(run, run_dir, tmp_path / "splits")
        evaluate_run(run, run_dir, tmp_path / "splits", with_features=False)
        outputs[fill] = dict(np.load(run_dir / "outputs.npz"))
        outputs[fill].update(trained_weights(run_dir))
    assert outputs[False].keys() == outputs[True].keys()
    for key, value in outputs[False].items():
        assert np.array_equal(np.asarray(value), np.asarray(outputs[True][key])), key
