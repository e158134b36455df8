"""Which vision blocks should each finding's saliency map fuse? Chosen on validation phantoms, per finding.

Fusing every vision block (the default) helps pleural signs, whose evidence sits at an edge the last block
smears, and hurts parenchymal ones, whose maps the early blocks pull towards rib and vessel edges
(docs/saliency.md). This script measures, on held-out **validation** phantoms (seed 2, never the test seed),
the pointing game (1-patch tolerance, as in `saliency_faithfulness.py`) of every depth cut-off "blocks k..L"
for each reported true-positive finding, and picks per finding (CheXpert observation) the cut-off with the
best pointing, but only where it beats all blocks (the prior default) by more than chance: a paired sign
test on the findings where the two disagree (net wins > z * sqrt(discordant), z = 1.96). Findings with
fewer than `--min-n` true positives keep all blocks. Only L candidates per finding, so the choice has little
room to overfit the validation set.

  python benchmarks/saliency_depth.py --model assets/model --n 1800 --seed 2 --write assets/model/saliency.json
-> table on stdout, JSON in benchmarks/results/saliency_depth.json; `--write` stores the weights where
`Pipeline.saliency` reads them (the model folder's `saliency.json`). Measure the result on the test seed
with `saliency_faithfulness.py` (which uses the model's weights and reports uniform fusion beside them).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from medr2.saliency import maps as S
from medr2.phantom.generator import generate_studies
from medr2.inference.pipeline import Pipeline, PipelineConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saliency_faithfulness import generate, score_map, targets_with_truth  # noqa: E402

logger = logging.getLogger("saliency_depth")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "saliency_depth.json"


def cutoff_weights(cutoff: int, n_layers: int) -> list[float]:
    """Block weights that fuse blocks `cutoff`..L-1 (0 = all blocks, L-1 = the last block alone)."""
    return [0.0] * cutoff + [1.0] * (n_layers - cutoff)


def choose_cutoffs(hits: dict[str, list[list[float]]], min_n: int, z: float = 1.96) -> dict[str, int]:
    """target -> chosen cut-off, from per-target lists of per-cut-off pointing hits [n][L]. A cut-off
    replaces the full fusion (cut-off 0) only when it wins more of the true positives where the two disagree
    than chance allows (net wins > z * sqrt(discordant pairs), a sign test); among those, the largest net
    gain wins, ties going to the shallower cut-off. Targets with fewer than `min_n` true positives keep 0."""
    chosen = {}
    for target, rows in hits.items():
        if len(rows) < min_n:
            continue
        h = np.asarray(rows, dtype=float)
        wins, losses = ((h > h[:, :1]).sum(0), (h < h[:, :1]).sum(0))
        net = (wins - losses).astype(float)
        net[(net <= z * np.sqrt(wins + losses)) | (np.arange(h.shape[1]) == 0)] = -np.inf
        if np.isfinite(net.max()):
            chosen[target] = int(np.argmax(net))  # argmax takes the first maximum: the shallower cut-off
    return chosen


def collect(pipe: Pipeline, studies, results) -> tuple[list[dict], int]:
    """Per reported true-positive finding: type, target, located, and the pointing hit of every cut-off."""
    rows, n_layers = [], 0
    tok = pipe.processor.tokenizer
    for i, (study, res) in enumerate(zip(studies, results)):
        new_ids, inputs = res._saliency_inputs["new_ids"], res._saliency_inputs["inputs"]
        text, offsets = S.token_char_spans(tok, new_ids[0].tolist())
        found = targets_with_truth(text, res, study, ("report",))
        weights = S.token_weights([t for t, _, _ in found], offsets)
        found = [f for f, w in zip(found, weights) if w.sum() > 0]
        if found:
            per_layer = torch.from_numpy(S.layer_maps(pipe.model, inputs, new_ids, [t for t, _, _ in found], offsets))
            n_layers = per_layer.shape[1]
            patch_px = study.image.shape[1] / per_layer.shape[-1]
            for k, (t, kind, mask) in enumerate(found):
                hits = [score_map(S.fuse_layers(per_layer[k:k + 1, c:])[0].numpy(), mask, patch_px)["point1"]
                        for c in range(n_layers)]
                rows.append({"study": study.study_id, "type": kind, "target": t.name, "hits": hits})
        if (i + 1) % 50 == 0:
            logger.info("explained %d/%d studies", i + 1, len(studies))
    return rows, n_layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (the trained embedded model)")
    parser.add_argument("--n", type=int, default=1800, help="validation phantom studies (600 left consolidation and fracture undecided)")
    parser.add_argument("--seed", type=int, default=2, help="phantom seed (2 = validation; never choose on 3, the test seed)")
    parser.add_argument("--min-n", type=int, default=20, help="true positives a finding needs for its own choice")
    parser.add_argument("--z", type=float, default=1.96, help="sign-test threshold for leaving the full fusion")
    parser.add_argument("--batch", type=int, default=25, help="generation batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None, help="write the chosen weights here (the model's saliency.json)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not Path(args.model).is_dir():
        print(f"saliency_depth: no model folder at {args.model}", file=sys.stderr)
        return 2
    if args.seed == 3:
        print("saliency_depth: seed 3 is the test split; choose on validation (seed 2)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig(model=args.model, threads=args.threads))
    studies = list(generate_studies(args.n, args.seed))
    rows, n_layers = collect(pipe, studies, generate(pipe, studies, args.batch))
    if not rows:
        print("saliency_depth: the model reported no true-positive finding", file=sys.stderr)
        return 1
    by_target = defaultdict(list)
    for r in rows:
        by_target[r["target"]].append(r["hits"])
    chosen = choose_cutoffs(by_target, args.min_n, args.z)
    table = {t: {"n": len(h), "pointing_by_cutoff": np.asarray(h).mean(0).round(4).tolist(), "cutoff": chosen.get(t, 0)}
             for t, h in sorted(by_target.items())}
    uniform = float(np.mean([r["hits"][0] for r in rows]))
    per_finding = float(np.mean([r["hits"][chosen.get(r["target"], 0)] for r in rows]))
    print(f"saliency depth: {args.n} validation phantoms (seed {args.seed}), model {args.model}, {n_layers} vision blocks")
    print(f"{'finding':<28}{'TPs':>5}" + "".join(f"{'from ' + str(c + 1):>9}" for c in range(n_layers)) + "   chosen")
    for t, row in table.items():
        cells = "".join(f"{v:>9.2f}" for v in row["pointing_by_cutoff"])
        print(f"{t:<28}{row['n']:>5}{cells}   blocks {row['cutoff'] + 1}-{n_layers}")
    print(f"pointing (1 patch), all true positives: all blocks {uniform:.3f}, per-finding choice {per_finding:.3f} "
          "(in-sample: measure on the test seed with saliency_faithfulness.py)")
    config = {"method": S.DEFAULT_METHOD, "layer": "blocks",
              "depth_weights": {t: cutoff_weights(c, n_layers) for t, c in sorted(chosen.items())},
              "chosen_on": {"seed": args.seed, "n_studies": args.n, "true_positives": len(rows), "min_n": args.min_n, "z": args.z,
                            "command": "python benchmarks/saliency_depth.py " + " ".join(argv if argv is not None else sys.argv[1:])}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "n_layers": n_layers, "per_finding": table,
                                    "pointing_all_blocks": uniform, "pointing_per_finding_in_sample": per_finding,
                                    "config": config, "rows": rows, "seconds": time.perf_counter() - t0}) + "\n")
    if args.write:
        args.write.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
