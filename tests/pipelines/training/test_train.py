"""The train stage (loop and engine): protocol files, resume after SIGKILL, corruption, NaN,
selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.methods import TRAIN_METHODS
from eebench.methods.standard import Standard
from eebench.pipelines.evaluation.evaluate import collect, evaluate_run
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.engine import Engine, NonFiniteLossError, make_optimizer
from eebench.pipelines.training.train import Trainer, train_run
from eebench.pipelines.workflow.config import load_run_config
from eebench.pipelines.workflow.fingerprint import RunConfigChangedError, fingerprint
from eebench.pipelines.workflow.runs import build_method, make_loaders, run_recipe
from eebench.recipes import RECIPES
from tests.tiny_runs import reference_and_killed, train_subprocess
from tests.tiny_runs import tiny_run as make_run
from tests.tiny_runs import trained_weights as weights


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_run(make_run(), run_dir, run_dir.parent / "splits")
    return run_dir


def test_training_writes_model_log_and_config(trained: Path) -> None:
    log = pd.read_csv(trained / "train_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"train_loss", "lr", "val_top1_exit1", "val_top1_exit4", "seconds"} <= set(log.columns)
    assert (trained / "config.yaml").is_file()
    assert not ckpt.list_checkpoints(trained / "checkpoints"), "checkpoints are removed when done"


def test_evaluate_writes_protocol_keys(trained: Path) -> None:
    evaluate_run(load_run_config(trained / "config.yaml"), trained, trained.parent / "splits")
    with np.load(trained / "outputs.npz") as out:
        assert out["val_logits"].shape == (4, 64, 4) and out["val_logits"].dtype == np.float32
        assert out["test_logits"].shape == (4, 96, 4)
        assert out["test_labels"].dtype == np.int64 and out["val_labels"].shape == (64,)
        assert np.all(np.diff(out["flops"]) > 0) and out["flops"].shape == (4,)
        assert "val_scores" not in out.files  # standard has no exit score of its own
    with np.load(trained / "features.npz") as feats:
        assert feats["val_features_0"].shape == (64, 128)
        assert feats["train_features_3"].shape[0] == 64
    anytime = pd.read_csv(trained / "anytime.csv")
    assert list(anytime.columns) == [
        "dataset", "backbone", "method", "variant", "seed", "exit", "mflops", "top1",
    ]  # fmt: skip
    budgeted = pd.read_csv(trained / "budgeted.csv")
    assert list(budgeted.columns) == [
        "dataset", "backbone", "method", "variant", "policy", "seed", "p", "q", "mflops",
        "top1", "exit_fractions",
    ]  # fmt: skip
    assert len(budgeted) == 39 and set(budgeted["policy"]) == {"max_softmax"}


def test_fast_collect_gives_the_eval_mode_outputs(trained: Path) -> None:
    """The evaluate stage's folded channels_last copy: same logits and features, model intact."""
    run = make_run()
    loaders = make_loaders(run, trained.parent / "splits", torch.device("cpu"))
    method = build_method(run, 4, loaders.info.family, len(loaders.train), torch.device("cpu"))
    method.load_state_dict(weights(trained))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    plain, fast = (
        collect(method, loaders.val.iterate(0), torch.device("cpu"), with_features=True, fast=f)
        for f in (False, True)
    )
    scale = float(np.abs(plain.logits).max())
    np.testing.assert_allclose(fast.logits, plain.logits, rtol=1e-5, atol=1e-5 * scale)
    for got, expected in zip(fast.features, plain.features, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(abs(expected).max()))
    np.testing.assert_array_equal(fast.labels, plain.labels)
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: the fast path must copy"


