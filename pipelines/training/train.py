"""The train stage: one run = one resolved config, trained to completion or resumed.

The `Trainer` builds the method and its `Engine` (pipelines/training/engine.py: the `StepEngine`
services that methods use) and owns the loop, validation, the logs and the checkpoints.
A run directory is complete when it holds `model.pt`; until then every start resumes
from the newest good checkpoint, at the exact batch where the last one was taken, so an
interrupted run ends with the same numbers as an uninterrupted one.

Started by `torchrun`, a run trains on every rank of its `World`
(pipelines/training/distributed.py): each rank takes its part of every batch, the engine averages
the gradients, and rank 0 alone validates and writes the run directory; resumed, every rank reads
the same checkpoint, which holds every rank's RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from eebench.methods.base import StepOutput, check_returned, hard_labels
from eebench.pipelines.data.augment import derive_seed
from eebench.pipelines.evaluation.evaluate import collect
from eebench.pipelines.evaluation.outputs import SplitOutputs
from eebench.pipelines.services.io import remove, write_csv, write_yaml
from eebench.pipelines.services.lock import run_lock
from eebench.pipelines.services.repro import record_environment
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.distributed import World, world_of
from eebench.pipelines.training.engine import Engine
from eebench.pipelines.workflow.fingerprint import (
    RunConfigChangedError,
    check_recorded,
    fingerprint,
    recorded,
)
from eebench.pipelines.workflow.runs import build_method, make_loaders, resolve_device, run_recipe

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("method", "optimizers", "position", "history", "rng")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepTotals:
    """What the epoch's meter takes from one step: its loss, metrics and counts, and the
    per-exit training hits among the samples it saw."""

    loss: float
    metrics: dict[str, float]
    counts: dict[str, float]
    hits: list[int]
    seen: int

    @classmethod
    def of(cls, out: StepOutput) -> StepTotals:
        if out.logits is None or out.targets is None:
            return cls(out.loss, out.metrics, out.counts, [], 0)
        labels = hard_labels(out.targets)
        hits = [int((z.argmax(-1) == labels).sum()) for z in out.logits]
        return cls(out.loss, out.metrics, out.counts, hits, len(labels))

    def over(self, world: World) -> StepTotals:
        """The step of every rank: loss, metrics and counts averaged (each rank's are of its
        part of the batch), hits and samples summed; the same on every rank."""
        if not world.distributed:
            return self
        averaged = [self.loss, *self.metrics.values(), *self.counts.values()]
        total = world.sum([*averaged, *self.hits, self.seen])
        mean = iter(value / world.size for value in total[: len(averaged)])
        hits = [int(value) for value in total[len(averaged) : -1]]
        return StepTotals(
            next(mean),
            {key: next(mean) for key in self.metrics},
            {key: next(mean) for key in self.counts},
            hits,
            int(total[-1]),
        )


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

    def update(self, step: StepTotals) -> None:
        self.loss_sum += step.loss
        self.steps += 1
        for key, value in step.metrics.items():
            self.metric_sums[key] = self.metric_sums.get(key, 0.0) + float(value)
        for key, value in step.counts.items():
            self.count_sums[key] = self.count_sums.get(key, 0.0) + float(value)
        if not step.seen:
            return
        self.correct = (
            [a + b for a, b in zip(self.correct, step.hits, strict=True)]
            if self.correct
            else step.hits
        )
        self.seen += step.seen

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
    """Trains one run directory: the loop around the method's steps and its `Engine`, on
    this process's rank of `world` (the one process by default)."""

    def __init__(
        self, run: dict[str, Any], run_dir: Path, split_dir: Path, world: World | None = None
    ) -> None:
        self.run = run
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.recipe = run_recipe(run)
        self.world = world or World(device=resolve_device(run["device"]))
        self.device = self.world.device
        seed_everything(run["seed"])
        loaders = make_loaders(run, split_dir, self.device)
        self.loaders = replace(
            loaders, train=loaders.train.sharded(self.world.rank, self.world.size)
        )
        info = self.loaders.info
        self.steps_per_epoch = len(self.loaders.train)
        self.method = build_method(
            run, info.num_classes, info.family, self.steps_per_epoch, self.device
        )
        self.engine = Engine(
            self.method,
            self.recipe,
            method_name=run["method"],
            ckpt_dir=self.ckpt_dir,
            world=self.world,
        )
        if self.world.rank:  # the same model on every rank, then a random stream of its own
            seed_everything(derive_seed(run["seed"], self.world.rank) % 2**32)

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
            "position": {"epoch": epoch, "batch": batch, "global_step": self.engine.global_step},
            "history": history,
            "meter": meter.state(),
            "best": best,
            "world_size": self.world.size,
            **recorded(self.run),
        }

    def _rng_states(self) -> dict[str, Any]:
        """Rank 0's RNG state ("rng", all there is in one process) and, under data
        parallelism, every rank's ("rank_rngs", in rank order); every rank takes part."""
        states = self.world.gather(ckpt.rng_state())
        return {"rng": states[0], **({"rank_rngs": states} if self.world.distributed else {})}

    def _restore(
        self, state: dict[str, Any]
    ) -> tuple[int, int, list[dict[str, Any]], EpochMeter, dict[str, Any]]:
        self.method.load_state_dict(state["method"])
        self.engine.load_state_dict(state)
        ckpt.set_rng_state(
            state["rank_rngs"][self.world.rank] if self.world.distributed else state["rng"]
        )
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
        """Rank 0 writes the checkpoint (with every rank's RNG state)."""
        rngs = self._rng_states()
        if self.world.is_main:
            state = {**self._state(*args), **rngs}
            ckpt.save_checkpoint(self.ckpt_dir, self.engine.global_step, state)

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
            if self.world.is_main:
                best = self._finish_epoch(epoch, row, history, best, started)
            elif self._validates_after(epoch):
                self.method.eval()  # the modes that validation leaves rank 0's method in
            self.world.broadcast_state(self.method)  # what rank 0's `end_epoch` changed
            meter = EpochMeter()
            self._checkpoint(epoch + 1, 0, history, meter, best)
            if self.world.is_main:
                self._log_epoch(epoch, row, history)
        path = self._write_model(history, best) if self.world.is_main else self._model_path
        self.world.barrier()  # no rank returns before model.pt is written
        return path

    def _finish_epoch(
        self,
        epoch: int,
        row: dict[str, Any],
        history: list[dict[str, Any]],
        best: dict[str, Any],
        started: float,
    ) -> dict[str, Any]:
        """Validation, the epoch's row in `history`, best-epoch selection and the method's
        `end_epoch` (rank 0); the best epoch so far."""
        val = self._validate() if self._validates_after(epoch) else None
        if val is not None:
            row.update({f"val_top1_exit{k + 1}": acc for k, acc in enumerate(val.top1())})
        row["seconds"] = round(time.perf_counter() - started, 3)
        history.append(row)
        best = self._update_best(row, best)
        self.method.end_epoch(epoch, val)
        return best

    def _log_epoch(self, epoch: int, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        write_csv(self.run_dir / "train_log.csv", pd.DataFrame(history))
        log.info("epoch %d/%d %s", epoch + 1, self.recipe.epochs, _format_row(row))
        for message in self.method.epoch_warnings(row, epoch + 1 == self.recipe.epochs):
            log.warning(message)

    def _train_epoch(
        self,
        epoch: int,
        start_batch: int,
        meter: EpochMeter,
        every: int,
        history: list[dict[str, Any]],
        best: dict[str, Any],
    ) -> None:
        loader, engine, world = self.loaders.train, self.engine, self.world
        bar = tqdm(
            total=len(loader),
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
            leave=False,
            disable=None if world.is_main else True,
            dynamic_ncols=True,
        )
        for batch, (x, y) in enumerate(loader.iterate(epoch, start_batch), start=start_batch):
            x, target = engine.prepare_step(x, y)
            out = check_returned(
                self.method.training_step(x, target, engine.global_step, engine),
                StepOutput,
                self.method,
                "training_step",
            )
            world.broadcast_buffers(self.method)
            meter.update(StepTotals.of(out).over(world))
            engine.global_step += 1
            bar.update(1)
            bar.set_postfix(_progress(meter), refresh=False)
            if engine.global_step % every == 0 and batch + 1 < len(loader):
                self._checkpoint(epoch, batch + 1, history, meter, best)
        bar.close()

    def _validates_after(self, epoch: int) -> bool:
        """Every epoch, only the last one, or none (`validate_each_epoch`: true, false,
        "never"), when the study saves that time; every epoch for best_val and for a method
        whose `end_epoch` reads the val outputs."""
        setting = self.run.get("validate_each_epoch", True)
        if setting is True or self.run.get("selection") == "best_val":
            return True
        if self.method.needs_val_each_epoch:
            return True
        return setting is False and epoch + 1 == self.recipe.epochs

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

    @property
    def _model_path(self) -> Path:
        return self.run_dir / "model.pt"

    def _write_model(self, history: list[dict[str, Any]], best: dict[str, Any]) -> Path:
        state = self._evaluated_state()
        if best:
            state = ckpt.load_torch(self.run_dir / "best.pt", ("method",))["method"]
            log.info("selected epoch %d by val top-1 of the last exit", best["epoch"])
        path = self._model_path
        selected = best.get("epoch", len(history))
        payload = {"method": state, "selected_epoch": selected, "world_size": self.world.size}
        ckpt.save_torch(path, {**payload, **recorded(self.run)})
        for old in ckpt.list_checkpoints(self.ckpt_dir):
            remove(old)
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


def train_run(
    run: dict[str, Any],
    run_dir: Path,
    split_dir: Path,
    restart: bool = False,
    wait: bool = False,
    replace_stale: bool = False,
) -> Path:
    """Train (or resume, or skip when finished) one run directory; `restart` starts it over.

    As a workflow job: `wait` waits for a live trainer of the run (an orphan of a killed
    Snakemake) and then uses its model, and `replace_stale` retrains a model.pt made under
    another config instead of stopping. Under torchrun, every rank calls this: rank 0
    holds the lock and cleans up, then every rank reads the same directory."""
    run_dir = Path(run_dir)
    world = world_of(resolve_device(run["device"]))
    with _main_lock(run_dir, world, wait):
        model_path = run_dir / "model.pt"
        stale = replace_stale and model_path.exists() and not _made_under(model_path, run)
        if (restart or stale) and world.is_main:
            _forget_training(run_dir, "--restart" if restart else "model.pt of another config")
        world.barrier()  # nobody reads the directory before rank 0 has cleaned it up
        if model_path.exists():
            check_finished(model_path, run)
            log.info("%s is complete (model.pt exists); nothing to train", run_dir)
            return model_path
        found = ckpt.load_latest_checkpoint(run_dir / "checkpoints", CHECKPOINT_KEYS)
        if found is not None:  # before any data is loaded, and before config.yaml changes
            check_recorded(found[0], found[1], run, _restart_hint(run_dir))
            _check_world_size(found[0], found[1], world, run_dir)
        if world.is_main:
            write_yaml(run_dir / "config.yaml", run)
            record_environment(run_dir, "train", world.device.type)
        return Trainer(run, run_dir, split_dir, world).fit(resume=found)


def _main_lock(run_dir: Path, world: World, wait: bool) -> contextlib.AbstractContextManager[None]:
    """The run directory's lock, held by rank 0 for all the ranks of the run."""
    return run_lock(run_dir, "train", wait) if world.is_main else contextlib.nullcontext()


def _made_under(model_path: Path, run: dict[str, Any]) -> bool:
    """Whether a readable model.pt was trained under this run's config (a damaged one
    counts as made under it, so that `check_finished` names the damage)."""
    try:
        payload = ckpt.load_torch(model_path, ("method",))
    except ckpt.CorruptCheckpointError:
        return True
    return payload.get("fingerprint") == fingerprint(run)


def _check_world_size(path: Path, state: dict[str, Any], world: World, run_dir: Path) -> None:
    """A checkpoint resumes exactly only with as many processes as it was taken by (the
    batches' split over the ranks, and their random streams, depend on it)."""
    taken_by = int(state.get("world_size", 1))
    if taken_by != world.size:
        raise RunConfigChangedError(
            f"{path} was taken by {taken_by} training process(es), this is {world.size}: "
            f"resume it with as many (torchrun --nproc_per_node={taken_by}, or without "
            f"torchrun for 1), or {_restart_hint(run_dir)}"
        )


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


def _forget_training(run_dir: Path, why: str) -> None:
    """--restart (or a stale model.pt): drop the run's checkpoints, best.pt and model.pt
    (nothing else)."""
    gone = [*ckpt.list_checkpoints(run_dir / "checkpoints")]
    gone += [path for path in (run_dir / "best.pt", run_dir / "model.pt") if path.exists()]
    for path in gone:
        remove(path)
    log.info("%s: deleted %s", why, ", ".join(p.name for p in gone) or "nothing (fresh run)")
