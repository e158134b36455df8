"""Findings labeler throughput on the 3,955 IU X-Ray reports, one process, plus label prevalence.

Three timings, each the best of --repeats passes over all reports (the machine is shared, so the best
pass is the least disturbed one; the median is reported too):
- cold: sentence cache emptied before each pass; sentences repeated *within* the corpus still hit it,
  as they do in any real batch (IU reports share ~55% of their sentences);
- uncached: every sentence labelled from scratch (worst case: no sentence ever repeats);
- warm: the cache already holds every sentence (GRPO re-labels the same reference reports each epoch).

The reports (CC BY-NC-ND) are read from the torchxrayvision wheel at run time and never written out.
Run: `python benchmarks/bench_labeler.py [--repeats 5]`. Prints a table and writes
`benchmarks/results/labeler.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medr2.data.datasets import iter_iu_reports_archive, locate_iu_reports_archive  # noqa: E402
from medr2.labeler import findings  # noqa: E402

TARGET = 5000  # reports/s, from issue 2


def passes(texts: list[str], repeats: int, clear: bool) -> list[float]:
    """Reports per second of `repeats` passes of `label_reports` over `texts`."""
    rates = []
    for _ in range(repeats):
        if clear:
            findings._sentence_mentions.cache_clear()
        t0 = time.perf_counter()
        findings.label_reports(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return rates


def uncached(texts: list[str], repeats: int) -> list[float]:
    cached = findings._sentence_mentions
    findings._sentence_mentions = cached.__wrapped__  # _find_all looks the name up at call time
    try:
        return passes(texts, repeats, clear=False)
    finally:
        findings._sentence_mentions = cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes per timing (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "labeler.json")
    args = parser.parse_args(argv)
    archive = locate_iu_reports_archive()
    if archive is None:
        print("bench_labeler: IU X-Ray reports not found; run `bash scripts/setup_env.sh` "
              "(installs torchxrayvision --no-deps)", file=sys.stderr)
        return 2
    texts = [r.text for r in iter_iu_reports_archive(archive)]
    t0 = time.perf_counter()
    findings.phrase_tables()
    compile_ms = (time.perf_counter() - t0) * 1000
    load_before = os.getloadavg()[0]
    timings = {"cold": passes(texts, args.repeats, clear=True), "uncached": uncached(texts, args.repeats)}
    timings["warm"] = passes(texts, args.repeats, clear=False)
    load_after = os.getloadavg()[0]

    labels = findings.label_reports(texts)
    n_mentions = sum(len(findings.find_mentions(t)) for t in texts)
    prevalence = {obs: {name: sum(lab[obs] == v for lab in labels) for name, v in
                        (("positive", 1), ("uncertain", -1), ("negative", 0), ("blank", None))}
                  for obs in findings.OBSERVATIONS}

    print(f"{len(texts)} IU X-Ray reports, {n_mentions / len(texts):.1f} mentions/report, "
          f"tables compiled in {compile_ms:.0f} ms, load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'timing':10s} {'best rep/s':>11s} {'median':>9s}  target {TARGET}")
    for name, rates in timings.items():
        print(f"{name:10s} {max(rates):11.0f} {statistics.median(rates):9.0f}  "
              f"{'ok' if max(rates) >= TARGET else 'BELOW'}")
    print(f"\n{'observation':28s} {'pos':>6s} {'unc':>6s} {'neg':>6s} {'blank':>6s}")
    for obs, counts in prevalence.items():
        print(f"{obs:28s} " + " ".join(f"{counts[k]:6d}" for k in ("positive", "uncertain", "negative", "blank")))

    result = {
        "n_reports": len(texts),
        "reports_per_s": {name: {"best": max(r), "median": statistics.median(r), "all": r}
                          for name, r in timings.items()},
        "target_reports_per_s": TARGET,
        "mentions_per_report": n_mentions / len(texts),
        "compile_ms": compile_ms,
        "prevalence": prevalence,
        "load_average": [load_before, load_after],
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
