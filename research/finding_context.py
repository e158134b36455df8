"""When does a model miss one finding kind? Found rate by subtlety, by what else is on the film, and what it said instead.

Asked of lung opacity, the finding the demo model found least (test F1 0.64 at the time of the recorded results):
a model that finds a kind alone but loses it beside other findings is limited by what its language model can read
out of the tower, not by the film; a model that misses it alone is limited by perception.

  python research/finding_context.py --model assets/model [--kind opacity --n 2500 --seed 77]
-> table on stdout, JSON in research/results/finding_context_<kind>.json (seed 77: used by no training or selection;
the recorded results are research/results/finding_context_opacity_*.json, one per model and film generator)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medr2.labeler.findings import label_report
from medr2.phantom.generator import DEVICE_KINDS, OBSERVATION_OF, generate_study, study_seed

ROOT = Path(__file__).resolve().parents[1]
# Findings that fill lung on their own film; an opacity under one of them is hidden, not missed.
NON_PARENCHYMAL = set(DEVICE_KINDS) | {"cardiomegaly", "widened_mediastinum"}
MISREAD_AS = ("Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")


def film_context(study, kind: str) -> dict:
    """Ground truth of the first `kind` finding of a study and what shares the film with it."""
    target = next(f for f in study.findings if f.kind == kind)
    others = sorted({f.kind for f in study.findings} - {kind})
    cover = np.zeros_like(target.mask, bool)
    for f in study.findings:
        if f is not target and f.kind not in NON_PARENCHYMAL and f.mask is not None:
            cover |= f.mask
    overlap = float((target.mask & cover).sum() / max(int(target.mask.sum()), 1))
    return {"id": study.study_id, "subtle": bool(target.subtle), "code": int(target.code), "side": target.side,
            "zone": target.zone, "others": others, "overlap": round(overlap, 3), "edema": "edema" in others}


def context_of(row: dict) -> str:
    if row["edema"]:
        return "beside edema"
    if row["overlap"] > 0:
        return "overlapping another finding"
    return "alone" if not row["others"] else "beside other findings, clear of them"


def rate(rows: list[dict]) -> dict:
    found = sum(r["found"] for r in rows)
    return {"n": len(rows), "found": found, "rate": round(found / len(rows), 3) if rows else None}


def summarize(rows: list[dict], kind: str) -> dict:
    observation = OBSERVATION_OF[kind]
    misses = [r for r in rows if not r["found"]]
    truly_absent = {o: [r for r in misses if o not in {OBSERVATION_OF[k] for k in r["others"]}] for o in MISREAD_AS}
    return {
        "kind": kind, "observation": observation, "all": rate(rows),
        "subtle": rate([r for r in rows if r["subtle"]]), "overt": rate([r for r in rows if not r["subtle"]]),
        "by_other_findings": {str(k): rate([r for r in rows if min(len(r["others"]), 3) == k]) for k in range(4)},
        "by_context": {c: rate([r for r in rows if context_of(r) == c]) for c in
                       ("alone", "beside other findings, clear of them", "overlapping another finding", "beside edema")},
        "misses_reported_as": {o: sum(r["said"].get(o) in (1, -1) for r in truly_absent[o]) for o in MISREAD_AS},
        "misses_without_that_finding": {o: len(v) for o, v in truly_absent.items()},
        "found_stated_vs_reference": {"stated_when_reference_stated": sum(r["found"] and r["said"][observation] == 1 and r["code"] == 1 for r in rows),
                                      "stated_when_reference_hedged": sum(r["found"] and r["said"][observation] == 1 and r["code"] == -1 for r in rows),
                                      "hedged_when_reference_hedged": sum(r["found"] and r["said"][observation] == -1 and r["code"] == -1 for r in rows),
                                      "hedged_when_reference_stated": sum(r["found"] and r["said"][observation] == -1 and r["code"] == 1 for r in rows)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/model", help="model folder or hub id")
    parser.add_argument("--kind", default="opacity", choices=sorted(set(OBSERVATION_OF) - set(DEVICE_KINDS)))
    parser.add_argument("--n", type=int, default=2500, help="phantoms drawn; those with the kind are evaluated")
    parser.add_argument("--seed", type=int, default=77, help="phantom seed (77: used by no training or selection)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be positive")
    from PIL import Image
    from tqdm import tqdm

    from medr2.inference.pipeline import Pipeline, PipelineConfig

    studies = [s for s in (generate_study(study_seed(args.seed, i)) for i in tqdm(range(args.n), desc="phantoms"))
               if any(f.kind == args.kind for f in s.findings)]
    if not studies:
        parser.error(f"no {args.kind} in {args.n} phantoms of seed {args.seed}: raise --n")
    pipe = Pipeline(PipelineConfig(model=args.model))
    start = time.time()
    results = pipe.run_batch([Image.fromarray(s.image) for s in studies], batch_size=16)
    observation = OBSERVATION_OF[args.kind]
    rows = []
    for study, result in zip(studies, results):
        said = label_report(result.output.report.text if result.output.report else "")
        rows.append({**film_context(study, args.kind), "said": said, "found": said.get(observation) in (1, -1)})
    summary = {"model": args.model, "weights_sha256": results[0].provenance.weights_sha256, "n_drawn": args.n,
               "seed": args.seed, "generate_s": round(time.time() - start, 1),
               "command": f"python research/finding_context.py --model {args.model} --kind {args.kind} --n {args.n} --seed {args.seed}",
               **summarize(rows, args.kind)}
    print(f"{observation} found (hedged = found) by {args.model}, {len(rows)} films of seed {args.seed}")
    print(f"{'group':<40} {'found':>12}")
    lines = [("all", summary["all"]), ("subtle", summary["subtle"]), ("overt", summary["overt"])]
    lines += [(f"{k}{'+' if k == '3' else ''} other findings", v) for k, v in summary["by_other_findings"].items()]
    lines += list(summary["by_context"].items())
    for name, r in lines:
        print(f"{name:<40} {r['found']:>4}/{r['n']:<4} {r['rate'] if r['rate'] is not None else '-':>5}")
    print("misses reported as (that finding absent):",
          ", ".join(f"{o} {summary['misses_reported_as'][o]}/{summary['misses_without_that_finding'][o]}" for o in MISREAD_AS))
    out = args.out or ROOT / "research" / "results" / f"finding_context_{args.kind}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
