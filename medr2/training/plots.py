"""Training curves as PNG, one helper for every stage (stage-0 losses, SFT loss, GRPO reward / KL / length).

Each stage turns its own log into named series and hands them here; the figure layout is the same everywhere:
one panel per entry of `panels`, step on the x axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Panel:
    """One subplot: `series` maps a legend label to (steps, values); `log_y` for losses spanning decades;
    `smooth` > 1 draws a moving average over that many points (noisy per-step losses)."""

    title: str
    series: dict[str, tuple[list, list]] = field(default_factory=dict)
    ylabel: str = ""
    log_y: bool = False
    smooth: int = 1


def _smoothed(steps: list, values: list, window: int) -> tuple[list, list]:
    if window <= 1 or len(values) < window:
        return steps, values
    avg = np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")
    return list(steps[len(steps) - len(avg):]), list(avg)


def plot_panels(path: str | Path, panels: list[Panel], *, width: float = 6.0, height: float = 3.5) -> bool:
    """Draw `panels` side by side into `path`. Returns False (and writes nothing) when no panel has a point."""
    panels = [p for p in panels if any(len(v[0]) for v in p.series.values())]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels) if len(panels) == 1 else 4 * len(panels), height),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, (steps, values) in panel.series.items():
            ax.plot(*_smoothed(list(steps), list(values), panel.smooth), label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title)
        if panel.log_y:
            ax.set_yscale("log")
        if len(panel.series) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
