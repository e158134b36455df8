"""Every architecture `medr2 build-tiny --arch` offers (LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3 = MedGemma's,
LLaVA-OneVision, Idefics3 = SmolVLM's), each a micro random model built from config (nothing downloaded), saved, loaded
through `load_model` without torchvision, run through the pipeline (streamed and batched, as evaluation runs it),
explained by saliency (one line saying it is unavailable for an architecture without a layer entry), and taken through
the app's event path (stream -> parse -> labels -> findings table -> saliency); and `device_map` reaching
`from_pretrained` from every entry.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from answers import GENERATED

from medr2.inference.pipeline import Pipeline, PipelineConfig
from medr2.modeling.model import ARCHS, cli_build_tiny, load_model
from medr2.report.schema import parse
from medr2.saliency.layers import SUPPORTED_ARCHS

ROOT = Path(__file__).resolve().parents[1]
STOCK_PROCESSORS = {"qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """arch -> a micro model folder with a card naming our trained prompt (short enough for 512 positions)."""
    out = {}
    for arch in ARCHS:
        folder = tmp_path_factory.mktemp(arch) / "model"
        assert cli_build_tiny(["--arch", arch, "--micro", "--out", str(folder)]) == 0
        (folder / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": True}))
        out[arch] = folder
    return out


def films() -> list[np.ndarray]:
    y, x = np.mgrid[0:200, 0:232]
    first = ((np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 120).astype(np.uint8)
    return [first, np.ascontiguousarray(first[::-1, ::-1])]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_streams_and_batches_through_the_pipeline(built, arch):
    pipe = Pipeline(PipelineConfig(model=str(built[arch]), max_new_tokens=6, looks="off", device="cpu"))
    assert pipe.model.config.model_type == arch
    assert getattr(pipe.processor, "video_processor", None) is None  # the part that needs torchvision is not built
    *events, result = pipe.stream(films()[0])
    assert events[-1].kind == "done" and 0 < result.n_tokens <= 6
    batch = pipe.run_batch(films(), batch_size=2)  # Gemma 3 used to refuse a batch (images not nested per prompt)
    singles = [pipe.run(f) for f in films()]
    assert [r.raw_text for r in batch] == [r.raw_text for r in singles]
    assert all(r.n_tokens > 0 for r in batch)


@pytest.mark.parametrize("arch", sorted(STOCK_PROCESSORS))
def test_checkpoint_naming_the_stock_processor_loads_the_no_video_one(built, arch, tmp_path):
    """A hub checkpoint names the stock processor and ships a video processor config, which needs torchvision."""
    folder = tmp_path / arch
    shutil.copytree(built[arch], folder)
    config = json.loads((folder / "processor_config.json").read_text())
    stock, video = STOCK_PROCESSORS[arch]
    config["processor_class"] = stock
    (folder / "processor_config.json").write_text(json.dumps(config))
    (folder / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": video,
                                                                       "processor_class": stock}))
    _, processor = load_model(str(folder), device="cpu")
    assert type(processor).__name__ == "NoVideo" + stock


def test_idefics3_checkpoint_naming_the_torchvision_image_processor_loads_without_it(built, tmp_path):
    """SmolVLM / Idefics3 checkpoints name `Idefics3ImageProcessor` (torchvision backend); its processor has no video
    half, so the stock `Idefics3Processor` loads here with the PIL backend and reads the film the same way."""
    folder = tmp_path / "idefics3"
    shutil.copytree(built["idefics3"], folder)
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["processor_class"] == "Idefics3Processor"
    config["image_processor"]["image_processor_type"] = "Idefics3ImageProcessor"
    (folder / "processor_config.json").write_text(json.dumps(config))
    _, processor = load_model(str(folder), device="cpu")
    assert type(processor).__name__ == "Idefics3Processor"
    assert type(processor.image_processor).__name__ == "Idefics3ImageProcessorPil"
    pipe = Pipeline(PipelineConfig(model=str(folder), max_new_tokens=4, looks="off", device="cpu"))
    reference = Pipeline(PipelineConfig(model=str(built["idefics3"]), max_new_tokens=4, looks="off", device="cpu"))
    assert pipe.run(films()[0]).raw_text == reference.run(films()[0]).raw_text


def test_every_architecture_has_a_saliency_layer_entry():
    assert set(ARCHS) <= set(SUPPORTED_ARCHS)


@pytest.mark.parametrize("arch", ("gemma3", "qwen3_vl", "llava_onevision", "idefics3"))
def test_saliency_explains_the_newer_architectures(built, arch):
    pipe = Pipeline(PipelineConfig(model=str(built[arch]), looks="off", device="cpu"))
    film = films()[0]
    result = pipe.forced_result(film, GENERATED)
    maps = pipe.saliency(result).maps
    assert [m.target for m in maps] == ["Pleural Effusion", "Pneumothorax", "right lung, lower zone", "report"]
    for m in maps:
        assert m.heatmap.shape == film.shape and np.isfinite(m.heatmap).all()
        assert m.heatmap.max() == pytest.approx(1.0) and m.heatmap.min() >= 0.0
    # the maps explain the film: a different film gives different maps for the same answer
    other = pipe.saliency(pipe.forced_result(films()[1], GENERATED)).maps
    assert not np.allclose(maps[0].grid, other[0].grid)


@pytest.fixture()
def no_layer_entry(monkeypatch):
    """The registry as if it had no entry for LLaVA-OneVision (as for any architecture it does not know)."""
    from medr2.saliency import layers

    monkeypatch.setattr(layers, "SUPPORTED_ARCHS", tuple(a for a in SUPPORTED_ARCHS if a != "llava_onevision"))


def test_saliency_on_an_architecture_without_a_layer_entry_is_one_line(built, no_layer_entry):
    pipe = Pipeline(PipelineConfig(model=str(built["llava_onevision"]), looks="off", device="cpu"))
    from medr2.saliency.layers import SaliencyUnavailable

    with pytest.raises(SaliencyUnavailable, match="saliency unavailable for this architecture") as info:
        pipe.saliency(pipe.forced_result(films()[0], GENERATED))
    assert "\n" not in str(info.value) and "llava_onevision" in str(info.value)


def _app_study(built, arch, tmp_path) -> dict:
    """A study through the app as a reviewer sees it: every update of the analyze event, merged."""
    from test_app import EXAMPLES, as_dict, frame_rows, make_service, upload

    service = make_service(built[arch], tmp_path / "data", tmp_path / "up", script=GENERATED)
    merged: dict = {}
    for update in service.analyze(str(upload(EXAMPLES / "phantom_effusion.png", service.upload_root))):
        merged.update(as_dict(update))
    assert merged["report"]["value"] == parse(GENERATED).output.report.text
    assert "right lung, lower zone" in merged["perception"] and "effusion_meniscus" in merged["reasoning"]
    rows = {r[0].rstrip(" ≠"): r[1:] for r in frame_rows(merged["findings"])}
    assert rows["Pleural Effusion"][:2] == ["+", "+"]  # draft and final
    return merged


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_the_apps_event_path_on_every_architecture(built, arch, tmp_path):
    """The answer streams, parses into the panels, its labels fill the findings table, and saliency maps follow."""
    merged = _app_study(built, arch, tmp_path)
    assert [m.target for m in merged["study"].maps][:2] == ["Pleural Effusion", "Pneumothorax"]
    assert merged["overlay"]["interactive"] is True and "✓ saliency" in merged["stages"]


@pytest.mark.slow
def test_the_app_says_saliency_is_unavailable_for_an_architecture_without_a_layer_entry(built, tmp_path, no_layer_entry):
    merged = _app_study(built, "llava_onevision", tmp_path)  # the report, panels and findings still arrive
    assert merged["study"].maps == [] and merged["overlay"]["interactive"] is False
    assert "saliency unavailable for this architecture" in merged["stages"] and "Traceback" not in merged["stages"]


@pytest.fixture()
def from_pretrained_calls(monkeypatch) -> list[dict]:
    """Every from_pretrained call's keyword arguments (the real loader still runs)."""
    calls: list[dict] = []
    real = transformers.AutoModelForImageTextToText.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(recording))
    return calls


@pytest.mark.slow
def test_device_map_reaches_from_pretrained_from_the_pipeline_cli_and_app(built, from_pretrained_calls, tmp_path, capsys):
    from medr2.cli import main

    pipe = Pipeline(PipelineConfig(model=str(built["llava"]), device_map="auto", max_new_tokens=4))
    assert from_pretrained_calls[-1]["device_map"] == "auto"
    assert pipe.model.device.type == "cpu" and pipe.run(films()[0]).n_tokens > 0  # placed on the only device here

    png = ROOT / "assets" / "examples" / "phantom_effusion.png"
    assert main(["generate", str(png), "--model", str(built["llava"]), "--device_map", "auto", "--max_new_tokens", "4"]) == 0
    assert from_pretrained_calls[-1]["device_map"] == "auto" and "REPORT" in capsys.readouterr().out

    sys.path.insert(0, str(ROOT))  # app.py lives at the repository root
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    service = app.make_service(str(built["llava"]), str(tmp_path / "data"), 4, device_map="auto")
    assert from_pretrained_calls[-1]["device_map"] == "auto" and service.pipeline.model.device.type == "cpu"
