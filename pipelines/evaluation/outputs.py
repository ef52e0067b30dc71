"""A run's saved outputs: the one reader and writer of `outputs.npz`, `features.npz` and
`exit_rules.json` (docs/protocol.md, "Files every run writes").

- `outputs.npz`: per split (val, test) the prediction logits (K×N×C), labels and the
  method's own exit scores (K×N per score name; `val_scores`/`test_scores` for the
  score named "score", the protocol's keys), the cumulative costs of predicting
  (`flops`) and of reading each score (`score_flops`), the exit heads' classifier
  weights, and a `format_version`.
- `features.npz`: per-exit pre-classifier features of train (a subset), val and test,
  the inputs of post-hoc methods.
- `exit_rules.json`: every fitted exit decision of the run (rule, operating point,
  score read, one threshold per exit): what deployment (`eebench infer`) needs.

A file of another format version, truncated, or damaged since it was written (its checksum,
pipelines/services/io.py) is refused with the command that rewrites it.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eebench.pipelines.evaluation.protocol import softmax_confidence
from eebench.pipelines.services.io import read_checked, write_npz, write_text

FORMAT_VERSION = 2
#: The method's own exit score: stored under the protocol's `val_scores`/`test_scores`.
OWN_SCORE = "score"
#: The generic exit score every exit has: the max softmax of its prediction logits.
MAX_SOFTMAX = "max_softmax"
SPLITS = ("val", "test")
OUTPUTS_FILE = "outputs.npz"
FEATURES_FILE = "features.npz"
RULES_FILE = "exit_rules.json"


class OutputsFormatError(ValueError):
    """An outputs file that this version cannot read (older format, or truncated)."""


@dataclass
class SplitOutputs:
    """What every exit produced on one split (K first)."""

    logits: np.ndarray  # K×N×C float32: the method's prediction logits
    labels: np.ndarray  # N int64
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> K×N
    features: list[np.ndarray] | None = None  # per exit N×d_k

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def correct(self) -> np.ndarray:
        """K×N: whether exit k classifies sample i correctly."""
        return self.logits.argmax(axis=-1) == self.labels[None, :]

    def score(self, name: str) -> np.ndarray:
        """K×N float64 scores: the max softmax of the logits, or a stored score by name."""
        if name == MAX_SOFTMAX:
            return softmax_confidence(self.logits)
        return self.scores[name].astype(np.float64)

    def top1(self) -> list[float]:
        """Top-1 (percent) of every exit."""
        return [float(100.0 * c.mean()) for c in self.correct]


@dataclass
class RunOutputs:
    """A run's outputs on val and test, its costs, and optionally features and classifiers."""

    val: SplitOutputs
    test: SplitOutputs
    flops: np.ndarray  # K cumulative MFLOPs of each exit's prediction
    score_flops: dict[str, np.ndarray] = field(default_factory=dict)  # score -> K cumulative
    classifiers: list[tuple[np.ndarray, np.ndarray]] | None = None  # per exit (W, b)
    train: SplitOutputs | None = None  # features and labels of a train subset (no logits)
    # Size of the training split the run trained on (after train_subset), saved with the
    # features: the N of a posterior that scales with the training set (Calibrated-DNN).
    n_train: int | None = None

    @property
    def num_exits(self) -> int:
        return len(self.flops)

    def split(self, name: str) -> SplitOutputs:
        return {"val": self.val, "test": self.test}[name]

    def score_names(self) -> list[str]:
        return sorted(self.val.scores)

    def costs(self, score: str) -> np.ndarray:
        """Cumulative MFLOPs per exit of a sample that exits by reading `score`."""
        return self.score_flops.get(score, self.flops)


# --------------------------------------------------------------------------- outputs.npz


def _score_key(split: str, name: str) -> str:
    return f"{split}_scores" if name == OWN_SCORE else f"{split}_scores:{name}"


def _outputs_arrays(outputs: RunOutputs) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"format_version": np.array(FORMAT_VERSION)}
    for name in SPLITS:
        split = outputs.split(name)
        arrays[f"{name}_logits"] = split.logits.astype(np.float32)
        arrays[f"{name}_labels"] = split.labels.astype(np.int64)
        for score, values in split.scores.items():
            arrays[_score_key(name, score)] = values.astype(np.float32)
    arrays["flops"] = np.asarray(outputs.flops, dtype=np.float64)
    for score, costs in outputs.score_flops.items():
        arrays[f"score_flops:{score}"] = np.asarray(costs, dtype=np.float64)
    for k, (weight, bias) in enumerate(outputs.classifiers or []):
        arrays[f"classifier_weight_{k}"] = weight.astype(np.float32)
        arrays[f"classifier_bias_{k}"] = bias.astype(np.float32)
    return arrays


def _features_arrays(outputs: RunOutputs) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"format_version": np.array(FORMAT_VERSION)}
    splits = {"train": outputs.train, "val": outputs.val, "test": outputs.test}
    for name, split in splits.items():
        if split is None or split.features is None:
            continue
        arrays[f"{name}_labels"] = split.labels.astype(np.int64)
        for k, feats in enumerate(split.features):
            arrays[f"{name}_features_{k}"] = feats.astype(np.float32)
    if outputs.n_train is not None:
        arrays["n_train"] = np.int64(outputs.n_train)
    return arrays


