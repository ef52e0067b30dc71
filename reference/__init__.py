"""What the paper reports and claims (Addad et al. 2024, §4 and Table 1), as package data.

- `paper_reported.csv`, a copy of shared/reference/paper_reported.csv: its numbers; tables
  and figures overlay and compare them with our runs.
- `paper_claims.csv`: shared/reference/paper_claims.csv (claims C1–C16, its columns
  unchanged) plus the columns that say how the suite tests each claim (`compare_runs`,
  `against_runs`, `statistic`, `aggregate`, `expect`, `margin`, `budget_from`, `rule`;
  docs/protocol.md, "Claims"); `pipelines/analysis/claims.py` reads them, never a method's name.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


def _text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text()


@cache
def paper_reported_csv() -> str:
    """The text of paper_reported.csv."""
    return _text("paper_reported.csv")


@cache
def paper_claims_csv() -> str:
    """The text of paper_claims.csv."""
    return _text("paper_claims.csv")
