"""Calibrated-DNN (spec §3): KFAC factors and posterior against hand and dense computations
and laplace-torch, the grid choice, MIE by hand, seeded MC draws, and one tiny study through
the real stages (train, evaluate, calibrate, tables, figures)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from eebench.methods import POSTHOC_METHODS
from eebench.methods.base import MAX_SOFTMAX
from eebench.methods.calibrated_dnn import (
    PRIOR_VARIANCES,
    TEMPERATURES,
    CalibratedDNN,
    augment,
    batch_factors,
    damped_precision,
    first_minimum,
    kfac_factors,
    last_layer_laplace,
    mc_predictive,
    posterior_factors,
    running_average,
)
from eebench.methods.inference import ExitByExit, RecordedExits
from eebench.pipelines.analysis.tables import read_table
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.calibrate import apply_posthoc
from eebench.pipelines.evaluation.outputs import (
    RunOutputs,
    SplitOutputs,
    read_decisions,
    read_outputs,
)
from eebench.pipelines.evaluation.reliability import nll

F64 = torch.float64


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_factors(phi: torch.Tensor, weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The exact-GGN KFAC factors of the mean CE, written out: U = mean_n diag(p) − p pᵀ,
    V = mean_n φφᵀ."""
    x, w = phi.numpy(), weight.numpy()
    p = softmax(x @ w.T)
    u = np.mean([np.diag(pn) - np.outer(pn, pn) for pn in p], axis=0)
    return u, x.T @ x / len(x)


