"""The README's worked example of a new method really is one file plus a config line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from eebench.methods import EXIT_RULES, POSTHOC_METHODS, TRAIN_METHODS
from eebench.methods.inference import replay
from eebench.pipelines.evaluation.outputs import RunOutputs, SplitOutputs
from eebench.pipelines.workflow.config import check_study, expand_runs, resolve_run

README = Path(__file__).resolve().parents[1] / "README.md"


def example_sources() -> dict[str, str]:
    """The README's example method files, by file name."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return {b.split("\n", 1)[0].removeprefix("# "): b for b in blocks if b.startswith("# methods/")}


def example_method_source() -> str:
    return example_sources()["methods/weighted_exits.py"]


def test_readme_shows_the_three_kinds_of_method() -> None:
    assert set(example_sources()) == {
        "methods/weighted_exits.py",
        "methods/temperature.py",
        "methods/entropy.py",
    }


def fake_outputs() -> RunOutputs:
    rng = np.random.default_rng(0)
    split = {
        name: SplitOutputs(rng.normal(0, 3, (3, 40, 5)).astype(np.float32), rng.integers(0, 5, 40))
        for name in ("val", "test")
    }
    return RunOutputs(split["val"], split["test"], np.array([1.0, 2.0, 3.0]))


def test_readme_posthoc_and_rule_examples_fit_and_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(POSTHOC_METHODS, "_entries", dict(POSTHOC_METHODS._entries))
    monkeypatch.setattr(EXIT_RULES, "_entries", dict(EXIT_RULES._entries))
    sources = example_sources()
    for name in ("methods/temperature.py", "methods/entropy.py"):
        exec(compile(sources[name], name, "exec"), {})
    outputs = fake_outputs()
    method = POSTHOC_METHODS.get("temperature")({"grid": [0.5, 1.0, 2.0, 4.0]}, 3)
    method.fit(outputs)
    (batch,) = replay([method], [torch.zeros(40, 0)] * 3, torch.from_numpy(outputs.test.logits))
    assert [out.logits.argmax(-1).tolist() for out in batch] == outputs.test.logits.argmax(
        -1
    ).tolist()
    assert all(((out.scores["score"] > 0) & (out.scores["score"] <= 1)).all() for out in batch)
    (plain,) = replay([], [torch.zeros(40, 0)] * 3, torch.from_numpy(outputs.test.logits))
    log_p = torch.log_softmax(torch.from_numpy(outputs.test.logits[2]).double(), dim=-1)
    expected = (log_p.exp() * log_p).sum(-1)  # any run's exits carry the rule's score
    assert torch.allclose(plain[2].scores["neg_entropy"], expected)
    assert EXIT_RULES.get("entropy")().computes_score() and EXIT_RULES.get("entropy").generic


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
