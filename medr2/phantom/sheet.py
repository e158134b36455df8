"""Figures and bundled examples from phantom studies: the contact sheet and `assets/examples/{phantom,rendered}_*`.

`contact_sheet` draws a grid of studies with every finding's mask outlined in its own colour and the
labels as captions (docs/phantom_contact_sheet.png). `write_examples` writes a few studies as PNG + ground
truth JSON (no masks) for the app's example gallery: `phantom_*` drawn films, `rendered_*` films projected from the
real chest CT (docs/drr.md). Regenerate them with:

    python -m medr2.phantom.sheet --sheet docs/phantom_contact_sheet.png --examples assets/examples
    python -m medr2.phantom.sheet --renderer drr --examples assets/examples      # the rendered examples only
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


EXAMPLE_PREFIX = {"procedural": "phantom", "drr": "rendered"}  # file names of the bundled examples per renderer
EXAMPLE_NOTE = {
    "procedural": "synthetic phantom (medr2.phantom.generator, default config); regenerate with generate_study(seed)",
    "drr": "synthetic findings on a film projected from a real chest CT (medr2.phantom.drr, docs/drr.md); regenerate "
           "with generate_study(seed, PhantomConfig(renderer='drr'))",
}


def write_examples(out_dir: str | Path, seeds: dict[str, int], config: PhantomConfig | None = None) -> list[Path]:
    """`<prefix>_<name>.png` + `<prefix>_<name>.json` (ground truth without masks) per example; the prefix is
    `phantom` for drawn films, `rendered` for films projected from the CT."""
    from PIL import Image

    config = config or PhantomConfig()
    prefix = EXAMPLE_PREFIX[config.renderer]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, seed in seeds.items():
        st = generate_study(seed, config)
        Image.fromarray(st.image).save(out / f"{prefix}_{name}.png")
        gt = {**st.ground_truth(), "renderer": config.renderer, "note": EXAMPLE_NOTE[config.renderer]}
        (out / f"{prefix}_{name}.json").write_text(json.dumps(gt, indent=1))
        written.append(out / f"{prefix}_{name}.png")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Phantom contact sheet and bundled examples.")
    ap.add_argument("--sheet", default="docs/phantom_contact_sheet.png")
    ap.add_argument("--examples", default="assets/examples")
    ap.add_argument("--seed", type=int, default=2024, help="base seed of the contact-sheet studies")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--renderer", choices=tuple(EXAMPLE_PREFIX), default="procedural",
                    help="procedural: the contact sheet and phantom_* examples; drr: the rendered_* examples only "
                         "(their contact sheet is python -m medr2.phantom.drr_figures)")
    args = ap.parse_args(argv)
    from medr2.phantom.generator import film_config, generate_studies

    config = film_config(args.renderer)
    if args.renderer == "procedural":
        contact_sheet(list(generate_studies(args.n, args.seed)), args.sheet)
    seeds = pick_example_seeds(EXAMPLE_KINDS, config)
    write_examples(args.examples, seeds, config)
    sheet = f"{args.sheet} and " if args.renderer == "procedural" else ""
    print(f"wrote {sheet}{len(seeds)} {EXAMPLE_PREFIX[args.renderer]} examples to {args.examples}: {seeds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
