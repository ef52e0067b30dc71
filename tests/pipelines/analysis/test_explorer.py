"""The study explorer (pipelines/analysis/explorer.py): its data and command, and the page itself in
headless Chromium with the network blocked, on a tiny study trained here and on the
committed default study (when its tables are present). Without a Chromium (`make test`
installs Debian's) the browser tests are skipped, saying why."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest

from eebench.pipelines.analysis.explorer import (
    EXPLORER_FILE,
    OfflinePage,
    build_explorer,
    explorer_data,
    find_chromium,
    hover_point,
    offline_page,
)
from eebench.pipelines.analysis.tables import build_tables, paper_reported
from eebench.pipelines.cli import main
from eebench.pipelines.services.io import write_yaml
from eebench.pipelines.workflow.config import load_study

REPO = Path(__file__).resolve().parents[3]
KEYS = ["dataset", "backbone", "method", "variant"]
#: Files a study does not commit (the explorer must not need them).
UNCOMMITTED = ("*.npz", "*.pt", "*.pt.tmp", "checkpoints", "splits", "explorer")

# one worker builds the tiny and default explorers once for every test here
pytestmark = pytest.mark.xdist_group("explorer")
# In CI (CI=true) a missing Chromium fails these tests instead of skipping them quietly.
browser = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"),
    reason="no Chromium: apt-get install chromium (make test does)",
)


class Built(NamedTuple):
    study: dict[str, Any]
    root: Path

    @property
    def html(self) -> Path:
        return self.root / EXPLORER_FILE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, extension_kit: Any) -> Built:
    """A trained tiny study (a train-time and a post-hoc method, two seeds) with its tables
    and explorer, written where the workflow writes it."""
    study = extension_kit.tiny_study(
        [{"method": "standard"}, {"method": "eenet", "hparams": {"restarts": 1}}]
    )
    study["seeds"] = [0, 1]
    root = tmp_path_factory.mktemp("tiny")
    extension_kit.run_stages(study, root)
    build_tables(study, root)
    build_explorer(study, root)
    return Built(study, root)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The committed default study's explorer, built from a copy of its committed files."""
    committed = REPO / "results" / "default"
    if not (committed / "tables" / "runs.csv").is_file():
        pytest.skip("results/default has no tables")
    root = tmp_path_factory.mktemp("default") / "default"
    shutil.copytree(committed, root, ignore=shutil.ignore_patterns(*UNCOMMITTED))
    study = load_study(REPO / "config" / "default.yaml")
    build_explorer(study, root)
    return Built(study, root)


@pytest.fixture(params=["tiny", "default"])
def explorer(request: pytest.FixtureRequest) -> Built:
    return request.getfixturevalue(request.param)


@pytest.fixture
def opened(explorer: Built) -> Iterator[OfflinePage]:
    """The explorer in headless Chromium; after the test, it logged no error and asked for
    nothing over the network."""
    with offline_page(explorer.html) as page:
        yield page
        assert page.errors == []
        assert page.blocked == []


def table(built: Built, name: str) -> pd.DataFrame:
    text = ("variant", "policy")
    frame = pd.read_csv(built.root / "tables" / f"{name}.csv", dtype=dict.fromkeys(text, str))
    return frame.fillna(dict.fromkeys(text, ""))


def select(opened: OfflinePage, mode: str, view: str) -> None:
    opened.page.select_option("#mode", mode)
    opened.page.select_option("#view", view)


def traces(opened: OfflinePage) -> list[dict[str, Any]]:
    """Every curve trace of every panel: its meta, visibility and point count."""
    return opened.page.evaluate(
        """() => [...document.querySelectorAll('#panels .js-plotly-plot')].flatMap((gd, panel) =>
             gd.data.map((t, index) => ({panel, index, meta: t.meta, visible: t.visible === true,
                                          n: t.x.length})))"""
    )


def drawn(opened: OfflinePage) -> int:
    """Traces Plotly actually drew (a hidden one is not drawn at all)."""
    return opened.page.locator("#panels .scatterlayer .trace").count()


def curves(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in found if not t["meta"].get("band") and not t["meta"].get("paper")]


# --------------------------------------------------------------------------- without a browser


def test_explorer_needs_the_tables_and_says_so(tmp_path: Path, capsys: Any) -> None:
    code = main(
        ["explorer", "--study", str(REPO / "config/default.yaml"), "--results", str(tmp_path)]
    )
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "runs.csv missing" in error and "eebench tables" in error
    assert not (tmp_path / EXPLORER_FILE).exists()


