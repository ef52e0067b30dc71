"""Which of the reproducible CPU mode's pins matter: `eebench repro-check` with one pin
removed or changed at a time.

Each row runs the check in a fresh process with EEBENCH_REPRODUCIBLE=0 (so the mode does
not override the environment) and the mode's environment (pipelines/services/repro.py) set by hand
but for the row's change; deterministic algorithms are off in every row. The first row
(every pin) must give the committed hashes: 0 runs differ. A row with runs that differ is
a source of non-identity that its pin removes. Results:
`benchmarks/results/repro_sources.txt`.

    python benchmarks/repro_sources.py
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from eebench.pipelines.services.repro import PINNED_ENV, SWITCH

OUT = Path(__file__).resolve().parent / "results" / "repro_sources.txt"
#: Row name → the environment changes (None: unset, so the library picks by this CPU).
CASES: dict[str, dict[str, str | None]] = {
    "every pin": {},
    "ATen native (AVX-512 here)": {"ATEN_CPU_CAPABILITY": None},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN native": {"ONEDNN_MAX_CPU_ISA": None, "DNNL_MAX_CPU_ISA": None},
    "oneDNN SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"},
    "MKL native": {"MKL_CBWR": None, "MKL_ENABLE_INSTRUCTIONS": None},
    "MKL COMPATIBLE": {"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": None},
    "NumPy with AVX-512": {"NPY_DISABLE_CPU_FEATURES": None},
    "OpenBLAS native": {"OPENBLAS_CORETYPE": None},
    "2 threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"},
}


def check_with(change: dict[str, str | None]) -> str:
    """The check's verdict (how many runs differ) under the mode's pins plus `change`."""
    env = {key: value for key, value in os.environ.items() if key not in PINNED_ENV}
    env.update({**PINNED_ENV, SWITCH: "0", "OMP_WAIT_POLICY": "PASSIVE"})
    for key, value in change.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    result = subprocess.run(["eebench", "repro-check"], env=env, capture_output=True, text=True)
    found = re.search(r"\d+ of \d+ runs differ \([^)]*\)", result.stdout)
    return found.group(0) if found else (result.stdout + result.stderr).strip()[-300:]


def main() -> None:
    lines = []
    for name, change in CASES.items():
        lines.append(f"{name:28s} {check_with(change)}")
        print(lines[-1], flush=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
