"""Figures of a study (the paper's §4: Figures 2–5 and Table 1), drawn from its tables/.

`build_figures` reads the tables that `tables.build_tables` wrote and draws, under
`<study dir>/figures/`, each figure as PNG and PDF beside a CSV of exactly the points
drawn, and Table 1 also as Markdown and LaTeX:

- fig2_anytime: per-exit top-1 vs cost of every train-time method, a panel per dataset;
- fig3_budgeted: budgeted-batch curves per dataset (with the frozen variant; dashed:
  exits on the method's own score instead of the max softmax);
- fig4_posthoc: standard, post-hoc methods and joint_bilevel, a panel per backbone
  family, on CIFAR-100 or the dataset standing in for it;
- fig5_imagenet: anytime and budgeted on ImageNet or the dataset standing in for it;
- table1: top-1 at the Table 1 budgets per gater feature subset;
- fig_sensitivity (beyond the paper): top-1 at the Table 1 budgets vs λ and vs T of
  joint_bilevel, on each dataset/backbone with a λ/T sweep.

Each method keeps one colour and marker everywhere (`STYLES`, with a fallback for
methods added later); backbones are told apart by marker fill. Several seeds give
the mean with a ±std band. The paper's reported points are overlaid (black stars)
where the dataset matches. A method or dataset absent from the study leaves a panel
with a note, never an error.
"""

from __future__ import annotations

import itertools
import textwrap
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eebench.methods import CALIBRATORS
from eebench.methods.joint_bilevel import FEATURES, JointBilevel
from eebench.pipelines.datasets import get_dataset_info
from eebench.pipelines.io import write_bytes, write_csv, write_text
from eebench.pipelines.registry import UnknownNameError
from eebench.pipelines.tables import (
    PAPER_DATASETS,
    REFERENCE_POLICY,
    SWEEP_HPARAMS,
    backbone_family,
    paper_reported,
    read_table,
    run_spec,
    summarise,
    swept_hparam,
    top1_at_budgets,
)

FIGURE_NAMES: tuple[str, ...] = (
    "fig2_anytime",
    "fig3_budgeted",
    "fig4_posthoc",
    "fig5_imagenet",
    "table1",
    "fig_sensitivity",
)
#: Every file `build_figures` writes under figures/ (the Snakefile declares them as outputs).
FIGURE_FILES: tuple[str, ...] = (
    *(f"{name}.{ext}" for name in FIGURE_NAMES for ext in ("png", "pdf", "csv")),
    "table1.md",
    "table1.tex",
)
DPI = 200
PANEL_SIZE = (4.6, 3.6)  # inches per panel: readable at paper size once scaled to a column
MIN_WIDTH = 6.4  # inches: room for a two-column legend under a single panel
LEGEND_COLUMN = 3.2  # inches per legend column
TITLE_CHARS = 40  # a panel title wraps beyond this, so that neighbouring titles never meet
SCORE_POLICY = "score"
CURVE_KEYS = ["backbone", "method", "variant"]


@dataclass(frozen=True)
class Style:
    label: str
    color: str
    marker: str


#: One colour and marker per method (or method-variant), the same in every figure.
STYLES: dict[str, Style] = {
    "standard": Style("standard", "#1f77b4", "o"),
    "joint_bilevel": Style("Ours (joint_bilevel)", "#d62728", "D"),
    "joint_bilevel-frozen": Style("frozen + Ours", "#9467bd", "v"),
    "joint_bilevel-released_code": Style("Ours (released code)", "#e377c2", "d"),
    "l2w": Style("L2W", "#2ca02c", "^"),
    "calibrated_dnn": Style("Calibrated-DNN", "#ff7f0e", "s"),
    "eenet": Style("EENet", "#8c564b", "p"),
    "boostnet": Style("BoostNet", "#bcbd22", "h"),
    "jei_dnn": Style("JEI-DNN", "#17becf", "X"),
}
PAPER_STYLE = Style("paper (reported)", "#000000", "*")
_FALLBACK_COLORS = ("#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
_FALLBACK_MARKERS = ("P", "<", ">", "8", "H", "1")
#: Marker fill of the study's 1st, 2nd, … backbone (same in every figure).
_FILLS = ("full", "none", "left", "bottom")

DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenet": "ImageNet",
    "fashion_mnist": "Fashion-MNIST",
}
FAMILY_NAMES = {"msdnet": "MSDNet", "ranet": "RANet"}
_DATASET_TOKENS = {"cifar", "imagenet", "fmnist"}


