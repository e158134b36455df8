"""Data-parallel training that really runs two processes: `torchrun --nproc_per_node 2` on CPU with the gloo backend,
`medr2 train-sft` on a micro model for two steps. Each rank reports the process group it trained in; the epoch
reached shows that each rank read its own share of the rows."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PER_DEVICE, STEPS, RANKS = 2, 2, 2

RANK_SCRIPT = """
import json, os, sys
from medr2.cli import main
out = sys.argv[1]
rc = main(["train-sft", *sys.argv[2:], "--output_dir", out])
import torch.distributed as dist
ready = dist.is_initialized()
info = {"rc": rc, "rank": int(os.environ["RANK"]), "world": dist.get_world_size() if ready else 1,
        "backend": dist.get_backend() if ready else None}
with open(os.path.join(os.path.dirname(out), "rank%d.json" % info["rank"]), "w") as fh:
    json.dump(info, fh)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sft_under_torchrun_trains_on_two_gloo_ranks(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "model"
    args = ["--target", "direct", "--ddp_backend", "gloo", "--micro", "true", "--n_train", "8", "--max_steps", str(STEPS),
            "--per_device_train_batch_size", str(PER_DEVICE), "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--gradient_checkpointing", "false", "--learning_rate", "1e-3", "--vocab_size", "400"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(RANKS)]
    assert [(r["rank"], r["world"], r["backend"], r["rc"]) for r in ranks] == [(r, RANKS, "gloo", 0) for r in range(RANKS)]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == STEPS
    # the Trainer's epoch counter: each rank reads its half of the rows, so an epoch is half as many steps as one
    # process alone would need (14 rows: 4 steps on two ranks, 7 on one)
    epoch = float(re.findall(r"'epoch': '?([\d.]+)", proc.stdout + proc.stderr)[-1])
    steps_per_epoch = math.ceil(math.ceil(summary["rows"] / RANKS) / PER_DEVICE)
    assert steps_per_epoch < math.ceil(summary["rows"] / PER_DEVICE)
    assert epoch == pytest.approx(STEPS / steps_per_epoch, abs=0.01)