def test_finished_run_is_not_retrained(trained: Path) -> None:
    before = (trained / "model.pt").stat().st_mtime_ns
    train_run(make_run(), trained, trained.parent / "splits")
    assert (trained / "model.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("corrupt_newest", [False, True])
def test_sigkill_mid_epoch_then_resume_gives_identical_run(
    tmp_path: Path, trained: Path, corrupt_newest: bool
) -> None:
    """Killed after its first mid-epoch checkpoint, the run resumes to the same weights."""
    run = make_run(recipe={"epochs": 3})
    reference, killed, left = reference_and_killed(run, tmp_path)
    position = ckpt.load_torch(left[-1], ckpt_keys())["position"]
    assert position["batch"] > 0, "the first checkpoint is taken in the middle of an epoch"
    if corrupt_newest:
        if len(left) < 2:  # make a second, damaged checkpoint newer than the good one
            left[0].with_name("ckpt_999999999.pt").write_bytes(left[0].read_bytes()[:100])
        else:
            left[0].write_bytes(left[0].read_bytes()[:100])
    proc = train_subprocess(tmp_path / "killed.yaml", killed)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    if corrupt_newest:
        assert "corrupted or truncated" in stderr.decode()
    assert_same_weights(reference, killed)
    pd.testing.assert_frame_equal(
        pd.read_csv(reference / "train_log.csv").drop(columns="seconds"),
        pd.read_csv(killed / "train_log.csv").drop(columns="seconds"),
    )


def ckpt_keys() -> tuple[str, ...]:
    from eebench.pipelines.training.train import CHECKPOINT_KEYS

    return CHECKPOINT_KEYS


def _stopped_at_step_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> Path:
    """A run whose step 4 raises `error`: checkpoints up to step 3, no model.pt."""

    class Stopping(Standard):
        def training_step(self, x, target, step, engine):  # type: ignore[no-untyped-def]
            if step == 4 and error is not NonFiniteLossError:
                raise error
            return super().training_step(x * (np.nan if step == 4 else 1.0), target, step, engine)

    # fingerprinted as `standard` (a run's code is its method module's source)
    Stopping.__module__ = Standard.__module__
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setitem(TRAIN_METHODS._entries, "standard", Stopping)
        with pytest.raises(error, match="global step 4" if error is NonFiniteLossError else None):
            train_run(make_run(), run_dir, tmp_path / "splits")
    assert not (run_dir / "model.pt").exists()
    assert ckpt.list_checkpoints(run_dir / "checkpoints"), "the last good checkpoint is kept"
    return run_dir


def test_nan_loss_stops_and_says_how_to_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _stopped_at_step_4(tmp_path, monkeypatch, NonFiniteLossError)
    lower = make_run(recipe={"lr": 0.05})
    with pytest.raises(RunConfigChangedError, match=r"recipe\.lr: 0\.1 -> 0\.05.*--restart"):
        train_run(lower, run_dir, tmp_path / "splits")  # resuming the diverged run is refused
    train_run(lower, run_dir, tmp_path / "splits", restart=True)
    assert ckpt.load_torch(run_dir / "model.pt", ())["fingerprint"] == fingerprint(lower)


def test_interrupted_run_refuses_to_resume_under_another_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed, then the study's lr edited: the old checkpoints are not mixed with the new lr,
    and config.yaml still records the config the checkpoints were made with."""
    run_dir = _stopped_at_step_4(tmp_path, monkeypatch, KeyboardInterrupt)
    with pytest.raises(RunConfigChangedError) as error:
        train_run(make_run(recipe={"lr": 0.05}), run_dir, tmp_path / "splits")
    message = str(error.value)
    assert "ckpt_000000003.pt was made under another config (recipe.lr: 0.1 -> 0.05)" in message
    assert "Put the old values back" in message and "--restart" in message
    assert load_run_config(run_dir / "config.yaml")["recipe"]["lr"] == 0.1
    with caplog.at_level("INFO"):
        train_run(make_run(), run_dir, tmp_path / "splits")  # the old config resumes
    assert "resuming from ckpt_000000003.pt" in caplog.text


def test_finished_run_under_another_config_or_truncated_is_not_reused(
    tmp_path: Path, trained: Path
) -> None:
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    with pytest.raises(RunConfigChangedError, match=r"model\.pt was made under .*seed: 0 -> 1"):
        train_run(make_run(seed=1), run_dir, tmp_path / "splits")
    (run_dir / "model.pt").write_bytes((trained / "model.pt").read_bytes()[:1000])
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"the run is not complete.*--restart"):
        train_run(make_run(), run_dir, tmp_path / "splits")


def test_best_val_selection_keeps_the_best_epoch(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train_run(make_run(selection="best_val"), run_dir, tmp_path / "splits")
    log = pd.read_csv(run_dir / "train_log.csv")
    selected = ckpt.load_torch(run_dir / "model.pt", ("method",))["selected_epoch"]
    assert selected == int(log.loc[log["val_top1_exit4"].idxmax(), "epoch"])
    best = ckpt.load_torch(run_dir / "best.pt", ("method",))["method"]
    assert all(torch.equal(best[k], v) for k, v in weights(run_dir).items())


def test_validation_after_the_last_epoch_only_when_asked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train_run(make_run(validate_each_epoch=False), run_dir, tmp_path / "splits")
    log = pd.read_csv(run_dir / "train_log.csv")
    assert log["val_top1_exit4"].isna().tolist() == [True, False]


def test_no_validation_when_the_study_says_never(tmp_path: Path) -> None:
    """The same model as with validation (a val pass changes no weight), one pass less."""
    train_run(make_run(validate_each_epoch="never"), tmp_path / "never", tmp_path / "splits")
    train_run(make_run(validate_each_epoch=False), tmp_path / "last", tmp_path / "splits")
    assert "val_top1_exit4" not in pd.read_csv(tmp_path / "never" / "train_log.csv")
    never, last = weights(tmp_path / "never"), weights(tmp_path / "last")
    assert all(torch.equal(never[k], v) for k, v in last.items())


def test_soft_targets_from_mixup_and_label_smoothing_train(tmp_path: Path) -> None:
    recipe = {"epochs": 1, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}
    run_dir = tmp_path / "run"
    train_run(make_run(recipe=recipe), run_dir, tmp_path / "splits")
    assert np.isfinite(pd.read_csv(run_dir / "train_log.csv")["train_loss"]).all()


def test_joint_bilevel_logs_gater_diagnostics_and_epoch_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One epoch of 8 steps, φ every 3: train_log.csv has the gater's per-exit diagnostics
    (epoch means) and phi_steps as the epoch's total (steps 0, 3, 6: 3 × 2 updates); the
    Trainer asks the method for warnings after the epoch and logs them."""
    cls = TRAIN_METHODS.get("joint_bilevel")
    calls: list[tuple[dict[str, float], bool]] = []
    original = cls.epoch_warnings

    def spy(self: Any, row: dict[str, float], last_epoch: bool) -> list[str]:
        calls.append((dict(row), last_epoch))
        return [*original(self, row, last_epoch), "probe warning"]

    monkeypatch.setattr(cls, "epoch_warnings", spy)
    hparams = cls.resolve_hparams("synthetic", {"hidden": 16, "phi_interval": 3})
    run = make_run(method="joint_bilevel", hparams=hparams, recipe={"epochs": 1})
    run_dir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="eebench.pipelines.training.train"):
        train_run(run, run_dir, tmp_path / "splits")
    log = pd.read_csv(run_dir / "train_log.csv")
    per_exit = ("A_exit", "argmaxA_exit", "ce_exit")
    columns = {f"{name}{k}" for name in per_exit for k in range(1, 5)}
    columns |= {f"{name}{k}" for name in ("P_mean_exit", "P_std_exit") for k in range(1, 4)}
    assert columns | {"expected_cost", "phi_steps"} <= set(log.columns)
    row = log.iloc[0]
    assert row["phi_steps"] == 6
    assert sum(row[f"argmaxA_exit{k}"] for k in range(1, 5)) == pytest.approx(1.0, abs=1e-6)
    assert [last for _, last in calls] == [True]
    assert calls[0][0]["phi_steps"] == 6 and "ce_exit4" in calls[0][0]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1] == (
        "probe warning"
    )


