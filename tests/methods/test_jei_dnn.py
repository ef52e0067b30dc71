"""JEI-DNN (methods/jei_dnn.py): its pieces on hand-computed cases, the warm-up and phase
bookkeeping on a tiny network, and a tiny study end to end (frozen `standard` backbone, the
gates' MFLOPs in the costs, its one-point rule in Fig. 3), resumed exactly after SIGKILL."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.methods import EXIT_RULES, TrainContext
from eebench.methods.jei_dnn import (
    RULE,
    JeiDnn,
    activations,
    exit_shares,
    gate_inputs,
    gate_loss,
    gate_targets,
    ic_loss,
    oracle_exit,
    pos_weights,
    warmup_loss,
)
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.outputs import (
    OWN_SCORE,
    RunOutputs,
    SplitOutputs,
    read_decisions,
    read_outputs,
)
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.train import train_run
from eebench.pipelines.workflow.config import RunSpec, check_study, resolve_run, upstream_runs
from tests.methods.conftest import FakeEngine, TinyConvExits, exit_scores, make_batch
from tests.tiny_runs import reference_and_killed, tiny_run, train_subprocess
from tests.tiny_runs import trained_weights as weights

COSTS = torch.tensor([0.25, 0.5, 1.0])  # ĉ of three exits, exact in binary


# --------------------------------------------------------------------------- pure pieces


def test_gate_inputs_are_conf_entropy_margin_and_sharpened_entropy() -> None:
    p = np.array([0.5, 0.3, 0.2])
    sharpened = p**2 / (p**2).sum()
    expected = [0.5, -(p * np.log(p)).sum(), 0.2, -(sharpened * np.log(sharpened)).sum()]
    logits = torch.tensor(np.log(p), requires_grad=True)[None]
    u = gate_inputs(logits)
    np.testing.assert_allclose(u[0].numpy(), expected, rtol=1e-6)
    assert not u.requires_grad  # no gradient from a gate to its IC


def test_oracle_exits_gate_targets_and_ties() -> None:
    ce = torch.tensor(
        [
            [0.1, 0.05, 0.0],  # 0.225, 0.3, 0.5 -> exit 0
            [1.0, 0.2, 0.1],  # 1.125, 0.45, 0.6 -> exit 1
            [2.0, 1.0, 0.1],  # 2.125, 1.25, 0.6 -> the final exit
            [0.375, 0.25, 0.0],  # 0.5 everywhere -> the first
        ]
    )
    exits = oracle_exit(ce, COSTS, lam=0.5)
    assert exits.tolist() == [0, 1, 2, 0]
    assert gate_targets(exits, 2).tolist() == [[1, 1], [0, 1], [0, 0], [1, 1]]


def test_pos_weight_counts_exact_oracle_exits_with_floor_and_cap() -> None:
    # N = 10, G = 3: n = (4, 5, 0) -> 6/4, 5/5, 10/0.1 capped at 5.
    exits = torch.tensor([0] * 4 + [1] * 5 + [3])
    np.testing.assert_allclose(pos_weights(exits, 3).numpy(), [1.5, 1.0, 5.0])
    # n = (1, 9): 9/1 capped at 5, 1/9.
    exits = torch.tensor([0] + [1] * 9)
    np.testing.assert_allclose(pos_weights(exits, 2).numpy(), [5.0, 1 / 9], rtol=1e-6)


def test_gate_loss_weights_only_positive_targets() -> None:
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.1]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([3.0, 0.5])
    p = torch.sigmoid(logits)
    by_hand = [-3.0 * math.log(p[0, 0]), -math.log(1 - p[0, 1])]
    by_hand += [-math.log(1 - p[1, 0]), -0.5 * math.log(p[1, 1])]
    assert float(gate_loss(logits, targets, weight)) == pytest.approx(np.mean(by_hand))


G_CASES = torch.tensor(
    [
        [0.6, 0.1, 0.1],  # a1 = 0.6: exit 0
        [0.2, 0.5, 0.9],  # a2 = 0.5 / 0.8 = 0.625: exit 1
        [0.1, 0.2, 0.3],  # a2 = 0.2 / 0.9, a3 = 0.3 / 0.7: the final head
        [0.4, 0.7, 0.1],  # a2 = min(0.7, 0.6) / 0.6 = 1; then Π = 0: a3 = 1
    ]
)
A_BY_HAND = [
    [0.6, 0.1 / 0.4, 0.1 / 0.3],  # Π after two exits: 0.4·0.75 = 0.3
    [0.2, 0.625, 1.0],  # P3 = min(0.9, 1 − 0.7) = 0.3 = Π: a3 = 1
    [0.1, 0.2 / 0.9, 0.3 / 0.7],
    [0.4, 1.0, 1.0],
]


def test_inference_rule_on_hand_computed_gates() -> None:
    """a by hand; exits by the protocol's assignment with the rule's fitted thresholds."""
    a = activations(G_CASES)
    np.testing.assert_allclose(a.numpy(), A_BY_HAND, rtol=1e-6)
    scores = np.vstack([a.T.numpy(), np.ones((1, 4))])
    val = SplitOutputs(np.zeros((4, 4, 2), np.float32), np.zeros(4, np.int64), {OWN_SCORE: scores})
    (decision,) = EXIT_RULES.get(RULE)().fit(RunOutputs(val, val, np.arange(1.0, 5.0)))
    assert decision.thresholds == (0.5, 0.5, 0.5, -np.inf) and np.isnan(decision.q)
    exits = protocol.assign_exits(scores, np.array([decision.thresholds]))[0]
    assert exits.tolist() == [0, 1, 3, 1]  # the third sample reaches the final head


def test_exit_shares() -> None:
    np.testing.assert_allclose(
        exit_shares(G_CASES).numpy(),
        [[0.6, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.3], [0.4, 0.6, 0.0]],
        rtol=1e-6,
    )


def test_released_ic_loss_is_plain_ce_in_value_and_gradient_and_detached_is_not() -> None:
    torch.manual_seed(0)
    shares = exit_shares(torch.rand(6, 3))

    def value_and_grad(loss_of: Any) -> tuple[float, torch.Tensor]:
        ce = (torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_()
        loss = loss_of(ce)
        loss.backward()
        return float(loss.detach()), ce.grad

    plain = value_and_grad(lambda ce: ce.mean())
    released = value_and_grad(lambda ce: ic_loss(ce, shares, detach_ratio=False))
    detached = value_and_grad(lambda ce: ic_loss(ce, shares, detach_ratio=True))
    assert released[0] == pytest.approx(plain[0], rel=1e-6)
    torch.testing.assert_close(released[1], plain[1])
    # The intended weighting: same value, gradient P_il·r_i / (N·G).
    assert detached[0] == pytest.approx(plain[0], rel=1e-6)
    assert not torch.allclose(detached[1], plain[1])
    ce = torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) * 2
    ratio = ce.sum(1, keepdim=True) / (shares * ce).sum(1, keepdim=True)
    torch.testing.assert_close(detached[1], shares * ratio / 18)


def test_warmup_loss_weights_earlier_ics_more_and_skips_frozen_ones() -> None:
    ce = torch.rand(5, 4)
    means = ce.mean(0)
    expected = means[3] + 4 * means[0] + 3 * means[1] + 2 * means[2]
    assert float(warmup_loss(ce, [True, True, True])) == pytest.approx(float(expected))
    skipped = means[3] + 4 * means[0] + 2 * means[2]
    assert float(warmup_loss(ce, [True, False, True])) == pytest.approx(float(skipped))


# --------------------------------------------------------------------------- the method


def build(epochs: int = 10, **hparams: Any) -> tuple[JeiDnn, FakeEngine]:
    """JEI-DNN on the tiny conv net: 3 exits, 10 steps per epoch, `epochs` epochs."""
    ctx = TrainContext(
        num_classes=3,
        exit_mflops=np.array([1.0, 2.0, 4.0]),
        family="cifar",
        steps_per_epoch=10,
        epochs=epochs,
    )
    method = JeiDnn(TinyConvExits(), JeiDnn.resolve_hparams("cifar", hparams), ctx)
    engine = FakeEngine(method)
    method.configure(engine)
    return method, engine


def val_with_top1(correct: list[int], n: int = 4) -> SplitOutputs:
    """Val outputs of 3 exits whose exit k gets `correct[k]` of `n` samples right."""
    labels = np.zeros(n, dtype=np.int64)
    logits = np.zeros((3, n, 3), dtype=np.float32)
    for k, right in enumerate(correct):
        logits[k, :, 1] = 1.0
        logits[k, :right, 0] = 2.0
    return SplitOutputs(logits, labels)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_phases_gate_first_every_epoch_after_warmup() -> None:
    method, _ = build(phase_batches=3, max_warmup_epochs=0)
    phases = [method.phase(step) for step in range(12)]
    assert phases == ["gate"] * 3 + ["ic"] * 3 + ["gate"] * 3 + ["ic"] + ["gate"] * 2


def test_warmup_freezes_stale_ics_at_their_best_then_ends_and_sets_pos_weight() -> None:
    method, engine = build(max_warmup_epochs=8, patience=2)
    ic0, ic1 = (method.ics[k][-1] for k in range(2))

    def mark(value: float) -> None:
        """Stands for an epoch of training: the weights of the ICs not frozen change."""
        for ic, frozen in zip((ic0, ic1), method.ic_frozen.tolist(), strict=True):
            if not frozen:
                torch.nn.init.constant_(ic.weight, value)

    # IC 1: top-1 2, 3, 3, 2 of 4: best after epoch 2, stale twice -> frozen at epoch 2's.
    # IC 2: 1, 2, 3, 4, 4, 4: stale twice after epoch 6 -> all frozen, warm-up over.
    for epoch, correct in enumerate([(2, 1), (3, 2), (3, 3), (2, 4)]):
        mark(float(epoch))
        method.end_epoch(epoch, val_with_top1([*correct, 4]))
    assert method.ic_frozen.tolist() == [True, False] and not method.warmup_done
    assert torch.all(ic0.weight == 1.0) and torch.all(ic1.weight == 3.0)
    assert method.phase(40) == "warmup"
    # A frozen IC gets no gradient, so not even a step: the other one learns.
    before = snapshot(method.ics[0]), snapshot(method.ics[1])
    method.training_step(*make_batch(6), 40, engine)
    after = snapshot(method.ics[0]), snapshot(method.ics[1])
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert any(not torch.equal(before[1][k], after[1][k]) for k in before[1])
    for epoch in (4, 5):
        mark(float(epoch))
        method.end_epoch(epoch, val_with_top1([0, 4, 4]))
    assert method.warmup_done and method.ic_frozen.tolist() == [False, False]
    assert torch.all(ic0.weight == 1.0) and torch.all(ic1.weight == 3.0)
    assert method.pos_weight.tolist() == [1.0, 1.0]  # not set from val during warm-up
    # After warm-up: pos_weight from the oracle exits of the val logits, by hand.
    val = val_with_top1([1, 3, 4])
    probs = np.exp(val.logits) / np.exp(val.logits).sum(-1, keepdims=True)
    ce = -np.log(probs[:, np.arange(4), val.labels]).T
    exits = np.argmin(ce + method.hp["lam"] * method.costs.numpy(), axis=1)
    counts = np.array([(exits == k).sum() for k in range(2)])
    method.end_epoch(6, val)
    expected = np.minimum((4 - counts) / np.maximum(counts, 0.1), 5.0)
    np.testing.assert_allclose(method.pos_weight.numpy(), expected, rtol=1e-6)


def test_warmup_ends_after_max_warmup_epochs_and_leaves_the_last_epoch_to_gates() -> None:
    method, _ = build(epochs=3, max_warmup_epochs=6)
    assert method.warmup_epochs == 2
    method.end_epoch(0, val_with_top1([1, 1, 1]))
    assert not method.warmup_done
    method.end_epoch(1, val_with_top1([2, 2, 2]))
    assert method.warmup_done


def test_exit_scores_are_the_activations_of_the_gates() -> None:
    method, _ = build()
    x = make_batch(7)[0]
    scores = exit_scores(method, x)[OWN_SCORE]
    with torch.no_grad():
        logits = method.backbone(x)
        u = [gate(gate_inputs(z)) for gate, z in zip(method.gates, logits[:2], strict=True)]
        g = torch.sigmoid(torch.cat(u, dim=1))
    torch.testing.assert_close(scores[:2].T, activations(g))
    assert torch.all(scores[2] == 1.0)


def test_gate_step_trains_gates_only_and_ic_step_ics_only() -> None:
    method, engine = build(max_warmup_epochs=0, phase_batches=1)
    frozen_before = snapshot(method.backbone.stages), snapshot(method.backbone.heads[-1])
    for step, moved, still in ((0, method.gates, method.ics), (1, method.ics, method.gates)):
        before = snapshot(moved), snapshot(still)
        method.training_step(*make_batch(6), step, engine)
        assert any(not torch.equal(before[0][k], v) for k, v in snapshot(moved).items()), step
        assert all(torch.equal(before[1][k], v) for k, v in snapshot(still).items()), step
    frozen = (method.backbone.stages, method.backbone.heads[-1])
    for before, module in zip(frozen_before, frozen, strict=True):
        assert all(torch.equal(before[k], v) for k, v in snapshot(module).items())


def test_schedule_is_flat_through_warmup_then_a_per_epoch_cosine() -> None:
    """train_dynn.py: lr 0.01 while warming up, then CosineAnnealingLR(T_max = num_epoch,
    eta_min 2e-4) stepped after each later epoch; the engine is handed this schedule, and the
    SGD is plain momentum 0.9 (no Nesterov, whatever the recipe's)."""
    method, engine = build(epochs=10, max_warmup_epochs=3)
    assert engine.schedules["ics_and_gates"] == method.learning_rate
    (group,) = method._handle.optimizer.param_groups
    assert group["momentum"] == 0.9 and group["nesterov"] is False
    assert {method.learning_rate(step) for step in range(0, 60, 7)} == {0.01}
    method.end_epoch(0, val_with_top1([1, 1, 1]))
    method.end_epoch(1, val_with_top1([2, 2, 2]))  # every IC still improving
    method.end_epoch(2, val_with_top1([3, 3, 3]))
    assert method.warmup_done and int(method.warmup_end) == 3
    for epoch in range(3, 10):
        done = epoch - 3  # scheduler steps taken after the warm-up
        expected = 2e-4 + 0.5 * (0.01 - 2e-4) * (1 + math.cos(math.pi * done / 10))
        for step in (epoch * 10, epoch * 10 + 9):  # constant within an epoch
            assert method.learning_rate(step) == pytest.approx(expected, rel=1e-12)


def test_its_epochs_are_a_tenth_of_300_of_the_backbones_at_least_one() -> None:
    hp = JeiDnn.resolve_hparams("cifar")
    assert [JeiDnn.train_epochs(hp, e) for e in (300, 90, 3, 2)] == [10, 3, 1, 1]


def test_heads_only_control_trains_the_ics_every_batch_and_has_no_gates() -> None:
    method, engine = build(max_warmup_epochs=0, phase_batches=1, gates=False)
    assert len(method.gates) == 0 and method.extra_mflops() == {}
    assert [method.phase(step) for step in range(4)] == ["ic"] * 4
    x, y = make_batch(6)
    before = snapshot(method.ics)
    logits = copy.deepcopy(method)._logits(x, [True, True], engine)  # as the step sees them
    out = method.training_step(x, y, 0, engine)
    assert any(not torch.equal(before[k], v) for k, v in snapshot(method.ics).items())
    ce = [torch.nn.functional.cross_entropy(z.detach(), y) for z in logits[:2]]
    assert out.loss == pytest.approx(float(sum(ce) / 2), rel=1e-5)  # the plain mean CE
    assert exit_scores(method, x).keys() == {"max_softmax"}
    display = JeiDnn.display_of("heads_only")
    assert display.label == "JEI-DNN control: heads only"
    assert display.main_rule == display.rules[0] == "max_softmax"


# --------------------------------------------------------------------------- the workflow


def test_every_variant_starts_from_the_standard_run_and_depends_on_it() -> None:
    study = check_study(
        {
            "study": "unit",
            "datasets": {"fashion_mnist": {"backbones": ["msdnet_fmnist"], "recipe": "fmnist"}},
            "runs": [{"method": "standard"}, {"method": "jei_dnn", "variants": ["", "lam=0.3"]}],
        }
    )
    standard = RunSpec("fashion_mnist", "msdnet_fmnist", "standard", "", 0)
    backbone_epochs = resolve_run(study, standard)["recipe"]["epochs"]
    for variant in ("", "lam=0.3"):
        spec = RunSpec("fashion_mnist", "msdnet_fmnist", "jei_dnn", variant, 0)
        assert resolve_run(study, spec)["init_from"] == standard.path
        assert upstream_runs(study, spec) == [standard]
        # Its own length in its saved config: 10/300 of the backbone's epochs, at least 1.
        epochs = resolve_run(study, spec)["recipe"]["epochs"]
        assert epochs == max(1, round(backbone_epochs / 30)) < backbone_epochs


JEI_ENTRY = {
    "method": "jei_dnn",
    "recipe_overrides": {"epochs": 3},
    # The whole 3 epochs (not 10/300 of them), so that warm-up and both phases show.
    "hparams": {"max_warmup_epochs": 1, "phase_batches": 2, "epoch_fraction": 1.0},
    "variants": ["", "heads_only"],
}


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace
) -> Iterator[Path]:
    study = extension_kit.tiny_study([{"method": "standard"}, JEI_ENTRY])
    yield extension_kit.run_study(study, tmp_path_factory.mktemp("jei") / "study")


