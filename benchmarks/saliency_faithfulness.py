"""Is the saliency faithful? Pointing game, energy-in-mask and deletion on held-out phantoms with masks.

For each held-out phantom study (seed 3) the model writes its report; every finding it reports that is
also in the ground truth (a true positive, so a mask exists) is explained by each method on the same
targets, and scored per finding type:
- pointing game: the heatmap's maximum lies inside the finding's mask dilated by `tol` patches
  (tol 0 = strict, tol 1 = one vision patch, the map's own resolution);
- energy in mask: the fraction of the heatmap's mass inside the (undilated) mask; `area` is what a
  uniform map would get;
- deletion: occluding the 10 % most salient patches (set to the normalisation mean) must lower the
  finding's log-probability more than occluding 10 % random patches.
Baselines in the same run: `random` (a seeded random map) and `center` (a centred Gaussian prior).
Model or attribution? Each true positive is also split by whether the model's report states the finding's
side and zone correctly (`evaluate.stated_location` against the reference): a faithful map of a finding the
model misplaced points where the model looked, not at the mask.
Extra variants (default method only) compare the explained layer (all vision blocks fused with the model's
per-finding block weights from its `saliency.json`, the default; `uniform`: all blocks with equal weight;
the last block alone; the projector) and the target: a finding's report sentences + the perception line where its sign was read (the default), the
report sentences alone (`report-only`), the perception line alone (`perception`), draft + report.

Run (the embedded model; ~25 min on one thread for n=300; `--renderer drr` for films projected from the CT):
  python benchmarks/saliency_faithfulness.py --model assets/model --n 300
-> table on stdout, JSON in benchmarks/results/saliency_faithfulness.json, figure docs/saliency_overlays.png.
`--source reference` teacher-forces the ground-truth trace instead of the model's own (for development
on an untrained model: numbers then say nothing about faithfulness).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medr2 import saliency as S
from medr2.evaluation.evaluate import stated_location
from medr2.inference.pipeline import Pipeline, PipelineConfig
from medr2.phantom.generator import DEVICE_KINDS, film_config, generate_studies
from medr2.phantom.specs import DRR_FRACTION_HELP, RENDERER_HELP, RENDERERS, PhantomConfig
from medr2.report.traces import region_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_saliency import reference_result  # noqa: E402

logger = logging.getLogger("saliency_faithfulness")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "saliency_faithfulness.json"
FIGURE = ROOT / "docs" / "saliency_overlays.png"
FOCAL = ("nodule", "effusion", "pneumothorax", "consolidation", "fracture", "devices")  # the target set
DELETE_FRACTION = 0.10


def finding_type(kinds: list[str]) -> str:
    return "devices" if all(k in DEVICE_KINDS for k in kinds) else kinds[0]


def generate(pipe: Pipeline, studies, batch: int) -> list:
    """Batched greedy generation; each result keeps its own single-image inputs for saliency."""
    out = []
    for i in range(0, len(studies), batch):
        out += pipe.run_batch([s.image for s in studies[i:i + batch]], batch_size=batch, keep_saliency_inputs=True)
        logger.info("generated %d/%d", len(out), len(studies))
    return out


def ground_truth(study, key=lambda f: f.observation) -> dict[str, tuple[str, np.ndarray]]:
    """key (observation, or perception region) -> (finding type, union mask) of the study's findings."""
    kinds, masks = defaultdict(list), {}
    for f in study.findings:
        kinds[key(f)].append(f.kind)
        masks[key(f)] = masks.get(key(f), np.zeros_like(f.mask)) | f.mask
    return {k: (finding_type(kinds[k]), masks[k]) for k in kinds}


def targets_with_truth(text: str, result, study, sections: tuple[str, ...]) -> list[tuple]:
    """(Target, type, mask) for each reported true-positive finding; sections=("perception",) explains
    instead the abnormal perception line of each finding's region (e.g. "right lung, upper zone")."""
    if sections == ("perception",):
        gt = ground_truth(study, key=region_of)
        found = [t for t in S.locate_targets(text, result.final_labels) if t.kind == "perception"]
    else:  # ("report-only",): the report sentences without the perception line where the sign was read
        gt = ground_truth(study)
        evidence = sections != ("report-only",)
        sections = ("report",) if not evidence else sections
        found = [t for t in S.locate_targets(text, result.final_labels, include_perception=False, sections=sections,
                                             with_perception_evidence=evidence) if t.kind == "finding"]
    return [(t, *gt[t.name]) for t in found if t.name in gt]


