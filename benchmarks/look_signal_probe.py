"""Can an independent signal see the draft's errors? The ceiling of a reflection that trusts its look heads.

A reflection can only fix a draft where it has evidence the draft lacked. This probe takes a model's own drafts on
held-out phantoms (the `predictions.jsonl` of a `medr2 evaluate` run) and a look-heads folder, and asks:

1. How well do the heads read each look region? Region-level F1 per observation of the heads' reading — on the
   whole film (`region_max` of the film's patches) and, when the heads carry a look reader (`fit-look-heads
   --tune_tower`), on the region's magnified crop, and, with a region classifier (`--region_classifier`), from the
   crop and the film together — against the phantom masks inside the region's window.
2. What would a reflection that follows them do? On the pipeline's proposed looks (every draft finding, then the
   regions where the heads disagree), a rule adds an observation the draft does not state when the region reading
   p is at least t + add x (1 - t) (t its threshold: add 0 = the threshold, 0.9 = nine tenths of the way to
   certainty), and removes one the draft states when p is below remove x t.
   Per rule: wrong presence cells of the draft fixed, right ones broken, and the change of example-based CE-F1
   (hedged = found), against the draft itself as the baseline.
3. The ceiling of a look model taught on its own drafts (`train-sft --look_drafts`): every error of the draft in a
   region a proposed look reaches corrected, the others left as they are.

Thresholds are the heads' own (chosen on validation films of seed 2); run it on the seed the heads chose them on and
the rules' numbers are optimistic for the heads — a ceiling, not an estimate.

  python benchmarks/look_signal_probe.py --predictions runs/look/eval_p14_val/predictions.jsonl \
      --heads runs/look/heads [--model assets/model] [--seed 2] [--n 300] [--film_size 512] [--renderer drr]
-> table on stdout, JSON in benchmarks/results/look_signal_probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RULES = [(add, remove) for add in (0.0, 0.5, 0.9) for remove in (0.0, 0.25, 0.5)]


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True, help="predictions.jsonl of a medr2 evaluate run (its drafts)")
    parser.add_argument("--heads", required=True, help="folder with look_heads.npz")
    parser.add_argument("--model", default="assets/model", help="the model whose tower the heads were fitted on")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--film_size", type=int, default=512)
    parser.add_argument("--renderer", default="procedural", choices=("procedural", "drr", "mix"),
                        help="the films of the evaluate run (its --renderer): drawn or projected from the chest CT")
    parser.add_argument("--drr_fraction", type=float, default=0.5, help="with --renderer mix: the share rendered from the CT")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/look_signal_probe.json"))
    args = parser.parse_args()

    from medr2.evaluation.metrics import binarize, example_f1_matrix
    from medr2.labeler.findings import OBSERVATIONS as LABELS
    from medr2.labeler.findings import label_report
    from medr2.modeling.loading import load_model
    from medr2.phantom.generator import film_config, generate_studies
    from medr2.reflection.heads import OBSERVATIONS, LookHeads, patch_targets, region_max, tower_of
    from medr2.reflection.looks import propose_looks
    from medr2.reflection.regions import LOOK_REGIONS, crop_region, region_box, regions_for
    from medr2.report.schema import parse

    t0 = time.time()
    model, _ = load_model(args.model)
    tower = tower_of(model).float().eval()
    heads = LookHeads.load(args.heads, tower)
    if heads is None:
        raise SystemExit(f"{args.heads}: no look heads fitted on the tower of {args.model}")
    predictions = [json.loads(line) for line in Path(args.predictions).read_text().splitlines()][: args.n]
    studies = list(generate_studies(len(predictions), args.seed, film_config(args.renderer, args.drr_fraction, size=args.film_size)))
    if [s.study_id for s in studies] != [p["id"] for p in predictions]:
        raise SystemExit("the predictions are not the studies of this seed and size: pass the evaluate run's --seed")
    regions = list(LOOK_REGIONS)
    n, k = len(studies), len(OBSERVATIONS)
    film_read, crop_read, region_read = (np.zeros((n, len(regions), k)) for _ in range(3))
    truth = np.zeros((n, len(regions), k), dtype=bool)
    film_probs = []
    for i, study in enumerate(studies):
        probs = heads.read(tower, [study.image])[0]
        film_probs.append(probs)
        crops = heads.read(tower, [crop_region(study.image, r) for r in regions]) if heads.reads_crops else None
        if heads.reads_regions:
            region_read[i] = heads.read_regions(tower, study.image, regions)
        for j, region in enumerate(regions):
            film_read[i, j] = region_max(probs, region)
            if crops is not None:
                crop_read[i, j] = crops[j].max(axis=0)
            box = region_box(region, study.image.shape)
            truth[i, j] = (patch_targets(study.findings, study.image.shape, box) > 0.5).any(axis=0)
    reading = {"film": (film_read, heads.thresholds)}
    if heads.reads_crops:
        reading["crop"] = (crop_read, heads.crop_thresholds)
    if heads.reads_regions:
        reading["region"] = (region_read, heads.region_thresholds)
    region_f1 = {obs: {name: round(_f1(r[..., c] >= t[c], truth[..., c]), 3) for name, (r, t) in reading.items()}
                 | {"positive_regions": int(truth[..., c].sum())} for c, obs in enumerate(OBSERVATIONS)}

    drafts = [parse(p["text"]).output.draft.text for p in predictions]
    ref = np.array([binarize(label_report(s.report), True) for s in studies])
    draft = np.array([binarize(label_report(d), True) for d in drafts])
    base = example_f1_matrix(draft, ref)
    wrong = draft != ref
    no_finding = LABELS.index("No Finding")
    rules = []
    # the reading the reflection is shown: the region classifier's, else the crop's, else the film's
    name, (read, thresholds) = list(reading.items())[-1]
    for add, remove in RULES:
        new = draft.copy()
        for i in range(n):
            looks = propose_looks(drafts[i], film_probs[i], heads.thresholds, OBSERVATIONS, 3)
            for c, obs in enumerate(OBSERVATIONS):
                where = [regions.index(r) for r in looks if r in regions_for(obs)]
                if obs == "Support Devices" or not where:
                    continue
                p, t = max(read[i, j, c] for j in where), thresholds[c]
                col = LABELS.index(obs)
                if not draft[i, col] and p >= t + add * (1 - t):
                    new[i, col] = True
                if draft[i, col] and p < remove * t:
                    new[i, col] = False
        changed = (new != draft).any(axis=1)
        others = [c for c in range(len(LABELS)) if c != no_finding]
        new[changed, no_finding] = ~new[changed][:, others].any(axis=1)
        diff = example_f1_matrix(new, ref) - base
        rules.append({"reading": name, "add_at": add, "remove_below": remove, "f1_change": round(float(diff.mean()), 4),
                      "wrong_fixed": int(((new == ref) & wrong).sum()), "right_broken": int(((new != ref) & ~wrong).sum())})
    # The ceiling of a look model taught on its own drafts (train-sft --look_drafts): every error of the draft that
    # a proposed look reaches corrected, the rest left (medr2.report.look_traces.build_look_trace_on_draft).
    from medr2.report.look_traces import build_look_trace_on_draft, draft_from_text

    oracle = draft.copy()
    for i, study in enumerate(studies):
        own = draft_from_text(study, drafts[i])
        looks = propose_looks(own.report.text, film_probs[i], heads.thresholds, OBSERVATIONS, 3)
        output, _ = build_look_trace_on_draft(study, own, looks)
        oracle[i] = binarize(label_report(output.report.text), True)
    diff = example_f1_matrix(oracle, ref) - base
    rules.append({"reading": "oracle on proposed looks", "add_at": None, "remove_below": None,
                  "f1_change": round(float(diff.mean()), 4), "wrong_fixed": int(((oracle == ref) & wrong).sum()),
                  "right_broken": int(((oracle != ref) & ~wrong).sum())})
    # what kind of errors the draft makes: a lung finding named as another (a missed lung observation beside a
    # hallucinated one in the same study) or a plain miss / false alarm
    lung = [LABELS.index(o) for o in ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")]
    errors: dict[str, int] = {}
    for i in range(n):
        missed, extra = set(np.flatnonzero(ref[i] & ~draft[i])), set(np.flatnonzero(draft[i] & ~ref[i]))
        for cols, kind in ((missed, "missed"), (extra, "hallucinated")):
            others = extra if kind == "missed" else missed
            for c in cols:
                if LABELS[c] == "No Finding":
                    continue
                swap = c in lung and any(o in lung for o in others)
                key = f"{kind} {'as a sibling' if swap else 'plain'}: {LABELS[c]}"
                errors[key] = errors.get(key, 0) + 1
    result = {"predictions": args.predictions, "draft_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])), "heads": args.heads, "reads_crops": heads.reads_crops, "reads_regions": heads.reads_regions, "seed": args.seed, "renderer": args.renderer,
              "n": n, "film_size": args.film_size, "draft_example_f1": round(float(base.mean()), 4),
              "draft_wrong_presence_cells": int(wrong.sum()), "region_f1": region_f1, "rules": rules,
              "seconds": round(time.time() - t0, 1)}
    print(f"{'observation':28s} " + " ".join(f"{r:>6s}" for r in reading) + "  positive regions")
    for obs, row in region_f1.items():
        print(f"{obs:28s} " + " ".join(f"{row[r]:6.3f}" for r in reading) + f"  {row['positive_regions']}")
    print(f"\ndraft example F1 {result['draft_example_f1']}, {result['draft_wrong_presence_cells']} wrong presence cells")
    for key, count in result["draft_errors"].items():
        print(f"  {key}: {count}")
    for rule in rules:
        if rule["add_at"] is None:
            print(f"{rule['reading']}: every error a look reaches corrected: F1 {rule['f1_change']:+.4f}, "
                  f"fixed {rule['wrong_fixed']}, broken {rule['right_broken']}")
            continue
        print(f"{rule['reading']}: add at p >= t + {rule['add_at']} (1 - t), remove below {rule['remove_below']} t: "
              f"F1 {rule['f1_change']:+.4f}, fixed {rule['wrong_fixed']}, broken {rule['right_broken']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