def style_of(method: str, variant: str = "") -> Style:
    """The fixed style of a method (variant); unknown ones get a stable colour from their name."""
    key = f"{method}-{variant}" if variant else method
    if key in STYLES:
        return STYLES[key]
    pick = zlib.crc32(key.encode())
    base = STYLES.get(method)
    label = f"{base.label} [{variant}]" if base else key
    return Style(label, _FALLBACK_COLORS[pick % 6], _FALLBACK_MARKERS[(pick // 6) % 6])


def backbone_label(backbone: str) -> str:
    """'msdnet_imagenet_step7' -> 'MSDNet step7', 'ranet_cifar' -> 'RANet'."""
    family, *rest = backbone.split("_")
    extra = [part for part in rest if part not in _DATASET_TOKENS]
    return " ".join([FAMILY_NAMES.get(family, family), *extra])


def dataset_label(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def is_posthoc(method: str) -> bool:
    return method in CALIBRATORS


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StudyTables:
    """What the figures read: the summaries (mean/std per point), the budgeted curves per
    seed, the run index, the paper."""

    study: dict[str, Any]
    anytime: pd.DataFrame
    budgeted: pd.DataFrame
    budgeted_by_seed: pd.DataFrame
    table1: pd.DataFrame
    runs: pd.DataFrame
    paper: pd.DataFrame

    @property
    def datasets(self) -> list[str]:
        return list(self.study["datasets"])

    @property
    def backbones(self) -> list[str]:
        """Every backbone of the study, in config order: it fixes each one's marker fill."""
        names = (b for config in self.study["datasets"].values() for b in config["backbones"])
        return list(dict.fromkeys(names))

    def stand_in(self, paper_dataset: str) -> str | None:
        """The paper's dataset if the study has it, else the study dataset standing in for it."""
        if paper_dataset in self.study["datasets"]:
            return paper_dataset
        for dataset, config in self.study["datasets"].items():
            if paper_dataset in config.get("stands_in_for", []):
                return dataset
        return None


def load_tables(study: dict[str, Any], results_root: Path) -> StudyTables:
    tables = results_root / "tables"
    if not (tables / "runs.csv").is_file():
        raise FileNotFoundError(
            f"{tables}/runs.csv missing: build the tables first (eebench tables)"
        )
    return StudyTables(
        study=study,
        anytime=read_table(tables / "anytime_summary.csv"),
        budgeted=read_table(tables / "budgeted_summary.csv"),
        budgeted_by_seed=read_table(tables / "budgeted.csv"),
        table1=read_table(tables / "table1_summary.csv"),
        runs=read_table(tables / "runs.csv"),
        paper=paper_reported(),
    )


# --------------------------------------------------------------------------- captions


def _n_train(dataset: str, subsets: pd.Series) -> str:
    values = sorted({int(n) for n in subsets.dropna()})
    if subsets.isna().any():
        try:
            info = get_dataset_info(dataset)
            values.append(info.n_train_total - info.n_val)
        except UnknownNameError:
            return "full training set"
    return f"{' / '.join(f'{n:,}' for n in sorted(set(values)))} training images"


def _dataset_summary(dataset: str, runs: pd.DataFrame) -> str:
    if runs.empty:
        return f"{dataset_label(dataset)} (no runs yet)"
    epochs = sorted(runs["epochs"].unique())
    unit = "epoch" if epochs == [1] else "epochs"
    listed = ", ".join(map(str, epochs))
    return f"{dataset_label(dataset)}, {_n_train(dataset, runs['train_subset'])}, {listed} {unit}"


def caption(tables: StudyTables, datasets: Iterable[str | None]) -> str:
    """Study, datasets (training images, epochs), seeds, and whether it is the paper's setting."""
    shown = [d for d in datasets if d]
    runs = tables.runs[tables.runs["dataset"].isin(shown)]
    parts = [_dataset_summary(d, runs[runs["dataset"] == d]) for d in shown]
    seeds = tables.study["seeds"]
    seed_text = (
        f"seed {seeds[0]}"
        if len(seeds) == 1
        else f"seeds {', '.join(map(str, seeds))} (mean ± std)"
    )
    reduced = any(d not in PAPER_DATASETS for d in shown) or runs["train_subset"].notna().any()
    note = " — reduced study, not the paper's setting" if reduced else ""
    shown_text = "; ".join(parts) or "no matching dataset"
    return f"study {tables.study['study']}: {shown_text}; {seed_text}{note}"


def panel_title(tables: StudyTables, dataset: str, paper_dataset: str | None = None) -> str:
    """'CIFAR-100', or 'Fashion-MNIST (stands in for ImageNet)'."""
    if paper_dataset and dataset != paper_dataset:
        return f"{dataset_label(dataset)} (stands in for {dataset_label(paper_dataset)})"
    stands = tables.study["datasets"][dataset].get("stands_in_for", [])
    if stands:
        return f"{dataset_label(dataset)} (stands in for {', '.join(map(dataset_label, stands))})"
    return dataset_label(dataset)


# --------------------------------------------------------------------------- selections


def _rows(
    frame: pd.DataFrame,
    dataset: str | None,
    methods: Callable[[str], bool],
    variants: Iterable[str] = ("",),
) -> pd.DataFrame:
    """Rows of one dataset for the chosen methods and variants."""
    mask = (frame["dataset"] == dataset) & frame["method"].map(methods).astype(bool)
    return frame[mask & frame["variant"].isin(list(variants))]


def _train_time(method: str) -> bool:
    return not is_posthoc(method)


def _fig4_methods(method: str) -> bool:
    return method in ("standard", "joint_bilevel") or is_posthoc(method)


def _own_exit_rule(frame: pd.DataFrame) -> pd.DataFrame:
    """Post-hoc methods exit on their own score when they have one; others on max softmax."""
    has_score = frame.groupby(CURVE_KEYS)["policy"].transform(lambda p: (p == SCORE_POLICY).any())
    own = np.where(frame["method"].map(is_posthoc) & has_score, SCORE_POLICY, REFERENCE_POLICY)
    return frame[frame["policy"] == own]


def _paper_points(tables: StudyTables, figure: str, dataset: str | None) -> pd.DataFrame:
    paper = tables.paper
    return paper[
        (paper["figure"] == figure) & (paper["dataset"] == dataset) & paper["top1"].notna()
    ]


# --------------------------------------------------------------------------- drawing


def _draw_curve(
    ax: Axes, points: pd.DataFrame, style: Style, x_column: str = "mflops_mean", **line: Any
) -> None:
    """Mean top-1 against `x_column` (mean cost); a ±std band when several seeds gave the points."""
    points = points.sort_values(x_column)
    x = points[x_column]
    ax.plot(x, points["top1_mean"], color=style.color, marker=style.marker, **line)
    if (points["n_seeds"] > 1).any():
        low = points["top1_mean"] - points["top1_std"]
        high = points["top1_mean"] + points["top1_std"]
        ax.fill_between(x, low, high, color=style.color, alpha=0.15, linewidth=0)


def _draw_curves(ax: Axes, frame: pd.DataFrame, backbones: list[str], markevery: int) -> None:
    """One line per backbone × method × variant (× exit policy: dashed = own score)."""
    keys = [*CURVE_KEYS, "policy"] if "policy" in frame else CURVE_KEYS
    for key, points in frame.groupby(keys, sort=False):
        backbone, method, variant = key[:3]
        style = style_of(method, variant)
        own_score = "policy" in frame and key[3] == SCORE_POLICY and not is_posthoc(method)
        label = f"{backbone_label(backbone)} + {style.label}" + (
            " (score exits)" if own_score else ""
        )
        fill = _FILLS[backbones.index(backbone) % len(_FILLS)]
        line = {"linestyle": "--" if own_score else "-", "fillstyle": fill, "label": label}
        _draw_curve(ax, points, style, markevery=markevery, markersize=5, linewidth=1.4, **line)


def _note(ax: Axes, text: str) -> None:
    """A grey note in the middle of an empty panel, without ticks."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_paper(ax: Axes, points: pd.DataFrame) -> None:
    if points.empty:
        return
    ax.scatter(
        points["budget_mflops"],
        points["top1"],
        marker=PAPER_STYLE.marker,
        s=140,
        color=PAPER_STYLE.color,
        edgecolors="white",
        linewidths=0.6,
        zorder=5,
        label=PAPER_STYLE.label,
    )


@dataclass(frozen=True)
class Panel:
    """One panel of curves: its title, the summary rows drawn and the paper points overlaid."""

    title: str
    rows: pd.DataFrame
    paper: pd.DataFrame
    budgeted: bool

    def draw(self, ax: Axes, backbones: list[str]) -> None:
        """The curves, or a note when the study has nothing for this panel."""
        ax.set_title(textwrap.fill(self.title, TITLE_CHARS))
        if self.rows.empty:
            _note(ax, "no runs for this panel\nin this study")
            return
        _draw_curves(ax, self.rows, backbones, markevery=4 if self.budgeted else 1)
        _draw_paper(ax, self.paper)
        ax.set_xlabel("average MFLOPs per image" if self.budgeted else "MFLOPs of the exit")
        ax.set_ylabel("top-1 accuracy (%)")


def _figure(
    panels: int, rows: int = 1, size: tuple[float, float] = PANEL_SIZE
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(max(size[0] * panels, MIN_WIDTH), size[1] * rows))
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(rows, panels, squeeze=False).flat)


def _finish(fig: Figure, axes: list[Axes], text: str) -> None:
    """Legend (every curve once) below the panels, then the caption line below the legend."""
    fig.tight_layout()
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    bottom = 0.0
    if handles:
        legend = fig.legend(
            handles.values(),
            handles.keys(),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(len(handles), int(fig.get_figwidth() // LEGEND_COLUMN)),
            frameon=False,
        )
        box = legend.get_window_extent(fig.canvas.get_renderer())
        bottom = box.transformed(fig.transFigure.inverted()).y0
    width = int(fig.get_figwidth() * 14)
    fig.text(
        0.5,
        bottom - 0.02,
        textwrap.fill(text, width),
        ha="center",
        va="top",
        fontsize="small",
        color="0.25",
    )


def _save(fig: Figure, out: Path, name: str, data: pd.DataFrame) -> list[Path]:
    """PNG and PDF (atomically; PDF without a creation date, so reruns are identical) + data CSV."""
    paths = []
    for ext, extra in (("png", {"dpi": DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = BytesIO()
        fig.savefig(buffer, format=ext, bbox_inches="tight", **extra)
        write_bytes(out / f"{name}.{ext}", buffer.getvalue())
        paths.append(out / f"{name}.{ext}")
    write_csv(out / f"{name}.csv", data)
    return [*paths, out / f"{name}.csv"]


# --------------------------------------------------------------------------- figures


def _curve_figure(
    tables: StudyTables, name: str, panels: list[Panel], datasets: list[str | None], out: Path
) -> list[Path]:
    """A row of curve panels saved as `name`, with the points drawn as `name`.csv."""
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        panel.draw(ax, tables.backbones)
    _finish(fig, axes, caption(tables, datasets))
    drawn = [panel.rows.assign(panel=panel.title) for panel in panels]
    return _save(fig, out, name, pd.concat(drawn, ignore_index=True))


def _anytime_panel(tables: StudyTables, title: str, dataset: str | None, figure: str) -> Panel:
    """Per-exit curves of the train-time methods (default variants)."""
    paper = _paper_points(tables, figure, dataset)
    rows = _rows(tables.anytime, dataset, _train_time)
    return Panel(title, rows, paper[paper["mode"] == "anytime"], budgeted=False)


def _budgeted_panel(tables: StudyTables, title: str, dataset: str | None, figure: str) -> Panel:
    """Train-time methods and their frozen variants, max softmax and (dashed) own score."""
    paper = _paper_points(tables, figure, dataset)
    rows = _rows(tables.budgeted, dataset, _train_time, variants=("", "frozen"))
    rows = rows[rows["policy"].isin([REFERENCE_POLICY, SCORE_POLICY])]
    return Panel(title, rows, paper[paper["mode"] == "budgeted"], budgeted=True)


def fig2_anytime(tables: StudyTables, out: Path) -> list[Path]:
    panels = [_anytime_panel(tables, panel_title(tables, d), d, "fig2") for d in tables.datasets]
    return _curve_figure(tables, "fig2_anytime", panels, tables.datasets, out)


def fig3_budgeted(tables: StudyTables, out: Path) -> list[Path]:
    panels = [_budgeted_panel(tables, panel_title(tables, d), d, "fig3") for d in tables.datasets]
    return _curve_figure(tables, "fig3_budgeted", panels, tables.datasets, out)


def fig4_posthoc(tables: StudyTables, out: Path) -> list[Path]:
    """Standard, post-hoc methods and joint_bilevel; one panel per backbone family."""
    dataset = tables.stand_in("cifar100")
    where = panel_title(tables, dataset, "cifar100") if dataset else "no CIFAR-100 or stand-in"
    rows = _own_exit_rule(_rows(tables.budgeted, dataset, _fig4_methods))
    family = rows["backbone"].map(backbone_family)
    no_paper = tables.paper.iloc[:0]  # the paper's Fig. 4 reports no numbers in its text
    panels = [
        Panel(f"{FAMILY_NAMES[f]} — {where}", rows[family == f], no_paper, budgeted=True)
        for f in ("msdnet", "ranet")
    ]
    return _curve_figure(tables, "fig4_posthoc", panels, [dataset], out)


def fig5_imagenet(tables: StudyTables, out: Path) -> list[Path]:
    dataset = tables.stand_in("imagenet")
    where = panel_title(tables, dataset, "imagenet") if dataset else "no ImageNet or stand-in"
    panels = [
        _anytime_panel(tables, f"{where}: anytime", dataset, "fig5"),
        _budgeted_panel(tables, f"{where}: budgeted", dataset, "fig5"),
    ]
    return _curve_figure(tables, "fig5_imagenet", panels, [dataset], out)


# --------------------------------------------------------------------------- table 1

#: Row order of Table 1: single features, then pairs, then all three (the paper's order).
FEATURE_ROWS: tuple[str, ...] = tuple(
    "+".join(subset) for size in (1, 2, 3) for subset in itertools.combinations(FEATURES, size)
)
INTERPOLATION_NOTE = (
    "Top-1 at a budget: linear interpolation in cost between the two neighbouring points of "
    "the run's budgeted curve (max-softmax exits, thresholds fitted on val)"
)
TABLE1_NOTE = f"{INTERPOLATION_NOTE}; – = budget outside the curve's cost range."


def _cell(mean: float, std: float, n: int, paper: float, pm: str) -> str:
    if np.isnan(mean):
        return "–"
    text = f"{mean:.2f} {pm} {std:.2f}" if n > 1 else f"{mean:.2f}"
    return text if np.isnan(paper) else f"{text} (paper {paper:.2f})"


def _budget_label(budget: float) -> str:
    return f"{budget:.4g} MFLOPs"


def _paper_table1(
    tables: StudyTables, dataset: str, backbone: str
) -> dict[tuple[str, float], float]:
    """Paper Table 1 values of this dataset and backbone family, by (features, budget)."""
    paper = tables.paper
    rows = paper[
        (paper["figure"] == "table1")
        & (paper["dataset"] == dataset)
        & (paper["backbone"] == backbone_family(backbone))
    ]
    return {
        (row.method.removeprefix("joint_bilevel[").rstrip("]"), float(row.budget_mflops)): row.top1
        for row in rows.itertuples()
    }


def table1_grids(tables: StudyTables, pm: str = "±") -> dict[str, pd.DataFrame]:
    """Per dataset/backbone: a grid of cells, feature subsets as rows, budgets as columns."""
    grids = {}
    for (dataset, backbone), group in tables.table1.groupby(["dataset", "backbone"], sort=False):
        paper = _paper_table1(tables, dataset, backbone)
        cells: dict[str, dict[str, str]] = {}
        for point in group.itertuples():
            reported = paper.get((point.features, float(point.budget_mflops)), np.nan)
            cells.setdefault(_budget_label(point.budget_mflops), {})[point.features] = _cell(
                point.top1_mean, point.top1_std, point.n_seeds, reported, pm
            )
        rows = [f for f in FEATURE_ROWS if f in set(group["features"])]
        columns = [_budget_label(b) for b in sorted(group["budget_mflops"].unique())]
        grid = pd.DataFrame(cells).reindex(index=rows, columns=columns).fillna("–")
        grids[f"{dataset_label(dataset)}, {backbone}"] = grid
    return grids


def table1_markdown(tables: StudyTables, text: str) -> str:
    lines = [
        "# Table 1: top-1 (%) in budgeted batch classification by gater features",
        "",
        f"{text}. {TABLE1_NOTE}",
        "",
    ]
    grids = table1_grids(tables)
    if not grids:
        lines.append("No Table 1 runs (joint_bilevel on an MSDNet backbone) in this study.")
    for title, grid in grids.items():
        lines += [
            f"## {title}",
            "",
            "| features | " + " | ".join(grid.columns) + " |",
            "|---|" + "---:|" * len(grid.columns),
        ]
        lines += [f"| {row} | " + " | ".join(grid.loc[row]) + " |" for row in grid.index]
        lines.append("")
    return "\n".join(lines)


def _tex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("–", "--"),
        ("—", "---"),
    ):
        text = text.replace(char, escaped)
    return text


def table1_latex(tables: StudyTables, text: str) -> str:
    """booktabs tables, one per dataset/backbone."""
    grids = table1_grids(tables, pm=r"$\pm$")
    if not grids:
        return "% No Table 1 runs (joint_bilevel on an MSDNet backbone) in this study.\n"
    blocks = []
    for title, grid in grids.items():
        header = " & ".join(["Features", *map(_tex, grid.columns)])
        body = [
            " & ".join([_tex(row), *(c.replace("–", "--") for c in grid.loc[row])]) + r" \\"
            for row in grid.index
        ]
        blocks.append(
            "\n".join(
                [
                    r"\begin{table}[t]",
                    r"\centering",
                    rf"\caption{{Top-1 (\%) on {_tex(title)} by gater features. {_tex(text)}. "
                    rf"{_tex(TABLE1_NOTE)}}}",
                    r"\begin{tabular}{l" + "r" * len(grid.columns) + "}",
                    r"\toprule",
                    header + r" \\",
                    r"\midrule",
                    *body,
                    r"\bottomrule",
                    r"\end{tabular}",
                    r"\end{table}",
                ]
            )
        )
    return "\n\n".join(blocks) + "\n"


def table1_figure(tables: StudyTables, out: Path) -> list[Path]:
    """Table 1 rendered as an image (PNG/PDF), plus its Markdown and LaTeX versions."""
    datasets = list(tables.table1["dataset"].unique())
    text = caption(tables, datasets or tables.datasets)
    grids = table1_grids(tables)
    columns = max((len(grid.columns) for grid in grids.values()), default=4)
    lines = max((len(grid) for grid in grids.values()), default=1)
    fig, axes = _figure(1, rows=max(1, len(grids)), size=(2.0 + 1.6 * columns, 0.9 + 0.3 * lines))
    for ax in axes:
        ax.axis("off")
    if not grids:
        _note(axes[0], "no Table 1 runs (joint_bilevel on MSDNet) in this study")
    for ax, (title, grid) in zip(axes, grids.items(), strict=False):
        ax.set_title(f"Table 1 — {title}: top-1 (%)")
        table = ax.table(
            cellText=grid.to_numpy(),
            rowLabels=list(grid.index),
            colLabels=list(grid.columns),
            loc="center",
            cellLoc="center",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(-1, len(grid.columns))))
        table.scale(1.0, 1.3)
    _finish(fig, axes, f"{text}. {TABLE1_NOTE}")
    write_text(out / "table1.md", table1_markdown(tables, text))
    write_text(out / "table1.tex", table1_latex(tables, text))
    return [*_save(fig, out, "table1", tables.table1), out / "table1.md", out / "table1.tex"]


# --------------------------------------------------------------------------- sensitivity


@dataclass(frozen=True)
class Sweep:
    """One panel column of fig_sensitivity: a swept hyperparameter and how its axis is drawn."""

    hparam: str
    symbol: str
    xlabel: str
    log: bool


SWEEPS: tuple[Sweep, ...] = (
    Sweep("lam", "λ", "λ (weight of the cost term, log scale)", log=True),
    Sweep("temperature", "T", "T (temperature of the exit distribution)", log=False),
)
SENSITIVITY_KEYS = ["dataset", "backbone", "hparam", "variant", "value", "budget_mflops"]
NO_SWEEP_NOTE = "no λ/T sweep in this study;\nsee config/paper.yaml"
SENSITIVITY_NOTE = f"{INTERPOLATION_NOTE}; a budget outside a curve's cost range is not drawn."


def sensitivity_points(tables: StudyTables) -> pd.DataFrame:
    """Top-1 (mean, std, n_seeds) at the Table 1 budgets of every λ and T value of joint_bilevel.

    Only datasets/backbones with a λ or T sweep variant; their default variant is a point of
    both sweeps. Values are the runs' own (config.yaml via runs.csv); budgets outside a curve
    (NaN) are left out.
    """
    runs = tables.runs[tables.runs["method"] == JointBilevel.name]
    swept = [swept_hparam(run_spec(run)) for _, run in runs.iterrows()]
    with_sweep = {
        (run["dataset"], run["backbone"])
        for (_, run), hparam in zip(runs.iterrows(), swept, strict=True)
        if hparam
    }
    rows = []
    for (_, run), hparam in zip(runs.iterrows(), swept, strict=True):
        sweeps = [hparam] if hparam else list(SWEEP_HPARAMS) if run["variant"] == "" else []
        if not sweeps or (run["dataset"], run["backbone"]) not in with_sweep:
            continue
        budgets, top1 = top1_at_budgets(tables.study, tables.budgeted_by_seed, run)
        rows += [
            (run["dataset"], run["backbone"], name, run["variant"], run[name], budget, value)
            for name in sweeps
            for budget, value in zip(budgets, top1, strict=True)
        ]
    points = pd.DataFrame(rows, columns=[*SENSITIVITY_KEYS, "top1"]).dropna(subset=["top1"])
    if points.empty:
        return pd.DataFrame(columns=[*SENSITIVITY_KEYS, "top1_mean", "top1_std", "n_seeds"])
    return summarise(points, SENSITIVITY_KEYS, ["top1"])


def _budget_styles(budgets: list[float]) -> dict[float, Style]:
    """joint_bilevel's marker, in shades of its colour: the larger the budget, the darker."""
    base = style_of(JointBilevel.name)
    shades = sns.light_palette(base.color, n_colors=len(budgets) + 2)[2:]
    return {
        budget: Style(_budget_label(budget), mpl.colors.to_hex(shade), base.marker)
        for budget, shade in zip(budgets, shades, strict=True)
    }


def _draw_sweep(
    ax: Axes, points: pd.DataFrame, sweep: Sweep, title: str, styles: dict[float, Style]
) -> None:
    """One line per budget against the swept value; a dotted line at the default variant's."""
    ax.set_title(textwrap.fill(f"{sweep.symbol} sweep — {title}", TITLE_CHARS))
    for budget, line in points.groupby("budget_mflops"):
        style = styles[budget]
        _draw_curve(ax, line, style, "value", label=style.label, markersize=5, linewidth=1.4)
    default = points.loc[points["variant"] == "", "value"].unique()
    for value in default:
        ax.axvline(value, color="0.5", linestyle=":", linewidth=1.0, label="default variant")
    if sweep.log:
        ax.set_xscale("log")
    values = sorted(points["value"].unique())
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel(sweep.xlabel)
    ax.set_ylabel("top-1 accuracy (%)")


def fig_sensitivity(tables: StudyTables, out: Path) -> list[Path]:
    """Top-1 at the Table 1 budgets vs λ (left) and T (right) of joint_bilevel; a row of panels
    per dataset/backbone with a sweep, mean ± std over seeds; notes when there is none."""
    points = sensitivity_points(tables)
    pairs = list(dict.fromkeys(zip(points["dataset"], points["backbone"], strict=True)))
    fig, axes = _figure(len(SWEEPS), rows=max(1, len(pairs)))
    styles = _budget_styles(sorted(points["budget_mflops"].unique()))
    panels = itertools.product(pairs or [None], SWEEPS)
    for ax, (pair, sweep) in zip(axes, panels, strict=True):
        if pair is None:
            ax.set_title(f"{sweep.symbol} sweep")
            _note(ax, NO_SWEEP_NOTE)
            continue
        dataset, backbone = pair
        rows = points[
            (points["dataset"] == dataset)
            & (points["backbone"] == backbone)
            & (points["hparam"] == sweep.hparam)
        ]
        title = f"{panel_title(tables, dataset)}, {backbone_label(backbone)}"
        _draw_sweep(ax, rows, sweep, title, styles)
    datasets = list(dict.fromkeys(dataset for dataset, _ in pairs)) or tables.datasets
    _finish(fig, axes, f"{caption(tables, datasets)}. {SENSITIVITY_NOTE}")
    return _save(fig, out, "fig_sensitivity", points)


# --------------------------------------------------------------------------- entry point


def build_figures(study: dict[str, Any], results_root: str | Path) -> list[Path]:
    """Draw every file of FIGURE_FILES under `results_root`/figures and return their paths.

    `results_root` is the study's folder `results/<study>/`; its tables/ must exist.
    """
    root = Path(results_root)
    tables = load_tables(study, root)
    out = root / "figures"
    theme = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.25)}
    with mpl.rc_context(theme):
        return [
            path
            for draw in (
                fig2_anytime,
                fig3_budgeted,
                fig4_posthoc,
                fig5_imagenet,
                table1_figure,
                fig_sensitivity,
            )
            for path in draw(tables, out)
        ]
