"""Real early exit (`pipelines/evaluation/infer.py`): sample by sample the predictions and exits of
the simulated budgeted protocol, for both backbones and train-time and post-hoc methods, in batch
and stream mode; the timing rows; and quick errors for unknown rules and budgets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from eebench.methods.base import MAX_SOFTMAX
from eebench.pipelines.analysis.figures import build_figures
from eebench.pipelines.analysis.tables import build_tables, read_table
from eebench.pipelines.cli import main
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.infer import (
    LATENCY_COLUMNS,
    MODES,
    Deployed,
    choose_decision,
    deploy,
    early_exit_steps,
    latency_table,
    measure_run_latency,
    run_split,
    split_batches,
    val_cost,
)
from eebench.pipelines.evaluation.outputs import OWN_SCORE, ExitDecision
from eebench.pipelines.workflow.config import ConfigError, check_study, latency_runs

BACKBONES = ("msdnet_fmnist", "ranet_fmnist")
METHODS = ("standard", "joint_bilevel", "calibrated_dnn")


LATENCY = {"runs": ["standard", "calibrated_dnn"], "points": [10, 30], "stream_samples": 8}


def tiny_study(extension_kit: SimpleNamespace, **extra: object) -> dict:
    """Both backbones, the three methods; `extra` adds top-level keys (checked again)."""
    study = extension_kit.tiny_study([{"method": m} for m in METHODS])
    study["datasets"]["synthetic"]["backbones"] = list(BACKBONES)
    return check_study({**study, **extra})


@pytest.fixture(scope="module")
def study(extension_kit: SimpleNamespace) -> dict:
    return tiny_study(extension_kit, latency=LATENCY)


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace, study: dict
) -> Path:
    return extension_kit.run_stages(study, tmp_path_factory.mktemp("infer") / "study")


def run_dir(root: Path, backbone: str, method: str) -> Path:
    return root / "runs/synthetic" / backbone / method / "seed0"


def simulated(deployed: Deployed, decision: ExitDecision) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and exits of the simulated protocol on the saved test outputs."""
    test = deployed.outputs.test
    exits = protocol.assign_exits(test.score(decision.score), np.array([decision.thresholds]))[0]
    predictions = test.logits.argmax(-1)[exits, np.arange(len(exits))]
    return predictions, exits


def decisions_to_check(deployed: Deployed) -> list[ExitDecision]:
    """Three budgets of max softmax and, where the method has one, of its own score."""
    chosen = []
    for rule in (MAX_SOFTMAX, "score"):
        points = [d for d in deployed.decisions if d.rule == rule]
        chosen += points[5::14]
    return chosen


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_early_exit_equals_the_simulated_protocol_sample_by_sample(
    root: Path, backbone: str, method: str
) -> None:
    deployed = deploy(run_dir(root, backbone, method), torch.device("cpu"))
    batches = split_batches(deployed.run, root / "splits")
    decisions = decisions_to_check(deployed)
    assert {d.rule for d in decisions} >= (
        {MAX_SOFTMAX, "score"} if method == "joint_bilevel" else {MAX_SOFTMAX}
    )
    for decision in decisions:
        for mode in MODES:
            result = run_split(deployed, batches, decision, mode)
            predictions, exits = simulated(deployed, decision)
            np.testing.assert_array_equal(result["exits"], exits, err_msg=f"{decision} {mode}")
            np.testing.assert_array_equal(result["predictions"], predictions)
        assert len(set(exits.tolist())) > 1 or decision.point in (1, 39)


def test_gater_scores_decide_the_exits_of_the_papers_method(root: Path) -> None:
    deployed = deploy(run_dir(root, "msdnet_fmnist", "joint_bilevel"), torch.device("cpu"))
    decision = next(d for d in deployed.decisions if d.rule == "score")
    assert decision.score == OWN_SCORE


