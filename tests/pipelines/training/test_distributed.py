"""Data-parallel training under torchrun (pipelines/training/distributed.py), on 2 CPU ranks (gloo).

Two ranks cannot give one process's numbers: each BatchNorm normalises with the statistics
of its rank's half of the batch. The tests check the properties that a wrong sharding or
gradient reduction breaks: the ranks' batches are exactly the single-process batch, cut
in two; both ranks hold the same model after every epoch's steps; and a 2-rank run equals,
bit for bit, a single process that computes what the two ranks do (each half of the batch
through its own train-mode BatchNorm, the mean of the two halves' gradients, rank 0's
running statistics). Killed and resumed, a 2-rank run ends identical to an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.methods.base import StepOutput, per_sample_cross_entropy
from eebench.pipelines.data.loaders import FolderLoader, InMemoryLoader, build_loaders
from eebench.pipelines.services.io import write_yaml
from eebench.pipelines.services.lock import LOCK_NAME
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.train import Trainer, train_run
from eebench.pipelines.workflow.fingerprint import RunConfigChangedError
from tests.tiny_runs import SYNTHETIC, tiny_run
from tests.tiny_runs import trained_weights as weights

RANKS = 2

#: `train_run` on every rank, saving each rank's method state after each epoch's steps
#: (before rank 0's state is sent to all at the epoch's end, which would hide a difference).
WORKER = """
import sys
from pathlib import Path
import torch
from eebench.pipelines.services.io import read_yaml
from eebench.pipelines.training.train import Trainer, train_run

train_epoch = Trainer._train_epoch

def train_epoch_and_save(self, epoch, *args):
    train_epoch(self, epoch, *args)
    state = {key: value.clone() for key, value in self.method.state_dict().items()}
    torch.save(state, self.run_dir / f"epoch{epoch}_rank{self.world.rank}.pt")

Trainer._train_epoch = train_epoch_and_save
config, run_dir, split_dir = sys.argv[1:]
train_run(read_yaml(config), Path(run_dir), Path(split_dir))
"""

#: The collectives' semantics, checked on every rank.
COLLECTIVES = """
import torch
from torch import nn
from eebench.pipelines.training.distributed import world_of

world = world_of(torch.device("cpu"))
r = world.rank
both, rank1_only, nowhere = (nn.Parameter(torch.zeros(2, 3)) for _ in range(3))
both.grad = torch.full((2, 3), float(r + 1))
if r == 1:
    rank1_only.grad = torch.full((2, 3), 4.0)
loss = world.average_gradients([both, rank1_only, nowhere], torch.tensor(float(r)))
assert float(loss) == 0.5, loss
assert torch.equal(both.grad, torch.full((2, 3), 1.5))
assert torch.equal(rank1_only.grad, torch.full((2, 3), 2.0))
assert nowhere.grad is None
module = nn.BatchNorm1d(3)
module.register_buffer("flag", torch.tensor([r == 0, r == 1]))
module.running_mean.fill_(r)
module.num_batches_tracked.fill_(10 + r)
module.weight.data.fill_(r)
world.broadcast_buffers(module)
assert module.flag.tolist() == [True, False] and int(module.num_batches_tracked) == 10
assert module.running_mean.eq(0).all() and module.weight.eq(r).all()
world.broadcast_state(module)
assert module.weight.eq(0).all()
assert world.sum([1.0, r]) == [2.0, 1.0]
assert world.gather({"rank": r}) == [{"rank": 0}, {"rank": 1}]
assert world_of(torch.device("cpu")) == world  # a second run of the process: the same group
"""


def torchrun(*args: str | Path) -> subprocess.Popen[bytes]:
    """`args` on 2 CPU ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={RANKS}", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes]) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output.decode()[-5000:]


