"""CPU latency of the full pipeline (perception -> reasoning -> draft -> reflection -> report) per study.

Prints a table (median / p95 latency at batch 1, tokens/s, batched seconds per study, peak RSS) and
writes `benchmarks/results/pipeline.json`. Target: median <= 2 s on 2 cores with the embedded model.

Run: `python benchmarks/bench_pipeline.py [--model assets/model] [--n 20] [--threads 2]`
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    from medr2.inference.pipeline import Pipeline, PipelineConfig, default_model
    from medr2.phantom.generator import generate_studies

    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig(model=args.model or default_model(), threads=args.threads))
    load_s = time.perf_counter() - t0
    images = [s.image for s in generate_studies(args.n, seed=77)]
    pipe.run(images[0])  # warm-up
    lat, toks = [], []
    for im in images:
        t = time.perf_counter()
        r = pipe.run(im)
        lat.append(time.perf_counter() - t)
        toks.append(r.n_tokens)
    t = time.perf_counter()
    pipe.run_batch(images, batch_size=args.batch)
    batched = (time.perf_counter() - t) / len(images)
    lat_sorted = sorted(lat)
    result = {
        "model": pipe.provenance.model, "weights": pipe.provenance.weights_sha256[:12], "threads": args.threads, "n": args.n,
        "load_s": round(load_s, 3),
        "latency_median_s": round(statistics.median(lat), 3),
        "latency_p95_s": round(lat_sorted[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "tokens_mean": round(statistics.mean(toks), 1),
        "tokens_per_s": round(sum(toks) / sum(lat), 1),
        f"batched_s_per_study_b{args.batch}": round(batched, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    for k, v in result.items():
        print(f"{k:28s} {v}")
    out = Path(__file__).parent / "results" / "pipeline.json"
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
