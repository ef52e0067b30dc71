"""Study tables: every run's curves gathered into tidy CSVs, Table 1 and the paper comparison.

`build_tables` reads the per-run `anytime.csv`, `budgeted.csv` and `config.yaml` of
every run that `expand_runs` lists and writes, under `<study dir>/tables/`:

- `anytime.csv`, `budgeted.csv`, `table1.csv`: tidy, one row per seed, with exactly
  the columns of docs/protocol.md;
- `anytime_summary.csv`, `budgeted_summary.csv`, `table1_summary.csv`: mean, std, number
  of seeds and 95% interval of top-1 per point (`pipelines/analysis/stats.py`: t over seeds, or
  binomial over the test images with one seed; std is empty with one seed);
- `runs.csv`: one row per run with what the captions and figures need (its hyperparameters
  as JSON, epochs, train subset, number of exits, cost of the last exit, test images);
- `paper_comparison.csv`: each row of the paper's reported numbers beside ours;
- `claims.csv`: each claim of the paper tested on this study (`pipelines/analysis/claims.py`);
- `calibration.csv`: per run and exit, test top-1, NLL and ECE of the run's predictive
  (`pipelines/evaluation/reliability.py`), with the `source` run a post-hoc run calibrated, so that
  before (the source's rows) and after (the post-hoc run's) pair up; then per run and
  operating point of its main exit rule, the Calibrated-DNN paper's metric: NLL and 10-bin
  ECE over each test sample's prediction at the exit it leaves by (`budget_nll`,
  `budget_ece10`);
  `calibration_bins.csv`: the reliability bins behind each ECE (the reliability figure's).

"Top-1 at a budget B" is read from a run's budgeted curve by linear interpolation in
cost between the two neighbouring points, NaN outside the curve's cost range
(`protocol.accuracy_at_budget`): the max-softmax curve for Table 1 (the paper's
protocol), the curve of the method's main exit rule for the paper comparison.
Which runs form Table 1 is declared by the methods (`TableRows`), never named here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.backbones import get_model_config
from eebench.methods import method_class
from eebench.methods.base import MAX_SOFTMAX, TableRows
from eebench.pipelines.analysis.stats import point_interval
from eebench.pipelines.data.datasets import get_dataset_info
from eebench.pipelines.evaluation.outputs import (
    OUTPUTS_FILE,
    RULES_FILE,
    RunOutputs,
    read_decisions,
    read_outputs,
)
from eebench.pipelines.evaluation.protocol import accuracy_at_budget, assign_exits
from eebench.pipelines.evaluation.reliability import (
    BIN_COLUMNS,
    ece,
    log_softmax,
    nll,
    nll_of_log_probs,
    reliability_bins,
    reliability_bins_of_log_probs,
)
from eebench.pipelines.services.io import write_csv
from eebench.pipelines.workflow.config import (
    ConfigError,
    RunSpec,
    expand_runs,
    load_run_config,
    resolve_run,
)
from eebench.pipelines.workflow.fingerprint import differences, fingerprint, hashed_config
from eebench.reference import paper_reported_csv

log = logging.getLogger(__name__)

#: The identity columns of a run: the fields of RunSpec (dataset, backbone, method, variant, seed).
RUN_KEYS = [field.name for field in dataclasses.fields(RunSpec)]
#: The tidy columns of docs/protocol.md, in order.
COLUMNS: dict[str, list[str]] = {
    "anytime": [*RUN_KEYS, "exit", "mflops", "top1"],
    "budgeted": [*RUN_KEYS[:4], "policy", "seed", "p", "q", "mflops", "top1", "exit_fractions"],
    "table1": ["dataset", "backbone", "features", "seed", "budget_mflops", "top1"],
}
RUN_INDEX_COLUMNS = [
    *[*RUN_KEYS, "hparams", "epochs", "train_subset", "exits", "last_mflops"],
    "n_test",  # test images of the run's dataset (the binomial interval of one seed)
]
#: The interval columns of every summary of top-1 (`stats.point_interval`).
INTERVAL_COLUMNS = ["top1_ci_low", "top1_ci_high", "ci_method"]
#: Columns of the calibration tables: `source` is the method[-variant] directory of the run a
#: post-hoc run calibrated ('' for a trained run); top1 and ece in %, nll in nats. Per-exit
#: rows fill `exit`, `nll`, `ece` (15 bins, all test samples at that exit); per-budget rows
#: fill `policy`, `p`, `budget_nll`, `budget_ece10` (the Calibrated-DNN paper's metric: 10
#: bins, each test sample's prediction at the exit where the run's main rule sends it).
CALIBRATION_COLUMNS = [
    *[*RUN_KEYS, "source", "exit", "mflops", "top1", "nll", "ece"],
    *["policy", "p", "budget_nll", "budget_ece10"],
]
#: Bins of the per-budget ECE, as in the Calibrated-DNN code (adaptive_inference.py).
BUDGET_ECE_BINS = 10
CALIBRATION_BIN_COLUMNS = [*RUN_KEYS, "source", "exit", *BIN_COLUMNS]
COMPARISON_COLUMNS = [
    *["dataset", "figure", "method", "backbone", "mode", "quantity", "budget_mflops"],
    *["paper_top1", "source", "ours_backbone", "ours_mflops", "ours_top1", "ours_top1_std"],
    *["ours_seeds", "ours_ci_low", "ours_ci_high", "difference", "note"],
]
#: Every file `build_tables` writes under tables/ (the Snakefile declares them as outputs).
TABLE_FILES: tuple[str, ...] = (
    "anytime.csv",
    "budgeted.csv",
    "table1.csv",
    "paper_comparison.csv",
    "runs.csv",
    "anytime_summary.csv",
    "budgeted_summary.csv",
    "table1_summary.csv",
    "calibration.csv",
    "calibration_bins.csv",
    "claims.csv",
    "latency.csv",
)

#: Datasets the paper reports on; any other dataset is a stand-in.
PAPER_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet")
#: Exit rule of Table 1 (the paper's protocol).
REFERENCE_POLICY = MAX_SOFTMAX
#: Table 1 budgets, as fractions of the last exit's cost, when a dataset gives none (the
#: protocol's costliest point, q = 1.95, averages about 0.81 of it with 4 exits).
DEFAULT_BUDGET_FRACTIONS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8)
TABLE1 = "table1"


def paper_reported() -> pd.DataFrame:
    """The paper's reported numbers (`eebench.reference`; Addad et al. 2024, §4)."""
    return pd.read_csv(StringIO(paper_reported_csv()))


