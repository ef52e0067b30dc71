"""The train stage: one run = one resolved config, trained to completion or resumed.

The `Trainer` builds the method and its `Engine` (pipelines/engine.py: the `StepEngine`
services that methods use) and owns the loop, validation, the logs and the checkpoints.
A run directory is complete when it holds `model.pt`; until then every start resumes
from the newest good checkpoint, at the exact batch where the last one was taken, so an
interrupted run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from eebench.methods.base import StepOutput, hard_labels
from eebench.pipelines import checkpoint as ckpt
from eebench.pipelines.engine import Engine
from eebench.pipelines.evaluate import collect
from eebench.pipelines.fingerprint import check_recorded, recorded
from eebench.pipelines.io import write_csv, write_yaml
from eebench.pipelines.lock import run_lock
from eebench.pipelines.outputs import SplitOutputs
from eebench.pipelines.runs import build_method, make_loaders, resolve_device, run_recipe

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("method", "optimizers", "position", "history", "rng")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochMeter:
    """Running loss, per-exit training accuracy, step metrics (averaged) and step counts
    (summed) of the current epoch (checkpointed, so a resumed epoch logs the same row)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.loss_sum = float(state.get("loss_sum", 0.0))
        self.steps = int(state.get("steps", 0))
        self.correct = list(state.get("correct", []))
        self.seen = int(state.get("seen", 0))
        self.metric_sums: dict[str, float] = dict(state.get("metric_sums", {}))
        self.count_sums: dict[str, float] = dict(state.get("count_sums", {}))

    def update(self, out: StepOutput) -> None:
        self.loss_sum += out.loss
        self.steps += 1
        for key, value in out.metrics.items():
            self.metric_sums[key] = self.metric_sums.get(key, 0.0) + float(value)
        for key, value in out.counts.items():
            self.count_sums[key] = self.count_sums.get(key, 0.0) + float(value)
        if out.logits is None or out.targets is None:
            return
        labels = hard_labels(out.targets)
        hits = [int((z.argmax(-1) == labels).sum()) for z in out.logits]
        self.correct = (
            [a + b for a, b in zip(self.correct, hits, strict=True)] if self.correct else hits
        )
        self.seen += len(labels)

    def summary(self) -> dict[str, float]:
        result = {"train_loss": self.loss_sum / max(self.steps, 1)}
        for k, hits in enumerate(self.correct):
            result[f"train_top1_exit{k + 1}"] = 100.0 * hits / max(self.seen, 1)
        for key, total in self.metric_sums.items():
            result[key] = total / max(self.steps, 1)
        result.update(self.count_sums)
        return result

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "steps": self.steps,
            "correct": self.correct,
            "seen": self.seen,
            "metric_sums": self.metric_sums,
            "count_sums": self.count_sums,
        }


