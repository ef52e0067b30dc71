"""The Snakemake workflow: the paper study's whole job graph without any data, bad study
configs stopped before any job, naming the key or name at fault, and `eebench verify`
regenerating a tiny study from scratch.

Snakemake runs as a subprocess with `--directory` a tmp folder, so nothing (results/,
.snakemake/) is written into the repository.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from eebench.methods import method_kind
from eebench.pipelines.workflow.config import expand_runs, load_study

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the repository's Snakefile in `workdir` (outputs and metadata stay there)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=workdir)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_paper_dry_run_lists_the_whole_job_graph_without_data(tmp_path: Path) -> None:
    repo_results = sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []
    config = REPO / "config" / "paper.yaml"
    result = snakemake(tmp_path, "-n", "--configfile", str(config), "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    runs = expand_runs(load_study(config))
    trained = [spec for spec in runs if method_kind(spec.method) == "train"]
    counts = job_counts(result.stdout)
    assert counts["train"] == counts["evaluate"] == len(trained)
    assert counts["calibrate"] == len(runs) - len(trained) > 0  # the post-hoc baselines
    assert counts["split"] == 3  # cifar10, cifar100, imagenet
    assert counts["tables"] == counts["figures"] == counts["explorer"] == counts["all"] == 1
    assert not (tmp_path / "results").exists()  # a dry run writes no result
    assert repo_results == (
        sorted((REPO / "results").rglob("*")) if (REPO / "results").exists() else []
    )


# A post-hoc method registered only inside the Snakemake process, so that the calibrate
# rule is exercised before the suite registers its first real one.
FAKE_CALIBRATOR = """
import sys
from eebench.methods.base import PostHocMethod, register_posthoc_method
register_posthoc_method(type("FakeCal", (PostHocMethod,), {"name": "fakecal"}))
from snakemake.cli import main
main(sys.argv[1:])
"""


def test_posthoc_run_is_calibrated_from_its_source_outputs(tmp_path: Path) -> None:
    study = _default_study()
    study["runs"] = [{"method": "standard"}, {"method": "fakecal"}]
    study.pop("latency")  # it times runs this study no longer has
    study["datasets"]["fashion_mnist"]["backbones"] = ["msdnet_fmnist"]
    config = tmp_path / "posthoc.yaml"
    config.write_text(yaml.safe_dump(study))
    command = [sys.executable, "-c", FAKE_CALIBRATOR, "-n", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == counts["evaluate"] == counts["calibrate"] == 1
    source = "results/default/runs/fashion_mnist/msdnet_fmnist/standard/seed0"
    assert f"input: {source}/outputs.npz, {source}/features.npz" in result.stdout


def _default_study() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config" / "default.yaml").read_text())


def _with_key_typo(study: dict[str, Any]) -> None:
    study["datasets"]["fashion_mnist"]["epochs"] = 3


def _with_wrong_type(study: dict[str, Any]) -> None:
    study["seeds"] = "zero"


def _with_unknown_method(study: dict[str, Any]) -> None:
    study["runs"][0]["method"] = "standrd"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_with_key_typo, "datasets/fashion_mnist: Additional properties are not allowed ('epochs'"),
        (_with_wrong_type, "seeds: 'zero' is not of type 'array'"),
        (_with_unknown_method, "unknown method 'standrd'; registered methods:"),
    ],
)
def test_bad_config_stops_before_any_job_naming_the_fault(
    tmp_path: Path, edit: Any, message: str
) -> None:
    study = copy.deepcopy(_default_study())
    edit(study)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(study))
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output
    assert "Job stats" not in output


TINY_STUDY = {
    "study": "tiny",
    "data_root": str(REPO / "data"),
    "checkpoint_every_steps": 2,
    "features_subset": 64,
    "datasets": {
        "fashion_mnist": {
            "backbones": ["msdnet_fmnist", "ranet_fmnist"],
            "recipe": "fmnist",
            "recipe_overrides": {"epochs": 2, "batch_size": 32},
            "train_subset": 384,
        }
    },
    "runs": [{"method": "standard"}],
}


def _wait_for(condition: Any, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 600
    while not condition():
        assert proc.poll() is None, f"snakemake ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_interrupted_workflow_resumes_without_redoing_finished_jobs(tmp_path: Path) -> None:
    """Stopped (SIGTERM, as Ctrl-C or a cluster preemption) while the second run trains,
    the rerun keeps the first run, resumes the second from its checkpoint and finishes."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_STUDY))
    runs = tmp_path / "results" / "tiny" / "runs" / "fashion_mnist"
    args = ["--profile", str(REPO / "profiles" / "default"), "--configfile", str(config)]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), *args, "--cores", "1"]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def finished() -> list[Path]:
        return sorted(runs.glob("*/standard/seed0/model.pt"))

    def second_run_checkpointed() -> bool:
        """A checkpoint of a run without model.pt: with one core, the second run has started,
        so Snakemake has recorded the first as done (the first run's own checkpoints exist
        for a moment after its model.pt, while its job is still running: killing it then
        rightly discards that model.pt as incomplete)."""
        checkpoints = runs.glob("*/standard/seed0/checkpoints/ckpt_*.pt")
        in_progress = [c for c in checkpoints if not (c.parent.parent / "model.pt").exists()]
        return len(finished()) == 1 and bool(in_progress)

    try:
        _wait_for(second_run_checkpointed, proc, "the second run's first checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    (done,) = finished()
    mtime = done.stat().st_mtime_ns
    result = snakemake(tmp_path, *args, "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert done.stat().st_mtime_ns == mtime, "the finished run was trained again"
    logs = [path.read_text() for path in runs.glob("*/standard/seed0/train.log")]
    assert sum("resuming from ckpt_" in log for log in logs) == 1
    assert len(finished()) == 2
    assert (tmp_path / "results" / "tiny" / "figures" / "fig3_budgeted.png").is_file()


def _one_run_study(tmp_path: Path) -> tuple[list[str], Path]:
    """A one-run tiny study: (the Snakemake arguments that run it, its run directory)."""
    study = copy.deepcopy(TINY_STUDY)
    study["datasets"]["fashion_mnist"]["backbones"] = ["msdnet_fmnist"]
    study["datasets"]["fashion_mnist"]["recipe_overrides"]["epochs"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(study))
    args = ["--profile", str(REPO / "profiles" / "default"), "--configfile", str(config)]
    run_dir = tmp_path / "results/tiny/runs/fashion_mnist/msdnet_fmnist/standard/seed0"
    return args, run_dir


def test_a_failing_job_never_deletes_a_finished_model(tmp_path: Path) -> None:
    """Issue 26 (1a, 3): a truncated split file makes the rerun fail with its message, and the
    finished model.pt stays; the split drawn again, the run is evaluated from that model.
    Then a truncated outputs.npz fails the tables job, and the old tables stay."""
    args, run_dir = _one_run_study(tmp_path)
    assert snakemake(tmp_path, *args).returncode == 0
    model = run_dir / "model.pt"
    trained = model.read_bytes()
    (split,) = (tmp_path / "results/tiny/splits").glob("*.npz")
    split.write_bytes(split.read_bytes()[:200])
    failed = snakemake(tmp_path, *args)
    assert failed.returncode != 0
    assert f"split file {split.relative_to(tmp_path)} is corrupted" in failed.stdout + failed.stderr
    assert model.is_file() and model.read_bytes() == trained, "the model was deleted"
    split.unlink()
    redone = snakemake(tmp_path, *args)
    assert redone.returncode == 0, redone.stdout + redone.stderr
    assert model.read_bytes() == trained
    assert (run_dir / "train.log").read_text().count("epoch 1/1") == 1, "it was trained again"
    # a truncated outputs.npz fails the tables job, which leaves the previous tables in place
    tables = {path: path.read_bytes() for path in (tmp_path / "results/tiny/tables").iterdir()}
    outputs = run_dir / "outputs.npz"
    outputs.write_bytes(outputs.read_bytes()[:1000])
    failed = snakemake(tmp_path, *args)
    assert failed.returncode != 0
    assert f"{outputs.relative_to(tmp_path)} is damaged" in failed.stdout + failed.stderr
    assert {path: path.read_bytes() for path in tables} == tables


def test_a_killed_workflow_uses_the_model_its_orphaned_trainer_finishes(tmp_path: Path) -> None:
    """Issue 26 (1b): Snakemake killed with SIGKILL while training leaves its trainer running;
    after `--unlock` the rerun neither fails on the run's lock nor trains the run again."""
    args, run_dir = _one_run_study(tmp_path)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), *args]
    proc = subprocess.Popen(
        command, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_for(lambda: any(run_dir.glob("checkpoints/ckpt_*.pt")), proc, "a checkpoint")
    finally:
        proc.kill()  # Snakemake alone: its trainer lives on, an orphan
        proc.communicate(timeout=60)
    assert snakemake(tmp_path, *args, "--unlock").returncode == 0
    result = snakemake(tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 1/1") == 1, "the run was trained again"
    assert (tmp_path / "results/tiny/tables/anytime.csv").is_file()


def _venv_with_a_space(tmp_path: Path) -> Path:
    """This Python environment seen through a folder whose path holds a space (symlinks):
    jobs then run `<that folder>/bin/eebench`, which breaks unless the command is quoted."""
    real = Path(sys.executable).parent.parent
    venv = tmp_path / "venv with space"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "eebench"):
        (venv / "bin" / name).symlink_to(real / "bin" / name)
    (venv / "lib").symlink_to(real / "lib")
    (venv / "pyvenv.cfg").write_text((real / "pyvenv.cfg").read_text())
    return venv / "bin" / "python"


def test_changed_config_or_lost_output_reruns_exactly_what_it_must(tmp_path: Path) -> None:
    """From a checkout path with a space: a finished study, then one run's lr edited and
    another run's outputs.npz deleted. The rerun retrains only the edited run and only
    re-evaluates the other one."""
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    python = _venv_with_a_space(tmp_path)
    study = copy.deepcopy(TINY_STUDY)
    study["datasets"]["fashion_mnist"]["recipe_overrides"]["epochs"] = 1
    study["runs"] = [
        {"method": "standard", "backbones": ["msdnet_fmnist"]},
        {"method": "standard", "backbones": ["ranet_fmnist"]},
    ]
    config = workdir / "tiny.yaml"
    config.write_text(yaml.safe_dump(study))
    command = [str(python), "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
    command += ["--directory", str(workdir), "--configfile", str(config)]

    def snakemake_here(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*command, *args], capture_output=True, text=True, cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    snakemake_here()
    runs = workdir / "results" / "tiny" / "runs" / "fashion_mnist"
    models = {
        name: runs / name / "standard" / "seed0" / "model.pt"
        for name in ("msdnet_fmnist", "ranet_fmnist")
    }
    stamps = {name: path.stat().st_mtime_ns for name, path in models.items()}
    (models["msdnet_fmnist"].parent / "outputs.npz").unlink()
    planned = job_counts(snakemake_here("-n").stdout)
    assert planned.get("train", 0) == 0 and planned["evaluate"] == 1, planned
    study["runs"][1]["recipe_overrides"] = {"lr": 0.05}
    config.write_text(yaml.safe_dump(study))
    planned = job_counts(snakemake_here("-n").stdout)
    assert planned["train"] == 1 and planned["evaluate"] == 2, planned
    snakemake_here()
    assert models["msdnet_fmnist"].stat().st_mtime_ns == stamps["msdnet_fmnist"]
    assert models["ranet_fmnist"].stat().st_mtime_ns != stamps["ranet_fmnist"]
    assert (models["msdnet_fmnist"].parent / "outputs.npz").is_file()
    retrained = yaml.safe_load((models["ranet_fmnist"].parent / "config.yaml").read_text())
    assert retrained["recipe"]["lr"] == 0.05


def test_verify_regenerates_a_study_and_names_a_moved_number(tmp_path: Path) -> None:
    """`eebench verify` reruns a finished tiny study from scratch in another folder: every
    table agrees; then a committed top-1 moved by 10 points is reported, naming the table."""
    study = copy.deepcopy(TINY_STUDY)
    study["datasets"]["fashion_mnist"]["backbones"] = ["msdnet_fmnist"]
    study["datasets"]["fashion_mnist"]["recipe_overrides"]["epochs"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(study))
    profile = ["--profile", str(REPO / "profiles" / "default"), "--cores", "2"]
    result = snakemake(tmp_path, *profile, "--configfile", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    committed = tmp_path / "results" / "tiny"
    verify = [sys.executable, "-m", "eebench.pipelines.cli", "verify", "--study", str(config)]
    verify += ["--results", str(committed)]

    def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*verify, *args], capture_output=True, text=True, cwd=tmp_path)

    again = tmp_path / "again"
    result = run_verify("--workdir", str(again))
    assert result.returncode == 0, result.stdout + result.stderr
    # both sides ran under the reproducible CPU mode: every value must be identical
    summary = result.stdout.splitlines()[-1]
    assert "(identity comparison" in summary and summary.endswith("; all identical")
    anytime = committed / "tables" / "anytime.csv"
    frame = pd.read_csv(anytime, keep_default_na=False)
    frame.loc[0, "top1"] += 10.0
    frame.to_csv(anytime, index=False)
    result = run_verify("--tables-from", str(again / "results" / "tiny"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DISAGREE  anytime.csv: " in result.stdout
    assert "method=standard variant= seed=0 exit=1): top1 " in result.stdout
