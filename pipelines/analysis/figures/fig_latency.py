"""Real early exit measured (beyond the paper): per backbone, the speed-up over running every
exit that the wall clock shows against the one FLOPs predict, at each timed budget of
`tables/latency.csv` (`eebench latency`), in batch mode (each batch on its own), pooled mode
(throughput: the samples that go on are pooled across batches) and stream mode (one sample
at a time). On the diagonal, time follows FLOPs; the dotted line is 0.7 of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    StudyTables,
    backbone_label,
    caption,
    display_of,
    finish,
    new_figure,
    note,
    save,
)

NAME = "fig_latency"
MODE_FILLS = {"batch": "full", "pooled": "left", "stream": "none"}
MODE_LINES = {"batch": "-", "pooled": ":", "stream": "--"}
GOAL = 0.7  # of the predicted speed-up, at half the full cost, batch mode (the suite's goal)
NOTE = (
    "Measured wall-clock speed-up of real early exit (samples leave the batch at their exit) "
    "over running every exit, against the speed-up FLOPs predict (last exit's MFLOPs / mean "
    "MFLOPs per sample), at each timed budget; batch = eval batches each on its own, pooled = "
    "throughput with the samples that go on pooled across batches, stream = one sample at a "
    "time; warm-up excluded; diagonal: time follows FLOPs, "
    f"dotted: {GOAL} of it; one seed, one machine (timings are not averaged over seeds)"
)


def _draw_panel(ax: Axes, rows: pd.DataFrame) -> None:
    top = float(max(rows["predicted_speedup"].max(), rows["measured_speedup"].max())) * 1.08
    line = np.array([1.0, top])
    ax.plot(line, line, color="0.4", linewidth=0.8)
    ax.plot(line, 1 + GOAL * (line - 1), color="0.4", linewidth=0.8, linestyle=":")
    for (method, variant, mode), points in rows.groupby(["method", "variant", "mode"]):
        display = display_of(method, variant)
        points = points.sort_values("predicted_speedup")
        ax.plot(
            points["predicted_speedup"],
            points["measured_speedup"],
            color=display.color,
            marker=display.marker,
            fillstyle=MODE_FILLS.get(mode, "full"),
            linestyle=MODE_LINES.get(mode, "-"),
            label=f"{display.label} ({mode})",
        )
    ax.set_xlim(1.0, top)
    ax.set_ylim(min(1.0, float(rows["measured_speedup"].min()) * 0.95), top)
    ax.set_xlabel("speed-up predicted by FLOPs (×)")
    ax.set_ylabel("measured speed-up (×)")


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    latency = tables.latency
    panels = list(dict.fromkeys(zip(latency["dataset"], latency["backbone"], strict=True)))
    fig, axes = new_figure(max(len(panels), 1))
    for ax, (dataset, backbone) in zip(axes, panels, strict=False):
        rows = latency[(latency["dataset"] == dataset) & (latency["backbone"] == backbone)]
        device = ", ".join(
            sorted(
                {f"{d}, {t} threads" for d, t in zip(rows["device"], rows["threads"], strict=True)}
            )
        )
        _draw_panel(ax, rows)
        ax.set_title(f"{backbone_label(backbone)} ({device})")
    if not panels:
        note(
            axes[0], "no real early exit timed in this study\n(its config has no `latency` section)"
        )
    finish(fig, axes, f"{caption(tables, tables.datasets, intervals=False)}. {NOTE}")
    return save(fig, out, NAME, latency)