class Trainer:
    """Trains one run directory: the loop around the method's steps and its `Engine`."""

    def __init__(self, run: dict[str, Any], run_dir: Path, split_dir: Path) -> None:
        self.run = run
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.recipe = run_recipe(run)
        self.device = resolve_device(run["device"])
        seed_everything(run["seed"])
        self.loaders = make_loaders(run, split_dir, self.device)
        info = self.loaders.info
        self.steps_per_epoch = len(self.loaders.train)
        self.method = build_method(
            run, info.num_classes, info.family, self.steps_per_epoch, self.device
        )
        self.engine = Engine(
            self.method, self.recipe, method_name=run["method"], ckpt_dir=self.ckpt_dir
        )

    # ------------------------------------------------------------------ state

    def _state(
        self,
        epoch: int,
        batch: int,
        history: list[dict[str, Any]],
        meter: EpochMeter,
        best: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "method": self.method.state_dict(),
            **self.engine.state_dict(),
            "rng": ckpt.rng_state(),
            "position": {"epoch": epoch, "batch": batch, "global_step": self.engine.global_step},
            "history": history,
            "meter": meter.state(),
            "best": best,
            **recorded(self.run),
        }

    def _restore(
        self, state: dict[str, Any]
    ) -> tuple[int, int, list[dict[str, Any]], EpochMeter, dict[str, Any]]:
        self.method.load_state_dict(state["method"])
        self.engine.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        position = state["position"]
        self.engine.global_step = int(position["global_step"])
        return (
            int(position["epoch"]),
            int(position["batch"]),
            list(state["history"]),
            EpochMeter(state.get("meter")),
            dict(state.get("best", {})),
        )

    def _checkpoint(self, *args: Any) -> None:
        ckpt.save_checkpoint(self.ckpt_dir, self.engine.global_step, self._state(*args))

    # ------------------------------------------------------------------ loop

    def fit(self, resume: tuple[Path, dict[str, Any]] | None = None) -> Path:
        """Train to the end and write model.pt, from the start or from `resume`, a checkpoint
        (path, state) that `train_run` has read and checked against the run's config."""
        start_epoch, start_batch, history, meter, best = 0, 0, [], EpochMeter(), {}
        if resume is not None:
            path, state = resume
            start_epoch, start_batch, history, meter, best = self._restore(state)
            log.info("resuming from %s (epoch %d, batch %d)", path.name, start_epoch, start_batch)
        every = int(self.run.get("checkpoint_every_steps", 500))
        for epoch in range(start_epoch, self.recipe.epochs):
            started = time.perf_counter()
            self._train_epoch(epoch, start_batch, meter, every, history, best)
            start_batch = 0
            row = {"epoch": epoch + 1, "lr": self.engine.current_lr(), **meter.summary()}
            val = self._validate() if self._validates_after(epoch) else None
            if val is not None:
                row.update({f"val_top1_exit{k + 1}": acc for k, acc in enumerate(val.top1())})
            row["seconds"] = round(time.perf_counter() - started, 3)
            history.append(row)
            best = self._update_best(row, best)
            self.method.end_epoch(epoch, val)
            meter = EpochMeter()
            self._checkpoint(epoch + 1, 0, history, meter, best)
            write_csv(self.run_dir / "train_log.csv", pd.DataFrame(history))
            log.info("epoch %d/%d %s", epoch + 1, self.recipe.epochs, _format_row(row))
            for message in self.method.epoch_warnings(row, epoch + 1 == self.recipe.epochs):
                log.warning(message)
        return self._write_model(history, best)

    def _train_epoch(
        self,
        epoch: int,
        start_batch: int,
        meter: EpochMeter,
        every: int,
        history: list[dict[str, Any]],
        best: dict[str, Any],
    ) -> None:
        loader, engine = self.loaders.train, self.engine
        bar = tqdm(
            total=len(loader),
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
            leave=False,
            disable=None,
            dynamic_ncols=True,
        )
        for batch, (x, y) in enumerate(loader.iterate(epoch, start_batch), start=start_batch):
            x, target = engine.prepare_step(x, y)
            out = self.method.training_step(x, target, engine.global_step, engine)
            meter.update(out)
            engine.global_step += 1
            bar.update(1)
            bar.set_postfix(_progress(meter), refresh=False)
            if engine.global_step % every == 0 and batch + 1 < len(loader):
                self._checkpoint(epoch, batch + 1, history, meter, best)
        bar.close()

    def _validates_after(self, epoch: int) -> bool:
        """Every epoch, or only the last one when the study saves that time (never for best_val,
        nor for a method whose `end_epoch` reads the val outputs)."""
        last = epoch + 1 == self.recipe.epochs
        every = (
            self.run.get("validate_each_epoch", True)
            or self.run.get("selection") == "best_val"
            or self.method.needs_val_each_epoch
        )
        return every or last

    def _validate(self) -> SplitOutputs:
        with self._evaluated_weights():
            return collect(
                self.method, self.loaders.val.iterate(0), self.device, fast=not self.recipe.compile
            )

    def _update_best(self, row: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        """Best epoch by val top-1 of the last exit (never test); its weights go to best.pt."""
        if self.run.get("selection", "final") != "best_val":
            return best
        score = row[f"val_top1_exit{self.method.ctx.num_exits}"]
        if score > best.get("val_top1", -math.inf):
            ckpt.save_torch(self.run_dir / "best.pt", {"method": self._evaluated_state()})
            best = {"val_top1": score, "epoch": row["epoch"]}
        return best

    @contextlib.contextmanager
    def _evaluated_weights(self) -> Iterator[None]:
        """The weights that are validated, selected and saved, for the block: with the
        recipe's EMA, the EMA backbone (the method's own modules stay as trained); the
        trained weights are back in place afterwards."""
        ema, backbone = self.engine.ema, self.method.backbone
        if ema is None:
            yield
            return
        trained = {key: value.clone() for key, value in backbone.state_dict().items()}
        backbone.load_state_dict(ema.module.state_dict())
        try:
            yield
        finally:
            backbone.load_state_dict(trained)

    def _evaluated_state(self) -> dict[str, torch.Tensor]:
        with self._evaluated_weights():
            return {key: value.clone() for key, value in self.method.state_dict().items()}

    def _write_model(self, history: list[dict[str, Any]], best: dict[str, Any]) -> Path:
        state = self._evaluated_state()
        if best:
            state = ckpt.load_torch(self.run_dir / "best.pt", ("method",))["method"]
            log.info("selected epoch %d by val top-1 of the last exit", best["epoch"])
        path = self.run_dir / "model.pt"
        selected = best.get("epoch", len(history))
        ckpt.save_torch(path, {"method": state, "selected_epoch": selected, **recorded(self.run)})
        for old in ckpt.list_checkpoints(self.ckpt_dir):
            old.unlink()
        return path


def _progress(meter: EpochMeter) -> dict[str, str]:
    summary = meter.summary()
    shown = {"loss": f"{summary['train_loss']:.3f}"}
    accs = [v for k, v in summary.items() if k.startswith("train_top1_exit")]
    if accs:
        shown["acc"] = "/".join(f"{a:.0f}" for a in accs)
    return shown


def _format_row(row: dict[str, Any]) -> str:
    val = [f"{v:.1f}" for k, v in row.items() if k.startswith("val_top1_exit")]
    shown = f" val top-1 per exit {'/'.join(val)}" if val else ""
    return f"loss {row['train_loss']:.4f} lr {row['lr']:.2e}{shown} ({row['seconds']:.0f}s)"


def train_run(run: dict[str, Any], run_dir: Path, split_dir: Path, restart: bool = False) -> Path:
    """Train (or resume, or skip when finished) one run directory; `restart` starts it over."""
    run_dir = Path(run_dir)
    with run_lock(run_dir, "train"):
        if restart:
            _forget_training(run_dir)
        model_path = run_dir / "model.pt"
        if model_path.exists():
            check_finished(model_path, run)
            log.info("%s is complete (model.pt exists); nothing to train", run_dir)
            return model_path
        found = ckpt.load_latest_checkpoint(run_dir / "checkpoints", CHECKPOINT_KEYS)
        if found is not None:  # before any data is loaded, and before config.yaml changes
            check_recorded(found[0], found[1], run, _restart_hint(run_dir))
        write_yaml(run_dir / "config.yaml", run)
        return Trainer(run, run_dir, split_dir).fit(resume=found)


def check_finished(model_path: Path, run: dict[str, Any]) -> None:
    """A finished run's model.pt is readable and was trained under this run's config."""
    try:
        payload = ckpt.load_torch(model_path, ("method",))
    except ckpt.CorruptCheckpointError as error:
        raise ckpt.CorruptCheckpointError(
            f"{error.args[0].split(';')[0]}: the run is not complete. "
            f"Train it again with `eebench train ... --restart` (or delete {model_path})"
        ) from None
    check_recorded(model_path, payload, run, _restart_hint(model_path.parent))


def _restart_hint(run_dir: Path) -> str:
    return (
        "train the run again under the new config with `eebench train ... --restart` "
        f"(or delete {run_dir / 'checkpoints'} and {run_dir / 'model.pt'})"
    )


def _forget_training(run_dir: Path) -> None:
    """--restart: drop the run's checkpoints, best.pt and model.pt (nothing else)."""
    gone = [*ckpt.list_checkpoints(run_dir / "checkpoints")]
    gone += [path for path in (run_dir / "best.pt", run_dir / "model.pt") if path.exists()]
    for path in gone:
        path.unlink()
    log.info("--restart: deleted %s", ", ".join(p.name for p in gone) or "nothing (fresh run)")
