"""Phantom generation speed (one core) and report/label consistency.

Prints a table and writes benchmarks/results/phantom.json. Run: `python benchmarks/bench_phantom.py [--n 200]`.
Thread pools are pinned to one thread so the number is per core.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from medr2.labeler.findings import label_report  # noqa: E402
from medr2.phantom.generator import PhantomConfig, generate_studies  # noqa: E402


def throughput(n: int, size: int) -> tuple[float, float]:
    """(studies per wall-clock second, studies per CPU second of this process).

    CPU time is the fair per-core number on a shared machine: wall time also counts the neighbours.
    """
    config = PhantomConfig(size=size)
    list(generate_studies(3, 999, config))  # warm caches (coordinate grids)
    wall = cpu = 0.0
    for rep in range(2):  # best of two
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in generate_studies(n, rep, config):
            pass
        wall = max(wall, n / (time.perf_counter() - w0))
        cpu = max(cpu, n / (time.process_time() - c0))
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="studies per timing at 256 px")
    ap.add_argument("--consistency_n", "--consistency-n", type=int, default=500)
    args = ap.parse_args()
    rows = [(256, throughput(args.n, 256)), (512, throughput(max(10, args.n // 8), 512)), (1024, throughput(max(4, args.n // 40), 1024))]
    studies = list(generate_studies(args.consistency_n, 77))
    agree = sum(label_report(s.report) == s.labels for s in studies)
    normal = sum(not s.findings for s in studies)
    print(f"{'size':>6} | {'studies/s wall':>14} | {'studies/CPU-s (1 core)':>22}")
    for size, (wall, cpu) in rows:
        print(f"{size:>6} | {wall:>14.1f} | {cpu:>22.1f}")
    print(f"labeler == ground truth: {agree}/{len(studies)}; normal studies: {normal}/{len(studies)}")
    out = {"studies_per_s_wall": {str(s): round(w, 1) for s, (w, _) in rows},
           "studies_per_cpu_s": {str(s): round(c, 1) for s, (_, c) in rows}, "load_avg_1min": os.getloadavg()[0], "label_agreement": agree / len(studies),
           "normal_fraction": normal / len(studies), "n": args.n, "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count()}
    path = Path(__file__).parent / "results" / "phantom.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