def backbone_family(backbone: str) -> str:
    """The architecture family a backbone config declares: the paper names backbones by it."""
    return get_model_config(backbone).family


def stand_in(study: dict[str, Any], paper_dataset: str) -> str | None:
    """The paper's dataset if the study has it, else the study dataset standing in for it."""
    if paper_dataset in study["datasets"]:
        return paper_dataset
    for dataset, config in study["datasets"].items():
        if paper_dataset in config.get("stands_in_for", []):
            return dataset
    return None


def hparam_label(value: Any, order: Sequence[str] = ()) -> str:
    """A hyperparameter value as a row label: a list '+'-joined, in `order`'s spelling when
    one of its labels has the same elements."""
    if not isinstance(value, list | tuple):
        return str(value)
    for label in order:
        if set(label.split("+")) == set(value):
            return label
    return "+".join(map(str, value))


def table_rows_of(spec: RunSpec, table: str) -> TableRows | None:
    """The method's declaration of `table` if this run is one of its rows, else None: the
    default variant or a variant that changes only the row hyperparameter, on a backbone of
    one of the declared families."""
    cls = method_class(spec.method)
    for rows in cls.table_rows:
        same_hparam = spec.variant == "" or cls.swept_hparam(spec.variant) == rows.hparam
        family = backbone_family(spec.backbone) in rows.families
        if rows.table == table and same_hparam and family:
            return rows
    return None


def row_label(spec: RunSpec, hparams: dict[str, Any], table: str = TABLE1) -> str:
    """The run's row label in `table` ('' when it is not one of its rows)."""
    rows = table_rows_of(spec, table)
    return hparam_label(hparams[rows.hparam], rows.order) if rows else ""


def run_hparams(run: pd.Series) -> dict[str, Any]:
    """The resolved hyperparameters of a row of the run index."""
    return json.loads(run["hparams"])


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class StudyResults:
    """Every run's curves of a study, concatenated, and one row per run (`runs`)."""

    anytime: pd.DataFrame
    budgeted: pd.DataFrame
    runs: pd.DataFrame


