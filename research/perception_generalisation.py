"""Has the stage-0 tower learned the findings or memorised its films? Its metrics on films it trained on vs new ones.

The language model is trained on top of the frozen stage-0 tower. If the tower is near perfect on its own
training films and much weaker on new ones, a language model trained on those same films learns to trust
features that are noisier on every film it will meet later (the reason the demo lineage continues SFT on a fresh
phantom seed; docs/experiments.md). This probe evaluates one tower on the first `--n` studies of its training
seed and of the validation seed (2), with the same per-class metrics stage 0 reports, and prints the gap.

  python research/perception_generalisation.py --tower runs/perception --train_seed 1 --n 400
-> table on stdout, JSON in research/results/perception_generalisation.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medr2.training.perception import build_examples, evaluate, load_trained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "perception_generalisation.json"


def gap_table(train: dict, val: dict) -> list[tuple[str, float, float, float, float]]:
    """(finding, F1 on training films, F1 on new films, AUC train, AUC new) for findings present in both."""
    rows = []
    for obs, v in val["per_class"].items():
        t = train["per_class"].get(obs)
        if t is not None:
            rows.append((obs, t["f1"], v["f1"], t["auc"], v["auc"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", type=Path, required=True, help="stage-0 output folder")
    parser.add_argument("--train_seed", "--train-seed", type=int, required=True, help="the phantom seed the tower was trained on")
    parser.add_argument("--val_seed", "--val-seed", type=int, default=2)
    parser.add_argument("--n", type=int, default=400, help="studies from each seed (the first n)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    net, config = load_trained(args.tower)
    # Cached examples live in the tower's folder (stage 0 wrote them there); new ones are generated.
    config.output_dir = str(args.tower)
    results = {name: evaluate(net, build_examples(args.n, seed, config))
               for name, seed in (("training_films", args.train_seed), ("new_films", args.val_seed))}
    rows = gap_table(results["training_films"], results["new_films"])
    print(f"stage-0 tower {args.tower}: training films (seed {args.train_seed}) vs new films (seed {args.val_seed}), n={args.n} each")
    print(f"{'finding':28s} {'F1 train':>9s} {'F1 new':>7s} {'AUC train':>10s} {'AUC new':>8s}")
    for obs, f1_t, f1_v, auc_t, auc_v in rows:
        print(f"{obs:28s} {f1_t:9.2f} {f1_v:7.2f} {auc_t:10.3f} {auc_v:8.3f}")
    print(f"{'macro':28s} {results['training_films']['macro_f1']:9.2f} {results['new_films']['macro_f1']:7.2f}")
    payload = {"tower": str(args.tower), "train_seed": args.train_seed, "val_seed": args.val_seed, "n": args.n,
               "command": f"python research/perception_generalisation.py --tower {args.tower} --train_seed {args.train_seed} --n {args.n}",
               **results, "seconds": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
