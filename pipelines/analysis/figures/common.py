"""What every figure shares: the tables it reads, captions and panel titles, the lookups of
labels and styles, and the drawing and saving of curve panels.

Styles come from the declarations of the registries, never from names spelled here: a
method's `Display` (label, colour, marker, the figures it appears in), an exit rule's
line style, legend suffix and whether it draws a curve or single points, a backbone's
and a dataset's label. Backbones are told apart by marker fill. The paper's reported
points are stars with a black edge in the colour of the reported method, one legend entry
per method and backbone family, and are written beside ours in each figure's CSV (column
`source`: ours or paper).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from eebench.backbones import get_model_config, list_models
from eebench.methods import EXIT_RULES, Display, ExitRule, method_class
from eebench.pipelines.analysis.tables import (
    PAPER_DATASETS,
    backbone_family,
    n_test_by_dataset,
    paper_method,
    paper_reported,
    read_table,
    stand_in,
)
from eebench.pipelines.data.datasets import get_dataset_info
from eebench.pipelines.services.io import write_bytes, write_csv
from eebench.pipelines.services.registry import UnknownNameError

DPI = 200
PANEL_SIZE = (4.6, 3.6)  # inches per panel: readable at paper size once scaled to a column
MIN_WIDTH = 6.4  # inches: room for a two-column legend under a single panel
LEGEND_COLUMN = 3.2  # inches per legend column
TITLE_CHARS = 40  # a panel title wraps beyond this, so that neighbouring titles never meet
CURVE_KEYS = ["backbone", "method", "variant"]
#: The reported points: the method's colour in this marker, with this edge, at this size.
PAPER_MARKER, PAPER_EDGE, PAPER_SIZE = "*", "#000000", 13
#: Points by which a reported star is set right of another one at the same cost.
PAPER_DODGE = 9.0
PAPER_SUFFIX = " — paper"
#: Marker fill of the study's 1st, 2nd, … backbone (same in every figure).
FILLS = ("full", "none", "left", "bottom")
#: Marker fill of the paper's points on the study's 1st, 2nd, … backbone family: never
#: hollow, so that each star keeps the colour of its method.
PAPER_FILLS = ("full", "left", "bottom", "right")
#: Column of the figure CSVs: whose point a row is (ours, or the paper's reported one).
SOURCE, OURS, PAPER = "source", "ours", "paper"
#: Column of the figure CSVs: where the paper reports a point (empty for ours).
REPORTED_IN = "reported_in"
#: The study whose results the captions of every other reduced study point to for conclusions.
EVIDENCE_STUDY = "evidence"
INTERPOLATION_NOTE = (
    "Top-1 at a budget: linear interpolation in cost between the two neighbouring points of "
    "the run's budgeted curve (max-softmax exits, thresholds fitted on val)"
)


# --------------------------------------------------------------------------- labels and styles


def dataset_label(dataset: str) -> str:
    """How figures name a dataset ('CIFAR-100'); an unregistered one by its name."""
    try:
        return get_dataset_info(dataset).label
    except UnknownNameError:
        return dataset


def backbone_label(backbone: str) -> str:
    """How figures name a backbone: its config's label (family and size, no data tokens)."""
    return get_model_config(backbone).label


#: Colours for a curve whose colour another curve of the study already has.
SPARE_COLORS = tuple(
    to_hex(c) for name in ("tab20b", "tab20c", "Dark2") for c in mpl.colormaps[name].colors
)
SPARE_MARKERS = ("o", "s", "^", "v", "D", "p", "h", "X", "P", "<", ">", "8", "H", "d", "*")
#: The study's styles, (method, variant) -> Display, set by `load_tables`: a curve keeps its
#: colour and marker in every figure and panel, and no other curve of the study shares them.
STUDY_STYLES: dict[tuple[str, str], Display] = {}


def display_of(method: str, variant: str = "") -> Display:
    """The label, colour, marker and figures a method (variant) declares, with the colour
    (and label) made distinct within the study (`distinct_styles`)."""
    return STUDY_STYLES.get((method, variant)) or method_class(method).display_of(variant)


