"""Tests of `eenet` (methods/eenet.py): the three loss terms on hand-computed cases, three
bugs of the released code that must stay fixed (zero_grad, broadcasting, best model) and
the clamped earlier scores, the budget met on val, the saved exit decisions, and one tiny
study through the real stages up to budgeted.csv and Fig. 4."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eebench.methods import EXIT_RULES, POSTHOC_METHODS, ExitOutput
from eebench.methods.base import rules_for
from eebench.methods.eenet import (
    PREVIOUS,
    RULE,
    BankResult,
    Data,
    EENet,
    ExitParams,
    ModelBank,
    Settings,
    assign_name,
    bce_loss,
    budget_thresholds,
    choose_restart,
    cost_loss,
    exit_inputs,
    exit_score,
    forward_exits,
    kl_loss,
    optimisation_step,
    score_name,
    train_bank,
)
from eebench.methods.eenet_budget import EENetBudgetRule
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.calibrate import apply_posthoc
from eebench.pipelines.evaluation.evaluate import budgeted_rows, fit_decisions, run_costs
from eebench.pipelines.evaluation.outputs import (
    OWN_SCORE,
    RunOutputs,
    SplitOutputs,
    read_decisions,
    read_outputs,
    write_decisions,
)

K, C = 3, 5
COSTS = np.array([1.0, 2.0, 4.0])
#: Training that moves the assigner within a few hundred steps (the released lr 3e-5 and
#: weight decay 1e-2 barely move it on a few hundred samples).
FAST = {"lr": 1e-2, "weight_decay": 0.0, "epochs": 300, "batch_size": 200, "patience": 1000}


def synthetic_split(rng: np.random.Generator, n: int) -> SplitOutputs:
    """Logits whose later exits are more often right, so that exits differ in accuracy."""
    labels = rng.integers(0, C, n)
    logits = rng.normal(0.0, 1.0, (K, n, C))
    for k in range(K):
        logits[k, np.arange(n), labels] += 1.0 + 1.2 * k
    return SplitOutputs(logits.astype(np.float32), labels)


def synthetic_outputs(n_val: int = 600, n_test: int = 300, seed: int = 0) -> RunOutputs:
    rng = np.random.default_rng(seed)
    return RunOutputs(synthetic_split(rng, n_val), synthetic_split(rng, n_test), COSTS.copy())


def fitted(outputs: RunOutputs, seed: int = 0, **overrides: Any) -> EENet:
    method = EENet(EENet.resolve_hparams("synthetic", overrides), K, seed=seed)
    method.fit(outputs)
    return method


def calibrated(method: EENet, outputs: RunOutputs) -> RunOutputs:
    """The post-hoc run's outputs, as the calibrate stage builds them."""
    flops, score_flops = run_costs(method, outputs.flops)
    return RunOutputs(
        apply_posthoc(method, outputs.val), apply_posthoc(method, outputs.test), flops, score_flops
    )


def val_data(outputs: RunOutputs) -> Data:
    logits = torch.from_numpy(outputs.val.logits)
    return Data(
        [exit_inputs(torch.softmax(z, -1)) for z in logits],
        torch.from_numpy(outputs.val.correct).float(),
        torch.as_tensor(outputs.flops, dtype=torch.float32),
    )


def targets(budgets: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = len(budgets)
    return torch.tensor(budgets), torch.full((m,), 1e-3), torch.full((m,), 1e-2)


# --------------------------------------------------------------------------- losses


def test_bce_loss_weights_each_exit_by_its_normalised_assignment() -> None:
    scores = torch.tensor([[0.8, 0.4], [0.6, 0.9]])  # K × N
    correct = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pi = torch.tensor([[0.5, 0.25], [0.5, 0.75]])  # each sample's shares sum to 1
    # ω: exit 1 (0.5, 0.25)/0.75, exit 2 (0.5, 0.75)/1.25; BCE = −log of the target's side.
    expected = 0.5 * (
        2 / 3 * -math.log(0.8)
        + 1 / 3 * -math.log(0.6)
        + 0.4 * -math.log(0.4)
        + 0.6 * -math.log(0.9)
    )
    assert float(bce_loss(scores, correct, pi)) == pytest.approx(expected, rel=1e-6)


def test_bce_loss_caps_a_clamped_wrong_score_at_100_like_bceloss() -> None:
    scores = torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.7]])
    correct = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    pi = torch.tensor([[0.2, 0.6, 0.5], [0.8, 0.4, 0.5]])
    weights = pi / pi.sum(-1, keepdim=True)
    reference = sum(
        F.binary_cross_entropy(scores[k], correct[k], weight=weights[k], reduction="sum")
        for k in range(2)
    )
    assert float(bce_loss(scores, correct, pi)) == pytest.approx(float(reference) / 2, rel=1e-6)


