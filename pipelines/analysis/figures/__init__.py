"""Figures of a study (the paper's §4: Figures 2–5 and Table 1), drawn from its tables/.

`build_figures` reads the tables that `tables.build_tables` wrote and draws, under
`<study dir>/figures/`, every registered figure as PNG and PDF beside a CSV of exactly
the points drawn (Table 1 also as Markdown and LaTeX). Each figure is one module of this
package that registers its draw function with `register_figure`, and has its caption in
`report/<name>.rst`; adding a figure = one module + its caption file.

Figures never name a method, variant or backbone: a run is drawn in the figures its
method's `Display` lists, in its colour and marker; an exit rule says how its curves are
drawn; backbones and datasets give their own labels. Several seeds give the mean with a
±std band. A method or dataset absent from the study leaves a panel with a note, never
an error.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import seaborn as sns

from eebench.pipelines.analysis.figures.common import StudyTables, load_tables
from eebench.pipelines.services.registry import Registry

#: A figure's draw function: it writes its files under `out` and returns their paths.
Draw = Callable[[StudyTables, Path], list[Path]]
#: What most figures write: the image twice and the points drawn.
IMAGE_FILES: tuple[str, ...] = ("png", "pdf", "csv")


@dataclass(frozen=True)
class FigureEntry:
    """A registered figure: its name, the extensions of the files it writes, its draw function."""

    name: str
    extensions: tuple[str, ...]
    draw: Draw

    @property
    def files(self) -> tuple[str, ...]:
        """The file names it writes under figures/ (the Snakefile declares them as outputs)."""
        return tuple(f"{self.name}.{ext}" for ext in self.extensions)

    @property
    def caption(self) -> Path:
        """Its caption in the Snakemake report, relative to the repository root."""
        return Path("report") / f"{self.name}.rst"


FIGURES: Registry[FigureEntry] = Registry("figure")


def register_figure(name: str, extensions: tuple[str, ...] = IMAGE_FILES) -> Callable[[Draw], Draw]:
    """Decorator: register a draw function as the figure `name` writing `name`.<extension>."""

    def add(draw: Draw) -> Draw:
        FIGURES.register(name)(FigureEntry(name, extensions, draw))
        return draw

    return add


# Every module of the package registers its figure (the registry above must exist first).
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")

FIGURE_NAMES: tuple[str, ...] = tuple(FIGURES.names())
#: Every file `build_figures` writes under figures/ (the Snakefile declares them as outputs).
FIGURE_FILES: tuple[str, ...] = tuple(
    file for name in FIGURE_NAMES for file in FIGURES.get(name).files
)


def build_figures(study: dict[str, Any], results_root: str | Path) -> list[Path]:
    """Draw every registered figure under `results_root`/figures and return the paths written.

    `results_root` is the study's folder `results/<study>/`; its tables/ must exist.
    """
    root = Path(results_root)
    tables = load_tables(study, root)
    out = root / "figures"
    theme = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.25)}
    with mpl.rc_context(theme):
        return [path for name in FIGURE_NAMES for path in FIGURES.get(name).draw(tables, out)]


__all__ = [
    "FIGURES",
    "FIGURE_FILES",
    "FIGURE_NAMES",
    "FigureEntry",
    "build_figures",
    "register_figure",
]
