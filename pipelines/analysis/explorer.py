"""The study explorer: one self-contained HTML page per study (results/<study>/explorer/
index.html) to browse its curves, claims and runs in a browser, offline and without a server.

It reads only what a study commits (the tables, each run's config.yaml and train_log.csv,
the names of its CSVs and logs), so that a fresh clone can rebuild it without the models.
The page embeds its data as JSON and Plotly's JavaScript once (plotly.offline), and draws
every panel in the browser (pipelines/analysis/explorer_app/app.js), so that toggling a method, a
seed or the cost scale needs no Python. Labels, colours, markers and line styles come from
the registries' declarations, as in the figures.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pandas as pd

from eebench.methods import EXIT_RULES
from eebench.pipelines.analysis.figures.common import (
    backbone_label,
    dataset_label,
    display_of,
    family_label,
    paper_display,
)
from eebench.pipelines.analysis.tables import (
    backbone_family,
    paper_method,
    paper_reported,
    stand_in,
)
from eebench.pipelines.services.io import write_text
from eebench.pipelines.services.registry import UnknownNameError
from eebench.pipelines.workflow.config import RunSpec

EXPLORER_FILE = "explorer/index.html"
#: Matplotlib marker → Plotly marker symbol (an unlisted one is drawn as a circle).
MARKERS = {
    "o": "circle",
    "s": "square",
    "^": "triangle-up",
    "v": "triangle-down",
    "<": "triangle-left",
    ">": "triangle-right",
    "D": "diamond",
    "d": "diamond-tall",
    "P": "cross",
    "X": "x",
    "x": "x-thin-open",
    "+": "cross-thin-open",
    "*": "star",
    "p": "pentagon",
    "h": "hexagon",
    "H": "hexagon2",
    "8": "octagon",
}
#: Matplotlib line style → Plotly dash.
DASHES = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}
#: Run files worth a link: text a study commits (never the models or per-sample outputs).
LINKED_SUFFIXES = (".csv", ".json", ".yaml", ".log")
#: Tables the page reads (read defensively: a missing one is an empty table).
TABLES = (
    "anytime",
    "anytime_summary",
    "budgeted",
    "budgeted_summary",
    "calibration",
    "calibration_bins",
    "claims",
    "runs",
)
KEYS = ["dataset", "backbone", "method", "variant"]
#: Browsers tried, in order, for the screenshot and the browser tests (EEBENCH_CHROMIUM first).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def build_explorer(study: dict[str, Any], root: Path) -> Path:
    """Write root/explorer/index.html from the study's committed files; returns its path."""
    tables = root / "tables"
    if not (tables / "runs.csv").is_file():
        raise FileNotFoundError(
            f"{tables}/runs.csv missing: build the tables first (eebench tables)"
        )
    data = explorer_data(study, root)
    out = root / EXPLORER_FILE
    write_text(out, page(data))
    return out


def explorer_data(study: dict[str, Any], root: Path) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready columns (NaN → null)."""
    frames = {name: _read(root / "tables" / f"{name}.csv") for name in TABLES}
    frames["budgeted_summary"] = with_mean_exit_fractions(
        frames["budgeted_summary"], frames["budgeted"]
    )
    if "accuracy" in frames["calibration_bins"]:  # empty bins draw nothing
        frames["calibration_bins"] = frames["calibration_bins"].dropna(subset=["accuracy"])
    runs = frames["runs"]
    frames["paper"] = paper_overlay(study, runs)
    return {
        "study": {"name": study["study"], "description": study.get("description", "")},
        "tables": {name: columns(frame) for name, frame in frames.items()},
        "styles": styles(runs),
        "rules": {name: rule_style(name) for name in EXIT_RULES.names()},
        "labels": labels(runs),
        "runs": [run_page(root, spec) for spec in run_specs(runs)],
    }


def _read(path: Path) -> pd.DataFrame:
    """A table with empty text cells as '' (variant, source), or an empty one when absent."""
    if not path.is_file():
        return pd.DataFrame()
    text = ("variant", "source", "policy")
    return pd.read_csv(path, dtype=dict.fromkeys(text, str)).fillna(dict.fromkeys(text, ""))


def columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A frame as {column: values}, the compact form the page reads; NaN and inf → null."""
    return {name: [_json_value(v) for v in frame[name].tolist()] for name in frame.columns}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def with_mean_exit_fractions(summary: pd.DataFrame, by_seed: pd.DataFrame) -> pd.DataFrame:
    """The summary with `exit_fractions`: each exit's share averaged over the seeds, so that
    a mean point's tooltip shows its exit mix too."""
    keys = [*KEYS, "policy", "p"]
    if summary.empty or "exit_fractions" not in by_seed:
        return summary
    shares = by_seed["exit_fractions"].fillna("").astype(str).str.split(";", expand=True)
    shares = shares.apply(pd.to_numeric, errors="coerce")
    mean = pd.concat([by_seed[keys], shares], axis=1).groupby(keys, sort=False).mean()
    joined = mean.apply(
        lambda row: ";".join(f"{share:.4f}" for share in row if not math.isnan(share)), axis=1
    )
    return summary.merge(joined.rename("exit_fractions").reset_index(), on=keys, how="left")