def test_runs_link_their_committed_text_files_and_embed_config_and_log(tiny: Built) -> None:
    root = tiny.root
    data = explorer_data(tiny.study, root)
    runs = pd.read_csv(root / "tables" / "runs.csv")
    assert len(data["runs"]) == len(runs)
    for run in data["runs"]:
        assert run["config"] == (root / run["path"] / "config.yaml").read_text()
        targets = [(tiny.html.parent / link).resolve() for link in run["links"]]
        assert all(target.is_file() for target in targets), run["links"]
        assert {target.suffix for target in targets} <= {".csv", ".json", ".yaml", ".log"}
        if (root / run["path"] / "train_log.csv").is_file():  # the post-hoc runs have none
            assert run["train_log"]["epoch"] == [1]


def test_claims_show_every_column_claims_csv_has(tiny: Built) -> None:
    """Other work adds claim columns (verdicts): the page shows whatever the table has."""
    root = tiny.root
    claims = pd.read_csv(root / "tables" / "claims.csv")
    claims.insert(3, "reviewer_remark", "within")
    claims.to_csv(root / "tables" / "claims.csv", index=False)
    try:
        shown = explorer_data(tiny.study, root)["tables"]["claims"]
    finally:
        claims.drop(columns="reviewer_remark").to_csv(root / "tables" / "claims.csv", index=False)
    assert list(shown) == list(claims.columns)


# --------------------------------------------------------------------------- in Chromium


@browser
def test_every_run_of_the_study_has_a_curve(opened: OfflinePage, explorer: Built) -> None:
    runs = table(explorer, "runs")
    expected = {"|".join(map(str, row)) for row in runs[[*KEYS, "seed"]].itertuples(index=False)}
    for mode in ("anytime", "budgeted"):
        select(opened, mode, "seeds")
        found = curves(traces(opened))
        with_points = {t["meta"]["run"] for t in found if t["visible"] and t["n"] > 0}
        assert expected <= with_points, (mode, expected - with_points)
        assert drawn(opened) == sum(t["visible"] for t in traces(opened))


@browser
def test_hiding_a_method_hides_its_traces(opened: OfflinePage, explorer: Built) -> None:
    method = table(explorer, "runs")["method"].iloc[0]
    before = traces(opened)
    mine = [t for t in before if t["meta"].get("method") == method]
    assert mine and all(t["visible"] for t in mine)
    opened.page.uncheck(f"input[data-method='{method}']")
    after = traces(opened)
    assert not any(t["visible"] for t in after if t["meta"].get("method") == method)
    others = [t["visible"] for t in before if t["meta"].get("method") != method]
    assert [t["visible"] for t in after if t["meta"].get("method") != method] == others
    assert drawn(opened) == sum(t["visible"] for t in before) - len(mine)
    opened.page.check(f"input[data-method='{method}']")
    assert drawn(opened) == sum(t["visible"] for t in before)
    opened.page.click("#hide-all")
    assert drawn(opened) == 0  # the paper's points are off too, by default
    opened.page.click("#show-all")
    assert drawn(opened) == sum(t["visible"] for t in before)


TOOLTIP = {
    "method": re.compile(r"method: (\S+)(?: \[(.*)\])? · rule: (.+)$"),
    "mflops": re.compile(r"MFLOPs: ([\d.]+)"),
    "top1": re.compile(r"top-1: ([\d.]+) %"),
    "p": re.compile(r"budget p: (\d+)"),
    "exit": re.compile(r"exit: (\d+)"),
    "seed": re.compile(r"seed: (\d+)"),
    "exits": re.compile(r"exits: (.+)$"),
}


def hover(opened: OfflinePage, target: dict[str, Any]) -> dict[str, Any]:
    """Move the mouse onto the middle point of a trace; the tooltip's lines, by field."""
    lines = hover_point(opened.page, target["panel"], target["index"])
    fields = {}
    for line in lines.locator("tspan.line").all_text_contents():
        for name, pattern in TOOLTIP.items():
            match = pattern.search(line)
            if match and name not in fields:
                fields[name] = match
    return fields


def isolate(opened: OfflinePage, target: dict[str, Any]) -> None:
    """Only the target's curves shown, so that the point under the mouse is its own."""
    for box in opened.page.locator("#legend input[data-entry]").all():
        if box.get_attribute("data-entry") != target["meta"]["entry"]:
            box.uncheck()


