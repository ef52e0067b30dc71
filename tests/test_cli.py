"""The `eebench` command: help texts, flops table, clear errors before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from eebench.pipelines.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "eebench.pipelines.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_explains_itself(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[name][1] in capsys.readouterr().out


def test_flops_writes_the_contract_columns(tmp_path: Path) -> None:
    out = tmp_path / "flops.csv"
    assert main(["flops", "--configs", "msdnet_fmnist", "--classes", "10", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["config", "num_classes", "exit", "mflops", "params"]
    assert table["mflops"].tolist() == [2.558, 6.012, 9.517, 12.357]


def test_unknown_dataset_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'mnist'" in err and "fashion_mnist" in err and "Traceback" not in err


def test_missing_study_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tables", "--study", "config/nope.yaml"]) == 2
    assert "config/nope.yaml does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- user errors


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


STUDY = """study: s
datasets:
  fashion_mnist: {backbones: [msdnet_fmnist], recipe: fmnist%s}
runs: [{method: standard}]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study: s\nseeds: [0\nruns: []\n", "is not valid YAML at line 3, column 5"),
        (
            STUDY % ", recipe_overrides: {lr: 1e9}",
            "got '1e9' (YAML reads 1e9 as text: write 1.0e+9)",
        ),
        (STUDY % ", train_subset: 60000", "train_subset: 60000 is larger than the training split"),
        (
            STUDY % ", train_subset: 100, recipe_overrides: {batch_size: 128}",
            "batch_size 128 is larger than the 100 training images (train_subset)",
        ),
        (STUDY % ", recipe_overrides: {lr: -0.1}", "lr must be > 0 and min_lr >= 0, got lr -0.1"),
        (
            (STUDY % "").replace("method: standard", "method: jei_dnn"),
            "jei_dnn/seed0 needs runs/fashion_mnist/msdnet_fmnist/standard/seed0: add it",
        ),
        (
            (STUDY % "").replace("method: standard", "method: calibrated_dnn"),
            "calibrated_dnn/seed0 needs runs/fashion_mnist/msdnet_fmnist/standard/seed0: add it",
        ),
    ],
)
def test_bad_study_is_one_line_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert main(["check", "--study", str(study_file(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") <= 2


def test_check_lists_the_runs_with_their_config_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--study", str(study_file(tmp_path, STUDY % ""))]) == 0
    out = capsys.readouterr().out
    assert "runs/fashion_mnist/msdnet_fmnist/standard/seed0  train  config " in out
    assert "valid; 1 runs" in out


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = study_file(tmp_path, "study: s\nseeds: [0\n")
    result = run_cli("check", "--study", str(bad), "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_unwritable_results_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As root (CI) a read-only folder is writable, so the refusal is simulated."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    study = study_file(tmp_path, STUDY % "")
    results = tmp_path / "results"
    assert (
        main(
            [
                "split",
                "--study",
                str(study),
                "--results",
                str(results),
                "--dataset",
                "fashion_mnist",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    split = results / "splits" / "fashion_mnist_split_seed0.npz"
    assert f"cannot write {split} (Permission denied): make its folder writable" in err


def test_a_full_disk_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)
    study = study_file(tmp_path, STUDY % "")
    results = tmp_path / "results"
    command = ["split", "--study", str(study), "--results", str(results)]
    assert main([*command, "--dataset", "fashion_mnist"]) == 2
    err = capsys.readouterr().err
    split = results / "splits" / "fashion_mnist_split_seed0.npz"
    assert f"cannot write {split} (No space left on device): free space on the disk" in err
    assert err.count("\n") == 1 and ".tmp" not in err


def test_a_run_path_that_is_not_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_file(tmp_path, STUDY % "")
    assert main(["infer", "--study", str(study), "--run", "runs/nonsense", "--p", "50"]) == 2
    err = capsys.readouterr().err
    assert "--run runs/nonsense is not a run path: give runs/<dataset>/<backbone>/" in err
    assert err.count("\n") == 1


def test_damaged_split_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = study_file(tmp_path, STUDY % "")
    results = tmp_path / "results"
    args = ["split", "--study", str(study), "--results", str(results), "--dataset", "fashion_mnist"]
    assert main(args) == 0
    split = results / "splits" / "fashion_mnist_split_seed0.npz"
    split.write_bytes(split.read_bytes()[:300])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"split file {split} is corrupted" in err and "Delete it" in err
    assert "Traceback" not in err


def test_list_shows_each_recipes_augmentation_and_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  paper_cifar: sgd nesterov lr 0.1 cosine, 300 epochs, batch 64, augment timm, " in out
    assert "mixup 0.8, cutmix 1, smoothing 0.1, EMA 0.9999" in out
    assert "  paper_cifar_plain: sgd nesterov lr 0.1 cosine, 300 epochs, batch 64, augment " in out
    assert out.count("      source: ") == out.split("recipes: ")[1].split("\n")[0].count(",") + 1
