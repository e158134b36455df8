"""How often does a look's evidence contradict a draft finding, and is the draft then wrong? On look traces built on a
model's own drafts (`train-sft --look_drafts`), for every proposed look at a region holding a draft finding: is the
heads' region reading of that finding's observation below half its threshold ("unseen": what look-v7's evidence line
names as "not seen here"), and is the draft's finding right, hallucinated or misplaced? Split by film kind.

This tells whether the training traces carry the removal signal that a rule reading the heads exploits on validation
(docs/reflection.md, sixth candidate), and how often.

  python research/own_draft_evidence.py --drafts runs/look/own_drafts_p16 --model runs/mix/candidate \
      --heads runs/look/reader_region_mix --seed 43 --n 500
-> table on stdout, JSON in research/results/own_draft_evidence.json
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drafts", required=True, help="the `medr2 evaluate` folder of the model's drafts of these films")
    parser.add_argument("--model", required=True, help="the model whose tower the heads read")
    parser.add_argument("--heads", required=True, help="folder with look_heads.npz")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--n", type=int, default=500, help="the first n studies of the drafts' set")
    parser.add_argument("--n_drafts", type=int, default=2400, help="the size of the drafts' set (its --n)")
    parser.add_argument("--renderer", default="mix")
    parser.add_argument("--drr_fraction", type=float, default=0.5)
    parser.add_argument("--film_size", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / "research/results/own_draft_evidence.json"))
    args = parser.parse_args()

    from medr2.modeling.loading import load_model
    from medr2.phantom.generator import film_config, generate_study, study_seeds
    from medr2.reflection.heads import OBSERVATIONS, LookHeads, tower_of
    from medr2.reflection.looks import propose_looks
    from medr2.reflection.traces import read_drafts
    from medr2.report.look_traces import draft_from_text, look_region

    model, _ = load_model(args.model)
    tower = tower_of(model).float().eval()
    heads = LookHeads.load(args.heads, tower)
    drafts = read_drafts(args.drafts, args.n_drafts, args.seed)
    films = film_config(args.renderer, args.drr_fraction, size=args.film_size)
    counts: Counter = Counter()
    for seed in study_seeds(args.n, args.seed):
        study = generate_study(seed, films)
        draft = draft_from_text(study, drafts[study.study_id])
        probs = heads.read(tower, [study.image])[0]
        wrong = {id(w): kind for kind, _, w in draft.errors if w is not None}
        kind = "rendered" if study.study_id.startswith("drr-") else "drawn"
        for region in propose_looks(draft.report.text, probs, heads.thresholds, OBSERVATIONS, 3):
            reading, thresholds = heads.region_reading(tower, study.image, probs, region)
            for f in draft.findings:
                if look_region(f) == region and f.observation in OBSERVATIONS:
                    i = OBSERVATIONS.index(f.observation)
                    seen = "unseen" if reading[i] < thresholds[i] / 2 else "seen"
                    counts[(kind, seen, wrong.get(id(f), "right"))] += 1
    rows = [{"films": k, "evidence": s, "draft_finding": w, "looks": v} for (k, s, w), v in sorted(counts.items())]
    for row in rows:
        print(f"{row['films']:9s} {row['evidence']:7s} {row['draft_finding']:13s} {row['looks']}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
