"""What a new method file can rely on and is held to: its source is part of its runs'
fingerprint, its variants are shown and told apart, an exit rule may compute its own score,
and what it returns is checked at the boundary, naming its file (issue 27)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.methods import (
    EXIT_RULES,
    POSTHOC_METHODS,
    TRAIN_METHODS,
    ExitOutput,
    ExitRule,
    PostHocMethod,
    import_all,
    method_kind,
)
from eebench.methods.base import (
    BROKEN_FILES,
    TRAIN_FIGURES,
    Display,
    MethodContractError,
    StepOutput,
    register_exit_rule,
)
from eebench.methods.inference import replay
from eebench.methods.standard import Standard
from eebench.pipelines.analysis.figures.common import distinct_styles, left_out_note
from eebench.pipelines.evaluation.evaluate import fit_decisions
from eebench.pipelines.evaluation.outputs import ExitDecision, RunOutputs, SplitOutputs
from eebench.pipelines.workflow.config import RunSpec, check_study, resolve_run
from eebench.pipelines.workflow.fingerprint import (
    differences,
    exit_rules_code,
    fingerprint,
    hashed_config,
)

EXAMPLES = Path(__file__).parents[1] / "extension_examples"
K, C = 3, 4


def load_example(name: str, path: Path) -> ModuleType:
    """Import a method file under its own module name, as `methods/__init__` imports it."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registries whose additions are undone after the test."""
    for registry in (TRAIN_METHODS, POSTHOC_METHODS, EXIT_RULES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    yield


@pytest.fixture
def distill_file(tmp_path: Path, registries: None) -> Iterator[Path]:
    """The example train-time method, imported from a copy that a test may edit."""
    path = tmp_path / "distill_copy.py"
    path.write_text((EXAMPLES / "distill.py").read_text())
    load_example("distill_copy", path)
    yield path
    sys.modules.pop("distill_copy")


def tiny_runs(method: str, *, study_checks: bool = True) -> dict[str, dict[str, Any]]:
    study = check_study(
        {
            "study": "s",
            "datasets": {"fashion_mnist": {"backbones": ["msdnet_fmnist"], "recipe": "fmnist"}},
            "runs": [{"method": "standard"}, {"method": method}],
        },
        study_checks=study_checks,
    )
    return {
        name: resolve_run(study, RunSpec("fashion_mnist", "msdnet_fmnist", name, "", 0))
        for name in ("standard", method)
    }


# --------------------------------------------------------------------------- 1: fingerprint


def test_editing_a_method_file_changes_only_its_runs_fingerprints(distill_file: Path) -> None:
    before = {name: fingerprint(run) for name, run in tiny_runs("distill").items()}
    config = hashed_config(tiny_runs("distill")["distill"])
    distill_file.write_text(distill_file.read_text() + "\n# a fix\n")
    after = {name: fingerprint(run) for name, run in tiny_runs("distill").items()}
    assert after["standard"] == before["standard"]
    assert after["distill"] != before["distill"]
    changed = differences(config, hashed_config(tiny_runs("distill")["distill"]))
    assert [line.split(":")[0] for line in changed] == ["code.distill_copy"]
    assert "eebench.backbones.msdnet" in config["code"]  # the backbone's module too


def test_exit_rules_code_follows_the_rule_files(tmp_path: Path, registries: None) -> None:
    before = exit_rules_code()
    load_example("entropy_copy", EXAMPLES / "entropy.py")
    assert exit_rules_code() != before
    sys.modules.pop("entropy_copy")


# --------------------------------------------------------------------------- 2: display


def test_a_variant_without_display_is_shown_where_its_method_is_under_its_own_label(
    distill_file: Path,
) -> None:
    cls = TRAIN_METHODS.get("distill")
    parent, variant = cls.display_of(), cls.display_of("strong")
    assert variant.figures == parent.figures == TRAIN_FIGURES
    assert variant.label == "distill [strong]" != parent.label


def test_a_variant_declaring_only_a_colour_still_names_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Standard, "variants", {"red": {"display": {"color": "#ff0000"}}})
    shown = Standard.display_of("red")
    assert (shown.label, shown.color) == ("standard [red]", "#ff0000")


def test_study_styles_give_every_curve_its_own_colour_and_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copycat = Display("standard", Standard.display.color, Standard.display.marker)
    monkeypatch.setattr(Standard, "variants", {"copy": {"display": vars(copycat)}})
    styles = distinct_styles([("standard", ""), ("standard", "copy")])
    assert styles["standard", ""] == Standard.display  # a declared display is kept
    assert styles["standard", "copy"].color != Standard.display.color
    assert styles["standard", "copy"].label != "standard"


def test_a_figure_that_leaves_a_run_of_its_kind_out_says_so() -> None:
    runs = pd.DataFrame({"dataset": "d", "method": "standard", "variant": ["", "recipe=plain"]})
    drawn = runs.iloc[:1]
    note = left_out_note(SimpleNamespace(runs=runs), "fig2_anytime", ["d"], drawn)  # type: ignore[arg-type]
    assert note.endswith(": standard [recipe=plain]")
    assert left_out_note(SimpleNamespace(runs=runs), "fig4_posthoc", ["d"], drawn) == ""  # type: ignore[arg-type]


def test_a_figure_name_typo_in_a_display_stops_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Standard, "display", Display("standard", "#000", "o", ("fig3_budget",)))
    with pytest.raises(MethodContractError, match=r"methods/standard.py: .*'fig3_budget'"):
        tiny_runs("standard")


