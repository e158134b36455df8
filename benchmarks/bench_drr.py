"""Speed of the rendered films (medr2.phantom.drr): films per second at 256 px on one core.

    OMP_NUM_THREADS=1 python benchmarks/bench_drr.py --n 200 --out benchmarks/results/drr.json

Renders seeds of set 2 (validation) with the default finding mix, after a warm-up film (the first film of a process
loads the CT and its projections, from ~/.cache/medr2/ct after the first run). One process, one thread: stage 0 would
run one renderer per data-loader worker. Reports films/s overall and for normal studies alone, and the time per
finding kind (mean extra seconds over a normal film).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    from medr2.phantom.ct_volume import load_chest_ct
    from medr2.phantom.drr import render_study
    from medr2.phantom.drr_geometry import ROTATIONS_DEG, anatomy_maps
    from medr2.phantom.generator import study_seeds
    from medr2.phantom.specs import PhantomConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/drr.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_chest_ct()
    for r in ROTATIONS_DEG:
        anatomy_maps(r)
    render_study(0, PhantomConfig(size=args.size, renderer="drr"))
    warm = time.perf_counter() - t0
    config = PhantomConfig(size=args.size, renderer="drr")
    times, normal, per_kind = [], [], {}
    for seed in study_seeds(args.n, 2):
        t = time.perf_counter()
        st = render_study(seed, config)
        dt = time.perf_counter() - t
        times.append(dt)
        if not st.findings:
            normal.append(dt)
        for f in st.findings:
            per_kind.setdefault(f.kind, []).append(dt)
    base = sum(normal) / max(len(normal), 1)
    result = {
        "films": args.n, "size": args.size, "threads": os.environ.get("OMP_NUM_THREADS"),
        "films_per_s": round(len(times) / sum(times), 2), "normal_films_per_s": round(len(normal) / max(sum(normal), 1e-9), 2),
        "mean_s": round(sum(times) / len(times), 4), "p95_s": round(sorted(times)[int(0.95 * (len(times) - 1))], 4),
        "warm_up_s": round(warm, 1),
        "extra_s_by_kind": {k: round(sum(v) / len(v) - base, 4) for k, v in sorted(per_kind.items())},
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared)", "command": "OMP_NUM_THREADS=1 python benchmarks/bench_drr.py --n %d" % args.n,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
