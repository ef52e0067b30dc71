"""The README's worked example of a new method really is one file plus a config line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from eebench.methods import TRAIN_METHODS
from eebench.pipelines.config import check_study, expand_runs, resolve_run

README = Path(__file__).resolve().parents[1] / "README.md"


def example_method_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (source,) = [b for b in blocks if b.startswith("# methods/")]
    return source


def test_readme_method_example_registers_resolves_and_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TRAIN_METHODS, "_entries", dict(TRAIN_METHODS._entries))
    exec(compile(example_method_source(), "methods/weighted_exits.py", "exec"), {})
    study = check_study(
        {
            "study": "readme",
            "datasets": {"fashion_mnist": {"backbones": ["msdnet_fmnist"], "recipe": "fmnist"}},
            "runs": [{"method": "standard"}, {"method": "weighted_exits"}],
        }
    )
    spec = expand_runs(study)[1]
    run = resolve_run(study, spec)
    assert (spec.method, run["hparams"]) == ("weighted_exits", {"power": 1.0})

    class Engine:
        def autocast(self):  # type: ignore[no-untyped-def]
            return torch.autocast("cpu", enabled=False)

        def optimize(self, loss: torch.Tensor) -> None:
            loss.backward()

    from eebench.backbones import create_model
    from eebench.methods.base import TrainContext

    cls = TRAIN_METHODS.get("weighted_exits")
    ctx = TrainContext(num_classes=10, exit_mflops=torch.ones(4).numpy(), family="fmnist",
                       steps_per_epoch=1, epochs=1)  # fmt: skip
    method = cls(create_model("msdnet_fmnist", 10), run["hparams"], ctx)
    out = method.training_step(torch.randn(4, 1, 28, 28), torch.arange(4), 0, Engine())
    assert torch.isfinite(torch.tensor(out.loss)) and len(out.logits) == 4
