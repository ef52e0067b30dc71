"""benchmarks/compile_cache.py's pure parts: the jobs it times are the evidence study's
`standard` run, eager or compiled, and nothing else differs between the two."""

from __future__ import annotations

import pytest
import torch

from eebench.pipelines.workflow.config import check_study, expand_runs, resolve_run
from tests.benchmark_scripts import load_benchmark


@pytest.mark.parametrize("backbone", ["msdnet_fmnist", "ranet_fmnist"])
def test_eager_and_compiled_jobs_differ_only_in_compilation(backbone: str) -> None:
    bench = load_benchmark("compile_cache")
    resolved = {}
    for compiled in (False, True):
        study = bench.study(backbone, 10000, 3, compiled)
        study = check_study(study, study_checks=False)
        (spec,) = expand_runs(study)
        assert spec.path == f"runs/fashion_mnist/{backbone}/standard/seed0"
        resolved[compiled] = resolve_run(study, spec)
    eager, compiled_run = resolved[False], resolved[True]
    assert (eager["recipe"]["compile"], compiled_run["recipe"]["compile"]) == (False, True)
    assert eager["recipe"]["epochs"] == 3 and eager["train_subset"] == 10000
    compiled_run["recipe"]["compile"] = False
    assert eager == compiled_run


def test_weights_are_the_same_only_when_every_tensor_is() -> None:
    bench = load_benchmark("compile_cache")
    a = {"w": torch.ones(2), "b": torch.zeros(1)}
    assert bench.same_weights(a, {"w": torch.ones(2), "b": torch.zeros(1)})
    assert not bench.same_weights(a, {"w": torch.ones(2), "b": torch.full((1,), 1e-7)})
    assert not bench.same_weights(a, {"w": torch.ones(2)})