def distinct_styles(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Display]:
    """Each (method, variant)'s display with a colour, marker and label no earlier one has:
    methods' own displays first (they keep what they declare), then variants, in the order
    given; a colour taken is replaced by the first spare one no curve has."""
    ordered = sorted(dict.fromkeys(pairs), key=lambda pair: pair[1] != "")
    styles: dict[tuple[str, str], Display] = {}
    colors: set[str] = set()
    for method, variant in ordered:
        display = method_class(method).display_of(variant)
        if display.color.lower() in colors:
            spare = next((c for c in SPARE_COLORS if c not in colors), display.color)
            display = replace(display, color=spare)
        taken = {(d.color.lower(), d.marker) for d in styles.values()}
        if (display.color.lower(), display.marker) in taken:  # every spare colour is used
            free = (m for m in SPARE_MARKERS if (display.color.lower(), m) not in taken)
            display = replace(display, marker=next(free))
        if display.label in {d.label for d in styles.values()}:
            display = replace(display, label=f"{display.label} [{method}-{variant}]")
        colors.add(display.color.lower())
        styles[(method, variant)] = display
    return styles


def displays(frame: pd.DataFrame) -> list[Display]:
    """The display of each row's method and variant, in row order."""
    pairs = zip(frame["method"], frame["variant"], strict=True)
    return [display_of(method, variant) for method, variant in pairs]


def family_label(family: str) -> str:
    """How figures name a backbone family ('MSDNet'): the label its configs declare."""
    for name in list_models():
        config = get_model_config(name)
        if config.family == family:
            return config.family_label or family
    return family


def paper_display(name: str) -> Display:
    """The display of a method as the paper's CSV names it ('joint_bilevel[confidence]'): its
    variant's when the label names one, else the method's."""
    method, label = paper_method(name)
    variant = label if label in method_class(method).variants else ""
    return display_of(method, variant)


def budget_label(budget: float) -> str:
    return f"{budget:.4g} MFLOPs"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StudyTables:
    """What the figures read: the summaries (mean, std and 95% interval per point), the
    budgeted curves per seed, the run index, the paper, the calibration tables (per seed)
    the claims and the measured early-exit speed-ups."""

    study: dict[str, Any]
    anytime: pd.DataFrame
    budgeted: pd.DataFrame
    budgeted_by_seed: pd.DataFrame
    table1: pd.DataFrame
    runs: pd.DataFrame
    paper: pd.DataFrame
    calibration: pd.DataFrame
    calibration_bins: pd.DataFrame
    claims: pd.DataFrame
    latency: pd.DataFrame

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
        return stand_in(self.study, paper_dataset)


