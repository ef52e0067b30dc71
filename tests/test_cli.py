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
