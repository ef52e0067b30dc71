"""A new user's three method files (tests/extension_examples/: a train-time method with a
variant, a post-hoc method and an exit rule computing its own score), dropped into
`methods/` of a copy of the checkout with nothing else touched: a tiny study runs them
through Snakemake, they reach the tables and every figure of their kind with distinct
labels and colours, and editing one file reruns exactly its runs and the runs built on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_study_data
from tests.test_workflow import job_counts

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).parent / "extension_examples"
PACKAGES = ("methods", "backbones", "pipelines", "recipes", "reference")
STUDY = tiny_study_data(
    [
        {"method": "standard"},
        {"method": "distill", "variants": ["", "strong"]},
        {"method": "exit_temperature", "source": "distill"},  # built on distill's run
    ],
    name="tiny",
)
RUNS = {("standard", ""), ("distill", ""), ("distill", "strong"), ("exit_temperature", "")}


class Checkout:
    """A copy of the repository whose packages the `eebench` of this venv imports (through
    PYTHONPATH, ahead of the editable install), with the example files in its methods/."""

    def __init__(self, root: Path) -> None:
        self.repo, site = root / "checkout", root / "site" / "eebench"
        site.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__")
        for name in (*PACKAGES, "workflow", "report"):
            shutil.copytree(REPO / name, self.repo / name, ignore=ignore)
        for name in PACKAGES:
            (site / name).symlink_to(self.repo / name)
        shutil.copy(REPO / "Snakefile", self.repo / "Snakefile")
        for example in EXAMPLES.glob("*.py"):
            shutil.copy(example, self.repo / "methods" / example.name)
        self.env = {**os.environ, "PYTHONPATH": str(site.parent)}
        self.config = self.repo / "tiny.yaml"
        self.config.write_text(yaml.safe_dump(STUDY))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, *args]
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=self.repo, env=self.env, timeout=900
        )
        assert not check or result.returncode == 0, result.stdout + result.stderr
        return result

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "-m", "snakemake", "--cores", "2", "--configfile", str(self.config), *args, check=check
        )

    @property
    def results(self) -> Path:
        return self.repo / "results" / "tiny"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    made = Checkout(tmp_path_factory.mktemp("new_methods"))
    made.snakemake()
    return made


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["method"], frame["variant"].fillna(""), strict=True))


def figure_rows(checkout: Checkout, name: str) -> pd.DataFrame:
    frame = pd.read_csv(checkout.results / "figures" / f"{name}.csv", dtype={"variant": str})
    return frame[frame["source"] == "ours"]


def test_every_run_reaches_the_tables_and_the_entropy_rule_applies_to_each(
    checkout: Checkout,
) -> None:
    budgeted = pd.read_csv(checkout.results / "tables/budgeted.csv", dtype={"variant": str})
    assert pairs(budgeted) == RUNS
    entropy = budgeted[budgeted["policy"] == "entropy"]
    assert pairs(entropy) == RUNS  # standard included: the rule computes its own score
    assert entropy.groupby(["method", "variant"], dropna=False).size().eq(39).all()


def test_every_run_is_in_every_figure_of_its_kind(checkout: Checkout) -> None:
    train = RUNS - {("exit_temperature", "")}
    for name in ("fig2_anytime", "fig3_budgeted", "fig5_imagenet"):
        assert pairs(figure_rows(checkout, name)) == train, name
    assert "entropy" in set(figure_rows(checkout, "fig3_budgeted")["policy"])
    assert ("exit_temperature", "") in pairs(figure_rows(checkout, "fig4_posthoc"))


def test_labels_and_colours_are_distinct(checkout: Checkout) -> None:
    script = (
        "import json, sys; from pathlib import Path; import yaml\n"
        "from eebench.pipelines.analysis.figures.common import STUDY_STYLES, load_tables\n"
        "load_tables(yaml.safe_load(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))\n"
        "print(json.dumps([[d.label, d.color] for d in STUDY_STYLES.values()]))"
    )
    shown = json.loads(
        checkout.run("-c", script, str(checkout.config), str(checkout.results)).stdout
    )
    labels, colours = zip(*shown, strict=True)
    assert len(shown) == len(RUNS)
    assert len(set(labels)) == len(labels) and len(set(colours)) == len(colours), shown
    assert "distill [strong]" in labels


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("distill.py", {"train": 2, "evaluate": 2, "calibrate": 1}),
        ("exit_temperature.py", {"calibrate": 1}),
        ("entropy.py", {"evaluate": 3, "calibrate": 1}),
    ],
)
def test_editing_a_method_file_reruns_its_runs_and_the_runs_built_on_them(
    checkout: Checkout, file: str, expected: dict[str, int]
) -> None:
    path = checkout.repo / "methods" / file
    original = path.read_text()
    path.write_text(original + "\n# a fix\n")
    try:
        planned = job_counts(checkout.snakemake("-n").stdout)
    finally:
        path.write_text(original)
    assert planned == {
        **expected,
        "tables": 1,
        "figures": 1,
        "explorer": 1,
        "all": 1,
        "total": planned["total"],
    }
    assert "Nothing to be done" in checkout.snakemake("-n").stdout


def test_a_broken_method_file_stops_only_the_studies_that_use_it(checkout: Checkout) -> None:
    broken = checkout.repo / "methods" / "half_written.py"
    broken.write_text("def oops(:\n")
    try:
        assert "Nothing to be done" in checkout.snakemake("-n").stdout
        using = {**STUDY, "runs": [{"method": "half_written"}]}
        config = checkout.repo / "broken.yaml"
        config.write_text(yaml.safe_dump(using))
        result = checkout.run("-m", "snakemake", "-n", "--configfile", str(config), check=False)
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert "not loaded: methods/half_written.py (SyntaxError" in result.stdout + result.stderr
