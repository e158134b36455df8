"""From an IU X-Ray release folder to an evaluated LoRA model, as docs/datasets.md tells a newcomer to do it: `medr2 data
iu-xray` -> `train-sft --target medr2 --use_lora` (Med-R2 traces read from the reports, frontal + lateral) ->
`train-grpo --use_lora` from that SFT adapter (MRG-R1 rewards against the reference reports) -> `evaluate` on the test
split. Each stage runs a few steps on a micro Gemma 3 (MedGemma's architecture) built from config; on GPUs the same
commands take `recipes/medgemma/*.yaml`.

The release is written here in the ecgen-radiology format with our own report text (tests/test_iu_xray.py); the real
reports are CC BY-NC-ND and are never committed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_iu_xray import write_release

from medr2.data.datasets import read_r2gen

ROOT = Path(__file__).resolve().parents[1]


def few_steps(n: int) -> list[str]:
    return ["--max_steps", str(n), "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none"]


def _medr2(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medr2", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"medr2 {' '.join(args[:1])}: {proc.stderr[-3000:]}"
    return proc


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_an_iu_xray_folder_to_medr2_sft_grpo_and_evaluation_with_lora(tmp_path):
    release = write_release(tmp_path / "release", n_studies=10)
    data, base, sft, grpo, run = (tmp_path / n for n in ("iu_xray", "base", "sft", "grpo", "eval"))

    _medr2("data", "iu-xray", "--dataset_dir", str(release), "--output_dir", str(data))
    splits = {s: len(read_r2gen(data, splits=(s,))) for s in ("train", "val", "test")}
    assert splits == {"train": 7, "val": 1, "test": 2}

    _medr2("build-tiny", "--arch", "gemma3", "--micro", "--output_dir", str(base))
    _medr2("train-sft", "--target", "medr2", "--dataset_dir", str(data), "--model_name_or_path", str(base),
           "--use_lora", "true", "--lora_r", "4", "--max_images", "2", "--gradient_checkpointing", "false",
           "--learning_rate", "1e-3", "--output_dir", str(sft), *few_steps(2))
    card = json.loads((sft / "medr2_model.json").read_text())
    assert card["demo"] is False and card["training_datasets"][-1]["name"] == "IU X-Ray" and card["images_per_study"] == 2
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    sft_weights = _adapter(sft)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in sft_weights.items())  # it trained

    # GRPO trains the SFT adapter on (the recipe's `init: <SFT adapter>` + `use_lora: true`), on the same base
    _medr2("train-grpo", "--init", str(sft), "--dataset_dir", str(data), "--use_lora", "true", "--lora_r", "4",
           "--max_images", "2", "--n_prompts", "2", "--num_generations", "2", "--max_completion_length", "8",
           "--beta", "0.0", "--output_dir", str(grpo), *few_steps(1))
    assert json.loads((grpo / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert set(_adapter(grpo)) == set(sft_weights)  # one adapter trained on, not an adapter on an adapter
    grpo_card = json.loads((grpo / "medr2_model.json").read_text())
    assert grpo_card["demo"] is False and grpo_card["images_per_study"] == 2 and "IU X-Ray" in grpo_card["training_data"]

    _medr2("evaluate", "--model", str(grpo), "--dataset_dir", str(data), "--split", "test", "--max_new_tokens", "8",
           "--no_nlg", "--batch_size", "2", "--out", str(run))
    summary = json.loads((run / "eval.json").read_text())
    assert summary["n"] == splits["test"] and summary["images_per_study"] == 2 and summary["images_read"] == 4
    assert summary["provenance"]["demo"] is False and "IU X-Ray" in summary["provenance"]["training_data"]
    assert 0.0 <= summary["format"]["medr2_format_failure_rate"] <= 1.0 and "example-14" in summary["final"]
    assert len((run / "predictions.jsonl").read_text().splitlines()) == splits["test"]

    # the exported LoRA model carries its adapter (not a card without weights) and still runs
    exported = tmp_path / "exported"
    _medr2("export", "--run_dir", str(grpo), "--output_dir", str(exported), "--target", "medr2", "--recipe", "test")
    assert set(_adapter(exported)) == set(sft_weights) and (exported / "adapter_config.json").is_file()
    assert json.loads((exported / "medr2_model.json").read_text())["images_per_study"] == 2
    _medr2("evaluate", "--model", str(exported), "--dataset_dir", str(data), "--split", "test", "--max_new_tokens", "4",
           "--no_nlg", "--batch_size", "2", "--out", str(tmp_path / "eval_exported"))
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "medr2_model.json").write_text(json.dumps(grpo_card))
    proc = subprocess.run([sys.executable, "-m", "medr2", "export", "--run_dir", str(empty), "--output_dir",
                           str(tmp_path / "x"), "--target", "medr2", "--recipe", "test"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode != 0 and "holds no weights" in proc.stderr and "Traceback" not in proc.stderr


def test_docs_show_the_chain_this_test_runs():
    """docs/datasets.md spells the commands above (and the GPU recipes), so a newcomer can follow it."""
    doc = (ROOT / "docs" / "datasets.md").read_text()
    for command in ("medr2 data iu-xray", "medr2 build-tiny --arch gemma3 --micro",
                    "medr2 train-sft --target medr2 --dataset_dir", "--use_lora true", "medr2 train-grpo --init",
                    "medr2 evaluate --model", "recipes/medgemma/sft_medgemma4b_lora_iu.yaml",
                    "recipes/medgemma/grpo_medgemma4b_lora_iu.yaml", "tests/test_real_chain.py"):
        assert command in doc, command
    for recipe in ("sft_medgemma4b_lora_iu.yaml", "grpo_medgemma4b_lora_iu.yaml"):
        assert (ROOT / "recipes" / "medgemma" / recipe).is_file()
