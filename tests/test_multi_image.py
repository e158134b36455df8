"""Several images per study at inference and evaluation: a study (a list of images, frontal first) reaches the model
as one chat with one image placeholder per image (the user turn training rows carry, `study_chat`), for LLaVA,
Qwen2-VL and Gemma 3 (MedGemma's architecture) micro random models built from config (and every other `build-tiny`
architecture for the inputs); batched studies of different sizes give what one study at a time gives; saliency,
confidence and the look loop read the frontal and say so in one warning; `medr2 evaluate --dataset_dir` sends every
study's views (default: the card's `images_per_study`) and records it; `medr2 generate A.png B.png` is one study.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from answers import GENERATED
from PIL import Image

from medr2.cli import main
from medr2.data.datasets import study_chat, write_r2gen
from medr2.inference.pipeline import Pipeline, PipelineConfig, as_study
from medr2.inference.results import FRONTAL_ONLY, FRONTAL_ONLY_LOOKS, merge_checks
from medr2.modeling.model import build_chat, cli_build_tiny

ARCHS = ("llava", "qwen2_vl", "gemma3")
ALL_ARCHS = (*ARCHS, "qwen2_5_vl", "qwen3_vl", "llava_onevision", "idefics3")  # every `medr2 build-tiny --arch`


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """arch -> a micro model folder whose card says it was trained on two views a study."""
    out = {}
    for arch in ALL_ARCHS:
        folder = tmp_path_factory.mktemp(arch) / "model"
        assert cli_build_tiny(["--arch", arch, "--micro", "--out", str(folder)]) == 0
        (folder / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": False, "images_per_study": 2,
                                                             "training_data": "test folder"}))
        out[arch] = folder
    return out


def views() -> tuple[np.ndarray, np.ndarray]:
    """A bright 'frontal' and a dark 'lateral' film of different sizes."""
    y, x = np.mgrid[0:200, 0:232]
    frontal = (150 + np.sin(x / 9.0) * np.cos(y / 13.0) * 90).astype(np.uint8)
    lateral = (60 + np.cos(x[:180, :150] / 7.0) * 40).astype(np.uint8)
    return frontal, lateral


def image_count(model, inputs) -> tuple[list[int], int]:
    """(image tokens per prompt row, images encoded): what the model is handed."""
    token = model.config.image_token_id
    tokens = (inputs["input_ids"] == token).sum(dim=1).tolist()
    if "image_grid_thw" in inputs:
        images = inputs["image_grid_thw"].shape[0]
    elif model.config.model_type == "idefics3":  # [rows, views, C, H, W], padded with all-zero views
        images = int((inputs["pixel_values"].flatten(2).abs().sum(-1) > 0).sum())
    else:
        images = inputs["pixel_values"].shape[0]
    return tokens, int(images)


@pytest.fixture()
def generate_calls(monkeypatch) -> list:
    """Every model input `Pipeline` generates from: (image tokens per row, images encoded)."""
    calls = []
    original = Pipeline.study_inputs

    def recording(self, studies, prefixes=None):
        inputs = original(self, studies, prefixes)
        calls.append(image_count(self.model, inputs))
        return inputs

    monkeypatch.setattr(Pipeline, "study_inputs", recording)
    return calls


def test_the_study_chat_is_the_one_image_chat_with_more_placeholders():
    assert study_chat("Describe.", 1) == build_chat("Describe.")
    chat = study_chat("Describe.", 3, system="Be brief.")
    assert chat[0] == build_chat("Describe.", system="Be brief.")[0]
    assert [p["type"] for p in chat[1]["content"]] == ["image", "image", "image", "text"]
    with pytest.raises(ValueError, match="at least one image"):
        study_chat("Describe.", 0)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_a_two_image_study_reaches_the_model_as_two_images(built, arch, generate_calls):
    pipe = Pipeline(PipelineConfig(model=str(built[arch]), max_new_tokens=6, looks="off", device="cpu"))
    frontal, lateral = views()
    one = pipe.run(frontal)
    pipe.run(lateral)
    two = pipe.run([frontal, lateral])
    (one_tokens, one_images), (lateral_tokens, _), (two_tokens, two_images) = generate_calls
    assert one_images == 1 and two_images == 2
    # each view's image tokens (LLaVA-OneVision's depend on the image's shape)
    assert two_tokens == [one_tokens[0] + lateral_tokens[0]] and one_tokens[0] > 0 and lateral_tokens[0] > 0
    assert one.warnings == [] and one.images == [one.image]
    assert two.warnings == [FRONTAL_ONLY.format(n=2)] and len(two.images) == 2 and two.image is two.images[0]
    assert two.image.pixels.shape == frontal.shape  # the frontal is the study's first image
    # saliency and confidence re-read the answer on the frontal alone: one image's tokens
    saved_tokens, saved_images = image_count(pipe.model, two.saliency_inputs["inputs"])
    assert saved_tokens == one_tokens and saved_images == 1
    assert two.to_json()["warnings"] == [FRONTAL_ONLY.format(n=2)]
    # a list of one image is that image
    assert pipe.run([frontal]).raw_text == one.raw_text and pipe.run([frontal]).warnings == []


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_studies_of_one_and_two_images_match_one_study_at_a_time(built, arch, generate_calls):
    pipe = Pipeline(PipelineConfig(model=str(built[arch]), max_new_tokens=6, looks="off", device="cpu"))
    frontal, lateral = views()
    studies = [[frontal, lateral], [lateral, frontal], frontal]
    batch = pipe.run_batch(studies, batch_size=3)
    tokens, images = generate_calls[0]
    assert images == 5 and tokens[0] == tokens[1] == 2 * tokens[2]
    singles = [pipe.run(s) for s in studies]
    assert [r.raw_text for r in batch] == [r.raw_text for r in singles]
    assert [len(r.images) for r in batch] == [2, 2, 1]
    assert [r.warnings for r in batch] == [[FRONTAL_ONLY.format(n=2)]] * 2 + [[]]


def test_saliency_of_a_multi_image_study_reads_the_frontal(built):
    pipe = Pipeline(PipelineConfig(model=str(built["gemma3"]), looks="off", device="cpu"))
    frontal, lateral = views()
    maps = pipe.saliency(pipe.forced_result([frontal, lateral], GENERATED)).maps
    assert [m.target for m in maps] == ["Pleural Effusion", "Pneumothorax", "right lung, lower zone", "report"]
    assert all(m.heatmap.shape == frontal.shape and np.isfinite(m.heatmap).all() for m in maps)
    pipe.saliency(pipe.run([frontal, lateral]))  # a generated multi-image result: no crash (its maps, if any, on the frontal)


def test_the_look_loop_reads_the_frontal_and_says_so(built):
    pipe = Pipeline(PipelineConfig(model=str(built["llava"]), max_new_tokens=6, looks="model", device="cpu"))
    frontal, lateral = views()
    *events, result = pipe.stream([frontal, lateral])
    assert events[-1].kind == "done" and result.raw_text == pipe.run(frontal).raw_text
    assert result.warnings == [FRONTAL_ONLY_LOOKS.format(n=2)] and len(result.images) == 2
    (batched,) = pipe.run_batch([[frontal, lateral]])
    assert batched.warnings == [FRONTAL_ONLY_LOOKS.format(n=2)]


def test_the_input_gate_judges_every_image_of_a_study(built):
    from medr2.trust.gate import UNKNOWN_REASON, InputCheck

    pipe = Pipeline(PipelineConfig(model=str(built["llava"]), max_new_tokens=4, looks="off", device="cpu"))
    frontal, lateral = views()
    assert pipe.run([frontal, lateral]).input_check.reasons == [UNKNOWN_REASON]  # said once, not per image
    merged = merge_checks([InputCheck(True, 3.0, 5.0, []), InputCheck(False, 9.0, 5.0, ["the image is unlike"])])
    assert merged.flagged and merged.score == 9.0 and merged.reasons == ["image 2: the image is unlike"]
    assert merge_checks([InputCheck(True, 3.0, 5.0, []), InputCheck(None, None, None, [UNKNOWN_REASON])]).in_distribution is None
    with pytest.raises(ValueError, match="at least one image"):
        as_study([])


def test_the_model_cards_views_per_study_is_in_the_provenance_shown(built):
    from medr2.app.views import provenance_markdown

    pipe = Pipeline(PipelineConfig(model=str(built["llava"]), max_new_tokens=4, looks="off", device="cpu"))
    assert pipe.provenance.images_per_study == 2
    assert "**Views per study** 2, frontal first" in provenance_markdown(asdict(pipe.provenance))


# ------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def two_view_dataset(tmp_path_factory) -> Path:
    """An R2Gen folder: test studies t0 (lateral listed first, `views` says which is frontal), t1 (two views), t2
    (frontal only); frontals are bright, laterals dark."""
    root = tmp_path_factory.mktemp("two_views")
    frontal, lateral = views()
    records = []
    layout = {"t0": ["lateral", "frontal"], "t1": ["frontal", "lateral"], "t2": ["frontal"], "r0": ["frontal", "lateral"]}
    for sid, kinds in layout.items():
        (root / "images" / sid).mkdir(parents=True)
        for k, kind in enumerate(kinds):
            Image.fromarray(frontal if kind == "frontal" else lateral).save(root / "images" / sid / f"{k}.png")
        records.append({"id": sid, "report": "Findings: Small right pleural effusion. Impression: Effusion.",
                        "image_path": [f"{sid}/{k}.png" for k in range(len(kinds))], "views": kinds,
                        "split": "train" if sid.startswith("r") else "test"})
    write_r2gen(root, records)
    return root


@pytest.fixture()
def sent(monkeypatch) -> dict:
    """What the pipeline generates from: "studies" = [mean brightness of each image] per study, in order;
    "encoded" = images handed to the model in all."""
    record = {"studies": [], "encoded": 0}
    original = Pipeline.study_inputs

    def recording(self, studies, prefixes=None):
        record["studies"] += [[float(np.asarray(im.pixels).mean()) for im in study] for study in studies]
        inputs = original(self, studies, prefixes)
        record["encoded"] += image_count(self.model, inputs)[1]
        return inputs

    monkeypatch.setattr(Pipeline, "study_inputs", recording)
    return record


def test_evaluate_sends_every_view_by_the_cards_default_and_records_it(built, two_view_dataset, tmp_path, sent):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(built["llava"]), "--dataset_dir", str(two_view_dataset), "--n", "3",
                 "--max_new_tokens", "4", "--nlg", "false", "--batch_size", "2", "--looks", "off",
                 "--output_dir", str(out)]) == 0
    studies = sent["studies"]
    assert [len(s) for s in studies] == [2, 2, 1] and sent["encoded"] == 5
    assert all(s[0] > 128 for s in studies) and all(v < 128 for s in studies for v in s[1:])  # frontal first
    summary = json.loads((out / "eval.json").read_text())
    assert summary["images_per_study"] == 2 and summary["images_read"] == 5 and summary["config"]["max_images"] == 2
    assert summary["provenance"]["images_per_study"] == 2
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["images"]) for r in rows] == [("t0", 2), ("t1", 2), ("t2", 1)]


def test_evaluate_max_images_one_sends_the_frontal_and_bad_values_are_one_line(built, two_view_dataset, tmp_path,
                                                                                sent, capsys):
    out = tmp_path / "eval1"
    assert main(["evaluate", "--model", str(built["llava"]), "--dataset_dir", str(two_view_dataset), "--n", "3",
                 "--max_images", "1", "--max_new_tokens", "4", "--nlg", "false", "--looks", "off",
                 "--output_dir", str(out)]) == 0
    assert [len(s) for s in sent["studies"]] == [1, 1, 1] and sent["encoded"] == 3
    assert all(s[0] > 128 for s in sent["studies"])
    summary = json.loads((out / "eval.json").read_text())
    assert summary["images_per_study"] == 1 and summary["images_read"] == 3
    assert "images" not in json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    for bad, message in ((["--max_images", "0", "--dataset_dir", str(two_view_dataset)], "--max_images must be >= 1"),
                         (["--max_images", "2"], "--max_images > 1 needs --dataset_dir")):
        assert main(["evaluate", "--model", str(built["llava"]), "--n", "2", "--output_dir", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_generate_takes_several_files_as_one_study(built, tmp_path, capsys, generate_calls):
    frontal, lateral = views()
    paths = [tmp_path / "frontal.png", tmp_path / "lateral.png"]
    for path, film in zip(paths, (frontal, lateral)):
        Image.fromarray(film).save(path)
    common = ["--model", str(built["qwen2_vl"]), "--json", "--max_new_tokens", "4", "--looks", "off"]
    assert main(["generate", *map(str, paths), *common]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["generate", "--image", *map(str, paths), *common]) == 0
    flagged = json.loads(capsys.readouterr().out)
    assert main(["generate", str(paths[0]), *common]) == 0
    single = json.loads(capsys.readouterr().out)
    assert [images for _, images in generate_calls] == [2, 2, 1]
    assert positional["warnings"] == flagged["warnings"] == [FRONTAL_ONLY.format(n=2)] and single["warnings"] == []
    assert positional["report"] == flagged["report"]