def test_latency_rows_put_measured_beside_predicted_speed_up(root: Path) -> None:
    deployed = deploy(run_dir(root, "msdnet_fmnist", "standard"), torch.device("cpu"))
    decision = choose_decision(deployed, MAX_SOFTMAX, point=20)
    batches = split_batches(deployed.run, root / "splits")
    table = latency_table(deployed, batches, [decision], stream_samples=20)
    assert table["mode"].tolist() == list(MODES)
    assert table["samples"].tolist() == [128, 128, 20]
    full = deployed.outputs.flops[-1]
    for row in table.itertuples():
        assert row.predicted_speedup == pytest.approx(full / row.mflops)
        assert row.speedup_ratio == pytest.approx(row.measured_speedup / row.predicted_speedup)
        assert 0 < row.early_ms_p50 <= row.early_ms_p99
    batch = table[table["mode"] == "batch"].iloc[0]
    _, exits = simulated(deployed, decision)
    costs = deployed.outputs.costs(decision.score)
    assert batch.mflops == pytest.approx(costs[exits].mean())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pooled_mode_runs_every_exit_on_full_batches_but_the_last_call(
    root: Path, backbone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch mode hands later exits the few samples a batch leaves; pooled mode waits for a
    full batch (all but the final call of each exit) and predicts the same."""
    deployed = deploy(run_dir(root, backbone, "standard"), torch.device("cpu"))
    decision = choose_decision(deployed, MAX_SOFTMAX, point=10)
    batch_size = 16  # 8 batches of the 128 test samples
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size])
        for x, y in split_batches(deployed.run, root / "splits")
        for i in range(0, len(x), batch_size)
    ]
    runner = deployed.runner
    next_exit = runner.next_exit
    calls: list[tuple[int, int]] = []

    def recording(state: Any) -> Any:
        calls.append((state.k, state.backbone[0].shape[0]))
        return next_exit(state)

    monkeypatch.setattr(runner, "next_exit", recording)
    sizes = {}
    for mode in ("batch", "pooled"):
        calls.clear()
        step, finish = early_exit_steps(runner, decision, mode, batch_size)
        with torch.inference_mode():
            for x, _ in batches:
                step(x.contiguous(memory_format=deployed.memory_format))
            predictions, exits = finish()
        sizes[mode] = {k: [n for j, n in calls if j == k] for k in range(runner.num_exits)}
        expected_predictions, expected_exits = simulated(deployed, decision)
        np.testing.assert_array_equal(exits.numpy(), expected_exits)
        np.testing.assert_array_equal(predictions.numpy(), expected_predictions)
    later = [n for k in range(1, runner.num_exits) for n in sizes["batch"][k]]
    assert min(later) < batch_size  # batch mode: later exits see partial batches
    for k in range(1, runner.num_exits):
        assert all(n >= batch_size for n in sizes["pooled"][k][:-1]), sizes["pooled"][k]
        assert len(sizes["pooled"][k]) < len(sizes["batch"][k])


def test_a_budget_in_mflops_picks_the_costliest_decision_within_it(root: Path) -> None:
    deployed = deploy(run_dir(root, "msdnet_fmnist", "standard"), torch.device("cpu"))
    budget = float(np.mean(deployed.outputs.flops))
    decision = choose_decision(deployed, MAX_SOFTMAX, budget=budget)
    cost = val_cost(deployed.outputs, decision)
    others = [val_cost(deployed.outputs, d) for d in deployed.decisions if d.rule == MAX_SOFTMAX]
    assert cost <= budget and cost == max(c for c in others if c <= budget)


def test_unknown_rule_point_or_unreachable_budget_say_what_exists(root: Path) -> None:
    deployed = deploy(run_dir(root, "msdnet_fmnist", "standard"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"no decision of exit rule 'nope'.*max_softmax"):
        choose_decision(deployed, "nope", point=1)
    with pytest.raises(ValueError, match="has no point 99"):
        choose_decision(deployed, MAX_SOFTMAX, point=99)
    with pytest.raises(ValueError, match="raise the budget"):
        choose_decision(deployed, MAX_SOFTMAX, budget=1e-9)


def test_a_run_never_evaluated_is_a_quick_error(tmp_path: Path, root: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    config = run_dir(root, "msdnet_fmnist", "standard") / "config.yaml"
    (target / "config.yaml").write_text(config.read_text())
    with pytest.raises(FileNotFoundError, match="eebench evaluate"):
        deploy(target, torch.device("cpu"))


def test_latency_runs_are_the_named_ones_of_the_first_seed(study: dict) -> None:
    names = {(spec.backbone, spec.method_dir, spec.seed) for spec in latency_runs(study)}
    assert names == {(b, m, 0) for b in BACKBONES for m in LATENCY["runs"]}


def test_a_latency_section_naming_no_run_of_the_study_is_refused(
    extension_kit: SimpleNamespace,
) -> None:
    with pytest.raises(ConfigError, match=r"latency/runs: \['l2w'\] are not runs"):
        tiny_study(extension_kit, latency={"runs": ["l2w"]})
    with pytest.raises(ConfigError, match="latency/rule: unknown exit rule 'nope'"):
        tiny_study(extension_kit, latency={"runs": ["standard"], "rule": "nope"})


def test_timed_runs_reach_the_latency_table_and_figure(root: Path, study: dict) -> None:
    for spec in latency_runs(study):
        measure_run_latency(study, root / spec.path, root / "splits")
    build_tables(study, root)
    build_figures(study, root)
    table = read_table(root / "tables/latency.csv")
    assert list(table.columns) == LATENCY_COLUMNS
    assert len(table) == len(latency_runs(study)) * len(LATENCY["points"]) * len(MODES)
    assert set(table["method"]) == set(LATENCY["runs"])
    assert (table.loc[table["mode"] == "stream", "samples"] == 8).all()
    drawn = read_table(root / "figures/fig_latency.csv")
    assert len(drawn) == len(table)
    assert (root / "figures/fig_latency.png").stat().st_size > 0


def test_cli_infer_prints_accuracy_cost_and_speed_and_saves_exits(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir(root, "ranet_fmnist", "joint_bilevel")
    out = tmp_path / "exits.npz"
    argv = ["infer", "--config", str(run / "config.yaml"), "--split-dir", str(root / "splits")]
    assert main([*argv, "--rule", "score", "--p", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rule score, point 20, 128 samples (batch, cpu" in printed
    assert "speed-up over every exit: measured" in printed
    saved = np.load(out)
    deployed = deploy(run, "cpu")
    predictions, exits = simulated(deployed, choose_decision(deployed, "score", point=20))
    np.testing.assert_array_equal(saved["exits"], exits)
    np.testing.assert_array_equal(saved["predictions"], predictions)
    top1 = 100 * (predictions == saved["labels"]).mean()
    assert f"top-1 {top1:.2f}%" in printed
    assert main([*argv, "--p", "99"]) == 2
    assert "has no point 99" in capsys.readouterr().err
