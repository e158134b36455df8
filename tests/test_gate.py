"""The input gate: DICOM tag reasons on real files, the content distance on a micro model, stored statistics."""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image

from medr2.imaging.loader import load_image
from medr2.trust import gate as G

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
MODALITY = "not a radiograph (CR/DX); medr2 reads chest radiographs"


def pydicom_file(name: str) -> str:
    return pydicom.data.get_testdata_file(name)


def dicom_bytes(source: str, **tags) -> bytes:
    """A real test file with some tags changed (None deletes the tag)."""
    ds = pydicom.dcmread(source)
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def png(array: np.ndarray):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return load_image(buf.getvalue())


# ------------------------------------------------------------------------------------------------ tags
@pytest.mark.parametrize("name, reasons", [
    ("CT_small.dcm", [f"modality CT: {MODALITY}"]),
    ("MR_small.dcm", [f"modality MR: {MODALITY}"]),
    ("emri_small.dcm", [f"modality MR: {MODALITY}", "body part HEAD is not chest"]),  # pydicom-data: head MR
    ("US1_UNCR.dcm", [f"modality US: {MODALITY}"]),  # pydicom-data: ultrasound, colour
    ("RG3_UNCR.dcm", ["body part EXTREMITY is not chest"]),  # pydicom-data: an extremity CR, AP
    ("SC_jpeg_no_color_transform.dcm", [f"no recognised modality: {MODALITY}"]),
    ("RG1_UNCR.dcm", []),  # pydicom-data's copy of RG1: CR, PA, CHEST
])
def test_tag_reasons_on_pydicom_files(name, reasons):
    assert G.tag_reasons(load_image(pydicom_file(name))) == reasons


def test_lateral_cspine_cr_gets_both_reasons():
    path = pydicom_file("6154")  # in pydicom's DICOMDIR test tree (77654033/CR1): a lateral c-spine CR
    assert G.tag_reasons(load_image(path)) == [
        "body part CSPINE is not chest", "lateral view (LL): medr2 reads frontal (PA/AP) films"]


def test_view_position_missing_or_oblique_flags_a_radiograph_only():
    rg1 = str(EXAMPLES / "rg1_chest.dcm")
    assert G.tag_reasons(load_image(rg1)) == []
    no_view = load_image(dicom_bytes(rg1, ViewPosition=None))
    assert G.tag_reasons(no_view) == [
        "view position not recorded (or not recognised): medr2 reads frontal (PA/AP) films"]
    assert G.tag_reasons(load_image(dicom_bytes(rg1, ViewPosition="RAO"))) == ["RAO view is not frontal (PA/AP)"]
    assert G.tag_reasons(load_image(dicom_bytes(rg1, ViewPosition="LATERAL"))) == [
        "lateral view (LATERAL): medr2 reads frontal (PA/AP) films"]
    # A CT has no view position: only its modality is a reason.
    assert G.tag_reasons(load_image(pydicom_file("CT_small.dcm"))) == [f"modality CT: {MODALITY}"]
    # Body part absent is no reason (many real chest films leave it empty).
    assert G.tag_reasons(load_image(dicom_bytes(rg1, BodyPartExamined=None))) == []


def test_dr_counts_as_a_radiograph_and_png_has_no_tags():
    loaded = SimpleNamespace(source_format="dicom", metadata={"modality": "DR", "view_position": "AP",
                                                              "body_part": "CHEST"}, warnings=[])
    assert G.tag_reasons(loaded) == []
    assert G.tag_reasons(load_image(EXAMPLES / "phantom_normal.png")) == []
    assert G.tag_reasons(load_image(EXAMPLES / "rg1_chest.png")) == []


def test_without_statistics_distribution_is_unknown_but_tags_still_flag():
    check = G.check_input(load_image(EXAMPLES / "phantom_normal.png"))
    assert (check.in_distribution, check.score, check.threshold) == (None, None, None)
    assert check.reasons == [G.UNKNOWN_REASON] and not check.flagged
    ct = G.check_input(load_image(pydicom_file("CT_small.dcm")))
    assert ct.in_distribution is False and ct.flagged
    assert ct.reasons == [f"modality CT: {MODALITY}", G.UNKNOWN_REASON]
    assert ct.to_json() == {"in_distribution": False, "score": None, "threshold": None, "reasons": ct.reasons}


