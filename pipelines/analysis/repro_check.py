"""`eebench repro-check`: does this machine reproduce the suite bit for bit?

A fixed tiny study (reference/repro_check.yaml: the synthetic dataset, a few runs through
the real train, evaluate and calibrate stages) is run in a temporary folder, and a hash of
each run's trained weights and saved outputs is compared with the committed one. Under
the reproducible CPU mode (pipelines/services/repro.py) the hashes depend only on the mode and the
torch version, not on the CPU's instruction set, its core count or the user's caps.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eebench.pipelines.services import repro

CHECK_FILE = "repro_check.yaml"


@dataclass
class CheckResult:
    """The hashes of this machine against the committed ones, and the environment."""

    hashes: dict[str, str]
    expected: dict[str, Any]
    env: dict[str, Any]

    @property
    def comparable(self) -> bool:
        """The committed hashes hold for this mode and torch version."""
        return (
            self.env["reproducible"]
            and self.env["mode"] == self.expected["mode"]
            and self.env["torch"] == self.expected["torch"]
        )

    @property
    def identical(self) -> bool:
        return self.comparable and self.hashes == self.expected["runs"]

    def line(self) -> str:
        """One line: whether this machine reproduces the suite, and why not."""
        where = f"{self.env['cpu_model']}, torch {self.env['torch']}, mode {self.env['mode']}"
        if self.identical:
            return (
                f"repro-check: identical: this machine reproduces the suite bit for bit ({where})"
            )
        runs = self.expected["runs"]
        differ = sorted(run for run, value in self.hashes.items() if runs.get(run) != value)
        verdict = f"{len(differ)} of {len(self.hashes)} runs differ ({', '.join(differ)})"
        if not self.comparable:
            return (
                f"repro-check: not comparable: the committed hashes are for torch "
                f"{self.expected['torch']} under mode {self.expected['mode']}; {verdict} "
                f"({where})"
            )
        return f"repro-check: DIFFERENT: {verdict} ({where})"


def check_file() -> Path:
    return Path(str(resources.files("eebench.reference") / CHECK_FILE))


def run_check(path: Path | None = None) -> CheckResult:
    """Run the check's study in a temporary folder and hash every run."""
    spec = yaml.safe_load((path or check_file()).read_text())
    with tempfile.TemporaryDirectory(prefix="eebench-repro-") as folder:
        hashes = run_hashes(spec["study"], Path(folder))
    return CheckResult(hashes, spec["hashes"], repro.environment("cpu"))


def run_hashes(study_data: dict[str, Any], root: Path) -> dict[str, str]:
    """Train/evaluate (or calibrate) every run of the study under root; hash of each."""
    from eebench.methods import method_kind
    from eebench.pipelines.evaluation.calibrate import calibrate_run
    from eebench.pipelines.evaluation.evaluate import evaluate_run
    from eebench.pipelines.training.train import train_run
    from eebench.pipelines.workflow.config import check_study, expand_runs, resolve_run
    from eebench.pipelines.workflow.runs import trained_state

    study = check_study(study_data)
    hashes = {}
    for spec in expand_runs(study):
        run = resolve_run(study, spec, results_root=root)
        run_dir = root / spec.path
        if method_kind(spec.method) == "train":
            train_run(run, run_dir, root / "splits")
            evaluate_run(run, run_dir, root / "splits")
        else:
            calibrate_run(run, run_dir)
        hashes[spec.path] = run_hash(trained_state(run_dir), run_dir / "outputs.npz")
    return hashes


def run_hash(state: dict[str, Any], outputs: Path) -> str:
    """sha256 of the trained state's tensors and of every array of outputs.npz, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(_bytes(state[name]))
    with np.load(outputs) as arrays:
        for name in sorted(arrays.files):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()[:16]


def _bytes(value: Any) -> bytes:
    """A tensor's (or any picklable value's) bytes."""
    if hasattr(value, "detach"):
        return value.detach().cpu().contiguous().numpy().tobytes()
    return repr(value).encode()


def write_expected(result: CheckResult, path: Path | None = None) -> Path:
    """Commit this machine's hashes as the expected ones (after a torch upgrade)."""
    path = path or check_file()
    spec = yaml.safe_load(path.read_text())
    spec["hashes"] = {
        "torch": result.env["torch"],
        "mode": result.env["mode"],
        "runs": result.hashes,
    }
    header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path