def problem(n: int = 12, d: int = 4, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Augmented features φ (n×(d+1)), labels and a last layer [W | b] (c×(d+1))."""
    g = torch.Generator().manual_seed(seed)
    phi = augment(torch.randn(n, d, generator=g, dtype=F64))
    labels = torch.randint(0, c, (n,), generator=g)
    return phi, labels, torch.randn(c, d + 1, generator=g, dtype=F64)


# --------------------------------------------------------------------------- KFAC


def test_laplace_torch_batch_factors_are_the_mean_ce_kfac_written_out() -> None:
    phi, labels, weight = problem()
    u, v = batch_factors(last_layer_laplace(weight, mc_fisher=False), phi, labels)
    u_hand, v_hand = hand_factors(phi, weight)
    np.testing.assert_allclose(u.numpy(), u_hand, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), v_hand, atol=1e-12)


def test_mc_fisher_factor_is_seeded_and_near_the_exact_one() -> None:
    phi, labels, weight = problem(n=2000)
    first = kfac_factors(phi, labels, weight, batch_size=2000, mc_fisher=True, seed=3)
    again = kfac_factors(phi, labels, weight, batch_size=2000, mc_fisher=True, seed=3)
    other = kfac_factors(phi, labels, weight, batch_size=2000, mc_fisher=True, seed=4)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])
    u_hand, v_hand = hand_factors(phi, weight)
    np.testing.assert_allclose(first[1].numpy(), v_hand, atol=1e-12)  # V reads no draw
    np.testing.assert_allclose(first[0].numpy(), u_hand, atol=0.02)  # one draw per sample


def test_running_average_is_the_mean_of_20_batches_then_an_ema() -> None:
    values = [float(i) ** 1.5 for i in range(23)]
    stream = ((torch.tensor([[v]]), torch.tensor([[2 * v]])) for v in values)
    u, v = running_average(stream)
    ema = np.mean(values[:20])  # ρ_i = i/(i+1) for i < 20: the exact mean
    for x in values[20:]:
        ema = 0.95 * ema + 0.05 * x
    assert u.item() == pytest.approx(ema) and v.item() == pytest.approx(2 * ema)
    few = running_average((torch.tensor([[x]]), torch.tensor([[x]])) for x in values[:7])
    assert few[0].item() == pytest.approx(np.mean(values[:7]))


def test_scaled_factors_reproduce_laplace_torchs_full_data_kfac() -> None:
    """On ≤ 20 equal batches the running average is the mean, so (√N U)⊗(√N V) is the
    N·E[U]⊗E[V] that laplace-torch's own fit sums up over the same data."""
    from torch.utils.data import DataLoader, TensorDataset

    phi, labels, weight = problem(n=12)
    u, v = kfac_factors(phi, labels, weight, batch_size=3, mc_fisher=False, seed=0)
    np.testing.assert_allclose(u.numpy(), hand_factors(phi, weight)[0], atol=1e-12)
    laplace = last_layer_laplace(weight, mc_fisher=False)
    laplace.fit(DataLoader(TensorDataset(phi, labels), batch_size=3))
    n = math.sqrt(12)
    ours = torch.kron(n * u, n * v)
    torch.testing.assert_close(ours, laplace.H_facs.to_matrix(), rtol=1e-10, atol=1e-12)


def test_posterior_covariance_matches_the_dense_inverse_and_laplace_torch() -> None:
    phi, labels, weight = problem()
    u, v = kfac_factors(phi, labels, weight, batch_size=12, mc_fisher=False, seed=0)
    n, variance = 50, 1.7
    u_inv, v_inv = posterior_factors(u, v, n, variance)
    root_delta = math.sqrt(1 / variance)
    precision = np.kron(
        math.sqrt(n) * u.numpy() + root_delta * np.eye(3),
        math.sqrt(n) * v.numpy() + root_delta * np.eye(5),
    )
    covariance = np.linalg.inv(precision)  # dense, independent of the factorisation
    np.testing.assert_allclose(torch.kron(u_inv, v_inv).numpy(), covariance, atol=1e-10)
    dense = damped_precision(u, v, n, variance).to_matrix(exponent=-1)
    np.testing.assert_allclose(dense.numpy(), covariance, atol=1e-10)
    # The logit covariance J Σ Jᵀ (J = I_C ⊗ φᵀ for row-major vec W) is s · U⁻¹, s = φᵀV⁻¹φ.
    x = phi[0].numpy()
    jacobian = np.kron(np.eye(3), x[None, :])
    s = x @ v_inv.numpy() @ x
    np.testing.assert_allclose(jacobian @ covariance @ jacobian.T, s * u_inv.numpy(), atol=1e-10)


# --------------------------------------------------------------------------- predictive


def test_mc_predictive_is_the_mean_of_tempered_softmaxes_written_out() -> None:
    mu = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], dtype=F64)
    s = torch.tensor([0.25, 4.0], dtype=F64)
    noise = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0]], dtype=F64)
    got = mc_predictive(mu, s, noise, 1.3).numpy()
    expected = [
        np.mean([softmax((mu[i].numpy() + math.sqrt(s[i]) * z.numpy()) / 1.3) for z in noise], 0)
        for i in range(2)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_first_minimum_takes_the_first_grid_point_on_ties() -> None:
    table = torch.tensor([[3.0, 1.0, 2.0], [1.0, 5.0, 1.0]])
    assert first_minimum(table) == (0, 1)


def hand_set(mie: bool, means: list[np.ndarray], flops: np.ndarray) -> CalibratedDNN:
    """A method with hand-set buffers: no posterior noise (one zero draw), T = 1."""
    hparams = CalibratedDNN.resolve_hparams("synthetic", {"mie": mie, "n_mc_samples": 1})
    method = CalibratedDNN(hparams, len(means))
    c = means[0].shape[0]
    state: dict[str, torch.Tensor] = {}
    for k, mean in enumerate(means):
        d = mean.shape[1]
        state |= {
            f"mean_{k}": torch.tensor(mean, dtype=F64),
            f"v_inv_{k}": torch.eye(d, dtype=F64),
            f"noise_{k}": torch.zeros(1, c, dtype=F64),
        }
    state |= {
        "temperature": torch.ones(len(means), dtype=F64),
        "prior_variance": torch.ones(len(means), dtype=F64),
        "mie_weights": torch.tensor(flops / flops[-1], dtype=F64),
    }
    method.load_fitted(state)
    return method


def test_mie_is_the_cost_weighted_average_of_the_exits_so_far_by_hand() -> None:
    rng = np.random.default_rng(0)
    means = [rng.normal(size=(3, 3)) for _ in range(3)]  # C = 3, D = 2 (+1 bias)
    features = [torch.tensor(rng.normal(size=(5, 2)), dtype=torch.float32) for _ in range(3)]
    flops = np.array([1.0, 2.0, 4.0])  # w = 0.25, 0.5, 1
    p = [softmax(augment(f.double()).numpy() @ m.T) for f, m in zip(features, means, strict=True)]
    expected = [p[0], (0.25 * p[0] + 0.5 * p[1]) / 0.75, (0.25 * p[0] + 0.5 * p[1] + p[2]) / 1.75]
    logits = [torch.zeros(5, 3) for _ in range(3)]
    for mie, want in ((True, expected), (False, p)):
        runner = ExitByExit(RecordedExits(features, logits), [hand_set(mie, means, flops)])
        exits = runner.all_exits(torch.arange(5))
        for out, probs in zip(exits, want, strict=True):
            np.testing.assert_allclose(out.logits.exp().numpy(), probs, rtol=1e-5)
            # The protocol's confidence (max softmax of the outputs) is the max of p̄.
            np.testing.assert_allclose(out.scores[MAX_SOFTMAX].numpy(), probs.max(1), rtol=1e-5)


# --------------------------------------------------------------------------- fit


def synthetic_outputs(
    seed: int = 0, k: int = 2, c: int = 3, d: int = 4, sizes: tuple[int, int, int] = (60, 90, 40)
) -> RunOutputs:
    """A learnable K-exit problem: class means in feature space, a noisy fitted-ish head."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.5, (k, c, d))
    heads = [(centres[i].astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32))
             for i in range(k)]  # fmt: skip

    def split(n: int) -> SplitOutputs:
        y = rng.integers(0, c, n)
        feats = [(centres[i][y] + rng.normal(0, 1.0, (n, d))).astype(np.float32) for i in range(k)]
        logits = np.stack([f @ w.T + b for f, (w, b) in zip(feats, heads, strict=True)])
        return SplitOutputs(logits.astype(np.float32), y, features=feats)

    train, val, test = (split(n) for n in sizes)
    flops = np.cumsum(np.arange(1.0, k + 1))
    return RunOutputs(val, test, flops, classifiers=heads, train=train, n_train=TRAIN_SPLIT)


#: The source run's training-split size: larger than the saved train features, as in a study.
TRAIN_SPLIT = 5000


def fitted(outputs: RunOutputs, seed: int = 0, **hparams: Any) -> CalibratedDNN:
    method = CalibratedDNN(CalibratedDNN.resolve_hparams("synthetic", hparams), 2, seed=seed)
    method.fit(outputs)
    return method


def test_posterior_scale_uses_the_training_split_size_not_the_saved_subset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """§3 (laplace.py): the factors are scaled by √N, N = the training set the source run
    trained on, not the 60 saved train images they are averaged over: V_post⁻¹ of exit 1 is
    (√N V + √δ I)⁻¹ written out with N = 5000, and a missing size is refused."""
    outputs = synthetic_outputs()
    with caplog.at_level("INFO", logger="eebench.methods.calibrated_dnn"):
        method = fitted(outputs, mc_fisher=False)
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [" exit 1", " exit 2"]
    assert all(f"N = {TRAIN_SPLIT}" in r.getMessage() for r in caplog.records)
    phi = augment(torch.from_numpy(outputs.train.features[0]).to(F64))
    labels = torch.from_numpy(outputs.train.labels)
    weight = method.mean_0
    _, v = kfac_factors(phi, labels, weight, batch_size=64, mc_fisher=False, seed=0)
    root_delta = math.sqrt(1.0 / method.prior_variance[0].item())
    expected = np.linalg.inv(math.sqrt(TRAIN_SPLIT) * v.numpy() + root_delta * np.eye(5))
    np.testing.assert_allclose(method.v_inv_0.numpy(), expected, rtol=1e-8, atol=1e-12)
    assert method.fit_report()["n_data"] == TRAIN_SPLIT
    outputs.n_train = None
    with pytest.raises(ValueError, match="evaluate the source run again"):
        fitted(outputs)


def test_temperature_is_the_val_nll_minimiser_on_a_known_case() -> None:
    """A posterior of negligible width (N = 1e12) and val labels drawn from softmax(μ/1.5):
    the fitted temperature is the grid's NLL minimiser, computed here, and that is 1.5."""
    outputs = synthetic_outputs(sizes=(60, 4000, 10))
    rng = np.random.default_rng(1)
    mu = outputs.val.logits.astype(np.float64)
    outputs.val.labels = np.array([rng.choice(3, p=p) for p in softmax(mu[0] / 1.5)])
    method = fitted(outputs, n_data=10**12, mie=False, mc_fisher=False)
    rows = np.arange(len(outputs.val.labels))
    table = [-np.log(softmax(mu[0] / t)[rows, outputs.val.labels]).mean() for t in TEMPERATURES]
    assert TEMPERATURES[int(np.argmin(table))] == 1.5
    assert method.temperature[0].item() == 1.5


def dense_predictive(
    phi: np.ndarray, weight: np.ndarray, covariance: np.ndarray, z: np.ndarray, t: float
) -> np.ndarray:
    """MC predictive from the dense weight posterior: logits μ + chol(J Σ Jᵀ) z_s per sample."""
    c = weight.shape[0]
    probs = []
    for x in phi:
        jacobian = np.kron(np.eye(c), x[None, :])
        chol = np.linalg.cholesky(jacobian @ covariance @ jacobian.T)
        probs.append(np.mean([softmax((weight @ x + chol @ zs) / t) for zs in z], axis=0))
    return np.array(probs)


def test_grid_choice_is_the_argmin_of_an_independent_dense_nll_table() -> None:
    """Without MIE each exit picks the (T, σ0²) of least val NLL; the table here comes from
    the hand KFAC factors and a dense posterior, with the draws the method documents
    (z ~ N(0, I) from a generator seeded with the method's seed)."""
    outputs = synthetic_outputs(sizes=(48, 30, 10))
    hp = {"mie": False, "mc_fisher": False, "kfac_batch_size": 12, "n_mc_samples": 8}
    method = fitted(outputs, seed=5, **hp)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=F64).numpy()
    for k in range(2):
        weight = CalibratedDNN._mean(outputs.classifiers[k]).numpy()
        train_phi = augment(torch.from_numpy(outputs.train.features[k]).double())
        u, v = hand_factors(train_phi, torch.from_numpy(weight))
        phi = augment(torch.from_numpy(outputs.val.features[k]).double()).numpy()
        table = np.empty((len(TEMPERATURES), len(PRIOR_VARIANCES)))
        for j, variance in enumerate(PRIOR_VARIANCES):
            root_n, root_delta = math.sqrt(TRAIN_SPLIT), math.sqrt(1 / variance)
            precision = np.kron(
                root_n * u + root_delta * np.eye(3), root_n * v + root_delta * np.eye(5)
            )
            covariance = np.linalg.inv(precision)
            for i, t in enumerate(TEMPERATURES):
                probs = dense_predictive(phi, weight, covariance, z, t)
                table[i, j] = nll(np.log(probs), outputs.val.labels)
        i, j = np.unravel_index(np.argmin(table), table.shape)
        assert (method.temperature[k].item(), method.prior_variance[k].item()) == (
            TEMPERATURES[i],
            PRIOR_VARIANCES[j],
        ), k