def train_ranks(run: dict[str, Any], run_dir: Path) -> None:
    """`run` on 2 ranks via WORKER, each rank's state saved after each epoch's steps."""
    run_dir.mkdir(parents=True)
    (run_dir / "worker.py").write_text(WORKER)
    write_yaml(run_dir / "run.yaml", run)
    finish(
        torchrun(run_dir / "worker.py", run_dir / "run.yaml", run_dir, run_dir.parent / "splits")
    )


def cli_train(config: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    """`eebench train --config` on 2 ranks."""
    args = ["-m", "eebench.pipelines.cli", "train", "--config", config]
    return torchrun(*args, "--run-dir", run_dir, "--split-dir", run_dir.parent / "splits")


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def train_log(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "train_log.csv").drop(columns="seconds")


# --------------------------------------------------------------------------- sharding


def batches(loader: Any, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return list(loader.iterate(epoch, start_batch))


def assert_ranks_cut_the_batches(loader: Any, world_size: int, start_batch: int = 0) -> None:
    """Rank after rank, the shards' batches are the whole loader's, augmentation included."""
    shards = [loader.sharded(rank, world_size) for rank in range(world_size)]
    whole = batches(loader, 1, start_batch)
    parts = [batches(shard, 1, start_batch) for shard in shards]
    assert all(len(part) == len(whole) for part in parts)
    for k, (x, y) in enumerate(whole):
        assert all(len(part[k][1]) == len(y) // world_size for part in parts)
        assert torch.equal(torch.cat([part[k][0] for part in parts]), x)
        assert torch.equal(torch.cat([part[k][1] for part in parts]), y)


def augmented_loader(split_dir: Path) -> InMemoryLoader:
    """The tiny run's training loader with random crops and flips."""
    loaders = build_loaders(
        "synthetic",
        data_root="data",
        split_dir=split_dir,
        seed=0,
        batch_size=32,
        eval_batch_size=64,
        synthetic_kwargs=SYNTHETIC,
        crop_padding=4,
        hflip=True,
    )
    assert isinstance(loaders.train, InMemoryLoader)
    return loaders.train


def test_in_memory_ranks_cut_every_augmented_batch(tmp_path: Path) -> None:
    loader = augmented_loader(tmp_path / "splits")
    for world_size in (2, 4):
        assert_ranks_cut_the_batches(loader, world_size)
    assert_ranks_cut_the_batches(loader, 2, start_batch=5)  # resumed mid-epoch


class RandomSamples:
    """A dataset whose samples draw from the global RNGs (like PIL augmentations)."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3) + index, index


def test_folder_ranks_cut_every_batch_with_its_sample_seeds() -> None:
    samples = RandomSamples()
    loader = FolderLoader(
        samples, np.arange(40), batch_size=8, seed=3, shuffle=True, drop_last=True
    )
    assert_ranks_cut_the_batches(loader, 2)
    assert_ranks_cut_the_batches(loader, 4, start_batch=2)
    seen = torch.cat([y for rank in range(2) for _, y in batches(loader.sharded(rank, 2), 0)])
    assert sorted(seen.tolist()) == list(range(40))  # every sample once per epoch


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path: Path) -> None:
    loader = augmented_loader(tmp_path / "splits")
    with pytest.raises(ValueError, match="batch_size a multiple of the number of processes"):
        loader.sharded(0, 3)


# --------------------------------------------------------------------------- collectives


@pytest.mark.slow
def test_collectives_average_gradients_and_send_rank0_state(tmp_path: Path) -> None:
    """Gradients averaged (a rank without one counts as zeros; none anywhere stays none),
    with the ranks' mean loss; buffers, then the whole state, are rank 0's on every rank."""
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    finish(torchrun(script))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`standard` on the tiny run, 2 ranks, batch 32 (16 per rank)."""
    run_dir = tmp_path_factory.mktemp("ranks") / "run"
    train_ranks(tiny_run(), run_dir)
    return run_dir


def emulated_step(method: Any) -> Any:
    """`standard`'s step as 2 ranks compute it, in one process: each half of the batch
    through its own train-mode BatchNorm, the mean of the halves' losses (the gradient is
    then the mean of theirs), and rank 0's running statistics kept."""
    backbone = method.backbone

    def half_loss(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list]:
        logits = backbone(x)
        return sum(per_sample_cross_entropy(z, target).mean() for z in logits), logits

    def step(x: torch.Tensor, target: torch.Tensor, _: int, engine: Any) -> StepOutput:
        backbone.train()
        before = {name: b.clone() for name, b in backbone.named_buffers()}
        cut = len(target) // 2
        loss1, logits1 = half_loss(x[cut:], target[cut:])
        for name, value in before.items():  # new tensors: rank 1's graph keeps its own
            owner, _, leaf = name.rpartition(".")
            setattr(backbone.get_submodule(owner), leaf, value)
        loss0, logits0 = half_loss(x[:cut], target[:cut])
        engine.optimize((loss0 + loss1) / 2)
        logits = [torch.cat([a, b]).detach() for a, b in zip(logits0, logits1, strict=True)]
        return StepOutput(float((loss0 + loss1).detach() / 2), logits, target)

    return step


@pytest.mark.slow
def test_two_ranks_equal_one_process_doing_what_they_do(two_ranks: Path, tmp_path: Path) -> None:
    """Exactly, on CPU: halving a loss halves every gradient without rounding, and two
    gradients add up alike in any order, so the all-reduced mean is the emulation's
    gradient bit for bit (on GPUs, NCCL's reduction order would allow round-off only)."""
    torch.set_num_threads(1)
    trainer = Trainer(tiny_run(), tmp_path / "run", two_ranks.parent / "splits")
    trainer.method.training_step = emulated_step(trainer.method)
    trainer.fit()
    assert_same_state(weights(two_ranks), weights(tmp_path / "run"))
    ranks, emulated = train_log(two_ranks), train_log(tmp_path / "run")
    # the logged loss is the ranks' mean in float64, the emulation's in float32
    assert np.allclose(ranks.pop("train_loss"), emulated.pop("train_loss"), rtol=1e-6)
    pd.testing.assert_frame_equal(ranks, emulated)


@pytest.mark.slow
def test_both_ranks_hold_the_same_model_after_every_epochs_steps(two_ranks: Path) -> None:
    for epoch in range(2):
        rank0, rank1 = (
            torch.load(two_ranks / f"epoch{epoch}_rank{r}.pt", weights_only=True) for r in range(2)
        )
        assert_same_state(rank0, rank1)


def kill_after_first_checkpoint(proc: subprocess.Popen[bytes], run_dir: Path) -> None:
    """SIGKILL the ranks and torchrun as soon as the first checkpoint is on disk."""
    deadline = time.monotonic() + 120
    while not ckpt.list_checkpoints(run_dir / "checkpoints"):
        assert proc.poll() is None, proc.communicate()[0].decode()[-5000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    for pid in [*children(proc.pid), proc.pid]:  # each rank has a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while lock_held(run_dir):  # the ranks die just after torchrun
        assert time.monotonic() < deadline, "the killed ranks still hold the run"
        time.sleep(0.01)


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    return [int(child) for task in tasks for child in task.read_text().split()]


def lock_held(run_dir: Path) -> bool:
    with open(run_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@pytest.mark.slow
def test_killed_two_rank_run_resumes_to_the_uninterrupted_one(tmp_path: Path) -> None:
    """With mixup and label smoothing, whose random draws differ between the ranks, so that
    each rank's RNG state must come back from the checkpoint."""
    run = tiny_run(recipe={"mixup": 0.8, "label_smoothing": 0.1})
    train_ranks(run, tmp_path / "reference")
    killed = tmp_path / "killed"
    write_yaml(tmp_path / "killed.yaml", run)
    kill_after_first_checkpoint(cli_train(tmp_path / "killed.yaml", killed), killed)
    assert not (killed / "model.pt").exists(), "the kill came too late to test anything"
    state = ckpt.load_torch(ckpt.list_checkpoints(killed / "checkpoints")[0])
    assert state["world_size"] == RANKS and len(state["rank_rngs"]) == RANKS
    with pytest.raises(RunConfigChangedError, match="taken by 2 training process"):
        train_run(run, killed, tmp_path / "splits")  # one process cannot resume it exactly
    finish(cli_train(tmp_path / "killed.yaml", killed))
    assert_same_state(weights(tmp_path / "reference"), weights(killed))
    pd.testing.assert_frame_equal(train_log(tmp_path / "reference"), train_log(killed))


# --------------------------------------------------------------------------- cluster jobs

REPO = Path(__file__).resolve().parents[3]
SBATCH = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/sbatch.args"
echo 4242
"""


def gpu_study(tmp_path: Path, gpus: int) -> Path:
    """`standard` on one backbone of Fashion-MNIST, with `gpus` GPUs per job."""
    study = {
        "study": "gpus",
        "slurm": {"gpus_per_job": gpus, "time_minutes": 600},
        "datasets": {"fashion_mnist": {"backbones": ["msdnet_fmnist"], "recipe": "fmnist"}},
        "runs": [{"method": "standard"}],
    }
    write_yaml(tmp_path / "study.yaml", study)
    return tmp_path / "study.yaml"


def snakemake(workdir: Path, *args: str | Path, env: dict[str, str] | None = None) -> Any:
    command = [sys.executable, "-m", "snakemake", "-s", REPO / "Snakefile"]
    command += ["--directory", workdir, *args]
    return subprocess.Popen(
        list(map(str, command)),
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def shell_commands(output: str) -> dict[str, str]:
    """The dry run's shell command of each rule (`-p`), by rule name."""
    jobs = re.findall(r"^rule (\w+):\n.*?^Shell command: (.*?)$", output, re.M | re.S)
    return dict(jobs)


@pytest.mark.parametrize("gpus", [4, 1])
def test_a_multi_gpu_training_job_runs_torchrun(tmp_path: Path, gpus: int) -> None:
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", gpu_study(tmp_path, gpus))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    commands = shell_commands(output)
    launch = f"torchrun --standalone --nproc_per_node={gpus} --no-python "
    assert (launch in commands["train"]) == (gpus > 1), commands["train"]
    assert re.search(r"(torchrun .*)?/eebench train --study", commands["train"])
    assert "torchrun" not in commands["evaluate"]  # evaluation is one process, on one GPU
    assert re.search(r"resources: .*gpu=1\b", output.split("rule evaluate:")[1])


@pytest.mark.slow
def test_slurm_plugin_submits_one_node_with_every_gpu(tmp_path: Path) -> None:
    """The Slurm profile's sbatch call (a fake sbatch records it): the study's time, the
    train rule's CPUs and gpus_per_job GPUs; the job's command is the torchrun above."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"sbatch": SBATCH, "sacctmgr": "#!/bin/sh\necho acct\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for name in ("sacct", "squeue", "sinfo", "scontrol"):
        (bin_dir / name).symlink_to("/bin/true")
    args = ["--profile", REPO / "profiles" / "slurm", "--workflow-profile", "none"]
    args += ["--configfile", gpu_study(tmp_path, 4)]
    args += ["--default-resources", "slurm_partition=gpu", "slurm_account=acct"]
    proc = snakemake(tmp_path, *args, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    deadline = time.monotonic() + 240
    try:
        while not (bin_dir / "sbatch.args").exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "nothing was submitted"
            time.sleep(0.2)
    finally:
        proc.kill()
    output = proc.communicate()[0]
    sbatch = (bin_dir / "sbatch.args").read_text().split("\n")
    assert {"--gpus=4", "--cpus-per-task=8", "600", "16000"} <= set(sbatch), sbatch
    assert any(arg.startswith("--wrap=") and "--allowed-rules train" in arg for arg in sbatch)
    assert "torchrun --standalone --nproc_per_node=4 --no-python " in output