def test_kl_loss_against_scores_normalised_over_exits() -> None:
    scores = torch.tensor([[0.2, 0.0], [0.6, 0.0]])  # sample 2: all 0 -> uniform target
    pi = torch.tensor([[0.4, 0.3], [0.6, 0.7]])
    terms = [0.25 * math.log(0.25 / 0.4), 0.75 * math.log(0.75 / 0.6)]
    terms += [0.5 * math.log(0.5 / 0.3), 0.5 * math.log(0.5 / 0.7)]
    assert float(kl_loss(scores, pi.log(), beta=1.0)) == pytest.approx(sum(terms) / 4, rel=1e-6)
    # β sharpens the target: τ ∝ s².
    tau = [0.04 / 0.4, 0.36 / 0.4]
    sharp = tau[0] * math.log(tau[0] / 0.4) + tau[1] * math.log(tau[1] / 0.6)
    sharp += terms[2] + terms[3]
    assert float(kl_loss(scores, pi.log(), beta=2.0)) == pytest.approx(sharp / 4, rel=1e-6)


def test_kl_loss_equals_kldivloss_mean_reduction() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.8, 0.5], [0.6, 0.4, 0.2]])
    log_pi = torch.log_softmax(torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.5], [0.3, 0.3, 0.8]]), 0)
    tau = scores / scores.sum(0, keepdim=True)
    with warnings.catch_warnings():  # torch warns that 'mean' is not 'batchmean'
        warnings.simplefilter("ignore")
        reference = torch.nn.KLDivLoss()(log_pi, tau)  # the code's default reduction
    assert float(kl_loss(scores, log_pi, beta=1.0)) == pytest.approx(float(reference), rel=1e-6)


def test_cost_loss_is_the_relative_gap_of_the_expected_cost() -> None:
    pi = torch.tensor([[0.5, 0.2], [0.3, 0.2], [0.2, 0.6]])  # K × N
    costs = torch.tensor([1.0, 2.0, 4.0])
    expected = ((0.5 + 0.6 + 0.8) + (0.2 + 0.4 + 2.4)) / 2  # 2.45
    assert float(cost_loss(pi, costs, 2.0)) == pytest.approx(abs(expected - 2.0) / 2.0)
    per_model = cost_loss(pi[:, None].expand(3, 2, 2), costs, torch.tensor([2.0, 4.9]))
    assert per_model.tolist() == pytest.approx([0.225, 0.5])


# --------------------------------------------------------------------------- released bugs