# ------------------------------------------------------------------------------------------------ statistics
def test_ledoit_wolf_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)) @ rng.normal(size=(8, 8))
    mean, cov, shrink = G.ledoit_wolf(x)
    xc = x - x.mean(0)
    s = xc.T @ xc / len(x)
    mu = np.trace(s) / 8
    d2 = ((s - mu * np.eye(8)) ** 2).sum()
    b2 = sum(((np.outer(v, v) - s) ** 2).sum() for v in xc) / len(x) ** 2
    assert shrink == pytest.approx(min(b2, d2) / d2, rel=1e-9)
    assert 0 < shrink < 1 and np.allclose(cov, (1 - shrink) * s + shrink * mu * np.eye(8))
    assert np.allclose(mean, x.mean(0))


def test_score_is_mahalanobis_distance():
    stats = G.GateStats(np.zeros(2, np.float32), np.diag([4.0, 1.0]).astype(np.float32), 1.0)
    assert stats.score(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx([2.0, 3.0])


# ------------------------------------------------------------------------------------------------ content (micro)
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """An untrained micro LLaVA and gate statistics fitted on 16 phantoms (seed 1), threshold on 16 others
    (seed 2). With so few validation films the 0.995 quantile is their maximum; 0.9 is used here instead."""
    from medr2.modeling.loading import load_model
    from medr2.modeling.model import cli_build_tiny

    folder = tmp_path_factory.mktemp("gate") / "micro"
    assert cli_build_tiny(["--micro", "--out", str(folder)]) == 0
    model, processor = load_model(str(folder), device="cpu")
    stats = G.fit_gate(model, processor, G.phantom_images(16, 1), G.phantom_images(16, 2), quantile=0.9,
                       info={"fit_seed": 1, "val_seed": 2})
    return folder, model, processor, stats


def test_content_check_flags_patterns_and_passes_a_held_out_phantom(micro):
    _, model, processor, stats = micro
    held_out = list(G.phantom_images(20, 2))[-1]  # seed 2, study 19: not among the 16 the threshold came from
    check = G.check_input(held_out, model, processor, stats)
    assert check.in_distribution is True and check.reasons == [] and check.score < stats.threshold
    yy, xx = np.mgrid[0:256, 0:256]
    colour = png(np.stack([xx, yy, 255 - xx], -1).astype(np.uint8))
    checker = png((((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8))
    for image in (colour, checker):
        check = G.check_input(image, model, processor, stats)
        assert check.in_distribution is False and check.score > stats.threshold
        assert check.reasons == [f"the image is unlike the films the model was trained on (distance "
                                 f"{check.score:.1f}, threshold {stats.threshold:.1f})"]


def test_pipeline_inputs_give_the_same_score(micro):
    """The lead can pass the pipeline's own inputs instead of running the processor twice."""
    from medr2.modeling.model import build_chat, prepare_inputs

    _, model, processor, stats = micro
    loaded = load_image(EXAMPLES / "phantom_effusion.png")
    inputs = prepare_inputs(processor, [loaded.to_pil()], build_chat("x"))
    a = G.check_input(loaded, model, processor, stats)
    b = G.check_input(loaded, model, stats=stats, inputs=inputs)
    assert a.score == pytest.approx(b.score, rel=1e-6)


def test_save_load_round_trip_and_stale_weights(micro, tmp_path):
    folder, _, _, stats = micro
    from medr2.modeling.loading import weights_sha256

    stats.info["weights_sha256"] = weights_sha256(folder)
    stats.save(folder)
    loaded = G.load_gate(folder)
    assert loaded is not None and loaded.threshold == pytest.approx(stats.threshold)
    assert np.array_equal(loaded.mean, stats.mean) and np.array_equal(loaded.precision, stats.precision)
    assert loaded.info["n_fit"] == 16 and loaded.info["feature"] == G.FEATURE
    features = np.random.default_rng(0).normal(size=(3, stats.mean.size))
    assert np.allclose(loaded.score(features), stats.score(features))
    assert (folder / G.GATE_TENSORS).stat().st_size + (folder / G.GATE_JSON).stat().st_size < 200_000
    assert G.load_gate(tmp_path) is None  # no statistics
    info = json.loads((folder / G.GATE_JSON).read_text())
    (folder / G.GATE_JSON).write_text(json.dumps({**info, "weights_sha256": "0" * 64}))
    assert G.load_gate(folder) is None  # fitted on other weights: a distance there means nothing
    assert G.load_gate(folder, check_weights=False) is not None


def test_fit_gate_refuses_the_test_seed(capsys):
    assert G.cli_fit_gate(["--model", str(ROOT / "assets" / "model"), "--val_seed", "3"]) == 2
    assert "seed 3 is the test split" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ shipped model
@pytest.mark.slow
def test_shipped_gate_passes_bundled_phantoms_and_rendered_films_and_flags_rg1_and_a_ct():
    from medr2.modeling.loading import load_model

    model_dir = ROOT / "assets" / "model"
    stats = G.load_gate(model_dir)
    assert stats is not None and stats.info["fit_seed"] == 1 and stats.info["val_seed"] == 2
    assert stats.info["renderer"] == "mix"  # fitted on the films the model learned from: drawn and CT-rendered
    model, processor = load_model(str(model_dir), device="cpu")
    examples = sorted(EXAMPLES.glob("phantom_*.png")) + sorted(EXAMPLES.glob("rendered_*.png"))
    assert len(examples) == 12
    for path in examples:
        check = G.check_input(load_image(path), model, processor, stats)
        assert check.in_distribution is True and check.reasons == [], (path.name, check)
    for path in (EXAMPLES / "rg1_chest.dcm", EXAMPLES / "rg1_chest.png"):
        check = G.check_input(load_image(path), model, processor, stats)
        assert check.in_distribution is False and check.score > stats.threshold, (path.name, check)
        assert len(check.reasons) == 1 and check.reasons[0].startswith("the image is unlike the films")
    ct = G.check_input(load_image(pydicom_file("CT_small.dcm")), model, processor, stats)
    assert ct.in_distribution is False and ct.score > stats.threshold
    assert ct.reasons[0] == f"modality CT: {MODALITY}" and ct.reasons[1].startswith("the image is unlike")


@pytest.mark.parametrize("arch", ["llava_onevision", "idefics3"])
def test_fit_gate_reads_the_whole_film_view_of_multi_view_architectures(arch, tmp_path, capsys):
    """LLaVA-OneVision and Idefics3 hand their tower several views a film ([N, views, C, H, W]); the gate reads the
    one that shows the whole film, so `medr2 fit-gate` fits, and the pipeline's inputs give the same score."""
    from medr2.inference.pipeline import Pipeline, PipelineConfig
    from medr2.modeling.model import cli_build_tiny

    folder = tmp_path / arch
    assert cli_build_tiny(["--arch", arch, "--micro", "--out", str(folder)]) == 0
    assert G.cli_fit_gate(["--model", str(folder), "--n", "8", "--val_n", "3", "--batch_size", "4"]) == 0, capsys.readouterr().err
    stats = G.load_gate(folder)
    assert stats is not None and np.isfinite(stats.threshold)
    pipe = Pipeline(PipelineConfig(model=str(folder), max_new_tokens=4, looks="off"))
    film = next(G.phantom_images(1, 11))
    a = G.features(pipe.model, pipe.processor, [film])
    b = G.features(pipe.model, pipe.processor, [film, next(G.phantom_images(2, 12))])[:1]
    assert a.shape[0] == 1 and np.allclose(a, b, atol=1e-4)  # a film's features do not depend on its batch


def test_fit_gate_on_mixed_films_records_them_and_refuses_an_unknown_renderer(tmp_path, capsys):
    """A model trained on films rendered from the CT must not call them out of distribution: the gate is fitted on
    the same mix (`--renderer mix`), and its statistics say so."""
    from medr2.modeling.model import cli_build_tiny

    folder = tmp_path / "micro"
    assert cli_build_tiny(["--micro", "--out", str(folder)]) == 0
    capsys.readouterr()
    assert G.cli_fit_gate(["--model", str(folder), "--renderer", "ct"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medr2 fit-gate:") and "renderer must be one of procedural, drr, mix" in err and "\n" not in err
    assert G.cli_fit_gate(["--model", str(folder), "--n", "6", "--val_n", "4", "--renderer", "mix",
                           "--drr_fraction", "0.5"]) == 0, capsys.readouterr().err
    stats = G.load_gate(folder)
    assert stats.info["renderer"] == "mix" and stats.info["drr_fraction"] == 0.5 and np.isfinite(stats.threshold)