def score_map(grid: np.ndarray, mask: np.ndarray, patch_px: float) -> dict:
    """Pointing (strict / within one patch), energy in mask, and energy in the patches the mask touches
    (`energy_cells`: fair to a coarse grid when masks are smaller than a patch; uniform map = `cells`)."""
    g = S.normalise(grid)
    touched = _cells_touched(mask, g.shape)
    heat = S.upsample(g, mask.shape)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    dist = ndimage.distance_transform_edt(~mask)  # px from each pixel to the mask
    total = float(heat.sum())
    return {"point0": float(dist[peak] == 0), "point1": float(dist[peak] <= patch_px),
            "energy": float((heat * mask).sum() / total) if total > 0 else 0.0, "area": float(mask.mean()),
            "energy_cells": float((g * touched).sum() / g.sum()) if g.sum() > 0 else 0.0, "cells": float(touched.mean())}


def weak_evidence(target, grid: np.ndarray, mask: np.ndarray) -> float | None:
    """1.0 when the evidence check would flag this true-positive finding (0.0 if not; None: no check)."""
    region = S.plausible_region(target.name, target.text, mask.shape) if target.kind == "finding" else None
    return None if region is None else float(S.evidence_share(S.upsample(S.normalise(grid), mask.shape), region) < S.EVIDENCE_MIN)


