"""Reviewer-app load benchmark: cold start to ready, then 8 concurrent clients x 5 studies each.

Starts `app.py` as its own process (as `scripts/app.sh` does), times how long until the page answers,
then drives the `/analyze` endpoint with gradio_client from N threads at once (bundled examples in turn:
phantom PNGs and the RG1 DICOM) and reports p50/p95 latency per study, errors (only the designed
"queue full" busy error is acceptable) and the server's resident memory before and after.

Run: `.venv/bin/python benchmarks/bench_app.py` (micro untrained model built in a temp folder: measures the
app's own overhead in < 1 min) or `--model assets/model --max_new_tokens 640` for the demo model.
Prints a table and writes benchmarks/results/app.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
RESULTS = ROOT / "benchmarks" / "results" / "app.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def micro_model(folder: Path) -> Path:
    from medr2.modeling.model import cli_build_tiny

    out = folder / "micro"
    cli_build_tiny(["--micro", "--out", str(out)])
    (out / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": True, "training_data": "synthetic phantoms"}))
    return out


def start_server(model: Path | str, port: int, data_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, float]:
    """Launch app.py and return (process, seconds until GET / answers 200)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--port", str(port), "--data_dir", str(data_dir),
           "--max_new_tokens", str(args.max_new_tokens), "--queue_size", str(args.queue_size),
           "--concurrency", str(args.concurrency)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("app.py did not answer within 120 s")


def rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def drive(url: str, clients: int, studies: int) -> dict:
    """`clients` threads, each with its own gradio_client, `studies` sequential /analyze calls each."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    files = sorted(EXAMPLES.glob("phantom_*.png")) + sorted(EXAMPLES.glob("*.dcm"))
    latencies: list[float] = []
    outcome = {"ok": 0, "busy": 0, "errors": 0}
    messages: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        c = Client(url, verbose=False)
        start.wait()
        for k in range(studies):
            path = files[(i * studies + k) % len(files)]
            t0 = time.perf_counter()
            try:
                c.predict(handle_file(str(path)), api_name="/analyze")
                kind = "ok"
            except QueueError:
                kind = "busy"
            except Exception as exc:  # noqa: BLE001 - counted and reported, the benchmark goes on
                kind = "errors"
                with lock:
                    messages.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            with lock:
                outcome[kind] += 1
                if kind == "ok":
                    latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {"clients": clients, "studies_per_client": studies, **outcome, "wall_s": wall,
            "throughput_studies_per_s": outcome["ok"] / wall, "p50_s": statistics.median(latencies) if latencies else None,
            "p95_s": q[18], "max_s": max(latencies, default=None), "error_messages": messages[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or hub id (default: a micro untrained model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--studies", type=int, default=5, help="studies per client")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64)
    parser.add_argument("--queue_size", "--queue-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or micro_model(Path(tmp))
        proc, ready_s = start_server(model, free_port(), Path(tmp) / "data", args)
        try:
            port = int(proc.args[proc.args.index("--port") + 1])
            rss_before = rss_mb(proc)
            load = drive(f"http://127.0.0.1:{port}/", args.clients, args.studies)
            rss_after = rss_mb(proc)
        finally:
            proc.terminate()
            proc.wait(10)
    result = {"model": "micro (untrained)" if args.model is None else str(args.model), "cold_start_to_ready_s": ready_s,
              "rss_before_mb": rss_before, "rss_after_mb": rss_after, **load, "max_new_tokens": args.max_new_tokens,
              "queue_size": args.queue_size, "concurrency": args.concurrency, "cpu_count": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    rows = [("cold start to ready", f"{ready_s:.1f} s"), ("studies ok / busy / errors", f"{load['ok']} / {load['busy']} / {load['errors']}"),
            ("latency p50 / p95 / max", f"{load['p50_s'] or 0:.2f} / {load['p95_s']:.2f} / {load['max_s'] or 0:.2f} s"),
            ("throughput", f"{load['throughput_studies_per_s']:.2f} studies/s"),
            ("server RSS before / after", f"{rss_before:.0f} / {rss_after:.0f} MB")]
    print(f"app benchmark: {result['model']}, {args.clients} clients x {args.studies} studies, max_new_tokens={args.max_new_tokens}")
    for name, value in rows:
        print(f"  {name:<28} {value}")
    for m in load["error_messages"]:
        print(f"  error: {m}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if load["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
