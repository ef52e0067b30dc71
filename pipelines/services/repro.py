"""The reproducible CPU mode: same seed, same numbers, bit for bit, on any x86-64 with AVX2.

torch, oneDNN, MKL and NumPy each pick their CPU kernels by the instruction set they find,
and kernels of different widths (or thread counts) round differently; training turns that
rounding into points. Measured here (20 steps of msdnet_fmnist and ranet_fmnist, 1 thread):
every combination of ATEN_CPU_CAPABILITY (avx512/avx2/default) and ONEDNN_MAX_CPU_ISA
(native/AVX2/SSE41) gives other weights, 2 threads others than 1, MKL's numerical branch
others again, and NumPy's float32 exp/log/tanh differ between its AVX-512 and AVX2 loops.
The mode fixes all of them, in the environment, before torch or NumPy is loaded (`apply_env`,
called first by the `eebench` command, so by every Snakemake job and torchrun rank, and by
the tests' conftest), then threads and deterministic algorithms once torch is loaded
(`configure_torch`). It is on unless EEBENCH_REPRODUCIBLE=0; on a GPU it pins nothing of
the GPU, and the run records itself as not reproducible.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

#: Set EEBENCH_REPRODUCIBLE=0 (or false/off/no) to turn the mode off.
SWITCH = "EEBENCH_REPRODUCIBLE"
#: One thread per process: results would otherwise depend on the cores (1 vs 2 differ).
THREADS = 1
#: AVX2 (x86-64-v3): on every x86-64 CPU since 2013-2015, and within 1.1x of AVX-512 here.
ISA = "avx2"
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": ISA,  # ATen's own kernels (elementwise, BatchNorm, reductions)
    "ONEDNN_MAX_CPU_ISA": ISA.upper(),  # oneDNN (convolutions, pooling)
    "DNNL_MAX_CPU_ISA": ISA.upper(),  # the same, for older oneDNN builds
    "MKL_CBWR": ISA.upper(),  # MKL's conditional numerical reproducibility (GEMM: Linear)
    "MKL_ENABLE_INSTRUCTIONS": ISA.upper(),
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy/SciPy's OpenBLAS: its AVX2 kernels
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's own AVX-512 loops
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
}
MODE = f"cpu:isa={ISA},onednn={ISA},mkl_cbwr={ISA},threads={THREADS},deterministic"
ENVIRONMENT_FILE = "environment.json"


def enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether the mode is on (it is, unless EEBENCH_REPRODUCIBLE says 0/false/off/no)."""
    value = (os.environ if environ is None else environ).get(SWITCH, "1")
    return value.strip().lower() not in {"0", "false", "off", "no"}


def apply_env(environ: MutableMapping[str, str] | None = None) -> bool:
    """Pin the kernels' instruction set, BLAS branch and threads in the environment (over
    what the user set: a lower cap from outside gives the same numbers); True when on.
    Must run before torch or NumPy is imported: they read these once, when loaded."""
    environ = os.environ if environ is None else environ
    if not enabled(environ):
        return False
    if environ is os.environ and "torch" in sys.modules and not _pinned_already():
        raise RuntimeError(
            "the reproducible CPU mode must be set before torch is imported: call "
            "eebench.pipelines.services.repro.apply_env() first, or set EEBENCH_REPRODUCIBLE=0"
        )
    environ.update(PINNED_ENV)
    return True


def _pinned_already() -> bool:
    return all(os.environ.get(key) == value for key, value in PINNED_ENV.items())


def configure_torch(device: str, threads: int | None = None) -> None:
    """Threads and deterministic algorithms, once torch is loaded: the mode's on a CPU,
    else `threads` (the job's) when given."""
    import torch

    if enabled() and device == "cpu":
        torch.set_num_threads(THREADS)
        # The eager kernels' switch. torch.use_deterministic_algorithms also sets
        # inductor's, importing the compiler (~1.5 s of every job's start): a compiled
        # model sets that one itself (pipelines/training/engine.py).
        torch._C._set_deterministic_algorithms(True)
        # That switch also fills every new tensor with NaN (a debugging aid for kernels that
        # read memory they never wrote; 40 us per activation-sized torch.empty here). No
        # kernel of the suite reads it: the weights and outputs are the same bits without.
        torch.utils.deterministic.fill_uninitialized_memory = False
    elif threads:
        torch.set_num_threads(threads)


def environment(device: str) -> dict[str, Any]:
    """What the numbers of this process depend on; `reproducible` when the mode is on, on
    a CPU, and the kernels in use are the pinned ones (a CPU without AVX2 falls back)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().lower()
    reproducible = (
        enabled()
        and device == "cpu"
        and capability == ISA
        and torch.get_num_threads() == THREADS
        and torch.are_deterministic_algorithms_enabled()
    )
    return {
        "reproducible": reproducible,
        "mode": MODE if reproducible else f"off:{device},isa={capability}",
        "torch": str(torch.__version__),
        "device": device,
        "threads": torch.get_num_threads(),
        "aten_cpu_capability": capability,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),  # the allocator (same numbers)
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_environment(run_dir: Path, stage: str, device: str) -> dict[str, Any]:
    """Write the run's environment.json: this process's environment, and every stage's mode
    (`stages`); the run is reproducible only if every stage ran under this same mode."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    stages = json.loads(path.read_text()).get("stages", {}) if path.exists() else {}
    record = environment(device)
    stages[stage] = record["mode"] if record["reproducible"] else "off"
    record["reproducible"] = record["reproducible"] and set(stages.values()) == {record["mode"]}
    record["stages"] = dict(sorted(stages.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record