def test_every_step_starts_from_zero_gradients() -> None:
    """Bug 3: without zero_grad a second step on the same batch would see twice the
    gradient. lr 0 keeps the parameters, so both gradients must be equal."""
    outputs = synthetic_outputs(n_val=64)
    data = val_data(outputs)
    bank = ModelBank([1, 2], C, K, 0.5)
    optimizers = tuple(
        torch.optim.Adam(params, lr=0.0)
        for params in (bank.score_parameters(), bank.assign_parameters())
    )
    batch = data.rows(torch.arange(64))
    grads = []
    for _ in range(2):
        optimisation_step(bank, optimizers, batch, data, targets([2.0, 3.0]), (True, True), 1.0)
        grads.append([p.grad.clone() for p in bank.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for first, second in zip(*grads, strict=True):
        torch.testing.assert_close(first, second)


def test_each_sample_is_scored_from_its_own_probabilities() -> None:
    """Bug 2: the code broadcast (N,1)+(N,1,1), giving every sample sample 0's probability
    term. Here s = w1ᵀp + w2ᵀ[max, conf, s̃_<k] per sample, whatever the batch."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, C), -1)
    x = exit_inputs(probs)
    previous = torch.rand(2, 1, 6)  # 2 models, one earlier score, 6 samples
    params = ExitParams(torch.randn(2, C + 3), *(torch.zeros(1),) * 4)
    scores = exit_score(params, x, previous)
    entropy_conf = 1 + (probs * probs.log()).sum(-1) / math.log(C)
    for m in range(2):
        w1, w2 = params.score[m, :C], params.score[m, C:]
        extra = torch.stack([probs.max(-1).values, entropy_conf, previous[m, 0]], -1)
        torch.testing.assert_close(scores[m], probs @ w1 + extra @ w2)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(exit_score(params, x[order], previous[..., order]), scores[:, order])
    alone = torch.cat(
        [exit_score(params, x[i : i + 1], previous[..., i : i + 1]) for i in range(6)]
    )
    torch.testing.assert_close(alone.reshape(6, 2).T, scores)


def test_the_kept_parameters_are_those_of_the_best_epoch() -> None:
    """Bug 4: `best_model = m` kept a reference, so the last epoch's model came back. The
    same (deterministic) training stopped right after the best epoch ends with exactly the
    kept parameters, and they differ from the last epoch's."""
    outputs = synthetic_outputs(n_val=200)
    data = val_data(outputs)
    settings = Settings(
        lr=0.2, weight_decay=0.0, epochs=40, batch_size=64, beta_ce=1.0,
        period=1, patience=1000, cost_gate=10.0,
    )  # fmt: skip
    permutation = torch.randperm(200, generator=torch.Generator().manual_seed(0))

    def run(epochs: int) -> tuple[ModelBank, BankResult]:
        bank = ModelBank([5, 6], C, K, 0.5)
        short = dataclasses.replace(settings, epochs=epochs)
        return bank, train_bank(bank, data, targets([2.0, 3.0]), short, permutation)

    last, result = run(settings.epochs)
    assert (result.best_epoch >= 0).all() and (result.best_epoch < settings.epochs - 1).all()
    for m, epoch in enumerate(result.best_epoch.tolist()):
        again, _ = run(epoch + 1)
        for name, param in again.named_parameters():
            torch.testing.assert_close(result.state[name][m], param.detach()[m])
    moved = [
        not torch.equal(result.state[name][m], p.detach()[m])
        for name, p in last.named_parameters()
        for m in np.flatnonzero(result.best_epoch.numpy() < settings.epochs - 1)
    ]
    assert any(moved)


def test_earlier_scores_enter_later_exits_clamped_at_inference_as_in_training() -> None:
    """Bug 8: training feeds later exits clamp(s_<k); the code fed unclamped scores at test.
    Exit 1's score is 5 here: exit 2 must read 1, in `exit_output` and in training."""
    method = EENet(EENet.resolve_hparams("synthetic", {"num_budgets": 1}), 2)
    d = C + 2
    state = {
        "score_0": torch.full((1, d), 5.0).index_fill_(1, torch.arange(C, d), 0.0),
        "score_1": torch.cat([torch.zeros(1, d), torch.ones(1, 1)], 1),  # s_2 = s̃_1
        "budgets": torch.tensor([1.5], dtype=torch.float64),
    }
    for k, width in ((0, d), (1, d + 1)):
        state |= {f"w1_{k}": torch.zeros(1, 2, width), f"b1_{k}": torch.zeros(1, 2)}
        state |= {f"w2_{k}": torch.zeros(1, 2), f"b2_{k}": torch.zeros(1)}
    method.load_fitted(state)
    logits = torch.randn(4, C)
    memory: dict[str, torch.Tensor] = {}
    first = method.exit_output(0, ExitOutput(logits, logits), memory)
    second = method.exit_output(1, ExitOutput(logits, logits), memory)
    torch.testing.assert_close(first.scores[score_name(1)], torch.full((4,), 5.0))
    torch.testing.assert_close(second.scores[score_name(1)], torch.ones(4))
    assert memory[PREVIOUS].shape == (4, 1, 2)  # batch-first, for early exit
    xs = [exit_inputs(torch.softmax(logits, -1))] * 2
    raw, _ = forward_exits([method.exit_params(0), method.exit_params(1)], xs)
    torch.testing.assert_close(raw[1, 0], second.scores[score_name(1)])


def test_restarts_are_compared_with_their_own_budget() -> None:
    """Bug 5: the code compared every budget's restarts with args.val_budget."""
    top1, implied = [90.0, 80.0, 70.0], [5.0, 2.1, 1.95]
    assert choose_restart(top1, implied, budget=2.0, tolerance=0.1) == 1
    assert choose_restart(top1, implied, budget=5.0, tolerance=0.1) == 0
    assert choose_restart(top1, implied, budget=1.0, tolerance=0.1) == 2  # none: closest


def test_every_family_resolves_every_hyperparameter() -> None:
    """Bug 7: the code's ImageNet params lacked weight_decay, beta_ce and period."""
    for family in ("cifar", "imagenet", "fmnist", "synthetic"):
        hp = EENet.resolve_hparams(family)
        assert hp.keys() == EENet.hparams.keys()
        assert hp["weight_decay"] == 0.0 and hp["beta_ce"] == 1.0 and hp["period"] == 10
    released = EENet.resolve_hparams("cifar", EENet.variant("released")["hparams"])
    assert released["weight_decay"] == 1e-2 and released["bounded_assignment"]
    assert EENet.resolve_hparams("cifar")["num_budgets"] == 20
    assert EENet.resolve_hparams("fmnist")["num_budgets"] == 6


# --------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def fit_case() -> SimpleNamespace:
    """A fit of 4 budgets over [1, 4] MFLOPs, its post-hoc outputs and its decisions."""
    torch.set_num_threads(1)
    outputs = synthetic_outputs()
    method = fitted(outputs, num_budgets=4, restarts=2, **FAST)
    run = calibrated(method, outputs)
    decisions = fit_decisions(EENet, method.hp, run)
    return SimpleNamespace(outputs=outputs, method=method, run=run, decisions=decisions)


def test_feasible_budgets_are_met_on_val_within_10_percent(fit_case: SimpleNamespace) -> None:
    """Budgets 2 and 3 MFLOPs (between the exits' costs 1, 2, 4): the implied cost
    Σ_k π̄_k C_k and the val cost of the saved thresholds both meet them."""
    run = fit_case.run
    for j in (2, 3):
        budget = float(fit_case.method.budgets[j - 1])
        scores, assign = run.val.score(score_name(j)), run.val.score(assign_name(j))
        proportions, thresholds = budget_thresholds(scores, assign)
        assert abs(proportions @ COSTS - budget) / budget < 0.1
        (decision,) = [d for d in fit_case.decisions if d.rule == RULE and d.point == j]
        exits = protocol.assign_exits(scores, np.array([decision.thresholds]))[0]
        assert abs(run.costs(score_name(j))[exits].mean() - budget) / budget < 0.1
        np.testing.assert_array_equal(decision.thresholds, thresholds)


#: π̄'s implied cost under σ-bounded r with K = 3: each π_k ∈ [1/(e+2), e/(e+2)].
BOUNDED_MIN = (math.e * COSTS[0] + COSTS[1] + COSTS[2]) / (math.e + 2)
BOUNDED_MAX = (COSTS[0] + COSTS[1] + math.e * COSTS[2]) / (math.e + 2)


def implied_costs(method: EENet, outputs: RunOutputs) -> list[float]:
    run = calibrated(method, outputs)
    return [
        float(
            budget_thresholds(run.val.score(score_name(j)), run.val.score(assign_name(j)))[0]
            @ COSTS
        )
        for j in range(1, method.num_budgets + 1)
    ]


def test_fit_report_gives_each_budgets_implied_cost_and_whether_it_was_met(
    fit_case: SimpleNamespace,
) -> None:
    """fit.json's content: per budget the implied val cost Σ_k π̄_k C_k of the kept restart
    (recomputed here from the replayed outputs) and `met` = within 10% of the budget."""
    report = fit_case.method.fit_report()
    budgets = report["budgets"]
    assert [b["budget"] for b in budgets] == [1, 2, 3, 4]
    implied = implied_costs(fit_case.method, fit_case.outputs)
    np.testing.assert_allclose([b["implied_mflops"] for b in budgets], implied, rtol=1e-5)
    for entry in budgets:
        gap = abs(entry["implied_mflops"] - entry["budget_mflops"]) / entry["budget_mflops"]
        assert entry["met"] == (gap < report["budget_tolerance"])
    assert budgets[1]["met"] and budgets[2]["met"]  # the feasible budgets 2 and 3 MFLOPs


def test_default_and_released_variants_are_labelled_for_what_they_run() -> None:
    default, released = EENet.display_of(""), EENet.display_of("released")
    assert default.label == "EENet (unbounded assignment)"
    assert released.label == "EENet (released, bounded assignment)"
    assert (default.color, default.marker) != (released.color, released.marker)
    assert released.figures == default.figures and released.main_rule == RULE


def test_released_bounded_assignment_cannot_leave_its_range_the_default_can(
    fit_case: SimpleNamespace,
) -> None:
    """The released σ on r caps π̄'s cost to [1.85, 2.94] MFLOPs here, whatever the budget;
    the default linear r gets beyond it toward the first exit's cost (budget 1)."""
    bounded = fitted(fit_case.outputs, num_budgets=4, restarts=1, bounded_assignment=True, **FAST)
    for cost in implied_costs(bounded, fit_case.outputs):
        assert BOUNDED_MIN - 1e-6 <= cost <= BOUNDED_MAX + 1e-6
    assert implied_costs(fit_case.method, fit_case.outputs)[0] < BOUNDED_MIN


def test_one_decision_per_budget_saved_and_read_back(
    fit_case: SimpleNamespace, tmp_path: Path
) -> None:
    ours = [d for d in fit_case.decisions if d.rule == RULE]
    assert [d.point for d in ours] == [1, 2, 3, 4]
    assert [d.score for d in ours] == [score_name(j) for j in (1, 2, 3, 4)]
    assert all(math.isnan(d.q) and d.thresholds[-1] == -math.inf for d in ours)
    assert [d.rule for d in fit_case.decisions[:39]] == 39 * ["max_softmax"]
    assert {d.rule for d in fit_case.decisions} == {"max_softmax", "score", RULE}
    write_decisions(tmp_path, fit_case.decisions)
    assert read_decisions(tmp_path) == fit_case.decisions


def test_budgeted_rows_read_each_budgets_own_score(fit_case: SimpleNamespace) -> None:
    rows = budgeted_rows(fit_case.run, fit_case.decisions)
    ours = rows[rows["policy"] == RULE]
    assert ours["p"].tolist() == [1, 2, 3, 4]
    test = fit_case.run.test
    for decision, row in zip(
        [d for d in fit_case.decisions if d.rule == RULE], ours.itertuples(), strict=True
    ):
        scores = test.score(decision.score)
        exits = protocol.assign_exits(scores, np.array([decision.thresholds]))[0]
        correct = test.correct[exits, np.arange(len(exits))]
        assert row.top1 == pytest.approx(100 * correct.mean())
        assert row.mflops == pytest.approx(fit_case.run.costs(decision.score)[exits].mean())


def test_replayed_scores_are_the_fitted_models_and_costs_count_the_score_map(
    fit_case: SimpleNamespace,
) -> None:
    method, run = fit_case.method, fit_case.run
    xs = [exit_inputs(torch.softmax(z, -1)) for z in torch.from_numpy(fit_case.outputs.val.logits)]
    raw, assign = forward_exits([method.exit_params(k) for k in range(K)], xs)
    for j in range(4):
        np.testing.assert_allclose(run.val.scores[score_name(j + 1)], raw[:, j], rtol=1e-5)
        np.testing.assert_allclose(run.val.scores[assign_name(j + 1)], assign[:, j], rtol=1e-5)
    # Bug 6: the q-proportion rule's learned score (the code's 'exp' fit) is filled.
    np.testing.assert_allclose(run.val.scores[OWN_SCORE], raw[:, 4], rtol=1e-5)
    extra = np.array([(C + 2) / 1e6, (C + 3) / 1e6, 0.0])  # bias-free linear, C + 2 + k MACs
    assert method.extra_mflops().keys() == {*(score_name(j) for j in (1, 2, 3, 4)), OWN_SCORE}
    for values in method.extra_mflops().values():
        np.testing.assert_allclose(values, extra)
    np.testing.assert_allclose(run.costs(score_name(1)), COSTS + np.cumsum(extra))
    np.testing.assert_array_equal(run.val.logits, fit_case.outputs.val.logits)


def test_fits_are_seeded_and_read_val_only() -> None:
    """Same seed: the same buffers, whatever the test split holds; another seed differs."""
    small = {**FAST, "epochs": 20, "num_budgets": 2}
    outputs = synthetic_outputs(n_val=120)
    first = fitted(outputs, **small).state_dict()
    other_test = RunOutputs(outputs.val, synthetic_outputs(seed=9).test, COSTS.copy())
    again = fitted(other_test, **small).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    reseeded = fitted(outputs, seed=1, **small).state_dict()
    assert not torch.equal(first["score_0"], reseeded["score_0"])


def test_rule_applies_only_to_runs_with_budget_scores(fit_case: SimpleNamespace) -> None:
    assert EENetBudgetRule().applies_to(fit_case.run)
    assert not EENetBudgetRule().applies_to(fit_case.outputs)
    assert rules_for(EENet, fit_case.run, {}) == ["max_softmax", "score", RULE]
    assert EXIT_RULES.get(RULE) is EENetBudgetRule and POSTHOC_METHODS.get("eenet") is EENet


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def study_root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace
) -> Iterator[Path]:
    study = extension_kit.tiny_study(
        [{"method": "standard"}, {"method": "eenet", "variants": ["", "released"]}]
    )
    yield extension_kit.run_study(study, tmp_path_factory.mktemp("eenet") / "extension")


def test_a_tiny_study_reaches_budgeted_csv_and_fig4(
    study_root: Path, extension_kit: SimpleNamespace
) -> None:
    run_dir = study_root / "runs/synthetic/msdnet_fmnist/eenet/seed0"
    decisions = [d for d in read_decisions(run_dir) if d.rule == RULE]
    assert [d.point for d in decisions] == list(range(1, 7))  # 6 budgets for "synthetic"
    outputs = read_outputs(run_dir)
    assert EENetBudgetRule().fit(outputs) == decisions
    state = torch.load(run_dir / "model.pt", weights_only=True)["method"]
    assert state["budgets"].shape == (6,) and "score_0" in state
    budgeted = extension_kit.rows_of(study_root, "tables/budgeted.csv", "eenet")
    budgeted = budgeted[budgeted["variant"] == ""]
    assert budgeted.groupby("policy").size().to_dict() == {"max_softmax": 39, "score": 39, RULE: 6}
    drawn = extension_kit.rows_of(study_root, "figures/fig4_posthoc.csv", "eenet")
    assert set(drawn["policy"]) == {RULE} and len(drawn) == 12  # both variants
    assert drawn.groupby("variant").size().to_dict() == {"": 6, "released": 6}
    for name in ("eenet", "eenet-released"):  # fit.json: every budget's implied cost
        fit = json.loads((run_dir.parent.parent / name / "seed0/fit.json").read_text())
        assert [b["budget"] for b in fit["budgets"]] == list(range(1, 7))
    standard = extension_kit.rows_of(study_root, "figures/fig4_posthoc.csv", "standard")
    assert set(standard["policy"]) == {"max_softmax"}
