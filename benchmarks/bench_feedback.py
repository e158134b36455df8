"""Feedback store write throughput: one writer, 8 threads sharing a store, 4 processes, all durable commits.

Every submit is its own `BEGIN IMMEDIATE … COMMIT` with `synchronous=FULL`, so this measures fsyncs per
second of the data folder's disk more than Python. Run: `python benchmarks/bench_feedback.py [--n 200]`.
Prints a table and writes `benchmarks/results/feedback.json`.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medr2.feedback.store import FeedbackRecord, FeedbackStore  # noqa: E402

REPORT = "Findings: The heart is enlarged. Small left pleural effusion. Impression: Cardiomegaly. " * 4


def record(i: int) -> FeedbackRecord:
    return FeedbackRecord(
        image_sha256=f"{i:064x}", final_report=REPORT, corrected_report=REPORT.replace("left", "right"),
        model_output="<think>" + REPORT * 3 + "</think>", rating=3, comment=f"bench {i}",
        sentence_verdicts=[{"sentence": "Small left pleural effusion.", "verdict": "edit",
                            "edited_text": "Small right pleural effusion."}],
        error_tags=[{"tag": "wrong_location", "clinically_significant": True}],
        image_metadata={"Modality": "CR", "ViewPosition": "PA", "Rows": 2000, "Columns": 2000})


def single(data: Path, n: int) -> float:
    store = FeedbackStore(data)
    t0 = time.perf_counter()
    for i in range(n):
        store.submit(record(i))
    dt = time.perf_counter() - t0
    store.close()
    return n / dt


def threads(data: Path, n_threads: int, per: int) -> float:
    store = FeedbackStore(data)
    workers = [threading.Thread(target=lambda t=t: [store.submit(record(t * per + j)) for j in range(per)])
               for t in range(n_threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    dt = time.perf_counter() - t0
    store.close()
    return n_threads * per / dt


CHILD = """
import sys, time
sys.path.insert(0, sys.argv[3])
from benchmarks.bench_feedback import record
from medr2.feedback.store import FeedbackStore
store = FeedbackStore(sys.argv[1]); n = int(sys.argv[2])
print("ready", flush=True); sys.stdin.readline()
for i in range(n):
    store.submit(record(i))
"""


def processes(data: Path, n_procs: int, per: int) -> float:
    FeedbackStore(data).close()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(per), str(ROOT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n_procs)]
    for p in procs:  # start the clock only once every interpreter has imported and opened the store
        assert p.stdout.readline() == "ready\n"
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.close()
    for p in procs:
        assert p.wait() == 0
    return n_procs * per / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="submits per scenario")
    parser.add_argument("--dir", type=Path, default=None, help="folder to benchmark in (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [("1 writer", single(Path(tmp, "a"), args.n)),
                ("8 threads, one store", threads(Path(tmp, "b"), 8, args.n // 8)),
                ("4 processes", processes(Path(tmp, "c"), 4, args.n // 4))]
        size = sum(p.stat().st_size for p in Path(tmp, "a").glob("feedback.sqlite3*")) / args.n
    print(f"{'scenario':<22} {'writes/s':>9}")
    for name, rate in rows:
        print(f"{name:<22} {rate:>9.0f}")
    print(f"~{size / 1024:.1f} KiB per record on disk (DB + WAL)")
    out = ROOT / "benchmarks" / "results" / "feedback.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "writes_per_s": dict(rows), "bytes_per_record": size,
                               "machine": platform.platform(), "cpus": __import__("os").cpu_count()}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