def write_outputs(run_dir: Path, outputs: RunOutputs, with_features: bool = False) -> None:
    """outputs.npz (and features.npz), each written atomically."""
    write_npz(Path(run_dir) / OUTPUTS_FILE, **_outputs_arrays(outputs))
    if with_features:
        write_npz(Path(run_dir) / FEATURES_FILE, **_features_arrays(outputs))


def _load(path: Path, remedy: str) -> dict[str, np.ndarray]:
    """Every array of an npz file of this format version, or one clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {remedy}")
    data = read_checked(path, remedy)  # a damaged file stops here, naming it
    try:
        with np.load(io.BytesIO(data)) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise OutputsFormatError(f"{path} is unreadable ({error}): {remedy}") from None
    version = int(arrays.pop("format_version", 1))
    if version != FORMAT_VERSION:
        raise OutputsFormatError(
            f"{path} has format version {version}, this eebench reads version "
            f"{FORMAT_VERSION}: {remedy}"
        )
    return arrays


def _per_exit(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    keys = sorted((k for k in arrays if k.startswith(prefix)), key=lambda k: int(k.rsplit("_")[-1]))
    return [arrays[k] for k in keys]


def _split_from(arrays: dict[str, np.ndarray], name: str) -> SplitOutputs:
    scores = {}
    for key, values in arrays.items():
        if key == f"{name}_scores":
            scores[OWN_SCORE] = values
        elif key.startswith(f"{name}_scores:"):
            scores[key.split(":", 1)[1]] = values
    return SplitOutputs(arrays[f"{name}_logits"], arrays[f"{name}_labels"], scores)


def read_outputs(run_dir: Path, with_features: bool = False) -> RunOutputs:
    """A run's outputs.npz (and its features.npz when asked)."""
    run_dir = Path(run_dir)
    arrays = _load(run_dir / OUTPUTS_FILE, f"run `eebench evaluate` (or calibrate) on {run_dir}")
    weights = _per_exit(arrays, "classifier_weight_")
    biases = _per_exit(arrays, "classifier_bias_")
    outputs = RunOutputs(
        val=_split_from(arrays, "val"),
        test=_split_from(arrays, "test"),
        flops=arrays["flops"],
        score_flops={
            key.split(":", 1)[1]: value
            for key, value in arrays.items()
            if key.startswith("score_flops:")
        },
        classifiers=list(zip(weights, biases, strict=True)) or None,
    )
    if with_features:
        _attach_features(outputs, run_dir / FEATURES_FILE)
    return outputs


def _attach_features(outputs: RunOutputs, path: Path) -> None:
    arrays = _load(path, f"evaluate {path.parent} without --no-features")
    outputs.val.features = _per_exit(arrays, "val_features_")
    outputs.test.features = _per_exit(arrays, "test_features_")
    if "train_labels" in arrays:
        train_features = _per_exit(arrays, "train_features_")
        empty = np.zeros((outputs.num_exits, 0, 0), dtype=np.float32)
        outputs.train = SplitOutputs(empty, arrays["train_labels"], features=train_features)
    if "n_train" in arrays:
        outputs.n_train = int(arrays["n_train"])


# --------------------------------------------------------------------------- exit rules


@dataclass(frozen=True)
class ExitDecision:
    """A fitted exit rule at one operating point.

    A sample leaves at the first exit k with scores[score][k] >= thresholds[k]; the last
    threshold is −inf. `point` is the budget index p for the q-proportion rules (q = p/20)
    and 1, 2, … for other rules, whose `q` is NaN.
    """

    rule: str
    point: int
    q: float
    score: str
    thresholds: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "point": self.point,
            "q": None if math.isnan(self.q) else self.q,
            "score": self.score,
            "thresholds": [_json_float(t) for t in self.thresholds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitDecision:
        q = math.nan if data["q"] is None else float(data["q"])
        thresholds = tuple(float(t) for t in data["thresholds"])
        return cls(data["rule"], int(data["point"]), q, data["score"], thresholds)


def _json_float(value: float) -> float | str:
    """±inf as the strings "inf"/"-inf": strict JSON has no infinity."""
    return str(value) if math.isinf(value) else float(value)


def write_decisions(run_dir: Path, decisions: list[ExitDecision]) -> None:
    data = {"format_version": FORMAT_VERSION, "decisions": [d.to_dict() for d in decisions]}
    write_text(Path(run_dir) / RULES_FILE, json.dumps(data, indent=1) + "\n")


def read_decisions(run_dir: Path) -> list[ExitDecision]:
    """The fitted exit decisions a run saved (deployment reads them)."""
    path = Path(run_dir) / RULES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `eebench evaluate` on {run_dir}")
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise OutputsFormatError(
            f"{path} has format version {data.get('format_version')}, this eebench reads "
            f"{FORMAT_VERSION}: run `eebench evaluate` on {run_dir} again"
        )
    return [ExitDecision.from_dict(d) for d in data["decisions"]]
