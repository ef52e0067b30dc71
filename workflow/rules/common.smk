"""Helpers of the Snakefile: the study config, the run matrix and per-rule resources.

Only configs and registries are read here (never data), so `snakemake -n` lists the
whole job graph of any study on a machine without its datasets.
"""

import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from eebench.methods import method_kind
from eebench.methods.base import MethodContractError
from eebench.pipelines.workflow.config import (
    ConfigError,
    RunSpec,
    check_study,
    expand_runs,
    latency_runs,
    resolve_run,
    upstream_runs,
)
from eebench.pipelines.workflow.fingerprint import exit_rules_code, fingerprint
from eebench.pipelines.data.splits import split_path
from eebench.pipelines.data.datasets import get_dataset_info
from eebench.pipelines.services.allocator import AllocatorError, preload_prefix as _preload
from eebench.pipelines.services.io import read_yaml

DEFAULT_STUDY = Path(workflow.basedir) / "config" / "default.yaml"
STUDY_SCHEMA = Path(workflow.basedir) / "pipelines" / "workflow" / "schemas" / "study.schema.yaml"


def study_file() -> Path:
    """The one study config the `eebench` commands read: --configfile, else the default."""
    given = [Path(path) for path in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise WorkflowError("give one study config (--configfile config/<study>.yaml)")
    return given[0].resolve() if given else DEFAULT_STUDY


def load_config(path: Path) -> None:
    """Fill `config` from the study file; refuse --config overrides the commands would not see."""
    content = read_yaml(path)
    if not config:
        config.update(content)
    elif config != content:
        raise WorkflowError(
            "--config overrides do not reach the eebench commands (they read the study "
            f"file {path}): put the change in a copy of that file and pass it with --configfile"
        )


def checked_study(path: Path) -> dict:
    """Names and registries (methods, backbones, datasets, recipes, variants) of every run."""
    try:
        return check_study(dict(config), origin=str(path))
    except (ConfigError, MethodContractError) as error:
        raise WorkflowError(str(error)) from None


def eebench_command() -> str:
    """The `eebench` script of this Python environment (jobs use the env that runs Snakemake),
    quoted for the shell (a checkout path may hold spaces)."""
    script = Path(sys.executable).with_name("eebench")
    return shlex.quote(str(script)) if script.exists() else "eebench"


def config_hash(study: dict, root: str, spec: RunSpec) -> str:
    """The hash of what the run's numbers depend on: a rule parameter, so that Snakemake
    reruns a run whose config changed in the study file, and only that run."""
    return fingerprint(resolve_run(study, spec, results_root=root))


def run_pattern(specs) -> str:
    """A wildcard constraint matching exactly these run paths (matches nothing when empty)."""
    return "|".join(re.escape(spec.path) for spec in specs) or "(?!)"


def split_file(root: str, dataset: str, seed: int) -> str:
    """The split file `eebench split` writes (data.split_path at the protocol's sizes)."""
    info = get_dataset_info(dataset)
    return str(split_path(dataset, f"{root}/splits", seed, info.n_train_total, info.n_val))


def needed_runs(study: dict, runs: list, spec: RunSpec) -> list:
    """Upstream runs (init_from / post-hoc source); each must be part of the study."""
    needed = upstream_runs(study, spec)
    outside = [up.path for up in needed if up not in runs]
    if outside:
        raise WorkflowError(f"{spec.path} needs {', '.join(outside)}: add it to the study's runs")
    return needed


def resources(mem_mb: int, runtime: int, gpu: int = 0) -> dict:
    """mem_mb, runtime (minutes), gpu, and the slurm partition/account when the study sets them.

    Unset slurm keys are left to the profile's --default-resources.
    """
    slurm = config.get("slurm", {})
    found = {"mem_mb": mem_mb, "runtime": runtime}
    if gpu:
        found["gpu"] = gpu
    for key in ("partition", "account"):
        if key in slurm:
            found[f"slurm_{key}"] = slurm[key]
    return found


def preload_prefix() -> str:
    """`env LD_PRELOAD=<tcmalloc> ` where the machine has a faster allocator
    (pipelines/services/allocator.py: same numbers, faster jobs), else ""."""
    try:
        return _preload()
    except AllocatorError as error:
        raise WorkflowError(str(error)) from None


def launcher(gpus: int) -> str:
    """What starts a training job's `eebench train`: on several GPUs, torchrun (of this
    environment) with one process per GPU, for data-parallel training (README, "Multi-GPU
    and cluster"); on one GPU or the CPU, nothing."""
    if gpus <= 1:
        return ""
    script = Path(sys.executable).with_name("torchrun")
    torchrun = shlex.quote(str(script)) if script.exists() else "torchrun"
    return f"{torchrun} --standalone --nproc_per_node={gpus} --no-python "


def gpus_per_job(study: dict) -> int:
    """GPUs of a training job (an evaluation job takes one of them): the study's slurm setting,
    else 1 unless device: cpu."""
    return study.get("slurm", {}).get("gpus_per_job", 0 if study["device"] == "cpu" else 1)
