"""build_figures on fake tables: every registered figure writes its declared files, non-empty,
Table 1 as Markdown and LaTeX, the sensitivity points, captions, styles taken from the
methods' and exit rules' declarations (a method registered here appears exactly where its
display says, under the exit rules it names), the paper's points beside ours (one legend
entry per reported method and backbone, rows of the CSVs), and no crash when methods or
datasets are missing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eebench.methods import EXIT_RULES, TRAIN_METHODS, Display, ExitRule, TrainMethod
from eebench.methods.standard import Standard
from eebench.pipelines.analysis.figures import FIGURE_FILES, FIGURE_NAMES, FIGURES, build_figures
from eebench.pipelines.analysis.figures.common import (
    PAPER_SUFFIX,
    StudyTables,
    backbone_label,
    dataset_label,
    display_of,
    load_tables,
)
from eebench.pipelines.analysis.tables import build_tables, paper_reported, read_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[3]
#: The curve figures, which draw one line per method (variant) they show.
CURVE_FIGURES = ("fig2_anytime", "fig3_budgeted", "fig4_posthoc", "fig5_imagenet")

DrawFigure = Callable[[str, StudyTables, Path], Figure]


@pytest.fixture(scope="module")
def fake_tables(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> Path:
    """The fake study's results with its tables built; returns its results root."""
    study = make_study()
    root = make_results(study)
    build_tables(study, root)
    return root


@pytest.fixture(scope="module")
def figures(make_study: Callable[..., dict[str, Any]], fake_tables: Path) -> Path:
    """The figures of the fake study, drawn once for the tests that only read them."""
    paths = build_figures(make_study(), fake_tables)
    assert sorted(p.name for p in paths) == sorted(FIGURE_FILES)
    return fake_tables / "figures"


@pytest.fixture
def draw_figure(monkeypatch: pytest.MonkeyPatch) -> DrawFigure:
    """draw(name, tables, out): draws one registered figure and returns the Figure it saved."""
    saved: list[Figure] = []
    savefig = Figure.savefig

    def recording(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)

    def draw(name: str, tables: StudyTables, out: Path) -> Figure:
        saved.clear()
        FIGURES.get(name).draw(tables, out)
        return saved[-1]

    return draw


def lines_labelled(fig: Figure, suffix: str) -> list[Line2D]:
    """The lines of a figure whose legend label ends with `suffix`."""
    return [line for ax in fig.axes for line in ax.lines if line.get_label().endswith(suffix)]


