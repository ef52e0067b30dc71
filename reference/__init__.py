"""Numbers the paper reports (Addad et al. 2024, §4 and Table 1), shipped as package data.

`paper_reported.csv` is a copy of shared/reference/paper_reported.csv; tables and figures
overlay and compare it with our runs.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def paper_reported_csv() -> str:
    """The text of paper_reported.csv."""
    return resources.files(__name__).joinpath("paper_reported.csv").read_text()