def test_mie_choice_scores_the_ensemble_with_earlier_exits_fixed() -> None:
    outputs = synthetic_outputs(sizes=(48, 30, 10))
    method = fitted(outputs, mc_fisher=False, n_mc_samples=8)
    alone = fitted(outputs, mc_fisher=False, n_mc_samples=8, mie=False)
    # Exit 1's ensemble is exit 1 alone: same choice with and without MIE.
    assert method.temperature[0] == alone.temperature[0]
    assert method.prior_variance[0] == alone.prior_variance[0]
    # Exit 2's choice minimises the val NLL of the ensemble over its own grid.
    val = apply_posthoc(method, outputs.val)
    best = nll(val.logits[1], outputs.val.labels)
    for t in TEMPERATURES:
        method.temperature[1] = t
        assert nll(apply_posthoc(method, outputs.val).logits[1], outputs.val.labels) >= best - 1e-6


def test_mc_draws_are_reproducible_from_the_seed() -> None:
    outputs = synthetic_outputs()
    first, again, other = fitted(outputs, seed=0), fitted(outputs, seed=0), fitted(outputs, seed=1)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(tensor, again.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(first.noise_0, other.noise_0)
    a, b = apply_posthoc(first, outputs.test), apply_posthoc(again, outputs.test)
    np.testing.assert_array_equal(a.logits, b.logits)
    # The saved state restores the same predictions (what calibrate saves and deployment loads).
    restored = CalibratedDNN(first.hp, 2, seed=0)
    restored.load_fitted(first.state_dict())
    np.testing.assert_array_equal(apply_posthoc(restored, outputs.test).logits, a.logits)


def test_outputs_are_log_probabilities_and_extra_mflops_are_counted() -> None:
    outputs = synthetic_outputs()
    method = fitted(outputs)
    test = apply_posthoc(method, outputs.test)
    np.testing.assert_allclose(np.exp(test.logits).sum(-1), 1.0, atol=1e-5)
    assert test.scores == {}  # the generic max-softmax rule reads max p̄
    extra = method.extra_mflops()
    # D + 1 = 5 inputs, C = 3 classes, S = 50 draws: 25 + 5 + 4·50·3 + 2·3 (MIE).
    np.testing.assert_allclose(extra["predict"], [636e-6, 636e-6])
    assert set(extra) == {"predict"}


def test_fit_names_what_the_source_run_lacks() -> None:
    outputs = synthetic_outputs()
    outputs.train = None
    with pytest.raises(ValueError, match="train features and classifiers"):
        fitted(outputs)


def test_registered_with_a_no_mie_variant_shown_in_fig4_and_the_reliability_figure() -> None:
    cls = POSTHOC_METHODS.get("calibrated_dnn")
    assert cls is CalibratedDNN and cls.needs == {"features", "classifiers"}
    assert cls.resolve_hparams("cifar", cls.variant("no_mie")["hparams"])["mie"] is False
    for variant in ("", "no_mie"):
        display = cls.display_of(variant)
        assert display.main_rule == MAX_SOFTMAX
        assert {"fig4_posthoc", "fig_reliability"} <= set(display.figures)
    assert cls.display_of("").color != cls.display_of("no_mie").color


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace) -> Path:
    study = extension_kit.tiny_study(
        [{"method": "standard"}, {"method": "calibrated_dnn", "variants": ["", "no_mie"]}]
    )
    return extension_kit.run_study(study, tmp_path_factory.mktemp("calibrated") / "extension")