@browser
@pytest.mark.parametrize(("mode", "view"), [("budgeted", "mean"), ("anytime", "seed:0")])
def test_hovered_tooltip_shows_the_numbers_of_its_csv_row(
    opened: OfflinePage, explorer: Built, mode: str, view: str
) -> None:
    select(opened, mode, view)
    target = next(t for t in curves(traces(opened)) if t["visible"] and t["n"] > 2)
    isolate(opened, target)
    fields = hover(opened, target)
    method, variant, rule = fields["method"].groups()
    meta = target["meta"]
    assert (method, variant or "", rule) == (
        meta["method"],
        meta["variant"],
        meta["rule"] or "none (anytime)",
    )
    frame = table(explorer, mode if view != "mean" else f"{mode}_summary")
    row = frame[(frame["dataset"] == meta["dataset"]) & (frame["backbone"] == meta["backbone"])]
    row = row[(row["method"] == method) & (row["variant"] == (variant or ""))]
    if mode == "budgeted":
        row = row[(row["policy"] == rule) & (row["p"] == int(fields["p"][1]))]
    else:
        row = row[row["exit"] == int(fields["exit"][1])]
    if view != "mean":
        row = row[row["seed"] == int(fields["seed"][1])]
    assert len(row) == 1
    suffix = "_mean" if view == "mean" else ""
    assert float(fields["mflops"][1]) == pytest.approx(row[f"mflops{suffix}"].iloc[0], abs=5e-4)
    assert float(fields["top1"][1]) == pytest.approx(row[f"top1{suffix}"].iloc[0], abs=5e-3)


@browser
def test_claims_table_sorts_and_filters(opened: OfflinePage, explorer: Built) -> None:
    claims = table(explorer, "claims")
    opened.page.click("#tab-claims")
    headers = opened.page.locator("#claims-table th").all_text_contents()
    assert [name for name in headers if name != "interval"] == list(claims.columns)
    for column in ("id", "estimate"):
        values = claims[column].dropna()
        if values.empty:
            continue
        for ascending in (True, False):
            opened.page.click(f"#claims-table th[data-column='{column}']")
            index = headers.index(column) + 1
            cells = opened.page.locator(f"#claims-table tbody td:nth-child({index})")
            shown = [cell for cell in cells.all_text_contents() if cell != ""]
            typed = [float(cell) for cell in shown] if column == "estimate" else shown
            expected = sorted(values.tolist(), reverse=not ascending)
            if column == "id":  # numeric-aware: C2 before C10
                expected = sorted(values, key=natural, reverse=not ascending)
            assert typed == pytest.approx(expected) if column == "estimate" else typed == expected
    verdict = claims["verdict"].iloc[-1]
    opened.page.select_option("#filter-verdict", verdict)
    rows = opened.page.locator("#claims-table tbody tr")
    assert rows.count() == int((claims["verdict"] == verdict).sum())


def natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@browser
def test_every_run_page_and_view_draws_without_errors(opened: OfflinePage, explorer: Built) -> None:
    page = opened.page
    for view in page.locator("#view option").evaluate_all("os => os.map(o => o.value)"):
        for mode in ("anytime", "budgeted"):
            select(opened, mode, view)
    page.check("#xlog")
    page.click("#tab-runs")
    runs = page.locator("#run-list option").evaluate_all("os => os.map(o => o.value)")
    assert len(runs) == len(table(explorer, "runs"))
    for path in runs:
        page.select_option("#run-list", path)
        assert page.locator("#run-page h2").text_content() == path
        assert page.locator("#run-page .run-plot .main-svg").count() > 0


@browser
def test_paper_points_toggle_on_their_stand_in_panels(tiny: Built) -> None:
    paper = paper_reported()
    expected = paper[
        paper["dataset"].isin(["cifar100", "imagenet"])
        & (paper["backbone"] == "msdnet")
        & (paper["mode"] == "budgeted")
        & paper["top1"].notna()
    ]
    with offline_page(tiny.html) as opened:

        def shown() -> int:
            found = [t for t in traces(opened) if t["meta"].get("paper")]
            return sum(t["n"] for t in found if t["visible"])

        assert shown() == 0
        opened.page.check("#paper")
        assert shown() == len(expected) > 0
        opened.page.uncheck("#paper")
        assert shown() == 0
        assert opened.errors == [] and opened.blocked == []


@browser
def test_screenshot_command_writes_a_png_of_the_page(tiny: Built, tmp_path: Path) -> None:
    study_file = tmp_path / "tiny.yaml"
    write_yaml(study_file, tiny.study)
    png = tmp_path / "shot" / "explorer.png"
    args = ["explorer", "--study", str(study_file), "--results", str(tiny.root)]
    assert main([*args, "--screenshot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
