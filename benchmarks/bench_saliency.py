"""Speed of per-finding saliency maps (`medr2.saliency.maps.explain`) on held-out phantom studies.

For each study the model generates its trace (or, with `--source reference`, the ground-truth trace is
teacher-forced, which gives realistic lengths and finding counts with an untrained model), then
`explain` computes every map of the study: one per positive/uncertain finding, per abnormal perception
line and the whole report — one forward and one backward per map. Reported: ms per map, ms per study,
maps per study, and the same with findings only (`include_perception=False`). The target is <= 150 ms per
finding map on 2 CPU cores with the embedded model.

Run: `python benchmarks/bench_saliency.py --model assets/model [--studies 12] [--threads 2] [--method gradcam]`
-> table on stdout, JSON in benchmarks/results/saliency.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from medr2 import saliency
from medr2.inference.pipeline import Pipeline, PipelineConfig
from medr2.phantom.generator import generate_studies
from medr2.report import traces

logger = logging.getLogger("bench_saliency")
RESULTS = Path(__file__).resolve().parent / "results" / "saliency.json"
HELD_OUT_SEED = 3  # the phantom test split's seed


def reference_result(pipe: Pipeline, study):
    """A StudyResult whose 'generation' is the study's ground-truth trace, teacher-forced."""
    direct = pipe.card.get("target") == "direct"
    return pipe.forced_result(study.image, traces.direct_target(study) if direct else traces.medr2_target(study))


def study_result(pipe: Pipeline, study, source: str):
    return pipe.run(study.image) if source == "generated" else reference_result(pipe, study)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (e.g. assets/model)")
    parser.add_argument("--studies", type=int, default=12, help="held-out phantom studies (seed 3) with a finding")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--method", default=saliency.DEFAULT_METHOD, choices=list(saliency.METHODS))
    parser.add_argument("--source", default="generated", choices=("generated", "reference"),
                        help="explain the model's own generation, or teacher-force the ground-truth trace")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.model).is_dir():
        print(f"bench_saliency: no model directory at {args.model}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pipe = Pipeline(PipelineConfig(model=args.model, threads=args.threads))
    studies = [s for s in generate_studies(args.studies * 3, HELD_OUT_SEED) if s.findings][:args.studies]
    results = [study_result(pipe, s, args.source) for s in studies]
    pipe.saliency(results[0], method=args.method)  # warm-up
    rows = {}
    for label, perception in (("all maps", True), ("findings + report", False)):
        per_map, per_study, counts = [], [], []
        for res in results:
            t0 = time.perf_counter()
            out = pipe.saliency(res, method=args.method, include_perception=perception)
            dt = time.perf_counter() - t0
            if out.maps:
                per_map.append(dt / len(out.maps))
                per_study.append(dt)
                counts.append(len(out.maps))
        if not per_map:
            print("bench_saliency: no study produced a map (an untrained model? try --source reference)", file=sys.stderr)
            return 2
        rows[label] = {"ms_per_map_median": 1000 * statistics.median(per_map),
                       "ms_per_map_mean": 1000 * statistics.mean(per_map),
                       "ms_per_study_median": 1000 * statistics.median(per_study),
                       "maps_per_study_mean": statistics.mean(counts), "studies": len(per_map)}
    gen_tokens = statistics.mean(r.n_tokens for r in results)
    print(f"saliency speed: {args.method}, {args.threads} thread(s), {args.source} traces, "
          f"{gen_tokens:.0f} generated tokens/study, model {args.model}")
    print(f"{'targets':<20}{'ms/map (median)':>17}{'ms/map (mean)':>15}{'ms/study':>10}{'maps/study':>12}")
    for label, r in rows.items():
        print(f"{label:<20}{r['ms_per_map_median']:>17.0f}{r['ms_per_map_mean']:>15.0f}"
              f"{r['ms_per_study_median']:>10.0f}{r['maps_per_study_mean']:>12.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "method": args.method, "threads": args.threads, "source": args.source, "model": str(args.model),
        "generated_tokens_mean": gen_tokens, "rows": rows, "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
