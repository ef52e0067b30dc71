"""Study and run configurations: schema validation, defaults and the experiment matrix.

A study YAML (config/*.yaml) lists datasets, backbones and method runs; it is
expanded into `RunSpec`s (dataset × backbone × method × variant × seed), and
each spec is resolved into a complete run config that is saved in the run
directory. Every name is checked against the registries here, before any data
is loaded, so a typo fails in a second with the fix in the message.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eebench.pipelines.services.errors import number_hint
from eebench.recipes import RECIPES

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config that cannot run: the message names the key and the fix."""


@cache
def load_schema(kind: str) -> dict[str, Any]:
    text = (
        resources.files("eebench.pipelines.workflow")
        .joinpath(f"schemas/{kind}.schema.yaml")
        .read_text()
    )
    return yaml.safe_load(text)


def validate(data: Any, kind: str, origin: str) -> None:
    """Validate against the JSON schema; the error names the offending key path."""
    validator = jsonschema.Draft202012Validator(load_schema(kind))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors[:5]:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  {where}: {error.message}{number_hint(error.instance)}")
        raise ConfigError(f"{origin}: invalid {kind} config\n" + "\n".join(lines))


def _fill_defaults(data: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    filled = copy.deepcopy(data)
    for key, spec in schema.get("properties", {}).items():
        if key not in filled and "default" in spec:
            filled[key] = copy.deepcopy(spec["default"])
    return filled


def load_study(path: str | Path, *, study_checks: bool = True) -> dict[str, Any]:
    """Read, validate and complete a study config; check every name it uses (and, unless
    `study_checks` is False, what concerns the study as a whole: `check_study`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config {path} does not exist (studies are in config/*.yaml)")
    return check_study(read_config_yaml(path), origin=str(path), study_checks=study_checks)


def check_study(data: Any, origin: str = "study", *, study_checks: bool = True) -> dict[str, Any]:
    """The study, validated and completed. `study_checks=False` (a run job's check: the
    workflow and `eebench check` have made them) leaves out the figure names of the runs'
    displays, which would import the plotting stack, a second of every job's start, and
    the exit rules' scores, whose warning would repeat in every job's log."""
    validate(data, "study", origin)
    schema = load_schema("study")
    study = _fill_defaults(data, schema)
    runs = expand_runs(study)
    for spec in runs:
        resolve_run(study, spec)  # raises ConfigError on any bad name or value
        if study_checks:
            _check_display(spec)
    if study_checks:
        _check_rule_scores(runs)
    if "latency" in study:
        study["latency"] = _fill_defaults(study["latency"], schema["properties"]["latency"])
        _check_latency(study, origin)
    return study


def _check_display(spec: RunSpec) -> None:
    """The figures a run's display lists exist (a typo would drop the run from them)."""
    from eebench.methods import method_class
    from eebench.methods.base import MethodContractError, source_file
    from eebench.pipelines.analysis.figures import FIGURE_NAMES

    cls = method_class(spec.method)
    unknown = set(cls.display_of(spec.variant).figures) - set(FIGURE_NAMES)
    if unknown:
        of = f" (variant {spec.variant!r})" if spec.variant else ""
        raise MethodContractError(
            f"{source_file(cls)}: the Display of {cls.__name__}{of} lists {sorted(unknown)}, "
            f"which are not figures; figures: {', '.join(FIGURE_NAMES)}"
        )


def _check_rule_scores(runs: list[RunSpec]) -> None:
    """Say when a generic exit rule thresholds a score that no run of the study stores and
    that it does not compute itself: it would silently draw nothing."""
    from eebench.methods import EXIT_RULES, method_class
    from eebench.methods.base import source_file
    from eebench.pipelines.evaluation.outputs import MAX_SOFTMAX, OWN_SCORE

    stored = {score for spec in runs for score in method_class(spec.method).score_names}
    for name in EXIT_RULES.names():
        rule = EXIT_RULES.get(name)
        silent = rule.score not in {MAX_SOFTMAX, OWN_SCORE, *stored}
        if rule.generic and not rule.computes_score() and silent:
            log.warning(
                "%s: exit rule %r thresholds score %r, which no run of this study stores: it "
                "draws nothing; compute it in the rule (compute_score) or add a method that "
                "stores it",
                source_file(rule),
                name,
                rule.score,
            )


def _check_latency(study: dict[str, Any], origin: str) -> None:
    """Every run the latency section names exists in the study; its rule is registered."""
    from eebench.methods import EXIT_RULES
    from eebench.pipelines.services.registry import UnknownNameError

    section = study["latency"]
    known = sorted({spec.method_dir for spec in expand_runs(study)})
    unknown = [name for name in section["runs"] if name not in known]
    if unknown:
        raise ConfigError(
            f"{origin}: latency/runs: {unknown} are not runs of this study; use some of {known}"
        )
    try:
        EXIT_RULES.get(section["rule"])
    except UnknownNameError as error:
        raise ConfigError(f"{origin}: latency/rule: {error}") from None


@dataclass(frozen=True, order=True)
class RunSpec:
    """The identity of one run: where it lives and what produced it."""

    dataset: str
    backbone: str
    method: str
    variant: str
    seed: int

    @property
    def method_dir(self) -> str:
        return f"{self.method}-{self.variant}" if self.variant else self.method

    @property
    def path(self) -> str:
        """Run directory relative to results/<study>/ (docs/protocol.md)."""
        return f"runs/{self.dataset}/{self.backbone}/{self.method_dir}/seed{self.seed}"

    @classmethod
    def from_path(cls, path: str) -> RunSpec:
        """The run of a run path; anything else is refused, showing the expected form."""
        parts = Path(path).parts
        index = parts.index("runs") if "runs" in parts else len(parts)
        tail = parts[index + 1 : index + 5]
        if len(tail) != 4 or not re.fullmatch(r"seed\d+", tail[3]):
            raise ConfigError(
                f"--run {path} is not a run path: give runs/<dataset>/<backbone>/"
                "<method>[-<variant>]/seed<k> (`eebench check --study ...` lists them)"
            )
        dataset, backbone, method_dir, seed_dir = tail
        method, _, variant = method_dir.partition("-")
        return cls(dataset, backbone, method, variant, int(seed_dir.removeprefix("seed")))


def _entry_applies(entry: dict[str, Any], dataset: str, backbone: str) -> bool:
    return dataset in entry.get("datasets", [dataset]) and backbone in entry.get(
        "backbones", [backbone]
    )


def expand_runs(study: dict[str, Any]) -> list[RunSpec]:
    """The experiment matrix, in a stable order, without duplicates."""
    specs: list[RunSpec] = []
    for dataset, dcfg in study["datasets"].items():
        for backbone in dcfg["backbones"]:
            for entry in study["runs"]:
                if not _entry_applies(entry, dataset, backbone):
                    continue
                for variant in entry.get("variants", [""]):
                    for seed in study["seeds"]:
                        spec = RunSpec(dataset, backbone, entry["method"], variant, seed)
                        if spec not in specs:
                            specs.append(spec)
    return specs


def latency_runs(study: dict[str, Any]) -> list[RunSpec]:
    """The runs whose real early exit the study times (its `latency` section): those of
    the named method[-variant]s, first seed only (one timing per model is what the figure
    shows; the seeds' models cost the same)."""
    named = set(study.get("latency", {}).get("runs", []))
    first = study["seeds"][0]
    return [s for s in expand_runs(study) if s.method_dir in named and s.seed == first]


def _run_entry(study: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    for entry in study["runs"]:
        same = entry["method"] == spec.method and spec.variant in entry.get("variants", [""])
        if same and _entry_applies(entry, spec.dataset, spec.backbone):
            return entry
    raise ConfigError(f"no entry of runs: produces {spec.path}")


def resolve_run(
    study: dict[str, Any], spec: RunSpec, results_root: str | Path = "."
) -> dict[str, Any]:
    """The complete, validated config of one run (saved as its config.yaml)."""
    from eebench.backbones import get_model_config
    from eebench.methods import HyperparameterError, method_class, method_kind
    from eebench.pipelines.data.datasets import get_dataset_info

    where = f"{spec.path}"
    try:
        info = get_dataset_info(spec.dataset)
        get_model_config(spec.backbone)
        kind = method_kind(spec.method)
        cls = method_class(spec.method)
        variant = cls.variant(spec.variant)
        entry = _run_entry(study, spec)
        overrides = {**variant.get("hparams", {}), **entry.get("hparams", {})}
        hparams = cls.resolve_hparams(info.family, overrides)
        dcfg = study["datasets"][spec.dataset]
        recipe_name = variant.get("recipe") or entry.get("recipe") or dcfg.get("recipe")
        if not recipe_name:
            raise ConfigError(
                f"datasets/{spec.dataset}: no recipe given (known: {RECIPES.names()})"
            )
        recipe = RECIPES.get(recipe_name).with_overrides(
            {**dcfg.get("recipe_overrides", {}), **entry.get("recipe_overrides", {})}
        )
        recipe = recipe.with_overrides({"epochs": cls.train_epochs(hparams, recipe.epochs)})
        if "synthetic" not in dcfg:  # its sizes are the loader's to check
            n_train = info.n_train_total - info.n_val
            _check_train_subset(spec.dataset, dcfg.get("train_subset"), n_train)
            if kind == "train":
                _check_batch_size(
                    spec.dataset, recipe.batch_size, dcfg.get("train_subset"), n_train
                )
    except (KeyError, ValueError, HyperparameterError) as error:
        raise ConfigError(f"{where}: {error}") from None
    root = Path(results_root)
    init_from = cls.init_source(spec.variant)
    source = entry.get("source") if kind == "posthoc" else None
    run = {
        "study": study["study"],
        "dataset": spec.dataset,
        "data_root": study["data_root"],
        "split_seed": study["split_seed"],
        "backbone": spec.backbone,
        "activation": variant.get("activation", "relu"),
        "method": spec.method,
        "variant": spec.variant,
        "seed": spec.seed,
        "recipe": recipe.to_dict(),
        "hparams": hparams,
        "train_subset": dcfg.get("train_subset"),
        "init_from": str(root / _sibling(spec, init_from)) if init_from else None,
        "source": str(root / _sibling(spec, source or "standard")) if kind == "posthoc" else None,
        "device": study["device"],
        "num_workers": study["num_workers"],
        "checkpoint_every_steps": study["checkpoint_every_steps"],
        "selection": study["selection"],
        "validate_each_epoch": study["validate_each_epoch"],
        "features_subset": study["features_subset"],
        **({"synthetic": dcfg["synthetic"]} if "synthetic" in dcfg else {}),
    }
    validate(run, "run", where)
    return run


def _check_train_subset(dataset: str, subset: int | None, n_train: int) -> None:
    if subset is not None and subset > n_train:
        raise ConfigError(
            f"datasets/{dataset}/train_subset: {subset} is larger than the training split "
            f"({n_train} images); use at most {n_train}, or remove it to train on all of them"
        )


def _check_batch_size(dataset: str, batch_size: int, subset: int | None, n_train: int) -> None:
    """A batch larger than the training images trains on nothing (or one odd batch)."""
    n_images = subset or n_train
    if batch_size > n_images:
        raise ConfigError(
            f"datasets/{dataset}: batch_size {batch_size} is larger than the {n_images} "
            "training images (train_subset): lower batch_size in recipe_overrides, or train "
            "on more images"
        )


def check_upstream(study: dict[str, Any]) -> None:
    """Stop when a post-hoc or `init_from` run needs a run that the study does not have."""
    runs = expand_runs(study)
    for spec in runs:
        outside = [up.path for up in upstream_runs(study, spec) if up not in runs]
        if outside:
            raise ConfigError(f"{spec.path} needs {', '.join(outside)}: add it to the study's runs")


def _sibling(spec: RunSpec, method_and_variant: str) -> str:
    """The run directory of another method on the same dataset, backbone and seed."""
    method, _, variant = method_and_variant.partition("-")
    return RunSpec(spec.dataset, spec.backbone, method, variant, spec.seed).path


def upstream_runs(study: dict[str, Any], spec: RunSpec) -> list[RunSpec]:
    """Runs whose trained model this run needs (init_from or post-hoc source)."""
    run = resolve_run(study, spec)
    needed = [run[key] for key in ("init_from", "source") if run.get(key)]
    return [RunSpec.from_path(path) for path in needed]


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a resolved run config (a run directory's config.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    data = read_config_yaml(path)
    validate(data, "run", str(path))
    return data


def read_config_yaml(path: Path) -> Any:
    """A config file's content; a YAML syntax error is one line with its place."""
    try:
        with path.open() as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML at {where}: {problem}") from None
