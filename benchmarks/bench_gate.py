"""Input gate, measured: how many held-out phantoms it flags, how many real non-chest-radiograph files it flags.

Sets (none used to fit or to choose the threshold, which came from seeds 1 and 2):
- 1,000 test phantoms (seed 3): training-like films; target <= 1 % flagged; and, for a model whose gate was fitted
  on films rendered from the chest CT too (`fit-gate --renderer mix|drr`), `--n_rendered` test films rendered from it;
- the bundled synthetic examples (assets/examples/phantom_*.png and rendered_*.png): must pass;
- every file of pydicom's test files and pydicom-data (`pydicom.data.get_testdata_files()`) that decodes through
  `load_image` and is not a frontal chest radiograph by its tags (CT, MR, US, NM, SEG, RTDOSE, secondary-capture
  colour test patterns, an extremity CR, a c-spine CR) plus matplotlib's sample photo of a face (grace_hopper.jpg):
  target 100 % flagged;
- RG1, the real frontal chest CR (assets/examples/rg1_chest.dcm and pydicom-data's RG1_* copies): reported either way.
Columns: tags alone (the baseline a model without statistics gets), content alone (what a PNG export of the same
image gets: no tags), and the gate (either). No gate at all flags 0 %.

Run: `python benchmarks/bench_gate.py --model assets/model` (about 2 min on 2 cores) → table + benchmarks/results/gate.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medr2.imaging.loader import ImageLoadError, load_image  # noqa: E402
from medr2.modeling.loading import load_model  # noqa: E402
from medr2.trust import gate as G  # noqa: E402


def corpus_files() -> list[tuple[str, str]]:
    """(shown name, path) of every file pydicom's test data lists, and matplotlib's sample face photo."""
    import matplotlib.cbook
    import pydicom.data

    out = []
    for path in sorted(set(pydicom.data.get_testdata_files())):
        shown = path.split("site-packages" + os.sep, 1)[-1]
        shown = shown.replace("data_store" + os.sep + "data", "pydicom-data").replace(os.sep.join(("pydicom", "data", "test_files")), "pydicom")
        out.append((shown, path))
    out.append(("matplotlib/grace_hopper.jpg (face photo)", str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))))
    return out


def is_frontal_chest_radiograph(loaded) -> bool:
    m = loaded.metadata
    return (m.get("modality") in G.RADIOGRAPH_MODALITIES and m.get("view_position") in G.FRONTAL_VIEWS
            and m.get("body_part") in G.CHEST_PARTS)


def row(name: str, loaded, model, processor, stats) -> dict:
    check = G.check_input(loaded, model, processor, stats)
    tags = G.tag_reasons(loaded)
    return {"file": name, "format": loaded.source_format, "modality": loaded.metadata.get("modality"),
            "size": list(loaded.pixels.shape), "score": round(check.score, 2), "tag_flag": bool(tags),
            "content_flag": check.score > stats.threshold, "flagged": check.flagged, "reasons": check.reasons}


def rate(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / max(len(rows), 1)


FEATURES = {  # candidate features (LLaVA tower), all mean or spread over the 64 patch rows
    "tower output, mean (chosen)": [("post", "mean")],
    "tower output, mean + std": [("post", "mean"), ("post", "std")],
    "last block before the final norm, mean": [("last", "mean")],
    "last block before the final norm, mean + std": [("last", "mean"), ("last", "std")],
    "first block, mean": [("first", "mean")],
    "first block, mean + std": [("first", "mean"), ("first", "std")],
}


def candidate_features(model, processor, images, batch_size: int = 50) -> dict[str, np.ndarray]:
    from medr2.saliency import vlm_part

    tower = vlm_part(model, "vision_tower")
    parts: dict[str, list] = {}
    images = list(images)
    for i in range(0, len(images), batch_size):
        pv = G.pixel_values(processor, images[i:i + batch_size])["pixel_values"]
        with torch.no_grad():
            out = tower(pixel_values=pv, output_hidden_states=True)
        for where, h in (("post", out.last_hidden_state), ("last", out.hidden_states[-1]), ("first", out.hidden_states[1])):
            for stat, v in (("mean", h.mean(1)), ("std", h.std(1))):
                parts.setdefault((where, stat), []).append(v.numpy())
    pooled = {k: np.concatenate(v) for k, v in parts.items()}
    return {name: np.concatenate([pooled[p] for p in spec], 1) for name, spec in FEATURES.items()}


def validation_ood_images(n: int = 40):
    """Near and far outliers built from validation phantoms (seed 2) and synthetic patterns: what the feature is
    chosen on, so the measured corpus stays held out."""
    from PIL import Image

    films = [im.pixels for im in G.phantom_images(n, G.VALIDATION_SEED)]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    patterns = []
    for i in range(n):
        k = i % 5
        patterns.append([((((yy // (8 + i)) + (xx // (8 + i))) % 2) * 255).astype(np.uint8),
                         ((xx * (1 + i % 3) + yy * (i % 4)) % 256).astype(np.uint8),
                         rng.integers(0, 256, (256, 256), dtype=np.uint8),
                         np.full((256, 256), 40 + 4 * i, np.uint8),
                         (128 + 127 * np.sin(xx / (3 + i)) * np.cos(yy / (5 + i))).astype(np.uint8)][k])
    return {"inverted": [255 - p for p in films], "upside down": [p[::-1].copy() for p in films],
            "rotated 90": [np.rot90(p).copy() for p in films],
            "central zoom 2x": [np.array(Image.fromarray(p[64:192, 64:192]).resize((256, 256))) for p in films],
            "patterns": patterns}


def choose_feature(model, processor, n_fit: int, n_val: int) -> dict:
    """Each candidate: fit on seed 1, threshold on seed 2 (same rule), then per outlier kind the flagged share
    and the lowest score / threshold (the margin). Rule: the largest geometric-mean margin wins."""
    fit = candidate_features(model, processor, G.phantom_images(n_fit, G.TRAIN_SEED))
    val = candidate_features(model, processor, G.phantom_images(n_val, G.VALIDATION_SEED))
    ood = {k: candidate_features(model, processor, v) for k, v in validation_ood_images().items()}
    table = {}
    for name in FEATURES:
        mean, cov, _ = G.ledoit_wolf(fit[name])
        stats = G.GateStats(mean, np.linalg.inv(cov), 0.0)
        thr = float(np.quantile(stats.score(val[name]), G.QUANTILE))
        scores = {k: stats.score(f[name]) for k, f in ood.items()}
        kinds = {k: {"flagged": float((s > thr).mean()), "margin": float(s.min() / thr)} for k, s in scores.items()}
        table[name] = {"dim": int(fit[name].shape[1]), "threshold": thr, "kinds": kinds,
                       "geomean_margin": float(np.exp(np.mean([np.log(v["margin"]) for v in kinds.values()])))}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "model"))
    parser.add_argument("--n", type=int, default=1000, help="test phantoms (seed 3)")
    parser.add_argument("--n_rendered", type=int, default=500,
                        help="test films rendered from the CT (seed 3), when the gate was fitted on such films")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--choose_feature", action="store_true",
                        help="also compare candidate features on validation outliers (LLaVA; ~4 more minutes)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gate.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = load_model(args.model, device="cpu")
    stats = G.load_gate(args.model)
    if stats is None:
        print(f"{args.model} has no input statistics: run `medr2 fit-gate --model {args.model}` first", file=sys.stderr)
        return 2
    thr = stats.threshold
    t0 = time.perf_counter()

    test = stats.score(G.batched_features(model, processor, G.phantom_images(args.n, G.TEST_SEED)))
    rendered = None
    if stats.info.get("renderer", "procedural") != "procedural" and args.n_rendered:
        from medr2.phantom.generator import film_config

        films = G.phantom_images(args.n_rendered, G.TEST_SEED, film_config("drr"))
        rendered = stats.score(G.batched_features(model, processor, films))
    examples = [row(Path(p).name, load_image(p), model, processor, stats)
                for kind in ("phantom", "rendered")
                for p in sorted(glob.glob(str(ROOT / "assets" / "examples" / f"{kind}_*.png")))]

    corpus, rg1, skipped = [], [], 0
    for name, path in corpus_files():
        try:
            loaded = load_image(path)
        except ImageLoadError:
            skipped += 1  # not an image medr2 reads (DICOMDIR, SR, RT plans, damaged test files, …)
            continue
        (rg1 if is_frontal_chest_radiograph(loaded) else corpus).append(row(name, loaded, model, processor, stats))
    for path in ("rg1_chest.dcm", "rg1_chest.png"):
        rg1.insert(0, row(f"assets/examples/{path}", load_image(ROOT / "assets" / "examples" / path), model, processor, stats))

    # cost: one tower forward (processor included) per study, single image, as the pipeline calls it
    one = load_image(ROOT / "assets" / "examples" / "phantom_normal.png")
    G.check_input(one, model, processor, stats)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        G.check_input(one, model, processor, stats)
        times.append((time.perf_counter() - t) * 1000)

    result = {
        "model": os.path.relpath(args.model, ROOT) if str(args.model).startswith(str(ROOT)) else args.model,
        "threshold": thr, "gate": {k: stats.info.get(k) for k in ("feature", "dim", "n_fit", "fit_seed", "n_val",
                                                                    "val_seed", "quantile", "shrinkage")},
        "test_phantoms": {"n": len(test), "seed": G.TEST_SEED, "flagged": int((test > thr).sum()),
                          "flagged_rate": float((test > thr).mean()),
                          "score_median": float(np.median(test)), "score_p99": float(np.quantile(test, 0.99)),
                          "score_max": float(test.max())},
        "test_rendered": None if rendered is None else {
            "n": len(rendered), "seed": G.TEST_SEED, "flagged": int((rendered > thr).sum()),
            "flagged_rate": float((rendered > thr).mean()), "score_median": float(np.median(rendered)),
            "score_max": float(rendered.max())},
        "bundled_phantoms": examples,
        "corpus": {"n": len(corpus), "not_decodable_skipped": skipped,
                   "flagged_rate": rate(corpus, "flagged"), "tag_flagged_rate": rate(corpus, "tag_flag"),
                   "content_flagged_rate": rate(corpus, "content_flag"),
                   "content_score_min": min(r["score"] for r in corpus), "rows": corpus},
        "rg1": rg1,
        "cost_ms_per_study": {"median": statistics.median(times), "threads": args.threads,
                              "what": "processor + one vision-tower forward + distance, one image"},
        "feature_choice": choose_feature(model, processor, stats.info.get("n_fit", 2000), stats.info.get("n_val", 1000))
        if args.choose_feature else None,
        "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/bench_gate.py --model " + str(args.model),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"input gate of {result['model']}: threshold {thr:.2f} ({stats.info.get('quantile')} quantile of "
          f"{stats.info.get('n_val')} validation phantoms, seed {stats.info.get('val_seed')})\n")
    print(f"{'set':52s} {'n':>5s} {'tags':>7s} {'content':>8s} {'gate':>7s}  target")
    print(f"{'test phantoms (seed 3)':52s} {len(test):5d} {0:7.1%} {(test > thr).mean():8.1%} {(test > thr).mean():7.1%}  <= 1 %")
    if rendered is not None:
        print(f"{'test films rendered from the CT (seed 3)':52s} {len(rendered):5d} {0:7.1%} {(rendered > thr).mean():8.1%} "
              f"{(rendered > thr).mean():7.1%}  <= 1 %")
    print(f"{'bundled synthetic examples (drawn + rendered)':52s} {len(examples):5d} {rate(examples, 'tag_flag'):7.1%} "
          f"{rate(examples, 'content_flag'):8.1%} {rate(examples, 'flagged'):7.1%}  0 %")
    print(f"{'pydicom + pydicom-data + face photo, not frontal CXR':52s} {len(corpus):5d} {rate(corpus, 'tag_flag'):7.1%} "
          f"{rate(corpus, 'content_flag'):8.1%} {rate(corpus, 'flagged'):7.1%}  100 %")
    print(f"{'RG1 real frontal chest CR (+ its pydicom-data copies)':52s} {len(rg1):5d} {rate(rg1, 'tag_flag'):7.1%} "
          f"{rate(rg1, 'content_flag'):8.1%} {rate(rg1, 'flagged'):7.1%}  flagged (phantom-trained model)")
    shown = ", ".join(f"{r['score']:.1f}" for r in examples)
    print(f"\nscores: test phantoms median {np.median(test):.1f}, max {test.max():.1f}; bundled examples "
          f"{shown}; RG1 {rg1[0]['score']:.1f}; corpus min "
          f"{result['corpus']['content_score_min']:.1f}")
    print(f"cost: {result['cost_ms_per_study']['median']:.1f} ms per study on {args.threads} threads "
          f"(processor + one tower forward)\n")
    print(f"{'file':64s} {'score':>7s}  reasons")
    for r in corpus + rg1:
        print(f"{r['file'][:64]:64s} {r['score']:7.1f}  {' | '.join(r['reasons']) or '-'}")
    if result["feature_choice"]:
        kinds = list(next(iter(result["feature_choice"].values()))["kinds"])
        print("\nfeature choice on validation outliers (flagged share / lowest score ÷ threshold):")
        print(f"{'feature':46s} {'dim':>4s} " + " ".join(f"{k:>16s}" for k in kinds) + "  geo-mean margin")
        for name, r in result["feature_choice"].items():
            cells = " ".join(f"{r['kinds'][k]['flagged']:>9.0%} / {r['kinds'][k]['margin']:4.2f}" for k in kinds)
            print(f"{name:46s} {r['dim']:4d} {cells}  {r['geomean_margin']:.2f}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
