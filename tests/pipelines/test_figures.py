"""build_figures on fake tables: every file written and non-empty, Table 1 as Markdown and
LaTeX, the λ/T sensitivity points, captions, fixed styles, and no crash when methods or
datasets are missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eebench.pipelines.figures import (
    FIGURE_FILES,
    STYLES,
    backbone_label,
    build_figures,
    fig_sensitivity,
    load_tables,
    style_of,
)
from eebench.pipelines.tables import build_tables, read_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def figures(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> Path:
    """The figures of the fake study, drawn once for the tests that only read them."""
    study = make_study()
    root = make_results(study)
    build_tables(study, root)
    paths = build_figures(study, root)
    assert sorted(p.name for p in paths) == sorted(FIGURE_FILES)
    return root / "figures"


def test_every_figure_is_a_non_empty_png_and_pdf(figures: Path) -> None:
    for name in FIGURE_FILES:
        data = (figures / name).read_bytes()
        assert len(data) > 1000 or name.endswith((".csv", ".md", ".tex")), name
        if name.endswith(".png"):
            assert data.startswith(PNG_MAGIC), name
        if name.endswith(".pdf"):
            assert data.startswith(b"%PDF"), name


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
    fig3 = read_table(figures / "fig3_budgeted.csv")
    assert set(fig3["variant"]) == {"", "frozen"}  # feature subsets are Table 1's business
    assert set(fig3["policy"]) == {"max_softmax", "score"}
    fig2 = read_table(figures / "fig2_anytime.csv")
    assert set(fig2["method"]) == {"standard", "joint_bilevel"}
    assert set(fig2["variant"]) == {""}


def test_sensitivity_without_a_sweep_draws_notes_and_no_points(figures: Path) -> None:
    assert (figures / "fig_sensitivity.png").read_bytes().startswith(PNG_MAGIC)
    points = read_table(figures / "fig_sensitivity.csv")
    assert points.empty
    assert {"hparam", "value", "budget_mflops", "top1_mean", "top1_std"} <= set(points.columns)


def test_sensitivity_points_are_top1_at_the_table1_budgets_per_lam_and_T(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    study = make_study()
    sweep = {"method": "joint_bilevel", "variants": ["lam=0.5", "lam=4", "T=1"]}
    study["runs"].append({**sweep, "backbones": ["msdnet_cifar"]})
    root = make_results(study)
    build_tables(study, root)
    paths = fig_sensitivity(load_tables(study, root), root / "figures")
    assert [p.name for p in paths] == [f"fig_sensitivity.{ext}" for ext in ("png", "pdf", "csv")]
    assert (root / "figures" / "fig_sensitivity.pdf").read_bytes().startswith(b"%PDF")
    points = read_table(root / "figures" / "fig_sensitivity.csv")
    # RANet has no sweep; the default variant (λ=2, T=0.5 in its config) is in both panels;
    # 5 MFLOPs is below every curve, so there is no point for it.
    assert set(points["backbone"]) == {"msdnet_cifar"}
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
    assert "No Table 1 runs" in (root / "figures" / "table1.md").read_text()
    assert (root / "figures" / "fig4_posthoc.png").stat().st_size > 1000


def test_styles_are_fixed_per_method_with_a_stable_fallback() -> None:
    assert style_of("standard") == STYLES["standard"]
    assert style_of("joint_bilevel", "frozen") == STYLES["joint_bilevel-frozen"]
    new = style_of("some_future_method")
    assert new == style_of("some_future_method")
    assert new.color not in {s.color for s in STYLES.values()}
    assert style_of("joint_bilevel", "lam=4").label == "Ours (joint_bilevel) [lam=4]"
    assert backbone_label("msdnet_imagenet_step7") == "MSDNet step7"
    assert backbone_label("ranet_cifar") == "RANet"


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
