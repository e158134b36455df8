"""Can the stage-0 tower learn rib fractures at all? A short, fracture-enriched stage-0 run per callus density.

Stage-0 towers trained on the default phantom mix reached a fracture validation AUC of only 0.53-0.58 while 8 px
nodules reached 0.90. This probe separates "too rare" from "too faint": it continues a stage-0 tower on phantoms
where half the abnormal studies carry a rib fracture, for a fixed number of optimizer steps, with the generator's
callus density set to each value given, and reports the fracture AUC / F1 on an enriched validation set (separate
seed). The recorded result (research/results/fracture_probe.json) ran about 600 steps per density.

  python research/fracture_probe.py --init runs/perception --callus 0.11,0.25 --max_steps 600
-> table on stdout, JSON in research/results/fracture_probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import medr2.phantom.generator as phantom
from medr2.training.perception import (
    PerceptionConfig,
    PerceptionNet,
    build_examples,
    evaluate,
    example_from_study,
    load_perception,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "fracture_probe.json"


def enriched_config() -> phantom.PhantomConfig:
    prevalence = dict(phantom.DEFAULT_PREVALENCE, fracture=0.5)
    return phantom.PhantomConfig(normal_fraction=0.2, prevalence=prevalence)


def write_cache(out: Path, n: int, seed: int, config: PerceptionConfig) -> None:
    """Examples in the file name `medr2.training.perception.build_examples` looks for, so `train` reuses them."""
    path = out / f"examples_v{phantom.GENERATOR_VERSION}_{seed}_{n}_{config.image_size}.npz"
    rows = [example_from_study(phantom.generate_study(s, enriched_config()), config)
            for s in tqdm(phantom.study_seeds(n, seed), desc=f"enriched phantoms (seed {seed})", mininterval=10)]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.stack([r[k] for r in rows]) for k in rows[0]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="runs/perception", help="stage-0 folder to continue (tower + heads)")
    parser.add_argument("--callus", default="0.11,0.25", help="callus peak densities to probe (comma-separated)")
    parser.add_argument("--n_train", "--n-train", type=int, default=2500)
    parser.add_argument("--n_val", "--n-val", type=int, default=300)
    parser.add_argument("--max_steps", "--max-steps", type=int, default=600, help="stage-0 optimizer steps per density")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fracture_probe")
    args = parser.parse_args(argv)
    if not (Path(args.init) / "vision_tower.safetensors").is_file():
        print(f"fracture_probe: no stage-0 tower in {args.init}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for callus in (float(c) for c in args.callus.split(",")):
        phantom.FRACTURE_CALLUS = callus  # read by make_spec at generation time
        out = args.out / f"callus_{callus:g}"
        config = PerceptionConfig(output_dir=str(out), n_train=args.n_train, n_val=args.n_val, train_seed=11, val_seed=12,
                                  max_steps=args.max_steps, lr=5e-4, focal_oversample=1, workers=1, init_from=args.init)
        t0 = time.time()
        write_cache(out, args.n_train, 11, config)
        write_cache(out, args.n_val, 12, config)
        net = PerceptionNet(config)  # the starting tower on the same enriched validation set
        load_perception(net, Path(args.init))
        start = evaluate(net, build_examples(args.n_val, 12, config))["per_class"]["Fracture"]
        metrics = train(config)
        fx = metrics["per_class"]["Fracture"]
        rows.append({"callus": callus, "start_auc": start["auc"], "fracture_auc": fx["auc"], "fracture_f1": fx["f1"], "patch_f1": fx["patch_f1"],
                     "support": fx["support"], "steps": metrics["steps"], "minutes_total": (time.time() - t0) / 60})
        print(f"callus {callus:.2f}: fracture AUC {start['auc']:.3f} -> {fx['auc']:.3f}, F1 {fx['f1']:.2f}, patch F1 {fx['patch_f1']:.2f} "
              f"(n={fx['support']}, {metrics['steps']} steps)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"init": args.init, "n_train": args.n_train, "n_val": args.n_val,
                                   "max_steps": args.max_steps, "fracture_prevalence_abnormal": 0.5, "rows": rows},
                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