def run_dir(root: Path, method: str) -> Path:
    return root / "runs/synthetic/msdnet_fmnist" / method / "seed0"


def test_body_final_head_and_bn_buffers_are_standards_bit_for_bit(root: Path) -> None:
    standard, jei = weights(run_dir(root, "standard")), weights(run_dir(root, "jei_dnn"))
    last = max(int(k.split(".")[2]) for k in standard if k.startswith("backbone.heads."))
    ics = tuple(f"backbone.heads.{k}." for k in range(last))
    frozen = [k for k in standard if k.startswith("backbone.") and not k.startswith(ics)]
    assert any(k.endswith("running_var") for k in frozen)
    assert f"backbone.heads.{last}.classifier.weight" in frozen
    assert all(torch.equal(jei[k], standard[k]) for k in frozen)
    learned = [k for k in standard if k.startswith(ics) and standard[k].is_floating_point()]
    assert all(not torch.equal(jei[k], standard[k]) for k in learned if k.endswith("weight"))
    assert {f"gates.{k}.weight" for k in range(last)} <= jei.keys()


def test_the_control_runs_as_long_as_jei_and_is_judged_by_max_softmax(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    log = pd.read_csv(run_dir(root, "jei_dnn-heads_only") / "train_log.csv")
    assert log["warmup_steps"].tolist() == [8, 0, 0] and log["ic_steps"].tolist() == [0, 8, 8]
    assert log["gate_steps"].sum() == 0
    assert [d.rule for d in read_decisions(run_dir(root, "jei_dnn-heads_only"))] == [
        "max_softmax"
    ] * 39
    drawn = extension_kit.rows_of(root, "figures/fig3_budgeted.csv", "jei_dnn")
    control = drawn[drawn["variant"] == "heads_only"]
    assert set(control["policy"]) == {"max_softmax"} and len(control) == 39


def test_train_log_shows_warmup_then_alternating_phases(root: Path) -> None:
    log = pd.read_csv(run_dir(root, "jei_dnn") / "train_log.csv")
    assert log["warmup_steps"].tolist() == [8, 0, 0]
    assert log["gate_steps"].tolist() == [0, 4, 4] and log["ic_steps"].tolist() == [0, 4, 4]
    assert (log["pos_weight_exit1"].iloc[:2] == 1.0).all()  # set from val after epoch 2
    assert {f"val_top1_exit{k}" for k in range(1, 5)} <= set(log.columns)


def test_its_point_costs_the_gates_and_is_drawn_beside_the_score_curve(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    run = run_dir(root, "jei_dnn")
    (decision,) = [d for d in read_decisions(run) if d.rule == RULE]
    assert decision.score == OWN_SCORE and decision.thresholds[:-1] == (0.5, 0.5, 0.5)
    outputs = read_outputs(run)
    gate_mflops = (9 * 4 + 1 + 4 + 1 + 1) / 1e6  # features (4 classes), Linear(4, 1), sigmoid
    costs = outputs.flops + gate_mflops * np.minimum(np.arange(1, 5), 3)
    np.testing.assert_allclose(outputs.costs(OWN_SCORE), costs)
    a = outputs.test.scores[OWN_SCORE]
    exits = np.argmax(np.vstack([a[:-1] >= 0.5, np.ones((1, a.shape[1]), bool)]), axis=0)
    (row,) = (
        extension_kit.rows_of(root, "tables/budgeted.csv", "jei_dnn")
        .query("policy == @RULE")
        .itertuples()
    )
    assert row.mflops == pytest.approx(costs[exits].mean())
    correct = outputs.test.correct[exits, np.arange(len(exits))]
    assert row.top1 == pytest.approx(100 * correct.mean())
    drawn = extension_kit.rows_of(root, "figures/fig3_budgeted.csv", "jei_dnn")
    drawn = drawn[drawn["variant"] == ""]
    assert drawn.groupby("policy").size().to_dict() == {"score": 39, RULE: 1}


def test_sigkill_after_an_epoch_then_resume_gives_identical_run(tmp_path: Path) -> None:
    """Killed after its first checkpoint (the end of epoch 1, where the warm-up state was
    just updated), the run resumes to the same ICs, gates and train_log."""
    torch.set_num_threads(1)
    source = tmp_path / "standard"
    train_run(tiny_run(), source, tmp_path / "splits")
    hparams = JeiDnn.resolve_hparams(
        "synthetic", {"max_warmup_epochs": 2, "patience": 1, "phase_batches": 3}
    )
    run = tiny_run(
        {"epochs": 4},
        method="jei_dnn",
        hparams=hparams,
        init_from=str(source),
        checkpoint_every_steps=1000,
    )
    reference, killed, left = reference_and_killed(run, tmp_path)
    state = ckpt.load_torch(left[-1], ("position", "method"))
    assert state["position"]["batch"] == 0  # an epoch's end: after its `end_epoch`
    assert torch.isfinite(state["method"]["ic_best_top1"]).all()
    proc = train_subprocess(tmp_path / "killed.yaml", killed)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    expected, got = weights(reference), weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(reference / "train_log.csv").drop(columns="seconds"),
        pd.read_csv(killed / "train_log.csv").drop(columns="seconds"),
    )