#: Text columns whose empty cells mean '' (e.g. the default variant), not a missing value.
TEXT_COLUMNS = (
    *["dataset", "backbone", "variant", "features", "policy", "exit_fractions", "note"],
    *["hparams", "source", "compare", "against", "points", "ci_method", "at", "verdict"],
    *["paper_side", "magnitude_verdict", "control"],
)


def read_table(path: str | Path) -> pd.DataFrame:
    """Any CSV of this module, with empty text cells read back as ''."""
    frame = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    present = [column for column in TEXT_COLUMNS if column in frame]
    frame[present] = frame[present].fillna("")
    return frame


def read_tidy(path: str | Path, kind: str) -> pd.DataFrame:
    """A tidy CSV that must have exactly the protocol columns of `kind`."""
    frame = read_table(path)
    if list(frame.columns) != COLUMNS[kind]:
        raise ValueError(f"{path}: columns {list(frame.columns)} != protocol's {COLUMNS[kind]}")
    return frame


def _run_files(results_root: Path, spec: RunSpec) -> dict[str, Path]:
    run_dir = results_root / spec.path
    return {
        "anytime": run_dir / "anytime.csv",
        "budgeted": run_dir / "budgeted.csv",
        "config": run_dir / "config.yaml",
    }


def n_test_images(study: dict[str, Any], dataset: str) -> int:
    """Test images of a study dataset: its synthetic size, else the registered test set."""
    synthetic = study["datasets"][dataset].get("synthetic", {})
    return int(synthetic.get("n_test", get_dataset_info(dataset).n_test))


def n_test_by_dataset(runs: pd.DataFrame) -> dict[str, int]:
    """Test images per dataset, from the run index."""
    return dict(zip(runs["dataset"], runs["n_test"].astype(int), strict=True))


def _run_index_row(
    study: dict[str, Any], spec: RunSpec, config: dict[str, Any], anytime: pd.DataFrame
) -> dict[str, Any]:
    return {
        **{key: getattr(spec, key) for key in RUN_KEYS},
        "hparams": json.dumps(config["hparams"], sort_keys=True),
        "epochs": config["recipe"]["epochs"],
        "train_subset": config.get("train_subset"),
        "exits": int(anytime["exit"].max()),
        "last_mflops": float(anytime["mflops"].max()),
        "n_test": n_test_images(study, spec.dataset),
    }


def load_results(
    study: dict[str, Any], results_root: str | Path, allow_missing: bool = False
) -> StudyResults:
    """Read every run of the study; missing runs are an error unless `allow_missing`."""
    root = Path(results_root)
    anytime, budgeted, index, missing, stale = [], [], [], [], []
    for spec in expand_runs(study):
        files = _run_files(root, spec)
        absent = [str(path) for path in files.values() if not path.is_file()]
        if absent:
            missing += absent
            continue
        config = load_run_config(files["config"])
        stale += _stale(spec, config, resolve_run(study, spec, results_root=root))
        run_anytime = read_tidy(files["anytime"], "anytime")
        anytime.append(run_anytime)
        budgeted.append(read_tidy(files["budgeted"], "budgeted"))
        index.append(_run_index_row(study, spec, config, run_anytime))
    if stale:
        raise ConfigError(
            f"{len(stale)} runs were made under another config than the study's now, e.g. "
            f"{stale[0]}: rerun the workflow (it reruns exactly those runs), or put the old "
            "values back"
        )
    if missing:
        message = f"{len(missing)} run files missing, e.g. {', '.join(missing[:3])}"
        if not allow_missing:
            raise FileNotFoundError(message + " (run the workflow first)")
        log.warning("%s; tables use the runs that are there", message)
    return StudyResults(
        anytime=_concat(anytime, COLUMNS["anytime"]),
        budgeted=_concat(budgeted, COLUMNS["budgeted"]),
        runs=pd.DataFrame(index, columns=RUN_INDEX_COLUMNS),
    )