def styles(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Label, colour and marker of each method|variant of the study, from its Display."""
    out: dict[str, dict[str, str]] = {}
    for method, variant in runs[["method", "variant"]].drop_duplicates().itertuples(index=False):
        display = display_of(method, variant)
        out[f"{method}|{variant}"] = {
            "label": display.label,
            "color": display.color,
            "marker": MARKERS.get(display.marker, "circle"),
        }
    return out


def rule_style(name: str) -> dict[str, Any]:
    """How an exit rule's curve is drawn: dash, legend suffix, and points-only or not."""
    rule = EXIT_RULES.get(name)
    return {
        "dash": DASHES.get(rule.linestyle, "solid"),
        "suffix": rule.legend_suffix,
        "points": rule.draws_as == "points",
    }


def labels(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """How the page names the study's datasets and backbones (as the figures do)."""
    return {
        "dataset": {name: dataset_label(name) for name in runs["dataset"].unique()},
        "backbone": {name: backbone_label(name) for name in runs["backbone"].unique()},
    }


def paper_overlay(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's reported points on the panels they belong to: the panel's dataset is the
    paper's or stands in for it, and its backbone is of the reported family."""
    paper = paper_reported()
    paper = paper[paper["top1"].notna()]
    panels = runs[["dataset", "backbone"]].drop_duplicates()
    rows = []
    for point in paper.itertuples(index=False):
        dataset = stand_in(study, point.dataset)
        for backbone in panels[panels["dataset"] == dataset]["backbone"]:
            if _family(backbone) == point.backbone:
                rows.append(_paper_row(point, dataset, backbone))
    return pd.DataFrame(rows)


def _family(backbone: str) -> str | None:
    try:
        return backbone_family(backbone)
    except UnknownNameError:
        return None


def _paper_row(point: Any, dataset: str, backbone: str) -> dict[str, Any]:
    method, variant = paper_method(point.method)
    display = paper_display(point.method)
    return {
        "dataset": dataset,
        "backbone": backbone,
        "mode": point.mode,
        "label": f"{family_label(point.backbone)} + {display.label} — paper",
        "method": method,
        "variant": variant or "",
        "color": display.color,
        "paper_dataset": dataset_label(point.dataset),
        "figure": point.figure,
        "source": point.source,
        "mflops": float(point.budget_mflops),
        "top1": float(point.top1),
    }


def run_specs(runs: pd.DataFrame) -> list[RunSpec]:
    return [
        RunSpec(row.dataset, row.backbone, row.method, row.variant, int(row.seed))
        for row in runs[[*KEYS, "seed"]].itertuples(index=False)
    ]


def run_page(root: Path, spec: RunSpec) -> dict[str, Any]:
    """One run's page: its resolved config, training log and links to its text files."""
    run_dir = root / spec.path
    config = run_dir / "config.yaml"
    train_log = run_dir / "train_log.csv"
    return {
        "path": spec.path,
        "keys": {**{key: getattr(spec, key) for key in KEYS}, "seed": spec.seed},
        "config": config.read_text() if config.is_file() else "",
        "train_log": columns(pd.read_csv(train_log)) if train_log.is_file() else {},
        "links": run_links(root, spec),
    }


def run_links(root: Path, spec: RunSpec) -> list[str]:
    """The run's text files and stage logs, relative to the explorer's folder."""
    inside = sorted((root / spec.path).glob("*"))
    logs = sorted((root / "logs").glob(f"*/{spec.path}.log"))
    return [
        Path("..", path.relative_to(root)).as_posix()
        for path in [*inside, *logs]
        if path.is_file() and path.suffix in LINKED_SUFFIXES
    ]


def page(data: dict[str, Any]) -> str:
    """The HTML page: template, style, Plotly, data and the app, all inline (one pass, so
    that no inserted text is read as a placeholder)."""
    from plotly.offline import get_plotlyjs

    app = files("eebench.pipelines.analysis") / "explorer_app"
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # '</' inside a string of the data (a config) would end its script element early
    parts = {
        "STYLE": (app / "style.css").read_text(),
        "PLOTLY": get_plotlyjs(),
        "DATA": payload.replace("</", "<\\/"),
        "APP": (app / "app.js").read_text(),
        "TITLE": html.escape(f"eebench study {data['study']['name']}"),
    }
    template = (app / "index.html").read_text()
    return re.sub(r"/\*(STYLE|PLOTLY|DATA|APP|TITLE)\*/", lambda match: parts[match[1]], template)


# --------------------------------------------------------------------------- in a browser


def find_chromium() -> str | None:
    """A headless-capable Chromium: $EEBENCH_CHROMIUM, else the first of CHROMIUM_NAMES on
    the PATH (Debian's `chromium`, which `make test` installs)."""
    chosen = os.environ.get("EEBENCH_CHROMIUM")
    if chosen:
        return chosen
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@dataclass
class OfflinePage:
    """A page in headless Chromium, what it printed as console errors (uncaught exceptions
    too) and the requests it tried beyond its own file (refused: the network is blocked)."""

    page: Any
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@contextmanager
def offline_page(html_file: Path, width: int = 1600, height: int = 1000) -> Iterator[OfflinePage]:
    """Open an explorer in headless Chromium (through Playwright) with every request but
    the page's own file refused, and wait until its app has drawn everything."""
    browser_path = find_chromium()
    if browser_path is None:
        raise FileNotFoundError(
            "no Chromium found: install Debian's chromium (apt-get install chromium), or "
            "set EEBENCH_CHROMIUM to a Chromium or Chrome executable"
        )
    if find_spec("playwright") is None:
        raise FileNotFoundError("Playwright is missing: pip install -e '.[dev]' (make setup)")
    from playwright.sync_api import sync_playwright

    url = Path(html_file).resolve().as_uri()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            opened = OfflinePage(page)
            page.on("console", lambda message: _console(opened, message))
            page.on("pageerror", lambda error: opened.errors.append(str(error)))
            page.route("**/*", lambda route: _only_itself(route, url, opened))
            page.goto(url)
            page.wait_for_selector("body[data-ready='true']", timeout=60_000)
            yield opened
        finally:
            browser.close()


def _console(opened: OfflinePage, message: Any) -> None:
    if message.type == "error":
        opened.errors.append(message.text)


def _only_itself(route: Any, url: str, opened: OfflinePage) -> None:
    if route.request.url.split("#")[0] == url:
        route.continue_()
    else:
        opened.blocked.append(route.request.url)
        route.abort()


#: Pixel position of the middle point of a panel's trace (arguments: panel, trace index).
POINT_POSITION = """([panel, index]) => {
  const gd = document.querySelectorAll('#panels .js-plotly-plot')[panel];
  gd.scrollIntoView({ block: 'nearest' });
  const trace = gd.data[index], middle = Math.floor(trace.x.length / 2);
  const box = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  return [box.left + xa._offset + xa.c2p(trace.x[middle]),
          box.top + ya._offset + ya.c2p(trace.y[middle])];
}"""


def hover_point(page: Any, panel: int, index: int) -> Any:
    """Move the mouse onto the middle point of a trace; the tooltip that Plotly shows."""
    page.mouse.move(*page.evaluate(POINT_POSITION, [panel, index]))
    tooltip = page.locator(".hoverlayer .hovertext").first
    tooltip.wait_for()
    return tooltip


def screenshot(html_file: Path, out: Path) -> Path:
    """A PNG of an explorer's curves as first shown, one point's tooltip open (README)."""
    with offline_page(html_file, width=1500, height=950) as opened:
        first = opened.page.evaluate(
            "() => document.getElementById('panel-0').data.findIndex(t => t.hovertext)"
        )
        hover_point(opened.page, 0, first)
        out.parent.mkdir(parents=True, exist_ok=True)
        opened.page.screenshot(path=str(out))
        if opened.errors:
            raise RuntimeError(f"{html_file}: the page logged errors: {opened.errors}")
    return out
