"""benchmarks/method_speed.py's `--reference-l2w`: bad input fails fast, the CUDA shim
restores itself, and (with a checkout in $L2W_DEN_DIR) the released loop trains our model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.benchmark_scripts import load_benchmark


def test_reference_without_released_script_is_one_line_rc2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_benchmark("method_speed").parse_args(["--reference-l2w", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tools/main_cifar_DDP.py" in err and "LeapLabTHU/L2W-DEN" in err


def test_reference_adds_l2w_and_keeps_standard_first(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "main_cifar_DDP.py").touch()
    args = load_benchmark("method_speed").parse_args(
        ["--reference-l2w", str(tmp_path), "--methods", "boostnet"]
    )
    assert args.methods == ["standard", "boostnet", "l2w"]


def test_cuda_as_identity_is_undone() -> None:
    bench = load_benchmark("method_speed")
    x, layer = torch.zeros(2), nn.Linear(2, 2)
    saved = torch.Tensor.cuda, nn.Module.cuda
    with bench.cuda_as_identity():
        assert x.cuda(0) is x and layer.cuda(0) is layer
    assert (torch.Tensor.cuda, nn.Module.cuda) == saved


@pytest.mark.skipif(
    not os.environ.get("L2W_DEN_DIR"), reason="set L2W_DEN_DIR to an exported L2W-DEN"
)
def test_released_loop_trains_our_backbone(tmp_path: Path) -> None:
    bench = load_benchmark("method_speed")
    reference = ["--reference-l2w", os.environ["L2W_DEN_DIR"]]
    args = bench.parse_args(["--dataset", "synthetic", "--train-images", "128", *reference])
    run = bench.make_run("l2w", args, args.batch_size)
    trainer = bench.Trainer(run, tmp_path / "l2w", tmp_path / "splits")
    released = bench.ReleasedL2W(args.reference_l2w, trainer)
    before = [p.detach().clone() for p in released.model.parameters()]
    released.epoch(0)
    moved = [
        not torch.equal(a, b) for a, b in zip(before, released.model.parameters(), strict=True)
    ]
    assert any(moved)
    assert all(torch.isfinite(p).all() for p in released.meta_net.parameters())