def test_ema_weights_are_validated_and_saved(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = make_run(recipe={"ema": True, "ema_decay": 0.5}, selection="best_val")
    trainer = Trainer(run, tmp_path / "run", tmp_path / "splits")
    trainer.fit()
    saved = ckpt.load_torch(tmp_path / "run" / "model.pt", ("method",))["method"]
    ema = trainer.engine.ema.module.state_dict()
    trained = trainer.method.backbone.state_dict()
    for key, value in ema.items():
        assert torch.equal(saved[f"backbone.{key}"], value), key
    floats = [key for key, value in ema.items() if value.is_floating_point()]
    assert any(not torch.equal(trained[key], ema[key]) for key in floats), (
        "EMA and trained weights coincide: the test would not see which one is saved"
    )
    # The logged val top-1 is that of the saved (EMA) weights, not of the trained ones.
    trainer.method.load_state_dict(saved)
    val = collect(trainer.method, trainer.loaders.val.iterate(0), trainer.device, fast=True)
    logged = pd.read_csv(tmp_path / "run" / "train_log.csv").iloc[-1]
    assert [logged[f"val_top1_exit{k + 1}"] for k in range(4)] == val.top1()


def test_an_optimizer_family_other_than_the_recipes_is_built_or_named() -> None:
    recipe = RECIPES.get("fmnist")
    params = [torch.nn.Parameter(torch.zeros(3, 2))]
    assert type(make_optimizer(recipe, params, 0.1, 1e-4, False)) is torch.optim.SGD
    adam = make_optimizer(recipe, params, 0.1, 1e-4, False, family="adam")
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="unknown optimizer family 'rmsprop'; choose one of sgd"):
        make_optimizer(recipe, params, 0.1, 1e-4, False, family="rmsprop")


