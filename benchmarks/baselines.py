"""Trivial baselines on the held-out phantom test set, scored exactly like a model (`medr2.evaluation.metrics`).

- majority: every study gets the most frequent reference report's labels (a normal report);
- prior: each observation is called positive independently with its training-set prevalence (seeded).
A model that ties these has learned nothing, however fluent its text. Writes `benchmarks/results/baselines.json`.

Run: `python benchmarks/baselines.py [--n 500]`
"""
from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

from medr2.evaluation import metrics
from medr2.evaluation.evaluate import PHANTOM_TEST_SEED
from medr2.labeler.findings import OBSERVATIONS
from medr2.phantom.generator import generate_studies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n_train", type=int, default=2000, help="training studies (seed 1) for the prevalence prior")
    args = parser.parse_args()
    test = list(generate_studies(args.n, PHANTOM_TEST_SEED))
    train = list(generate_studies(args.n_train, 1))
    refs = [s.labels for s in test]
    majority_labels = collections.Counter(json.dumps(s.labels, sort_keys=True) for s in train).most_common(1)[0][0]
    majority = [json.loads(majority_labels)] * len(test)
    prevalence = {o: sum(s.labels[o] in (1, -1) for s in train) / len(train) for o in OBSERVATIONS}
    rng = random.Random(0)
    prior = [{o: (1 if rng.random() < prevalence[o] else None) for o in OBSERVATIONS} for _ in test]
    out = {}
    for name, preds in (("majority", majority), ("prior", prior)):
        scores = metrics.ce_scores(preds, refs)
        out[name] = {"ce_f1_example": scores["example-14"]["f1"], "ce_micro_f1_14": scores["r2gen-14"]["micro"]["f1"],
                     "ce_macro_f1_14": scores["r2gen-14"]["macro"]["f1"],
                     "per_observation_f1": {r["observation"]: r["f1"] for r in scores["per_observation"] if r["support"]}}
        print(f"{name:9s} CE-F1 example {out[name]['ce_f1_example']:.3f}  micro-14 {out[name]['ce_micro_f1_14']:.3f}  macro-14 {out[name]['ce_macro_f1_14']:.3f}")
    Path(__file__).with_name("results").joinpath("baselines.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