def _stale(spec: RunSpec, made: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """['<run path> (key: old -> new; ...)'] when a run's saved config is not the study's."""
    if fingerprint(made) == fingerprint(now):
        return []
    return [f"{spec.path} ({'; '.join(differences(hashed_config(made), hashed_config(now)))})"]


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# --------------------------------------------------------------------------- tables


def summarise(
    frame: pd.DataFrame, keys: list[str], values: list[str], n_test: dict[str, int]
) -> pd.DataFrame:
    """Mean and std over seeds of each value column per key, `n_seeds` (non-NaN top1) and
    the 95% interval of top-1 (`n_test`: test images per dataset, for one seed)."""
    grouped = frame.groupby(keys, sort=False, dropna=False)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{value}_{stat}" for value, stat in summary.columns]
    summary["n_seeds"] = grouped["top1"].count()
    summary = summary.reset_index()
    low, high, method = point_interval(
        summary["top1_mean"],
        summary["top1_std"],
        summary["n_seeds"],
        summary["dataset"].map(n_test),
    )
    return summary.assign(**dict(zip(INTERVAL_COLUMNS, (low, high, method), strict=True)))


def table1_budgets(dataset_config: dict[str, Any], last_mflops: float) -> np.ndarray:
    """The dataset's `budgets_mflops`, else `budget_fractions` × the last exit's cost."""
    if dataset_config.get("budgets_mflops"):
        return np.asarray(dataset_config["budgets_mflops"], dtype=np.float64)
    fractions = dataset_config.get("budget_fractions") or DEFAULT_BUDGET_FRACTIONS
    return np.round(np.asarray(fractions, dtype=np.float64) * last_mflops, 6)


def run_spec(run: pd.Series) -> RunSpec:
    """The RunSpec of a row of the run index."""
    return RunSpec(*(run[key] for key in RUN_KEYS))


def _rows_of(frame: pd.DataFrame, run: pd.Series) -> pd.DataFrame:
    """The rows of one run in a tidy table."""
    mask = np.ones(len(frame), dtype=bool)
    for key in RUN_KEYS:
        mask &= frame[key] == run[key]
    return frame[mask]


def main_rule(run: pd.Series) -> str:
    """The exit rule of a run's main curve, as its method declares it."""
    return method_class(run["method"]).display_of(run["variant"]).main_rule


def _curve(budgeted: pd.DataFrame, run: pd.Series, rule: str = REFERENCE_POLICY) -> pd.DataFrame:
    """One run's budgeted curve under an exit rule (default: max softmax)."""
    rows = _rows_of(budgeted, run)
    return rows[rows["policy"] == rule]


def top1_at_budgets(
    study: dict[str, Any], budgeted: pd.DataFrame, run: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The Table 1 budgets of a run (a row of the run index) and its top-1 at each, read from
    its budgeted curve in `budgeted` (tidy rows of any runs) by `accuracy_at_budget`."""
    budgets = table1_budgets(study["datasets"][run["dataset"]], run["last_mflops"])
    curve = _curve(budgeted, run)
    top1 = accuracy_at_budget(curve["mflops"].to_numpy(), curve["top1"].to_numpy(), budgets)
    return budgets, top1


def build_table1(study: dict[str, Any], results: StudyResults) -> pd.DataFrame:
    """Top-1 at the dataset's budgets of every Table 1 run, one row per seed and budget."""
    rows = []
    seen: set[tuple[str, str, str, int]] = set()
    for _, run in results.runs.iterrows():
        spec = run_spec(run)
        label = row_label(spec, run_hparams(run))
        key = (run["dataset"], run["backbone"], label, run["seed"])
        if not label:
            continue
        if key in seen:
            log.warning("table 1: %s repeats row %s; kept the first", spec.path, label)
            continue
        seen.add(key)
        budgets, top1 = top1_at_budgets(study, results.budgeted, run)
        rows += [(*key, b, t) for b, t in zip(budgets, top1, strict=True)]
    return pd.DataFrame(rows, columns=COLUMNS["table1"])


# --------------------------------------------------------------------------- paper comparison


def paper_method(name: str) -> tuple[str, str | None]:
    """'method[row label]' -> ('method', 'row label'); a Table 1 row names its label."""
    method, _, label = name.partition("[")
    return method, label.rstrip("]") or None


def _matching_runs(runs: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """Our runs for a paper row: same dataset, method, backbone family, and variant (the
    default one, or the Table 1 row of the same label)."""
    method, label = paper_method(row["method"])
    mask = (runs["dataset"] == row["dataset"]) & (runs["method"] == method)
    mask &= runs["backbone"].map(backbone_family) == row["backbone"]
    if label is None:
        return runs[mask & (runs["variant"] == "")]
    labels = runs[mask].apply(lambda run: row_label(run_spec(run), run_hparams(run)), axis=1)
    return runs[mask].loc[labels == label] if len(labels) else runs[mask]


def _ours_at(row: pd.Series, run: pd.Series, results: StudyResults) -> tuple[float, float, str]:
    """(our cost, our top-1, how it was read) for one paper row and one of our runs."""
    budget = float(row["budget_mflops"])
    if row["mode"] == "anytime":
        exits = _rows_of(results.anytime, run)
        if row["quantity"] == "top1_last_exit":
            point, how = exits.loc[exits["exit"].idxmax()], "last exit"
        else:
            point, how = exits.loc[(exits["mflops"] - budget).abs().idxmin()], "nearest exit"
        return point["mflops"], point["top1"], f"{how} (exit {int(point['exit'])}, anytime)"
    rule = main_rule(run)
    curve = _curve(results.budgeted, run, rule)
    if row["quantity"] == "budget_at_peak_top1":
        peak = curve.loc[curve["top1"].idxmax()]
        return peak["mflops"], peak["top1"], "our peak top-1 and its cost (paper: cost only)"
    top1 = accuracy_at_budget(curve["mflops"].to_numpy(), curve["top1"].to_numpy(), [budget])[0]
    how = "budget outside our curve's cost range" if np.isnan(top1) else "interpolated"
    return budget, top1, f"{how} (budgeted, {rule})"


def _comparison_rows(row: pd.Series, results: StudyResults) -> list[dict[str, Any]]:
    paper = {**row.drop("top1").to_dict(), "paper_top1": row["top1"]}
    if row["dataset"] not in set(results.runs["dataset"]):
        return [{**paper, "note": "no matching dataset in this study"}]
    runs = _matching_runs(results.runs, row)
    if runs.empty:
        return [{**paper, "note": f"no {row['method']} run on {row['backbone']} in this study"}]
    rows = []
    for backbone, group in runs.groupby("backbone", sort=False):
        read = [_ours_at(row, run, results) for _, run in group.iterrows()]
        cost, top1 = (np.array([r[i] for r in read], dtype=np.float64) for i in (0, 1))
        ours = top1.mean() if np.isfinite(top1).all() else np.nan
        std = top1.std(ddof=1) if len(top1) > 1 else np.nan
        low, high, _ = point_interval(ours, std, len(top1), group["n_test"].iloc[0])
        rows.append(
            {
                **paper,
                "ours_backbone": backbone,
                "ours_mflops": cost.mean(),
                "ours_top1": ours,
                "ours_top1_std": std,
                "ours_seeds": len(top1),
                "ours_ci_low": float(low),
                "ours_ci_high": float(high),
                "difference": ours - row["top1"],
                "note": read[0][2],
            }
        )
    return rows


def build_paper_comparison(results: StudyResults) -> pd.DataFrame:
    """Each paper-reported number beside ours (mean over seeds), or a note why there is none."""
    rows = [r for _, row in paper_reported().iterrows() for r in _comparison_rows(row, results)]
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# --------------------------------------------------------------------------- calibration


def source_of(config: dict[str, Any]) -> str:
    """The method[-variant] directory of the run a post-hoc run calibrated, '' for others."""
    source = config.get("source")
    return RunSpec.from_path(source).method_dir if source else ""


def budget_calibration_rows(outputs: RunOutputs, decisions: list[Any]) -> list[dict[str, Any]]:
    """Per decision: each test sample's prediction at the exit the decision sends it to, and
    over those, top-1, NLL and the 10-bin ECE (%); mflops = the expected test cost."""
    labels, rows = outputs.test.labels, []
    samples = np.arange(len(labels))
    log_p = log_softmax(outputs.test.logits)  # row by row, so gathering rows later is exact
    scores: dict[str, np.ndarray] = {}  # each score computed once, not once per budget
    for decision in decisions:
        if decision.score not in scores:
            scores[decision.score] = outputs.test.score(decision.score)
        exits = assign_exits(scores[decision.score], np.array([decision.thresholds]))[0]
        chosen = log_p[exits, samples]
        bins = reliability_bins_of_log_probs(chosen, labels, BUDGET_ECE_BINS)
        rows.append(
            {
                "mflops": float(outputs.costs(decision.score)[exits].mean()),
                "top1": 100.0
                * float((outputs.test.logits[exits, samples].argmax(-1) == labels).mean()),
                "policy": decision.rule,
                "p": decision.point,
                "budget_nll": nll_of_log_probs(chosen, labels),
                "budget_ece10": 100.0 * ece(bins),
            }
        )
    return rows


def exit_calibration(calibration: pd.DataFrame) -> pd.DataFrame:
    """The per-exit rows of calibration.csv (its per-budget rows have no exit)."""
    return calibration[calibration["exit"].notna()]


def _run_calibration(
    run_dir: Path, ident: dict[str, Any], rule: str
) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """One run's calibration rows and reliability bins, exit by exit, from its test logits,
    then its per-budget rows under its main exit rule `rule`."""
    outputs = read_outputs(run_dir)
    rows, bins = [], []
    for k, logits in enumerate(outputs.test.logits):
        table = reliability_bins(logits, outputs.test.labels)
        correct = logits.argmax(axis=-1) == outputs.test.labels
        rows.append(
            {
                **ident,
                "exit": k + 1,
                "mflops": float(outputs.flops[k]),
                "top1": 100.0 * float(correct.mean()),
                "nll": nll(logits, outputs.test.labels),
                "ece": 100.0 * ece(table),
            }
        )
        bins.append(table.assign(**ident, exit=k + 1))
    fitted = read_decisions(run_dir) if (run_dir / RULES_FILE).is_file() else []
    decisions = [d for d in fitted if d.rule == rule]
    rows += [{**ident, **row} for row in budget_calibration_rows(outputs, decisions)]
    return rows, bins


def build_calibration(
    results: StudyResults, results_root: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration rows and bins of every loaded run that has an outputs.npz (test split);
    a run without one is left out with a warning (its curves may come from elsewhere)."""
    root = Path(results_root)
    rows: list[dict[str, Any]] = []
    bins: list[pd.DataFrame] = []
    missing = []
    for _, run in results.runs.iterrows():
        spec = run_spec(run)
        run_dir = root / spec.path
        if not (run_dir / OUTPUTS_FILE).is_file():
            missing.append(spec.path)
            continue
        source = source_of(load_run_config(run_dir / "config.yaml"))
        ident = {**{key: getattr(spec, key) for key in RUN_KEYS}, "source": source}
        run_rows, run_bins = _run_calibration(run_dir, ident, main_rule(run))
        rows += run_rows
        bins += run_bins
    if missing:
        log.warning(
            "calibration tables: %d runs have no %s (e.g. %s); left out",
            len(missing),
            OUTPUTS_FILE,
            missing[0],
        )
    return (
        pd.DataFrame(rows, columns=CALIBRATION_COLUMNS),
        _concat(bins, CALIBRATION_BIN_COLUMNS)[CALIBRATION_BIN_COLUMNS],
    )


# --------------------------------------------------------------------------- entry point


def build_tables(
    study: dict[str, Any], results_root: str | Path, allow_missing: bool = False
) -> list[Path]:
    """Write every table of TABLE_FILES under `results_root`/tables and return their paths.

    `results_root` is the study's folder `results/<study>/` that holds `runs/`.
    """
    from eebench.pipelines.analysis.claims import build_claims  # it builds on this module's helpers
    from eebench.pipelines.evaluation.infer import collect_latency

    results = load_results(study, results_root, allow_missing)
    table1 = build_table1(study, results)
    calibration, calibration_bins = build_calibration(results, results_root)
    run_keys = RUN_KEYS[:4]
    n_test = n_test_by_dataset(results.runs)
    frames = {
        "anytime.csv": results.anytime,
        "budgeted.csv": results.budgeted,
        "table1.csv": table1,
        "paper_comparison.csv": build_paper_comparison(results),
        "runs.csv": results.runs,
        "anytime_summary.csv": summarise(
            results.anytime, [*run_keys, "exit"], ["mflops", "top1"], n_test
        ),
        "budgeted_summary.csv": summarise(
            results.budgeted, [*run_keys, "policy", "p", "q"], ["mflops", "top1"], n_test
        ),
        "table1_summary.csv": summarise(
            table1, ["dataset", "backbone", "features", "budget_mflops"], ["top1"], n_test
        ),
        "calibration.csv": calibration,
        "calibration_bins.csv": calibration_bins,
        "claims.csv": build_claims(study, results, results_root),
        "latency.csv": collect_latency(study, Path(results_root)),
    }
    out = Path(results_root) / "tables"
    paths = []
    for name in TABLE_FILES:
        write_csv(out / name, frames[name])
        paths.append(out / name)
    return paths