def test_a_generic_rule_whose_score_no_run_stores_is_named(
    registries: None, caplog: pytest.LogCaptureFixture
) -> None:
    class Margin(ExitRule):
        name: ClassVar[str] = "margin_rule"
        score: ClassVar[str] = "margin_score"  # no method stores it, the rule computes none
        generic: ClassVar[bool] = True

    register_exit_rule(Margin)
    with caplog.at_level("WARNING"):
        tiny_runs("standard")
    assert "exit rule 'margin_rule' thresholds score 'margin_score', which no run" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # a run job's check: said once by the workflow, not here
        tiny_runs("standard", study_checks=False)
    assert "thresholds score" not in caplog.text
    EXIT_RULES._entries.pop("margin_rule")
    with caplog.at_level("WARNING"):
        tiny_runs("standard")
    assert "thresholds score" not in caplog.text


# --------------------------------------------------------------------------- 3: rule scores


def outputs_of(rng: np.random.Generator) -> RunOutputs:
    def split(n: int) -> SplitOutputs:
        logits = rng.normal(0.0, 3.0, (K, n, C)).astype(np.float32)
        return SplitOutputs(logits, rng.integers(0, C, n))

    return RunOutputs(split(60), split(40), np.array([1.0, 2.0, 3.0]))


def replay_split(split: SplitOutputs) -> list[ExitOutput]:
    n = split.labels.shape[0]
    return replay([], [torch.zeros(n, 0)] * K, list(torch.from_numpy(split.logits)))[0]


def test_a_rule_computes_its_score_for_every_run(registries: None) -> None:
    load_example("entropy_copy", EXAMPLES / "entropy.py")
    logits = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (K, 10, C)))
    exits = replay([], [torch.zeros(10, 0)] * K, list(logits))[0]
    probs = torch.softmax(logits[1].double(), dim=-1)
    assert torch.allclose(exits[1].scores["neg_entropy"], (probs * probs.log()).sum(-1))
    outputs = outputs_of(np.random.default_rng(1))
    for split in (outputs.val, outputs.test):  # what evaluation stores: each exit's score
        per_exit = [exits[k].scores["neg_entropy"] for exits in [replay_split(split)]
                    for k in range(K)]  # fmt: skip
        split.scores["neg_entropy"] = torch.stack(per_exit).numpy()
    rules = {d.rule for d in fit_decisions(Standard, {}, outputs)}
    assert rules == {"max_softmax", "entropy"}
    sys.modules.pop("entropy_copy")


# --------------------------------------------------------------------------- 4: contracts


class TensorStep(Standard):
    name: ClassVar[str] = "test_tensor_step"

    def training_step(self, x: Any, target: Any, step: int, engine: Any) -> Any:
        out = super().training_step(x, target, step, engine)
        assert isinstance(out, StepOutput)
        return torch.tensor(out.loss)


class TensorExit(PostHocMethod):
    name: ClassVar[str] = "test_tensor_exit"

    def exit_output(self, k: int, head: ExitOutput, memory: Any) -> Any:
        return head.logits


class ArrayRule(ExitRule):
    name: ClassVar[str] = "test_array_rule"
    generic: ClassVar[bool] = True

    def fit(self, outputs: RunOutputs) -> Any:
        return np.zeros(3)


class MissingScoreRule(ExitRule):
    name: ClassVar[str] = "test_missing_score"
    score: ClassVar[str] = "nobody_has_it"

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        return []


THIS_FILE = Path(__file__).name


def test_a_training_step_returning_a_tensor_names_the_file(
    tmp_path: Path, registries: None, extension_kit: Any
) -> None:
    TRAIN_METHODS.register(TensorStep.name)(TensorStep)
    study = extension_kit.tiny_study([{"method": TensorStep.name}])
    with pytest.raises(
        MethodContractError, match=rf"{THIS_FILE}: TensorStep.training_step .*Tensor"
    ):
        extension_kit.run_stages(study, tmp_path)


def test_an_exit_output_returning_a_tensor_names_the_file() -> None:
    with pytest.raises(
        MethodContractError,
        match=rf"{THIS_FILE}: TensorExit.exit_output must return ExitOutput, got Tensor",
    ):
        replay([TensorExit({}, K)], [torch.zeros(5, 0)] * K, list(torch.zeros(K, 5, C)))


def test_a_rule_fit_returning_an_array_names_the_file(registries: None) -> None:
    EXIT_RULES.register(ArrayRule.name)(ArrayRule)
    with pytest.raises(
        MethodContractError,
        match=rf"{THIS_FILE}: ArrayRule.fit must return list\[ExitDecision\], got ndarray",
    ):
        fit_decisions(Standard, {}, outputs_of(np.random.default_rng(0)))


def test_a_rule_whose_score_the_run_lacks_names_the_method(
    registries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    EXIT_RULES.register(MissingScoreRule.name)(MissingScoreRule)
    monkeypatch.setattr(Standard, "exit_rules", (MissingScoreRule.name,))
    with pytest.raises(MethodContractError, match=r"methods/standard.py: .*'nobody_has_it'"):
        fit_decisions(Standard, {}, outputs_of(np.random.default_rng(0)))


def test_a_broken_file_is_reported_and_the_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "user_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("LOADED = True\n")
    (package / "broken.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = import_all("user_methods", [str(package)])
    assert sys.modules["user_methods.fine"].LOADED
    assert list(broken) == ["methods/broken.py"] and broken["methods/broken.py"].startswith(
        "SyntaxError"
    )
    monkeypatch.setattr("eebench.methods.base.BROKEN_FILES", {**BROKEN_FILES, **broken})
    with pytest.raises(ValueError, match=r"not loaded: methods/broken.py \(SyntaxError"):
        method_kind("broken")