def _cells_touched(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[gh, gw] bool: grid cells that contain any mask pixel."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    out = np.zeros(shape, dtype=bool)
    out[(ys * shape[0]) // h, (xs * shape[1]) // w] = True
    return out


def deletion(pipe, inputs, new_ids, weights, grids: dict[str, np.ndarray], k: int, rng, layer: str) -> dict:
    """Log-prob drop of target k when its top-10 % cells (per method) or 10 % random cells are occluded."""
    model = pipe.model
    g = next(iter(grids.values()))[k]
    n_cells = max(1, math.ceil(DELETE_FRACTION * g.size))
    variants = {}
    for method, maps in grids.items():
        if method == "random":
            continue
        cells = np.zeros(g.size, dtype=bool)
        cells[np.argsort(-maps[k].reshape(-1), kind="stable")[:n_cells]] = True
        variants[method] = cells.reshape(g.shape)
    cells = np.zeros(g.size, dtype=bool)
    cells[rng.choice(g.size, n_cells, replace=False)] = True
    variants["random"] = cells.reshape(g.shape)
    pixels = torch.cat([inputs["pixel_values"]] + [S.occlude(model, inputs, c, layer) for c in variants.values()])
    with torch.no_grad():
        scores = (S.token_logprobs(model, inputs, new_ids, pixels) * weights[k]).sum(-1).tolist()
    return {m: scores[0] - s for m, s in zip(variants, scores[1:])}


def located(study, result, observation: str) -> bool | None:
    """Does the model's report state the side and zone the reference states? None: the reference states none."""
    ref_sides, ref_zones = stated_location(study.report, observation)
    if not ref_sides and not ref_zones:
        return None
    report = result.output.report.text if result.output.report else ""
    sides, zones = stated_location(report, observation)
    return (not ref_sides or sides == ref_sides) and (not ref_zones or zones == ref_zones)


def resolve_layer(pipe, layer: str) -> tuple[str, dict | None]:
    """A variant's layer -> (medr2.saliency.maps layer, depth weights): "blocks" uses the model's per-finding
    weights (what `Pipeline.saliency` shows users), "uniform" fuses every block with weight 1."""
    if layer == "uniform":
        return "blocks", None
    return layer, (pipe.saliency_config.get("depth_weights") if layer == "blocks" else None)


def heads_maps(pipe, heads: dict, study, found) -> dict[str, np.ndarray]:
    """Each look-heads folder's per-patch probability map [targets, 8, 8] of each target's observation, read on the
    film (an independent localisation: it does not pass through the language model)."""
    from medr2.reflection.heads import OBSERVATIONS, tower_of

    out = {}
    for name, h in heads.items():
        probs = h.read(tower_of(pipe.model), [study.image])[0]  # [64, 13]
        grid = int(round(np.sqrt(probs.shape[0])))
        out[name] = np.stack([probs[:, OBSERVATIONS.index(t.name)].reshape(grid, grid) if t.name in OBSERVATIONS
                              else np.zeros((grid, grid)) for t, _, _ in found])
    return out


def evaluate(pipe, studies, results, methods, variants, seed: int, heads: dict | None = None) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    heads = heads or {}
    rows, shown = [], []
    tok = pipe.processor.tokenizer
    for i, (study, res) in enumerate(zip(studies, results)):
        new_ids, inputs = res.saliency_inputs["new_ids"], res.saliency_inputs["inputs"]
        text, offsets = S.token_char_spans(tok, new_ids[0].tolist())
        for vi, (layer, sections) in enumerate(variants):
            found = targets_with_truth(text, res, study, sections)
            weights = S.token_weights([t for t, _, _ in found], offsets)
            keep = [j for j in range(len(found)) if weights[j].sum() > 0]
            found, weights = [found[j] for j in keep], weights[keep]
            if not found:
                continue
            run = methods if vi == 0 else [S.DEFAULT_METHOD]
            explained, depth = resolve_layer(pipe, layer)
            grids, _ = S.attribute(pipe.model, inputs, new_ids, [t for t, _, _ in found], offsets, methods=run,
                                   layer=explained, depth_weights=depth)
            if vi == 0 and heads:
                grids.update(heads_maps(pipe, heads, study, found))
                run = [*run, *heads]
            patch_px = study.image.shape[1] / next(iter(grids.values())).shape[2]
            for k, (t, kind, mask) in enumerate(found):
                drops = deletion(pipe, inputs, new_ids, weights, grids, k, rng, explained) if vi == 0 else {}
                placed = located(study, res, t.name) if t.kind == "finding" else None
                for m in run:
                    name = m if vi == 0 else f"{m}[{layer}|{'+'.join(sections)}]"
                    rows.append({"study": study.study_id, "type": kind, "target": t.name, "method": name,
                                 "located": placed,
                                 **score_map(grids[m][k], mask, patch_px), "weak": weak_evidence(t, grids[m][k], mask),
                                 "drop": drops.get(m) if m != "random" else None, "drop_random": drops.get("random")})
                if vi == 0 and len(shown) < 40:
                    shown.append({"study": study, "target": t, "kind": kind, "grid": grids[S.DEFAULT_METHOD][k],
                                  "mask": mask})
        if (i + 1) % 25 == 0:
            logger.info("explained %d/%d studies", i + 1, len(studies))
    return rows, shown


def coverage(studies, results) -> dict[str, list[int]]:
    """type -> [ground-truth findings, reported by the model (true positives)]."""
    out = defaultdict(lambda: [0, 0])
    for study, res in zip(studies, results):
        for obs, (kind, _) in ground_truth(study).items():
            out[kind][0] += 1
            out[kind][1] += int((res.final_labels or {}).get(obs) in (1, -1))
    return dict(out)


def summarise(rows: list[dict]) -> dict:
    table = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for group in {r["type"], "ALL", *(["FOCAL"] if r["type"] in FOCAL else [])}:
            table[r["method"]][group].append(r)
    out = {}
    for method, groups in table.items():
        out[method] = {}
        for group, rs in groups.items():
            drops = [r for r in rs if r["drop"] is not None]
            placed = [r for r in rs if r["located"]]
            out[method][group] = {
                "n": len(rs), "pointing_tol1": float(np.mean([r["point1"] for r in rs])),
                "pointing_tol0": float(np.mean([r["point0"] for r in rs])),
                # restricted to findings the report places right (side + zone) or that have no location
                "n_located": len(placed) + sum(r["located"] is None for r in rs),
                "pointing_tol1_located": float(np.mean([r["point1"] for r in rs if r["located"] is not False]))
                if any(r["located"] is not False for r in rs) else None,
                "energy_in_mask": float(np.mean([r["energy"] for r in rs])),
                "mask_area": float(np.mean([r["area"] for r in rs])),
                "energy_in_cells": float(np.mean([r["energy_cells"] for r in rs])),
                "cells_fraction": float(np.mean([r["cells"] for r in rs])),
                "weak_evidence_rate": float(np.mean(weak)) if (weak := [r["weak"] for r in rs if r["weak"] is not None]) else None,
                "deletion_drop_top": float(np.mean([r["drop"] for r in drops])) if drops else None,
                "deletion_drop_random": float(np.mean([r["drop_random"] for r in drops])) if drops else None,
                "deletion_win_rate": float(np.mean([r["drop"] > r["drop_random"] for r in drops])) if drops else None,
            }
    return out


def short(method: str) -> str:
    """'gradxact[projector|report]' -> 'gx:proj', for table columns."""
    if "[" not in method:
        return method
    layer, sections = method[method.index("[") + 1:-1].split("|")
    prefix = "".join(w[0] for w in method[:method.index("[")].replace("grad", "g_").split("_") if w)[:2]
    return f"{prefix}:{layer[:4]}" if sections == "report" else f"{prefix}:{sections.replace('report', 'rep')}"


def print_table(summary: dict, cover: dict) -> None:
    groups = sorted({g for m in summary.values() for g in m}, key=lambda g: (g in ("ALL", "FOCAL"), g))
    methods = list(summary)
    for key, title in (("pointing_tol1", "pointing game, tolerance 1 patch"),
                       ("pointing_tol1_located", "pointing game (1 patch), findings the report places right"),
                       ("pointing_tol0", "pointing game, strict"),
                       ("energy_in_mask", "energy in mask (uniform map = area)"),
                       ("energy_in_cells", "energy in the patches the mask touches (uniform map = area)")):
        print(f"\n{title}")
        extra = "  area" if key.startswith("energy") else ""
        print(f"{'type':<15}{'GT':>4}{'TP':>4}" + "".join(f"{short(m):>14}" for m in methods) + extra)
        for g in groups:
            gt, tp = cover.get(g, ["", ""])
            cells = [summary[m].get(g) for m in methods]
            line = "".join(f"{c[key]:>14.2f}" if c and c[key] is not None else f"{'-':>14}" for c in cells)
            area_key = "mask_area" if key == "energy_in_mask" else "cells_fraction"
            area = f"{cells[0][area_key]:>6.3f}" if extra and cells[0] else ""
            print(f"{g:<15}{gt!s:>4}{tp!s:>4}{line}{area}")
    print("\nevidence check: share of true-positive findings flagged 'weak visual evidence' (lower is better)")
    print("  " + "  ".join(f"{short(m)} {r['ALL']['weak_evidence_rate']:.2f}" for m, r in summary.items()
                           if r.get("ALL", {}).get("weak_evidence_rate") is not None))
    print("\ndeletion (top 10 % vs random 10 % of patches occluded; mean log-prob drop; win = top drop > random drop)")
    for m, groups_ in summary.items():
        r = groups_.get("ALL", {})
        if r.get("deletion_drop_top") is not None:
            print(f"  {m:<10} top {r['deletion_drop_top']:+.3f}  random {r['deletion_drop_random']:+.3f}  "
                  f"win {r['deletion_win_rate']:.2f}  (n={r['n']})")


def figure(pipe, shown: list[dict], path: Path, rg1: Path) -> None:
    """Overlays (default method) on up to 5 phantoms of different types, GT mask outlined, plus RG1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked, seen = [], set()
    for s in shown:
        kind = s["kind"]
        if kind not in seen:
            seen.add(kind)
            picked.append((s, kind))
    picked = picked[:5]
    fig, grid = plt.subplots(2, 3, figsize=(9.6, 7.4))
    axes = list(grid.reshape(-1))[:len(picked)] + [grid.reshape(-1)[-1]]
    for a in grid.reshape(-1):
        a.axis("off")
    for ax, (s, kind) in zip(axes, picked):
        heat = S.upsample(S.normalise(s["grid"]), s["mask"].shape)
        ax.imshow(S.overlay(s["study"].image, heat))
        ax.contour(s["mask"], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"{kind}\n{s['target'].text[:38]}", fontsize=7)
    ax = axes[-1]
    result = pipe.run(str(rg1))
    sal = pipe.saliency(result, include_perception=False)
    shown_map = next((m for m in sal.maps if m.kind == "finding"), sal.for_target("report"))
    ax.imshow(S.overlay(result.image.pixels, shown_map.heatmap) if shown_map else result.image.pixels, cmap="gray")
    ax.set_title(f"real CXR (RG1): {shown_map.target if shown_map else 'no report'}", fontsize=7)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"{S.DEFAULT_METHOD} saliency of finding sentences; cyan = ground-truth mask ({pipe.provenance.model})", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (the trained embedded model)")
    parser.add_argument("--n", type=int, default=300, help="held-out phantom studies")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (3 = the held-out test split)")
    parser.add_argument("--methods", default="gradcam,gradxact,ig,random,center")
    parser.add_argument("--variants", default="uniform:report,block:report,block:report-only",
                        help="extra variants of the default method, layer:sections (comma-separated; '' for none; "
                             "layer 'uniform' = all blocks, equal weights)")
    parser.add_argument("--layer", default=S.DEFAULT_LAYER, choices=S.LAYERS + ("uniform",),
                        help="layer of the main run's gradcam/gradxact (variants name their own)")
    parser.add_argument("--ig_steps", "--ig-steps", type=int, default=S.IG_STEPS)
    parser.add_argument("--batch", type=int, default=25, help="generation batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", default="generated", choices=("generated", "reference"))
    parser.add_argument("--look_heads", default="", help="look-heads folders (comma-separated) whose per-patch maps are "
                                                         "scored as methods 'heads:<folder name>' beside the others")
    parser.add_argument("--renderer", default="procedural", choices=RENDERERS, help=RENDERER_HELP)
    parser.add_argument("--drr_fraction", type=float, default=PhantomConfig.drr_fraction, help=DRR_FRACTION_HELP)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=lambda v: Path(v) if v else None, default=FIGURE, help="overlay figure ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in S.METHODS]
    if bad or S.DEFAULT_METHOD not in methods or not Path(args.model).is_dir():
        print(f"saliency_faithfulness: bad --methods {bad} (must include {S.DEFAULT_METHOD}) or no model at {args.model}",
              file=sys.stderr)
        return 2
    variants = [(args.layer, ("report",))] + [(v.split(":")[0], tuple(v.split(":")[1].split("+")))
                                           for v in args.variants.split(",") if v]
    S.IG_STEPS = args.ig_steps
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig(model=args.model, threads=args.threads))
    studies = list(generate_studies(args.n, args.seed, film_config(args.renderer, args.drr_fraction)))
    results = (generate(pipe, studies, args.batch) if args.source == "generated"
               else [reference_result(pipe, s) for s in studies])
    t_gen = time.perf_counter() - t0
    from medr2.reflection.heads import LookHeads, tower_of

    heads = {f"heads:{Path(d).name}": LookHeads.load(d, tower_of(pipe.model)) for d in args.look_heads.split(",") if d}
    if any(h is None for h in heads.values()):
        print(f"saliency_faithfulness: {args.look_heads}: look heads missing or fitted on another tower", file=sys.stderr)
        return 2
    rows, shown = evaluate(pipe, studies, results, methods, variants, args.seed, heads)
    summary, cover = summarise(rows), coverage(studies, results)
    print(f"saliency faithfulness: {args.n} held-out {args.renderer} phantoms (seed {args.seed}), {args.source} text, model {args.model}")
    print_table(summary, cover)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": str(args.model), "n_studies": args.n, "seed": args.seed, "renderer": args.renderer,
        **({"drr_fraction": args.drr_fraction} if args.renderer == "mix" else {}), "source": args.source,
        "methods": methods, "layer": args.layer, "depth_weights": pipe.saliency_config.get("depth_weights"), "variants": [f"{l}|{'+'.join(s)}" for l, s in variants], "ig_steps": args.ig_steps,
        "delete_fraction": DELETE_FRACTION, "focal_types": FOCAL, "coverage_gt_tp": cover, "summary": summary,
        "seconds": {"generate": t_gen, "total": time.perf_counter() - t0},
    }, indent=2) + "\n")
    if args.figure and shown:
        figure(pipe, shown, args.figure, ROOT / "assets" / "examples" / "rg1_chest.dcm")
    logger.info("done in %.0f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