def legend_labels(fig: Figure) -> list[str]:
    """The entries of the figure's legend (the one under its panels), in order."""
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def ours(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a figure CSV that are points of our runs (not the paper's)."""
    return frame[frame["source"] == "ours"]


def reported(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a figure CSV that are the paper's reported points."""
    return frame[frame["source"] == "paper"]


def test_every_figure_is_a_non_empty_png_and_pdf(figures: Path) -> None:
    for name in FIGURE_FILES:
        data = (figures / name).read_bytes()
        assert len(data) > 1000 or name.endswith((".csv", ".md", ".tex")), name
        if name.endswith(".png"):
            assert data.startswith(PNG_MAGIC), name
        if name.endswith(".pdf"):
            assert data.startswith(b"%PDF"), name


def test_every_registered_figure_writes_its_declared_files_and_has_a_caption(
    make_study: Callable[..., dict[str, Any]], fake_tables: Path, tmp_path: Path
) -> None:
    tables = load_tables(make_study(), fake_tables)
    declared: list[str] = []
    for name in FIGURE_NAMES:
        entry = FIGURES.get(name)
        out = tmp_path / name
        paths = entry.draw(tables, out)
        assert sorted(p.name for p in paths) == sorted(entry.files), name
        assert sorted(p.name for p in out.iterdir()) == sorted(entry.files), name
        assert all(p.stat().st_size > 0 for p in paths), name
        assert (REPO / entry.caption).is_file(), entry.caption
        declared += entry.files
    assert sorted(FIGURE_FILES) == sorted(declared)
    assert len(set(FIGURE_FILES)) == len(FIGURE_FILES)
    assert {"table1.md", "table1.tex"} <= set(FIGURE_FILES)


def test_table1_markdown_has_budget_columns_feature_rows_and_paper_values(figures: Path) -> None:
    text = (figures / "table1.md").read_text()
    assert "## CIFAR-100, msdnet_cifar" in text
    assert "| features | 5 MFLOPs | 30 MFLOPs | 50 MFLOPs | 70 MFLOPs | 90 MFLOPs |" in text
    rows = [line for line in text.splitlines() if line.startswith("| confidence")]
    assert [r.split(" |")[0] for r in rows] == [
        "| confidence",
        "| confidence+entropy",
    ]  # paper order: single features, then pairs
    assert "55.17 ± 0.71 (paper 70.84)" in rows[0]
    assert "| – |" in rows[0]  # 5 MFLOPs is below the curve
    assert "linear interpolation in cost" in text
    assert "study fake: CIFAR-100, 8,000 training images, 3 epochs; seeds 0, 1" in text


def test_table1_latex_is_a_booktabs_table(figures: Path) -> None:
    text = (figures / "table1.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrrrr}"):
        assert token in text
    assert r"55.17 $\pm$ 0.71 (paper 70.84)" in text
    assert r"msdnet\_cifar" in text


def test_figure_data_csvs_hold_the_points_drawn(figures: Path) -> None:
    fig3 = ours(read_table(figures / "fig3_budgeted.csv"))
    assert set(fig3["variant"]) == {"", "frozen"}  # feature subsets are Table 1's business
    assert set(fig3["policy"]) == {"max_softmax", "score"}
    fig2 = ours(read_table(figures / "fig2_anytime.csv"))
    assert set(fig2["method"]) == {"standard", "joint_bilevel"}
    assert set(fig2["variant"]) == {""}
    # Fig. 4: each run once, under its method's main exit rule (max softmax for both here).
    fig4 = read_table(figures / "fig4_posthoc.csv")
    assert set(fig4["source"]) == {"ours"}  # the paper's Fig. 4 reports no numbers
    assert set(fig4["method"]) == {"standard", "joint_bilevel"}
    assert set(fig4["policy"]) == {"max_softmax"}
    assert set(fig4["panel"]) == {"MSDNet — CIFAR-100", "RANet — CIFAR-100"}


def test_figure_csvs_hold_the_paper_points_beside_ours(figures: Path) -> None:
    # The fake study is on CIFAR-100: the paper's Fig. 2, Fig. 3 and Table 1 numbers for it.
    paper = paper_reported()
    columns = ["dataset", "backbone", "method", "variant", "mflops_mean", "top1_mean"]
    fig2 = read_table(figures / "fig2_anytime.csv")
    assert reported(fig2)[[*columns, "reported_in", "panel"]].to_numpy().tolist() == [
        ["cifar100", "msdnet", "joint_bilevel", "", 137.0, 80.43, "Section 4 text", "CIFAR-100"]
    ]
    assert reported(fig2)["exit"].isna().all()  # the paper gives a cost, not an exit
    fig3 = read_table(figures / "fig3_budgeted.csv")
    assert reported(fig3)[[*columns, "policy"]].to_numpy().tolist() == [
        ["cifar100", "msdnet", "joint_bilevel", "", 90.0, 80.43, ""]
    ]
    assert len(ours(fig3)) + len(reported(fig3)) == len(fig3)
    table1 = read_table(figures / "table1.csv")
    expected = paper[(paper["figure"] == "table1") & (paper["dataset"] == "cifar100")]
    assert len(reported(table1)) == len(expected) == 28
    rows = reported(table1).set_index(["features", "budget_mflops"])
    assert rows.loc[("confidence", 30.0), "top1_mean"] == pytest.approx(70.84)
    assert rows.loc[("confidence+margin+entropy", 90.0), "top1_mean"] == pytest.approx(79.7)
    assert set(rows["backbone"]) == {"msdnet"}  # the paper names backbone families
    assert set(ours(table1)["backbone"]) == {"msdnet_cifar"}


def test_the_paper_overlay_has_a_legend_entry_per_reported_method_and_backbone(
    make_study: Callable[..., dict[str, Any]],
    make_results: Callable[[dict[str, Any]], Path],
    draw_figure: DrawFigure,
) -> None:
    # CIFAR-10, Fig. 2: Ours on MSDNet (two numbers) and standard RANet at about the same
    # cost as one of them (90.96 vs 90.80 at 27 MFLOPs).
    study = make_study("cifar10")
    root = make_results(study)
    build_tables(study, root)
    fig = draw_figure("fig2_anytime", load_tables(study, root), root / "figures")
    entries = [label for label in legend_labels(fig) if label.endswith(PAPER_SUFFIX)]
    assert entries == [
        "MSDNet + Ours (joint_bilevel) — paper",
        "RANet + standard — paper",
    ]
    stars = lines_labelled(fig, PAPER_SUFFIX)
    assert [len(star.get_xdata()) for star in stars] == [2, 1]
    for star, method in zip(stars, ["joint_bilevel", "standard"], strict=True):
        assert to_hex(star.get_color()) == display_of(method).color  # the method's colour
        assert star.get_marker() == "*" and to_hex(star.get_markeredgecolor()) == "#000000"
        assert star.get_linestyle() == "None"
    assert stars[0].get_fillstyle() != stars[1].get_fillstyle()  # MSDNet vs RANet
    # The two stars at 27 MFLOPs are drawn side by side, not on top of each other.
    at_27 = [star.get_transform().transform((27.0, 90.9))[0] for star in stars]
    assert at_27[1] > at_27[0]
    fig2 = read_table(root / "figures" / "fig2_anytime.csv")
    points = reported(fig2)[["backbone", "method", "mflops_mean", "top1_mean"]]
    assert points.to_numpy().tolist() == [
        ["msdnet", "joint_bilevel", 137.0, 96.13],
        ["msdnet", "joint_bilevel", 27.0, 90.80],
        ["ranet", "standard", 27.0, 90.96],
    ]


def test_frozen_ours_is_drawn_under_the_gaters_score_rule_only(
    study: dict[str, Any], results_root: Path, draw_figure: DrawFigure
) -> None:
    # Under max softmax the frozen variant is `standard` (the same backbone) by construction.
    build_tables(study, results_root)
    tables = load_tables(study, results_root)
    assert set(tables.budgeted.loc[tables.budgeted["variant"] == "frozen", "policy"]) == {
        "max_softmax",
        "score",
    }
    fig = draw_figure("fig3_budgeted", tables, results_root / "figures")
    fig3 = read_table(results_root / "figures" / "fig3_budgeted.csv")
    frozen = fig3[fig3["variant"] == "frozen"]
    assert len(frozen) > 0
    assert set(frozen["policy"]) == {"score"}
    assert set(fig3.loc[fig3["variant"] == "", "policy"]) >= {"max_softmax", "score"}
    label = display_of("joint_bilevel", "frozen").label
    drawn = [line.get_label() for line in lines_labelled(fig, "")]
    frozen_lines = [text for text in drawn if f" + {label}" in text]
    assert frozen_lines == [
        f"{backbone_label(b)} + {label}{EXIT_RULES.get('score').legend_suffix}"
        for b in ("msdnet_cifar", "ranet_cifar")
    ]
    captions = " ".join(text.get_text().replace("\n", " ") for text in fig.texts)
    assert f"{label} drawn with the score exit rule only" in captions


def test_intervals_are_error_bars_on_anytime_points_and_bands_on_budgeted_curves(
    make_study: Callable[..., dict[str, Any]],
    make_results: Callable[[dict[str, Any]], Path],
    draw_figure: DrawFigure,
) -> None:
    """Also with one seed (the binomial interval); the caption says which interval it is and,
    for a reduced study, where its conclusions are."""
    study = make_study("fashion_mnist")
    study["seeds"] = [0]
    root = make_results(study)
    build_tables(study, root)
    tables = load_tables(study, root)
    anytime = draw_figure("fig2_anytime", tables, root / "figures")
    assert len(anytime.axes[0].containers) == len(lines_labelled(anytime, ""))  # error bars
    budgeted = draw_figure("fig3_budgeted", tables, root / "figures")
    assert len(budgeted.axes[0].collections) == len(lines_labelled(budgeted, ""))  # bands
    assert not budgeted.axes[0].containers
    caption = " ".join(text.get_text().replace("\n", " ") for text in anytime.texts)
    assert "95% binomial (Wilson) interval of top-1 over the 10,000 test images" in caption
    assert "differences inside them are sampling noise" in caption
    assert "for conclusions see the evidence study (results/evidence/)" in caption


def test_claims_figure_draws_every_claim_row(figures: Path, fake_tables: Path) -> None:
    drawn = read_table(figures / "claims.csv")
    claims = read_table(fake_tables / "tables" / "claims.csv")
    assert drawn[["id", "backbone", "verdict"]].equals(claims[["id", "backbone", "verdict"]])
    text = (figures / "claims.md").read_text()
    assert "| C1: Ours beats standard training at every exit | cifar100, msdnet_cifar |" in text
    assert "t over the seeds' paired values" in text and "| magnitude |" in text
    rows = [line for line in text.splitlines() if line.startswith("| C")]
    paper = [line.split(" | ")[2] == "yes" for line in rows]
    assert paper == sorted(paper, reverse=True)  # the paper's backbone first


def test_claims_figure_draws_an_interval_that_excludes_its_estimate(
    make_study: Callable[..., dict[str, Any]],
    fake_tables: Path,
    draw_figure: DrawFigure,
    tmp_path: Path,
) -> None:
    """The interval is drawn as its own line, not as error bars: an estimate outside it
    (a table edited by hand, or an older claims.csv) stays visible."""
    tables = load_tables(make_study(), fake_tables)
    claims = tables.claims.copy()
    row = claims["estimate"].notna().idxmax()
    claims.loc[row, ["estimate", "ci_low", "ci_high"]] = [0.02, 0.03, 0.24]
    figure = draw_figure("claims", dataclasses.replace(tables, claims=claims), tmp_path)
    lines = [line.get_xdata() for line in figure.axes[0].lines]
    assert any(list(x) == [0.03, 0.24] for x in lines)
    assert any(list(x) == [0.02] for x in lines)


def test_sensitivity_without_a_sweep_draws_notes_and_no_points(figures: Path) -> None:
    assert (figures / "fig_sensitivity.png").read_bytes().startswith(PNG_MAGIC)
    points = read_table(figures / "fig_sensitivity.csv")
    assert points.empty
    assert {"method", "hparam", "value", "budget_mflops", "top1_mean", "top1_std"} <= set(
        points.columns
    )


def test_sensitivity_points_are_top1_at_the_table1_budgets_per_lam_and_T(
    make_study: Callable[..., dict[str, Any]],
    make_results: Callable[[dict[str, Any]], Path],
    draw_figure: DrawFigure,
) -> None:
    study = make_study()
    sweep = {"method": "joint_bilevel", "variants": ["lam=0.5", "lam=4", "T=1"]}
    study["runs"].append({**sweep, "backbones": ["msdnet_cifar"]})
    root = make_results(study)
    build_tables(study, root)
    fig = draw_figure("fig_sensitivity", load_tables(study, root), root / "figures")
    written = sorted(p.name for p in (root / "figures").iterdir())
    assert written == sorted(f"fig_sensitivity.{ext}" for ext in ("png", "pdf", "csv"))
    assert (root / "figures" / "fig_sensitivity.pdf").read_bytes().startswith(b"%PDF")
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    assert titles == [
        "λ sweep — CIFAR-100, MSDNet, Ours (joint_bilevel)",
        "T sweep — CIFAR-100, MSDNet, Ours (joint_bilevel)",
    ]
    points = read_table(root / "figures" / "fig_sensitivity.csv")
    # RANet has no sweep; the default variant (λ=2, T=0.5 in its config) is in both panels;
    # 5 MFLOPs is below every curve, so there is no point for it.
    assert set(points["backbone"]) == {"msdnet_cifar"}
    assert set(points["method"]) == {"joint_bilevel"}
    assert set(points["budget_mflops"]) == {30.0, 50.0, 70.0, 90.0}
    at_30 = points[points["budget_mflops"] == 30.0].set_index(["hparam", "value"])
    assert sorted(at_30.loc["lam"].index) == [0.5, 2.0, 4.0]
    assert sorted(at_30.loc["temperature"].index) == [0.5, 1.0]
    # Fake curve at 30 MFLOPs: 50 + 20/12, +2 (joint_bilevel), +0.5 (mean of seeds 0 and 1),
    # plus the variant's shift (lam=0.5: −1, lam=4: +1.5, T=1: +0.5).
    base = 50.0 + 20 / 12 + 2.5
    expected = {("lam", 0.5): -1.0, ("lam", 2.0): 0.0, ("lam", 4.0): 1.5, ("temperature", 1.0): 0.5}
    for key, shift in expected.items():
        assert at_30.loc[key, "top1_mean"] == pytest.approx(base + shift), key
    assert at_30["top1_std"].tolist() == pytest.approx([np.sqrt(0.5)] * len(at_30))
    assert at_30["n_seeds"].tolist() == [2] * len(at_30)
    assert at_30.loc[("temperature", 0.5), "variant"] == ""


def test_stand_in_dataset_fills_the_imagenet_figure(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    study = make_study("fashion_mnist")
    study["datasets"]["fashion_mnist"]["stands_in_for"] = ["cifar100", "imagenet"]
    study["runs"] = study["runs"][:1]  # standard only: no joint_bilevel, no Table 1 runs
    root = make_results(study)
    build_tables(study, root)
    build_figures(study, root)
    fig5 = read_table(root / "figures" / "fig5_imagenet.csv")
    assert set(fig5["panel"]) == {
        "Fashion-MNIST (stands in for ImageNet): anytime",
        "Fashion-MNIST (stands in for ImageNet): budgeted",
    }
    assert "No Table 1 runs in this study" in (root / "figures" / "table1.md").read_text()
    assert (root / "figures" / "fig4_posthoc.png").stat().st_size > 1000


def test_labels_and_styles_come_from_the_declarations() -> None:
    assert display_of("standard") == Standard.display
    frozen = display_of("joint_bilevel", "frozen")
    assert frozen.label == "frozen + Ours"
    assert frozen.figures == ("fig3_budgeted",)
    assert frozen.rules == ("score",)  # under max softmax it is `standard`
    assert frozen.main_rule == "score"
    assert display_of("joint_bilevel").rules == ()  # every rule fitted
    swept = display_of("joint_bilevel", "lam=4")
    assert swept.label == "Ours (joint_bilevel) [lam=4]"
    assert swept.figures == ()  # sweep points are the sensitivity figure's business
    assert swept == display_of("joint_bilevel", "lam=4")  # a stable fallback colour
    assert backbone_label("msdnet_imagenet_step7") == "MSDNet step7"
    assert backbone_label("ranet_cifar") == "RANet"
    assert dataset_label("cifar100") == "CIFAR-100"
    assert dataset_label("not_a_dataset") == "not_a_dataset"


def test_a_new_method_appears_exactly_in_the_figures_its_display_lists(
    make_study: Callable[..., dict[str, Any]],
    make_results: Callable[[dict[str, Any]], Path],
    monkeypatch: pytest.MonkeyPatch,
    draw_figure: DrawFigure,
) -> None:
    class NewMethod(TrainMethod):
        name: ClassVar[str] = "new_method"
        display: ClassVar[Display] = Display(
            "New", "#123456", "P", figures=("fig2_anytime", "fig4_posthoc")
        )

    monkeypatch.setitem(TRAIN_METHODS._entries, NewMethod.name, NewMethod)
    study = make_study("fashion_mnist")
    study["datasets"]["fashion_mnist"]["stands_in_for"] = ["cifar100", "imagenet"]
    study["runs"].append({"method": NewMethod.name})
    root = make_results(study)
    build_tables(study, root)
    tables = load_tables(study, root)
    for name in CURVE_FIGURES:
        fig = draw_figure(name, tables, root / "figures")
        lines = lines_labelled(fig, f" + {NewMethod.display.label}")
        drawn = read_table(root / "figures" / f"{name}.csv")
        shown = name in NewMethod.display.figures
        assert (NewMethod.name in set(drawn["method"])) == shown, name
        assert len(lines) == (2 if shown else 0), name  # one per backbone
        assert {to_hex(line.get_color()) for line in lines} <= {NewMethod.display.color}
        assert {line.get_marker() for line in lines} <= {NewMethod.display.marker}


def test_an_exit_rule_of_single_points_draws_markers_without_a_line(
    study: dict[str, Any],
    results_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    draw_figure: DrawFigure,
) -> None:
    class OnePoint(ExitRule):
        name: ClassVar[str] = "one_point"
        draws_as: ClassVar[str] = "points"
        legend_suffix: ClassVar[str] = " (one point)"

    monkeypatch.setitem(EXIT_RULES._entries, OnePoint.name, OnePoint)
    build_tables(study, results_root)
    path = results_root / "tables" / "budgeted_summary.csv"
    frame = read_table(path)
    runs = frame[(frame["method"] == "standard") & (frame["policy"] == "max_softmax")]
    point = runs[runs["p"] == 20].assign(policy=OnePoint.name)
    pd.concat([frame, point], ignore_index=True).to_csv(path, index=False)
    fig = draw_figure("fig3_budgeted", load_tables(study, results_root), results_root / "f")
    lines = lines_labelled(fig, f" + standard{OnePoint.legend_suffix}")
    assert len(lines) == 2  # one per backbone
    assert all(line.get_linestyle() == "None" for line in lines)
    assert all(len(line.get_xdata()) == 1 for line in lines)
    assert lines_labelled(fig, " + standard")[0].get_linestyle() == "-"


def test_figures_need_the_tables_first(study: dict[str, Any], results_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="eebench tables"):
        build_figures(study, results_root)


def test_missing_method_rows_leave_an_empty_panel(
    study: dict[str, Any], results_root: Path
) -> None:
    build_tables(study, results_root)
    tables = results_root / "tables"
    for name in ("anytime_summary.csv", "budgeted_summary.csv"):
        frame = read_table(tables / name)
        frame[frame["backbone"] != "ranet_cifar"].to_csv(tables / name, index=False)
    build_figures(study, results_root)
    fig4 = pd.read_csv(results_root / "figures" / "fig4_posthoc.csv")
    assert set(fig4["backbone"]) == {"msdnet_cifar"}
