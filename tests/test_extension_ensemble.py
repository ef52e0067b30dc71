"""A throw-away train-time method whose exit k predicts with the sum of heads ≤ k, defined
here and run end to end: its own predictions reach validation, outputs, curves and figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.methods import TRAIN_METHODS, ExitOutput, register_train_method
from eebench.methods.base import TRAIN_FIGURES, Display, Memory
from eebench.methods.standard import Standard
from eebench.pipelines.evaluation.outputs import read_outputs
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.workflow.runs import build_method, make_loaders


class SummedHeads(Standard):
    """Trained like `standard`; exit k predicts with z_1 + … + z_k."""

    name: ClassVar[str] = "test_summed_heads"
    display: ClassVar[Display] = Display("summed heads", "#000080", "s", figures=TRAIN_FIGURES)

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        total = head.logits if k == 0 else memory["sum"] + head.logits
        memory["sum"] = total
        return ExitOutput(total, head.features)


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace
) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TRAIN_METHODS, "_entries", dict(TRAIN_METHODS._entries))
        register_train_method(SummedHeads)
        study = extension_kit.tiny_study([{"method": SummedHeads.name}])
        yield extension_kit.run_study(study, tmp_path_factory.mktemp("ensemble") / "extension")


def run_dir(root: Path) -> Path:
    return root / "runs/synthetic/msdnet_fmnist" / SummedHeads.name / "seed0"


def test_outputs_are_the_cumulative_sums_of_the_heads(root: Path) -> None:
    """Recomputed from the trained backbone's plain forward, independently of the method."""
    import yaml

    directory = run_dir(root)
    run = yaml.safe_load((directory / "config.yaml").read_text())
    loaders = make_loaders(run, root / "splits", torch.device("cpu"))
    method = build_method(run, 4, "synthetic", 1, torch.device("cpu"))
    method.load_state_dict(ckpt.load_torch(directory / "model.pt", ("method",))["method"])
    method.eval()
    with torch.no_grad():
        per_batch = [method.backbone(x) for x, _ in loaders.val.iterate(0)]
    heads = [torch.cat(z) for z in zip(*per_batch, strict=True)]
    expected = np.cumsum(np.stack([z.numpy() for z in heads]), axis=0)
    np.testing.assert_allclose(read_outputs(directory).val.logits, expected, rtol=1e-4, atol=1e-4)


def test_validation_during_training_uses_the_ensemble(root: Path) -> None:
    log = pd.read_csv(run_dir(root) / "train_log.csv").iloc[-1]
    val = read_outputs(run_dir(root)).val
    logged = [log[f"val_top1_exit{k + 1}"] for k in range(val.num_exits)]
    np.testing.assert_allclose(logged, val.top1())


def test_its_rows_reach_the_tables_and_fig3_as_lines(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    rows_of = extension_kit.rows_of
    anytime = rows_of(root, "tables/anytime.csv", SummedHeads.name)
    np.testing.assert_allclose(anytime["top1"], read_outputs(run_dir(root)).test.top1())
    budgeted = rows_of(root, "tables/budgeted.csv", SummedHeads.name)
    assert budgeted.groupby("policy").size().to_dict() == {"max_softmax": 39}
    drawn = rows_of(root, "figures/fig3_budgeted.csv", SummedHeads.name)
    assert len(drawn) == 39 and set(drawn["policy"]) == {"max_softmax"}
