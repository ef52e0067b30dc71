"""What a run's numbers depend on: the part of its resolved config that is hashed.

Every checkpoint and `model.pt` stores that part and its hash, so a run resumed or reused
under another config stops and names the keys that changed, instead of mixing two
configs in one run. The Snakefile passes the hash as a rule parameter, so a changed study
reruns exactly the runs whose numbers it changes. The source of the run's method module and
of its backbone's module is part of it: editing `methods/<name>.py` reruns that method's
runs (and Snakemake the runs built on them, whose inputs change), and nothing else.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from eebench.backbones import get_model_config
from eebench.methods import EXIT_RULES, method_class


class RunConfigChangedError(ValueError):
    """A checkpoint or model made under another config than the run's current one."""


#: Keys that never change a trained model: where things are, how fast, how often saved.
NOT_HASHED = frozenset(
    {
        "study",
        "data_root",
        "device",
        "num_workers",
        "checkpoint_every_steps",
        "validate_each_epoch",
        "features_subset",
    }
)
#: Recipe fields that only describe or only change evaluation batching.
RECIPE_NOT_HASHED = frozenset({"source", "eval_batch_size"})


def hashed_config(run: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved run config that can change its trained model.

    Upstream runs count by their run path (not where the results folder is); the source
    of the method's and the backbone's modules (`code`), and the method's `code_version`
    when it declares one (for changes elsewhere that move its numbers), join in.
    """
    kept = {key: value for key, value in run.items() if key not in NOT_HASHED}
    if "recipe" in kept:
        kept["recipe"] = {k: v for k, v in kept["recipe"].items() if k not in RECIPE_NOT_HASHED}
    for key in ("init_from", "source"):
        if kept.get(key):
            kept[key] = _run_path(kept[key])
    method = method_class(run["method"])
    if method.code_version:
        kept["method_code_version"] = method.code_version
    kept["code"] = source_digests([method, type(get_model_config(run["backbone"]))])
    return kept


def exit_rules_code() -> str:
    """A short hash of the source of every exit rule's module: evaluation and calibration
    fit every rule that applies to a run, so editing a rule's file refits them all (and
    retrains nothing)."""
    rules = [EXIT_RULES.get(name) for name in EXIT_RULES.names()]
    text = json.dumps(source_digests(rules), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digests(objects: list[Any]) -> dict[str, str]:
    """{module name: short hash of its source file} of the modules defining `objects`."""
    return {module: source_digest(module) for module in sorted({o.__module__ for o in objects})}


def source_digest(module: str) -> str:
    """A short hash of a module's source file (its bytes: the same on every machine)."""
    try:
        path = inspect.getsourcefile(sys.modules[module])
    except TypeError:  # a built-in module, e.g. a method defined in `python -c`'s __main__
        path = None
    if path is None:  # a module without a source file (e.g. compiled): its name only
        return "no source"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def fingerprint(run: dict[str, Any]) -> str:
    """A short, stable hash of `hashed_config` (the same on every machine and checkout)."""
    text = json.dumps(hashed_config(run), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded(run: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint and model.pt stores about the config it was made under."""
    return {"config": hashed_config(run), "fingerprint": fingerprint(run)}


def check_recorded(path: Path, payload: dict[str, Any], run: dict[str, Any], way_out: str) -> None:
    """Stop when `payload` (a checkpoint or model.pt) was made under another config."""
    if payload.get("fingerprint") == fingerprint(run):
        return
    stored = payload.get("config")
    changed = (
        differences(stored, hashed_config(run))
        if isinstance(stored, dict)
        else ["it records no config (written by an older eebench)"]
    )
    shown = "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")
    raise RunConfigChangedError(
        f"{path} was made under another config ({shown}). Put the old values back to "
        f"use it, or {way_out}"
    )


def differences(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """'key.path: old -> new' for every leaf that differs between two hashed configs."""
    found = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


def _run_path(path: str) -> str:
    """'results/x/runs/a/b/c/seed0' -> 'runs/a/b/c/seed0'."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[parts.index("runs") :]) if "runs" in parts else path