def load_tables(study: dict[str, Any], results_root: Path) -> StudyTables:
    tables = results_root / "tables"
    if not (tables / "runs.csv").is_file():
        raise FileNotFoundError(
            f"{tables}/runs.csv missing: build the tables first (eebench tables)"
        )
    runs = read_table(tables / "runs.csv")
    STUDY_STYLES.clear()
    STUDY_STYLES.update(distinct_styles(zip(runs["method"], runs["variant"], strict=True)))
    return StudyTables(
        study=study,
        anytime=read_table(tables / "anytime_summary.csv"),
        budgeted=read_table(tables / "budgeted_summary.csv"),
        budgeted_by_seed=read_table(tables / "budgeted.csv"),
        table1=read_table(tables / "table1_summary.csv"),
        runs=runs,
        paper=paper_reported(),
        calibration=read_table(tables / "calibration.csv"),
        calibration_bins=read_table(tables / "calibration_bins.csv"),
        claims=read_table(tables / "claims.csv"),
        latency=read_table(tables / "latency.csv"),
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


def interval_note(tables: StudyTables) -> str:
    """How the error bars and bands of the study are made (docs/protocol.md, "Uncertainty")."""
    seeds = len(tables.study["seeds"])
    if seeds > 1:
        return f"error bars and bands: 95% t-interval of the mean over the {seeds} seeds"
    sizes = " / ".join(f"{n:,}" for n in sorted(set(n_test_by_dataset(tables.runs).values())))
    return (
        "one seed: error bars and bands are the 95% binomial (Wilson) interval of top-1 over "
        f"the {sizes or 'test'} test images; differences inside them are sampling noise "
        "(paired tests of the paper's claims: figures/claims)"
    )


def caption(tables: StudyTables, datasets: Iterable[str | None], intervals: bool = True) -> str:
    """Study, datasets (training images, epochs), seeds, how the intervals drawn are made
    (`intervals`), and whether it is the paper's setting (a reduced study points to the
    evidence study for conclusions)."""
    shown = [d for d in datasets if d]
    runs = tables.runs[tables.runs["dataset"].isin(shown)]
    parts = [_dataset_summary(d, runs[runs["dataset"] == d]) for d in shown]
    seeds = tables.study["seeds"]
    seed_text = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    reduced = any(d not in PAPER_DATASETS for d in shown) or runs["train_subset"].notna().any()
    note = " — reduced study, not the paper's setting" if reduced else ""
    if reduced and tables.study["study"] != EVIDENCE_STUDY:
        note += f"; for conclusions see the {EVIDENCE_STUDY} study (results/{EVIDENCE_STUDY}/)"
    shown_text = "; ".join(parts) or "no matching dataset"
    how = f" ({interval_note(tables)})" if intervals else ""
    return f"study {tables.study['study']}: {shown_text}; {seed_text}{how}{note}"


def panel_title(tables: StudyTables, dataset: str, paper_dataset: str | None = None) -> str:
    """'CIFAR-100', or 'Fashion-MNIST (stands in for ImageNet)'."""
    if paper_dataset and dataset != paper_dataset:
        return f"{dataset_label(dataset)} (stands in for {dataset_label(paper_dataset)})"
    stands = tables.study["datasets"][dataset].get("stands_in_for", [])
    if stands:
        return f"{dataset_label(dataset)} (stands in for {', '.join(map(dataset_label, stands))})"
    return dataset_label(dataset)


def stand_in_title(tables: StudyTables, paper_dataset: str) -> tuple[str | None, str]:
    """The study dataset of a paper figure on `paper_dataset`, and how its panels name it."""
    dataset = tables.stand_in(paper_dataset)
    if dataset is None:
        return None, f"no {dataset_label(paper_dataset)} or stand-in"
    return dataset, panel_title(tables, dataset, paper_dataset)


# --------------------------------------------------------------------------- selections


def drawn_under(display: Display, policy: str) -> bool:
    """Whether a curve under the exit rule `policy` is drawn: a display that names rules
    (a variant equal to another under the other rules) is drawn under those only."""
    return not display.rules or policy in display.rules


def shown_in(frame: pd.DataFrame, dataset: str | None, figure: str) -> pd.DataFrame:
    """Rows of one dataset whose method (variant) lists `figure` among its display's figures,
    and, for budgeted rows, whose exit rule is among the display's rules."""
    rows = frame[frame["dataset"] == dataset]
    styles = displays(rows)
    shown = np.array([figure in display.figures for display in styles], dtype=bool)
    if "policy" in rows:
        pairs = zip(styles, rows["policy"], strict=True)
        shown &= np.array([drawn_under(display, policy) for display, policy in pairs], dtype=bool)
    return rows[shown]


def rules_note(frame: pd.DataFrame) -> str:
    """'frozen + Ours drawn with the score exit rule only', for each display of the rows
    that names rules: a reader of the image alone learns why its other curves are missing."""
    limited = {display.label: display.rules for display in displays(frame) if display.rules}
    return "; ".join(
        f"{label} drawn with the {'/'.join(rules)} exit rule only"
        for label, rules in limited.items()
    )


def left_out_note(
    tables: StudyTables, figure: str, datasets: Iterable[str | None], drawn: pd.DataFrame
) -> str:
    """'not drawn here: X [v]' for the study's runs of the kind `figure` shows (their
    method's kind lists it) on its datasets that it does not draw, so that a reader of the
    image alone learns that they exist."""
    runs = tables.runs[tables.runs["dataset"].isin([d for d in datasets if d])]
    pairs = dict.fromkeys(zip(runs["method"], runs["variant"], strict=True))
    of_kind = [pair for pair in pairs if figure in method_class(pair[0]).default_figures]
    shown = set(zip(drawn["method"], drawn["variant"], strict=True))
    missing = [display_of(*pair).label for pair in of_kind if pair not in shown]
    if not missing:
        return ""
    return f"not drawn here (their display leaves this figure out): {', '.join(missing)}"


def paper_points(tables: StudyTables, paper_figure: str, dataset: str | None) -> pd.DataFrame:
    """The paper's reported numbers of one of its figures ('fig2', …) on a dataset."""
    paper = tables.paper
    return paper[
        (paper["figure"] == paper_figure) & (paper["dataset"] == dataset) & paper["top1"].notna()
    ]


# --------------------------------------------------------------------------- drawing


def draw_curve(
    ax: Axes,
    points: pd.DataFrame,
    display: Display,
    x_column: str = "mflops_mean",
    bars: bool = False,
    **line: Any,
) -> None:
    """Mean top-1 against `x_column` (mean cost) with its 95% interval (`top1_ci_low`,
    `top1_ci_high`): error bars when `bars` or on points drawn without a line, else a band."""
    points = points.sort_values(x_column)
    x, mean = points[x_column], points["top1_mean"]
    ax.plot(x, mean, color=display.color, marker=display.marker, **line)
    low, high = points["top1_ci_low"], points["top1_ci_high"]
    if bars or line.get("linestyle") == "none":
        ax.errorbar(
            x, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=display.color, lw=1.0
        )
    else:
        ax.fill_between(x, low, high, color=display.color, alpha=0.15, linewidth=0)


def rule_line(rule: type[ExitRule] | None, markevery: int) -> dict[str, Any]:
    """How an exit rule's curve is drawn: its line style, or markers only (every one) for a
    rule with one operating point per run. Anytime rows have no rule: solid lines."""
    if rule is None:
        return {"linestyle": "-", "markevery": markevery}
    if rule.draws_as == "points":
        return {"linestyle": "none", "markevery": 1}
    return {"linestyle": rule.linestyle, "markevery": markevery}


def draw_curves(
    ax: Axes, frame: pd.DataFrame, backbones: list[str], markevery: int, bars: bool
) -> None:
    """One line per backbone × method × variant (× exit rule, in that rule's line style),
    with error bars (`bars`: anytime points) or bands (budgeted curves)."""
    keys = [*CURVE_KEYS, "policy"] if "policy" in frame else CURVE_KEYS
    for key, points in frame.groupby(keys, sort=False):
        backbone, method, variant = key[:3]
        rule = EXIT_RULES.get(key[3]) if len(key) > 3 else None
        display = display_of(method, variant)
        suffix = rule.legend_suffix if rule else ""
        label = f"{backbone_label(backbone)} + {display.label}{suffix}"
        fill = FILLS[backbones.index(backbone) % len(FILLS)]
        line = {**rule_line(rule, markevery), "fillstyle": fill, "label": label}
        draw_curve(ax, points, display, bars=bars, markersize=5, linewidth=1.4, **line)


def note(ax: Axes, text: str) -> None:
    """A grey note in the middle of an empty panel, without ticks."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def paper_fill(family: str, backbones: list[str]) -> str:
    """The paper stars' fill for a backbone family: by its rank among the study's families
    (a family the study lacks comes after them, so its fill is none of theirs)."""
    families = list(dict.fromkeys([*map(backbone_family, backbones), family]))
    return PAPER_FILLS[families.index(family) % len(PAPER_FILLS)]


def _draw_paper(ax: Axes, points: pd.DataFrame, backbones: list[str]) -> None:
    """One legend entry per reported method × backbone family: stars in the method's colour
    with a black edge, so that close numbers of different methods stay apart (a star at the
    cost of an earlier entry's is set beside it rather than on it)."""
    drawn: list[set[float]] = []
    for (method, family), group in points.groupby(["method", "backbone"], sort=False):
        display = paper_display(method)
        costs = set(group["budget_mflops"])
        dodge = sum(1 for earlier in drawn if earlier & costs) * PAPER_DODGE
        drawn.append(costs)
        # A line in an offset transform is left out of autoscaling: add its points by hand.
        ax.update_datalim(group[["budget_mflops", "top1"]].to_numpy(dtype=float))
        ax.plot(
            group["budget_mflops"],
            group["top1"],
            linestyle="none",
            marker=PAPER_MARKER,
            markersize=PAPER_SIZE,
            color=display.color,
            markerfacecoloralt="white",
            markeredgecolor=PAPER_EDGE,
            markeredgewidth=0.8,
            fillstyle=paper_fill(family, backbones),
            transform=offset_copy(ax.transData, fig=ax.figure, x=dodge, units="points"),
            zorder=5,
            label=f"{family_label(family)} + {display.label}{PAPER_SUFFIX}",
        )


def paper_rows(points: pd.DataFrame) -> pd.DataFrame:
    """The paper's points in the layout of a curve figure's CSV: the backbone family as
    backbone, the reported cost and top-1 as the mean ones, `source` = paper."""
    methods = [paper_method(name) for name in points["method"]]
    return pd.DataFrame(
        {
            "dataset": points["dataset"],
            "backbone": points["backbone"],
            "method": [method for method, _ in methods],
            "variant": [label or "" for _, label in methods],
            "mflops_mean": points["budget_mflops"].astype(float),
            "top1_mean": points["top1"].astype(float),
            SOURCE: PAPER,
            REPORTED_IN: points["source"],
        }
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
            note(ax, "no runs for this panel\nin this study")
            return
        markevery = 4 if self.budgeted else 1
        draw_curves(ax, self.rows, backbones, markevery, bars=not self.budgeted)
        _draw_paper(ax, self.paper, backbones)
        ax.set_xlabel("average MFLOPs per image" if self.budgeted else "MFLOPs of the exit")
        ax.set_ylabel("top-1 accuracy (%)")

    def data(self) -> pd.DataFrame:
        """The points drawn, ours then the paper's (drawn only beside curves of ours)."""
        ours = self.rows.assign(**{SOURCE: OURS, REPORTED_IN: ""})
        paper = paper_rows(self.paper) if not self.rows.empty else ours.iloc[:0]
        frames = [frame for frame in (ours, paper) if not frame.empty] or [ours]
        return pd.concat(frames, ignore_index=True).assign(panel=self.title)


def anytime_panel(
    tables: StudyTables, title: str, dataset: str | None, figure: str, paper_figure: str
) -> Panel:
    """Per-exit curves of the runs shown in `figure`, with the paper's anytime numbers."""
    paper = paper_points(tables, paper_figure, dataset)
    rows = shown_in(tables.anytime, dataset, figure)
    return Panel(title, rows, paper[paper["mode"] == "anytime"], budgeted=False)


def budgeted_panel(
    tables: StudyTables, title: str, dataset: str | None, figure: str, paper_figure: str
) -> Panel:
    """Budgeted curves of the runs shown in `figure` under every exit rule fitted for them,
    with the paper's budgeted numbers."""
    paper = paper_points(tables, paper_figure, dataset)
    rows = shown_in(tables.budgeted, dataset, figure)
    return Panel(title, rows, paper[paper["mode"] == "budgeted"], budgeted=True)


def new_figure(
    panels: int,
    rows: int = 1,
    size: tuple[float, float] = PANEL_SIZE,
    heights: Sequence[float] | None = None,
) -> tuple[Figure, list[Axes]]:
    """A figure of rows × panels axes, wide enough for the legend under it; `heights`: the
    rows' relative heights (default: equal)."""
    fig = Figure(figsize=(max(size[0] * panels, MIN_WIDTH), size[1] * rows))
    FigureCanvasAgg(fig)
    grid = {"height_ratios": heights} if heights else None
    return fig, list(fig.subplots(rows, panels, squeeze=False, gridspec_kw=grid).flat)


def finish(fig: Figure, axes: list[Axes], text: str) -> None:
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


def save(fig: Figure, out: Path, name: str, data: pd.DataFrame) -> list[Path]:
    """PNG and PDF (atomically; PDF without a creation date, so reruns are identical) + data CSV."""
    paths = []
    for ext, extra in (("png", {"dpi": DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = BytesIO()
        fig.savefig(buffer, format=ext, bbox_inches="tight", **extra)
        write_bytes(out / f"{name}.{ext}", buffer.getvalue())
        paths.append(out / f"{name}.{ext}")
    write_csv(out / f"{name}.csv", data)
    return [*paths, out / f"{name}.csv"]


def per_dataset_figure(
    tables: StudyTables,
    name: str,
    paper_figure: str,
    make_panel: Callable[[StudyTables, str, str | None, str, str], Panel],
    out: Path,
) -> list[Path]:
    """A panel per dataset of the study, each made by `make_panel` (anytime or budgeted)."""
    panels = [
        make_panel(tables, panel_title(tables, dataset), dataset, name, paper_figure)
        for dataset in tables.datasets
    ]
    return curve_figure(tables, name, panels, tables.datasets, out)


def curve_figure(
    tables: StudyTables, name: str, panels: list[Panel], datasets: list[str | None], out: Path
) -> list[Path]:
    """A row of curve panels saved as `name`, with the points drawn as `name`.csv."""
    fig, axes = new_figure(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        panel.draw(ax, tables.backbones)
    drawn = pd.concat([panel.data() for panel in panels], ignore_index=True)
    ours = drawn[drawn[SOURCE] == OURS]
    left_out = left_out_note(tables, name, datasets, ours)
    notes = [caption(tables, datasets), rules_note(ours), left_out]
    finish(fig, axes, ". ".join(note for note in notes if note))
    return save(fig, out, name, drawn)