def one_hot_images(n: int) -> torch.Tensor:
    """n single-channel 28×28 images, image i lit at pixel i only: a mixed image's lit
    pixels name the images it was mixed from."""
    x = torch.zeros(n, 1, 28 * 28)
    x[torch.arange(n), 0, torch.arange(n)] = 1.0
    return x.reshape(n, 1, 28, 28)


@pytest.mark.parametrize(("method", "held_out"), [("l2w", True), ("joint_bilevel", False)])
def test_mixup_pairs_images_within_each_half_when_the_method_holds_one_out(
    tmp_path: Path, method: str, held_out: bool
) -> None:
    """L2W's meta half must stay held out: no meta-half image may contain a train-half one.
    joint_bilevel keeps its authors' whole-batch mixing (timm pairs i with B−1−i)."""
    mix = {"mixup": 0.8, "cutmix": 0.0, "label_smoothing": 0.0}
    hparams = TRAIN_METHODS.get(method).resolve_hparams("synthetic")
    run = make_run(mix, method=method, hparams=hparams)
    built = build_method(run, 4, "synthetic", 8, torch.device("cpu"))
    engine = Engine(built, run_recipe(run), method_name=method, ckpt_dir=tmp_path)
    x, _ = engine.prepare_step(one_hot_images(32), torch.arange(32) % 4)
    sources = [set(torch.nonzero(image.flatten()).flatten().tolist()) for image in x]
    crosses = [bool(s - set(range(16))) for s in sources[:16]]
    crosses += [bool(s & set(range(16))) for s in sources[16:]]
    assert not any(crosses) if held_out else all(crosses)


def test_mixing_within_halves_refuses_odd_halves_before_training(tmp_path: Path) -> None:
    hparams = TRAIN_METHODS.get("l2w").resolve_hparams("synthetic")
    run = make_run({"mixup": 0.8, "batch_size": 30}, method="l2w", hparams=hparams)
    built = build_method(run, 4, "synthetic", 8, torch.device("cpu"))
    with pytest.raises(ValueError, match="batch_size 30 must be a multiple of 4"):
        Engine(built, run_recipe(run), method_name="l2w", ckpt_dir=tmp_path)


HOLD_THEN_FINISH = """
import shutil, sys, time
from pathlib import Path
from eebench.pipelines.services.lock import run_lock
trained, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
with run_lock(run_dir, "train"):
    print("held", flush=True)
    time.sleep(1.0)
    for name in ("model.pt", "model.pt.sha256"):  # the orphan's model, finished
        shutil.copy(trained / name, run_dir / name)
"""


def test_a_workflow_job_waits_for_a_live_trainer_and_uses_its_model(
    tmp_path: Path, trained: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 26 (1b): after a killed Snakemake, its orphaned trainer still holds the run; the
    rerun's job waits for it and uses the model it finishes instead of failing or training."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_FINISH, str(trained), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with caplog.at_level("INFO"):
        path = train_run(make_run(), run_dir, tmp_path / "splits", wait=True)
    assert holder.wait(timeout=60) == 0
    assert "waiting for it to end" in caplog.text and "nothing to train" in caplog.text
    assert not (run_dir / "checkpoints").exists(), "it trained instead of waiting"
    assert_same_weights(path.parent, trained)


def test_a_workflow_job_replaces_only_a_stale_model(tmp_path: Path, trained: Path) -> None:
    """Snakemake keeps model.pt (update()): a job under the model's own config keeps it as it
    is; one under a changed config trains the run again instead of stopping."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("model.pt", "model.pt.sha256"):
        (run_dir / name).write_bytes((trained / name).read_bytes())
    stamp = (run_dir / "model.pt").stat().st_mtime_ns
    train_run(make_run(), run_dir, tmp_path / "splits", replace_stale=True)
    assert (run_dir / "model.pt").stat().st_mtime_ns == stamp
    other = make_run(seed=1)
    train_run(other, run_dir, tmp_path / "splits", replace_stale=True)
    assert ckpt.load_torch(run_dir / "model.pt", ())["fingerprint"] == fingerprint(other)


def test_a_damaged_model_is_refused_naming_it(tmp_path: Path, trained: Path) -> None:
    """Issue 26 (2): 16 KB of finite floats written over a model.pt load without error, so its
    checksum (written with it) is what refuses it, naming the file and the remedy."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("model.pt", "model.pt.sha256"):
        (run_dir / name).write_bytes((trained / name).read_bytes())
    data = bytearray((run_dir / "model.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16384] = np.full(4096, 0.5, dtype=np.float32).tobytes()
    (run_dir / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"model\.pt is damaged: .*sha256"):
        evaluate_run(make_run(), run_dir, tmp_path / "splits")
