"""Figures and bundled examples from phantom studies: the contact sheet and `assets/examples/phantom_*`.

`contact_sheet` draws a grid of studies with every finding's mask outlined in its own colour and the
labels as captions (docs/phantom_contact_sheet.png). `write_examples` writes a few studies as PNG + ground
truth JSON (no masks) for the app's example gallery. Regenerate both with:

    python -m medr2.phantom.sheet --sheet docs/phantom_contact_sheet.png --examples assets/examples
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medr2.phantom.generator import PhantomConfig, Study, generate_study

log = logging.getLogger(__name__)

# One colour per finding kind (tab20-like, readable on a grey film).
KIND_COLOURS = {
    "effusion": "#1f77b4", "pneumothorax": "#ff7f0e", "consolidation": "#2ca02c", "pneumonia": "#98df8a",
    "opacity": "#bcbd22", "atelectasis": "#17becf", "edema": "#9467bd", "nodule": "#d62728", "mass": "#ff9896",
    "fracture": "#e377c2", "pleural_thickening": "#8c564b", "cardiomegaly": "#f7b6d2", "widened_mediastinum": "#c5b0d5",
    "ett": "#ffbb78", "central_line": "#aec7e8", "ng_tube": "#dbdb8d", "pacemaker": "#9edae5", "sternotomy": "#c49c94",
}
# The bundled examples: one study each (default config, first matching seed; see `pick_example_seeds`).
EXAMPLE_KINDS = ("normal", "effusion", "pneumothorax", "cardiomegaly", "nodule", "consolidation")


def caption(study: Study) -> str:
    parts = []
    for f in study.findings:
        where = " ".join(x for x in (f.side, f.zone) if x)
        tag = f"{f.kind}{' (' + where + ')' if where else ''}{'?' if f.code == -1 else ''}{' [subtle]' if f.subtle else ''}"
        parts.append(tag)
    return "\n".join(parts) if parts else "normal"


def contact_sheet(studies: Sequence[Study], path: str | Path, cols: int = 4) -> Path:
    """Grid of studies with mask outlines coloured per finding kind and the findings as captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(studies) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.75 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, st in zip(axes.ravel(), studies):
        ax.imshow(st.image, cmap="gray", vmin=0, vmax=255)
        for f in st.findings:
            if f.mask.any():
                ax.contour(f.mask.astype(float), levels=[0.5], colors=[KIND_COLOURS[f.kind]], linewidths=0.9)
        ax.text(3, 12, "R", color="white", fontsize=8, fontweight="bold")  # patient right = image left
        ax.set_title(caption(st), fontsize=7, loc="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_example_seeds(wanted: Sequence[str], config: PhantomConfig | None = None, limit: int = 3000) -> dict[str, int]:
    """First seed (from 1) whose study shows exactly one wanted kind (or is normal), not subtle, positive."""
    found: dict[str, int] = {}
    for seed in range(1, limit):
        st = generate_study(seed, config)
        kinds = {f.kind for f in st.findings}
        if not kinds and "normal" in wanted and "normal" not in found:
            found["normal"] = seed
        elif len(st.findings) == 1 and st.findings[0].kind in wanted and st.findings[0].kind not in found:
            f = st.findings[0]
            if not f.subtle and f.code == 1 and f.severity not in ("small", "mild"):
                found[f.kind] = seed
        if len(found) == len(wanted):
            break
    return found


def write_examples(out_dir: str | Path, seeds: dict[str, int]) -> list[Path]:
    """`phantom_<name>.png` + `phantom_<name>.json` (ground truth without masks) per example."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, seed in seeds.items():
        st = generate_study(seed)
        Image.fromarray(st.image).save(out / f"phantom_{name}.png")
        gt = {**st.ground_truth(), "note": "synthetic phantom (medr2.phantom.generator, default config); regenerate with generate_study(seed)"}
        (out / f"phantom_{name}.json").write_text(json.dumps(gt, indent=1))
        written.append(out / f"phantom_{name}.png")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Phantom contact sheet and bundled examples.")
    ap.add_argument("--sheet", default="docs/phantom_contact_sheet.png")
    ap.add_argument("--examples", default="assets/examples")
    ap.add_argument("--seed", type=int, default=2024, help="base seed of the contact-sheet studies")
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args(argv)
    from medr2.phantom.generator import generate_studies

    contact_sheet(list(generate_studies(args.n, args.seed)), args.sheet)
    seeds = pick_example_seeds(EXAMPLE_KINDS)
    write_examples(args.examples, seeds)
    print(f"wrote {args.sheet} and {len(seeds)} examples to {args.examples}: {seeds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