RUNS = "runs/synthetic/msdnet_fmnist"


def test_the_calibrated_run_predicts_with_its_predictive(root: Path) -> None:
    run = read_outputs(root / RUNS / "calibrated_dnn/seed0")
    source = read_outputs(root / RUNS / "standard/seed0")
    np.testing.assert_allclose(np.exp(run.test.logits).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(run.test.labels, source.test.labels)
    assert (run.flops > source.flops).all()  # the MC predictive's extra MFLOPs
    state = torch.load(root / RUNS / "calibrated_dnn/seed0/model.pt", weights_only=True)
    assert set(state["method"]["temperature"].tolist()) <= set(TEMPERATURES)
    assert set(state["method"]["prior_variance"].tolist()) <= set(PRIOR_VARIANCES)
    # fit.json: N = the source run's whole training split (256), not its 64 saved features.
    run_dir = root / RUNS / "calibrated_dnn/seed0"
    report = json.loads((run_dir / "fit.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert report["n_data"] == config["synthetic"]["n_train"]
    assert [e["mie_exits"] for e in report["exits"]] == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert [e["temperature"] for e in report["exits"]] == state["method"]["temperature"].tolist()


def test_calibration_table_pairs_each_posthoc_run_with_its_source(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    for method, variant, source in (
        ("standard", "", ""),
        ("calibrated_dnn", "", "standard"),
        ("calibrated_dnn", "no_mie", "standard"),
    ):
        every = extension_kit.rows_of(root, "tables/calibration.csv", method)
        every = every[every["variant"] == variant]
        rows = every[every["exit"].notna()]
        assert list(rows["exit"]) == [1, 2, 3, 4] and set(every["source"]) == {source}
        run_dir = root / RUNS / (f"{method}-{variant}" if variant else method) / "seed0"
        test = read_outputs(run_dir).test
        expected = [nll(z, test.labels) for z in test.logits]
        np.testing.assert_allclose(rows["nll"], expected, rtol=1e-9)
        assert ((rows["ece"] >= 0) & (rows["ece"] <= 100)).all()
        assert (rows["policy"] == "").all()
        assert rows[["p", "budget_nll", "budget_ece10"]].isna().all().all()
        per_budget(every[every["exit"].isna()], run_dir)
        bins = extension_kit.rows_of(root, "tables/calibration_bins.csv", method)
        bins = bins[bins["variant"] == variant]
        assert (
            len(bins) == 4 * 15 and (bins.groupby("exit")["count"].sum() == len(test.labels)).all()
        )


def per_budget(rows: pd.DataFrame, run_dir: Path) -> None:
    """The paper's per-budget metric, by hand: the 39 max-softmax points of the run, each
    test sample's prediction at its exit, NLL and ECE over 10 equal-width bins."""
    outputs = read_outputs(run_dir)
    decisions = [d for d in read_decisions(run_dir) if d.rule == MAX_SOFTMAX]
    assert list(rows["p"]) == [d.point for d in decisions] and len(rows) == 39
    assert set(rows["policy"]) == {MAX_SOFTMAX} and rows[["nll", "ece"]].isna().all().all()
    labels = outputs.test.labels
    for row, decision in zip(rows.itertuples(), decisions, strict=True):
        scores = outputs.test.score(MAX_SOFTMAX)
        exits = protocol.assign_exits(scores, np.array([decision.thresholds]))[0]
        logits = outputs.test.logits[exits, np.arange(len(labels))]
        assert row.budget_nll == pytest.approx(nll(logits, labels), rel=1e-9)
        probs = softmax(logits.astype(np.float64))
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        bins = np.clip(np.ceil(confidence * 10).astype(int) - 1, 0, 9)
        gaps = [
            abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
            for b in range(10)
            if (bins == b).any()
        ]
        assert row.budget_ece10 == pytest.approx(100 * sum(gaps) / len(labels), rel=1e-9)
        assert row.top1 == pytest.approx(100 * correct.mean())


def test_budgeted_curve_reads_the_calibrated_confidence_and_reaches_fig4(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    budgeted = extension_kit.rows_of(root, "tables/budgeted.csv", "calibrated_dnn")
    assert budgeted.groupby("variant").size().to_dict() == {"": 39, "no_mie": 39}
    assert set(budgeted["policy"]) == {MAX_SOFTMAX}
    drawn = extension_kit.rows_of(root, "figures/fig4_posthoc.csv", "calibrated_dnn")
    assert set(drawn["variant"]) == {"", "no_mie"} and set(drawn["policy"]) == {MAX_SOFTMAX}


def test_reliability_figure_draws_before_and_after_per_exit(
    root: Path, extension_kit: SimpleNamespace
) -> None:
    assert (root / "figures/fig_reliability.png").stat().st_size > 1000
    drawn = read_table(root / "figures/fig_reliability.csv")
    roles = drawn.groupby(["method", "variant"])["role"].unique().map(set).to_dict()
    assert roles == {("standard", ""): {"before"}, ("calibrated_dnn", ""): {"after"},
                     ("calibrated_dnn", "no_mie"): {"after"}}  # fmt: skip
    assert drawn["panel"].nunique() == 4 and set(drawn["exit"]) == {1, 2, 3, 4}
    assert (drawn["count"] > 0).all()
