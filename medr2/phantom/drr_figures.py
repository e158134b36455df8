"""Figures of the rendered films: a contact sheet covering every finding kind, and one film beside RG1.

    python -m medr2.phantom.drr_figures --sheet docs/figures/drr_contact_sheet.png --rg1 docs/figures/drr_vs_rg1.png

The sheet shows 24 rendered studies (seed 3, the test seed): one per finding kind first (subtle ones excluded so
the sign is readable), then ordinary mixed studies, each finding's mask outlined in its kind's colour. RG1 is the
one real film available (pydicom-data's RG1_UNCI.dcm, a PA chest radiograph with round masses in both lungs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medr2.phantom.generator import study_seed
from medr2.phantom.sheet import contact_sheet
from medr2.phantom.specs import OBSERVATION_OF, PhantomConfig


def sheet_studies(seed: int = 3, size: int = 256) -> list:
    from medr2.phantom.drr import render_study

    studies = []
    for i, kind in enumerate(sorted(OBSERVATION_OF)):
        cfg = PhantomConfig(size=size, normal_fraction=0.0, prevalence={kind: 1.0}, subtle_fraction=0.0, renderer="drr")
        studies.append(render_study(study_seed(seed, 1000 + i), cfg))
    i = 0
    while len(studies) < 24:
        studies.append(render_study(study_seed(seed, i), PhantomConfig(size=size, renderer="drr")))
        i += 1
    return studies


def rg1_pixels() -> np.ndarray | None:
    """RG1 as 8-bit (bright = dense), or None when pydicom-data is not installed."""
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return None
    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        return None
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.float32)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        px = px.max() - px
    lo, hi = np.percentile(px, [0.5, 99.5])
    return (np.clip((px - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def beside_rg1(path: str | Path, seed: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medr2.phantom.drr import render_study

    cfg = PhantomConfig(size=512, normal_fraction=0.0, prevalence={"mass": 1.0}, subtle_fraction=0.0, renderer="drr")
    st = render_study(study_seed(seed, 2000), cfg)
    rg1 = rg1_pixels()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    axes[0].imshow(st.image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"rendered ({st.study_id}): {st.impression_text}", fontsize=8, loc="left")
    if rg1 is not None:
        axes[1].imshow(rg1, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title("RG1 (real PA film, pydicom-data): round masses in both lungs", fontsize=8, loc="left")
    for ax in axes:
        ax.axis("off")
        ax.text(0.02, 0.97, "R", color="white", fontsize=10, fontweight="bold", transform=ax.transAxes, va="top")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sheet", default="docs/figures/drr_contact_sheet.png")
    ap.add_argument("--rg1", default="docs/figures/drr_vs_rg1.png")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    contact_sheet(sheet_studies(args.seed), args.sheet, cols=6)
    beside_rg1(args.rg1, args.seed)
    print(f"wrote {args.sheet} and {args.rg1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
