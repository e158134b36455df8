"""The reviewer app: presentation functions, event functions called directly, and the launched app via
gradio_client (streamed stages in order, curated errors, queue overflow -> busy).

Models are micro LLaVAs built from config in a tmp folder (never assets/model). For a meaningful report
the micro model's `generate` is *scripted*: it streams the tokens of a real Med-R2 trace of the
`phantom_effusion` example through the pipeline's own streamer, and saliency then runs for real
(teacher-forced Grad-CAM on the micro model).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch

from medr2.app import views as ui
from medr2.feedback.store import FeedbackStore
from medr2.report.schema import PerceptionItem, ReasoningStep, ReflectionItem

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py lives at the repository root
EXAMPLES = ROOT / "assets" / "examples"
EFFUSION_SEED = 15  # assets/examples/phantom_effusion.json "seed"


# ---------------------------------------------------------------- helpers (also used by test_app_browser)
# The micro model itself is the `app_model` fixture in conftest.py.
def effusion_trace() -> str:
    from medr2.phantom.generator import generate_study
    from medr2.report.traces import medr2_target

    return medr2_target(generate_study(EFFUSION_SEED))


def script_generation(pipeline, text: str, delay_s: float = 0.0) -> None:
    """Make `pipeline.model.generate` stream `text`'s tokens through the pipeline's streamer."""
    ids = pipeline.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids  # [1, T]

    def generate(input_ids=None, streamer=None, **_):
        if streamer is not None:
            streamer.put(input_ids)  # the prompt: skipped by the streamer (skip_prompt=True)
            for i in range(ids.shape[1]):
                time.sleep(delay_s)
                streamer.put(ids[:, i])
            streamer.end()
        return torch.cat([input_ids, ids], dim=1)

    pipeline.model.generate = generate


def make_service(model_dir: Path, data_dir: Path, upload_root: Path, script: str | None = None, delay_s: float = 0.0):
    from medr2.app.service import AppService, find_examples
    from medr2.inference.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline(PipelineConfig(model=str(model_dir), max_new_tokens=24))
    if script is not None:
        script_generation(pipeline, script, delay_s)
    examples = find_examples()
    store = FeedbackStore(data_dir, allowed_image_refs=[e.name for e in examples])
    return AppService(pipeline, store, examples, upload_root=upload_root, stream_interval_s=0.0)


def upload(src: Path, root: Path, name: str | None = None) -> Path:
    """Copy a file into the fake upload folder, as gradio does (one sub-folder per upload)."""
    folder = root / f"u{time.perf_counter_ns()}"
    folder.mkdir(parents=True)
    return Path(shutil.copy(src, folder / (name or src.name)))


def as_dict(update: tuple) -> dict:
    from medr2.app.service import ANALYZE_OUTPUTS

    return {k: v for k, v in zip(ANALYZE_OUTPUTS, update) if not (isinstance(v, dict) and v == gr.skip())}


def frame_rows(value) -> list[list]:
    value = value["value"] if isinstance(value, dict) else value  # gr.update(value=Styler, ...)
    data = value.data if hasattr(value, "data") else value  # Styler or DataFrame
    return data.values.tolist()


@pytest.fixture(scope="module")
def scripted(app_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("scripted")
    return make_service(app_model, base / "data", base / "uploads", script=effusion_trace())


@pytest.fixture(scope="module")
def analysed(scripted):
    """All updates of one scripted study of the phantom_effusion example."""
    path = upload(EXAMPLES / "phantom_effusion.png", scripted.upload_root)
    updates = [as_dict(u) for u in scripted.analyze(str(path))]
    return path, updates


# ---------------------------------------------------------------- presentation (pure)
def test_perception_checklist_ticks_described_regions_in_reading_order_and_escapes_html():
    items = [PerceptionItem("left pleura", "blunted angle <b>x</b>"), PerceptionItem("heart", "normal size."),
             PerceptionItem(None, "free text line")]
    html = ui.perception_html(items)
    assert html.index("✓ heart") < html.index("○ mediastinum") < html.index("✓ pleura")
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "not described by the model" in html and "free text line" in html
    assert "not described yet" in ui.perception_html([], streaming=True)


def test_reasoning_shows_the_cited_rule_statement_and_flags_invented_rules():
    from medr2.report.knowledge import rule

    html = ui.reasoning_html([ReasoningStep("blunted angle", "pleural effusion", "effusion_meniscus"),
                              ReasoningStep("odd sign", "x", "made_up_rule"), ReasoningStep("free text")])
    assert rule("effusion_meniscus").statement in html
    assert "made_up_rule</code> is not in the knowledge base" in html
    assert "free text" in html


def test_reflection_badges_name_the_action():
    html = ui.reflection_html([ReflectionItem("revised", "pleural effusion", "moderate, not large"),
                               ReflectionItem(None, None, "a note")])
    assert 'class="medr2-badge revised">revised' in html and "moderate, not large" in html and "a note" in html
    assert "No reflection" in ui.reflection_html([])


def test_word_diff_marks_removed_and_added_words_and_rebuilds_both_texts():
    draft, final = "Small right pleural effusion. No pneumothorax.", "Moderate left pleural effusion. No pneumothorax."
    spans = ui.word_diff(draft, final)
    assert ("Small right ", "removed") in spans and ("Moderate left ", "added") in spans
    old = "".join(t for t, c in spans if c != "added").split()
    new = "".join(t for t, c in spans if c != "removed").split()
    assert old == draft.split() and new == final.split()
    assert ui.word_diff("same text", "same text") == [("same text", None)]


def test_findings_rows_show_calibrated_confidence_and_mark_low_ones():
    headers, rows = ui.findings_rows({"Pneumothorax": 1, "Lung Lesion": 1}, {"Pneumothorax": 1, "Lung Lesion": 1}, None,
                                     confidence={"Pneumothorax": 0.976, "Lung Lesion": 0.62}, low=["Lung Lesion"])
    assert headers == ui.FINDINGS_HEADERS + ["Confidence"]
    by_obs = {r[0].rstrip(" ≠"): r for r in rows}
    assert by_obs["Pneumothorax"][-1] == "0.98" and by_obs["Lung Lesion"][-1] == "0.62 ⚠" and by_obs["Edema"][-1] == ""
    assert ui.findings_rows(None, None, None)[0] == ui.FINDINGS_HEADERS  # no calibration: no column


def test_findings_rows_cover_14_observations_and_flag_disagreement():
    headers, rows = ui.findings_rows({"Cardiomegaly": 1}, {"Cardiomegaly": 0}, {"Cardiomegaly": 0},
                                     truth={"Cardiomegaly": 0})
    assert headers == ["Observation", "Draft", "Final", "Reviewer", "Truth"] and len(rows) == 14
    cardio = next(r for r in rows if r[0].startswith("Cardiomegaly"))
    assert cardio == ["Cardiomegaly ≠", "+", "−", "−", "−"]
    assert next(r for r in rows if r[0].startswith("Edema")) == ["Edema", "", "", "", ""]


def test_verdict_rows_follow_the_reviewer_edit_and_parse_back():
    final = "Findings: Normal heart size. Small right pleural effusion. No pneumothorax."
    edited = "Findings: Normal heart size. Moderate left pleural effusion."
    rows = ui.verdict_rows(final, edited)
    assert rows == [["Findings: Normal heart size.", False, ""],
                    ["Small right pleural effusion.", False, "Moderate left pleural effusion."],
                    ["No pneumothorax.", True, ""]]
    verdicts = ui.verdicts_from_rows(rows)
    assert [v["verdict"] for v in verdicts] == ["accept", "edit", "reject"]
    # API callers may still send verdict words; anything else is refused with the row named
    assert ui.verdicts_from_rows([["A.", "r", ""], ["B.", "", ""]]) == [
        {"sentence": "A.", "verdict": "reject"}, {"sentence": "B.", "verdict": "accept"}]
    with pytest.raises(ValueError, match="sentence 1: verdict 'maybe'"):
        ui.verdicts_from_rows([["A.", "maybe", ""]])
    with pytest.raises(ValueError, match="needs the edited text"):
        ui.verdicts_from_rows([["A.", "edit", ""]])


def test_the_verdict_table_offers_only_a_delete_tick_box_and_an_edited_text():
    assert ui.VERDICT_DATATYPES[1] == "bool" and len(ui.VERDICT_DATATYPES) == len(ui.VERDICT_HEADERS)
    assert ui.VERDICT_STATIC_COLUMNS == [0]  # the sentence itself cannot be changed in the table
    # however the page hands the tick box over (bool, numpy bool, 'true'/'false' text), the verdict follows from it
    for ticked, unticked in ((True, False), (np.bool_(True), np.bool_(False)), ("true", "false")):
        assert ui.verdicts_from_rows([["A.", ticked, ""], ["B.", unticked, "C."], ["D.", unticked, " D. "]]) == [
            {"sentence": "A.", "verdict": "reject"}, {"sentence": "B.", "verdict": "edit", "edited_text": "C."},
            {"sentence": "D.", "verdict": "accept"}]
    with pytest.raises(ValueError, match="sentence 2: tick “Delete” or write the edited text, not both"):
        ui.verdicts_from_rows([["A.", False, ""], ["B.", True, "C."]])
    # the frame the review handler builds keeps bools in the Delete column, so gradio renders tick boxes
    frame = pd.DataFrame(ui.verdict_rows("A. B.", "A."), columns=ui.VERDICT_HEADERS)
    assert frame[ui.VERDICT_HEADERS[1]].tolist() == [False, True]


def test_analysis_result_is_plain_json_with_the_report_and_no_image():
    maps = [type("M", (), {"target": "Pleural Effusion", "kind": "finding", "heatmap": np.zeros((2, 2))})()]
    prov = {"model": "m", "weights_sha256": "ab" * 32, "demo": True, "medr2_version": "0.1", "decoding": {"x": 1}}
    out = ui.analysis_result("Final.", "Draft.", {"final": {"Pleural Effusion": 1}, "draft": None}, maps, prov,
                             {"in_distribution": True}, {"Pleural Effusion": 0.9})
    assert out == {"report": "Final.", "draft": "Draft.", "labels": {"final": {"Pleural Effusion": 1}},
                   "confidence": {"Pleural Effusion": 0.9},
                   "saliency": [{"target": "Pleural Effusion", "kind": "finding"}], "input_check": {"in_distribution": True},
                   "model": {"model": "m", "weights_sha256": "ab" * 32, "demo": True, "medr2_version": "0.1"}}
    assert json.loads(json.dumps(out)) == out  # what a gr.JSON output sends


def test_provenance_flags_the_demo_model_and_out_of_distribution_images():
    prov = {"model": "m", "weights_sha256": "ab" * 32, "demo": True, "training_data": "synthetic phantoms",
            "medr2_version": "0.1"}
    text = ui.provenance_markdown(prov, {"source_format": "dicom", "modality": "CR", "rows": 10, "columns": 12},
                                  ["blank image"], {"generate_s": 1.0, "labels_s": 0.5}, 40, in_distribution=False)
    assert "abababababab" in text and "Demo model" in text and ui.OUT_OF_DISTRIBUTION in text
    assert "CR" in text and "12×10 px" in text and "⚠ blank image" in text and "1.5 s" in text
    assert "Demo model" not in ui.provenance_markdown({**prov, "demo": False}, in_distribution=False)


def test_examples_are_labelled_with_truth_or_the_distribution_caveat():
    assert "outside the demo model's training distribution" in ui.example_label(None, "rg1_chest.dcm")
    truth = json.loads((EXAMPLES / "phantom_effusion.json").read_text())
    assert ui.example_label(truth, "x") == "Synthetic phantom — Moderate left pleural effusion."
    rendered = {"renderer": "drr", "report": "Findings: Large left pneumothorax. Impression: Large left pneumothorax."}
    assert ui.example_label(rendered, "x") == "Rendered from a real chest CT, synthetic findings — Large left pneumothorax."
    md = ui.ground_truth_markdown(truth)
    assert "moderate left Pleural Effusion" in md and truth["report"] in md


def test_examples_list_rendered_films_then_phantoms_with_their_truth_then_real_dicoms(tmp_path):
    from medr2.app.service import find_examples

    for name in ("phantom_effusion", "rendered_nodule"):
        (tmp_path / f"{name}.png").write_bytes(b"png " + name.encode())
        (tmp_path / f"{name}.json").write_text(json.dumps({"report": f"Impression: {name}.", "renderer": name[:3]}))
    (tmp_path / "rg1_chest.dcm").write_bytes(b"dcm")
    (tmp_path / "rg1_chest.json").write_text("{}")  # a real film's truth is never read, even if a file is there
    found = find_examples(tmp_path)
    assert [e.name for e in found] == ["rendered_nodule.png", "phantom_effusion.png", "rg1_chest.dcm"]
    assert found[0].truth["report"] == "Impression: rendered_nodule." and found[2].truth is None
    assert len({e.sha256 for e in found}) == 3


def test_stage_html_marks_done_active_and_failed():
    html = ui.stage_html(["image", "perception"], active="reasoning", failed="saliency", note="x")
    assert "done\">✓ perception" in html and "active\">… reasoning" in html and "failed\">✗ saliency" in html


# ---------------------------------------------------------------- event functions, called directly
def test_analyze_streams_sections_in_order_then_saliency(analysed):
    _, updates = analysed
    done_order = []
    for u in updates:
        for stage in ui.STAGES:
            if f"✓ {stage}" in u.get("stages", "") and stage not in done_order:
                done_order.append(stage)
    assert done_order == list(ui.STAGES), done_order
    streamed = [u["perception"] for u in updates if "perception" in u]
    assert any("not described yet" in p and "✓ heart" in p for p in streamed), "perception did not stream line by line"
    final = updates[-1]
    # one map per finding, abnormal perception line and the whole report; the first finding is shown
    assert [(m.target, m.kind) for m in final["study"].maps] == [
        ("Pleural Effusion", "finding"), ("left pleura", "perception"), ("report", "report")]
    assert [value for _, value in final["overlay"]["choices"]] == [ui.NO_OVERLAY, "0", "1", "2"]
    assert final["overlay"]["interactive"] is True and final["overlay"]["value"] == "0"
    assert final["view"].shape == (*final["study"].pixels.shape, 3)


def test_analyze_fills_report_findings_truth_and_keeps_shared_example_files(analysed, scripted):
    path, updates = analysed
    # gradio caches files by content hash: a bundled example's cached copy is shared by every session
    assert path.exists(), "a bundled example's cached file must survive for the next visitor"
    *_, again = [as_dict(u) for u in scripted.analyze(str(path))]
    assert again["study"].image_ref == "phantom_effusion.png"
    merged = {}
    for u in updates:
        merged.update(u)
    truth = json.loads((EXAMPLES / "phantom_effusion.json").read_text())
    assert merged["report"]["value"] == truth["report"]
    rows = {r[0].rstrip(" ≠"): r[1:] for r in frame_rows(merged["findings"])}
    assert rows["Pleural Effusion"] == ["+", "+", "+", "+"]
    assert merged["truth"]["visible"] is True and "phantom-15" in merged["truth"]["value"]
    study = merged["study"]
    assert study.image_ref == "phantom_effusion.png" and study.truth is not None
    assert "reasoning" in merged and "effusion_meniscus" in merged["reasoning"]
    assert "Moderate left pleural effusion" in "".join(t for t, _ in merged["diff"])


def test_view_overlays_the_chosen_map_and_falls_back_to_the_plain_image(scripted, analysed):
    study = analysed[1][-1]["study"]
    plain = scripted.view(study, ui.NO_OVERLAY, 0.5, "jet")
    assert plain.shape[-1] == 3 and (plain[..., 0] == plain[..., 1]).all()
    hot = scripted.view(study, "0", 0.9, "jet")
    assert hot.shape == plain.shape and not np.array_equal(hot, plain)
    assert np.array_equal(scripted.view(study, "99", 0.5, "jet"), plain)
    assert scripted.view(None, "0", 0.5, "jet") is None


def test_review_labels_the_edited_report_and_submit_stores_it_without_the_image(scripted, analysed):
    study = analysed[1][-1]["study"]
    edited = study.final.replace("Moderate left pleural effusion. No pneumothorax.",
                                 "Small left pleural effusion. Small right pneumothorax.")
    table, verdicts = scripted.review(study, edited)
    rows = {r[0].rstrip(" ≠"): r[1:] for r in frame_rows(table)}
    assert rows["Pneumothorax"][:3] == ["−", "−", "+"]
    before = scripted.store.count()
    msg = scripted.submit(study, edited, verdicts, 2, "4", 3, ["false_finding", "omission"], ["omission"], "c", "dr-x")
    assert "Stored review" in msg and scripted.store.count() == before + 1
    _, rec = list(scripted.store.iter_records())[-1]
    assert rec.image_sha256 == study.sha256 and rec.image_ref == "phantom_effusion.png"
    assert rec.corrected_report == edited and rec.labels["reviewer"]["Pneumothorax"] == 1
    assert {"tag": "omission", "clinically_significant": True} in rec.error_tags
    assert any(v["verdict"] == "edit" for v in rec.sentence_verdicts) and rec.reasoning_rating == 4
    assert set(rec.image_metadata) <= {"rows", "columns", "source_format", "format", "modality", "bits_stored",
                                      "photometric_interpretation", "view_position", "body_part", "number_of_frames",
                                      "transfer_syntax"}
    assert "pixels" not in json.dumps(rec.to_dict())


def test_submit_errors_are_curated(scripted, analysed):

    study = dataclasses.replace(analysed[1][-1]["study"], reviewer=None)  # a fresh session: no handle yet
    with pytest.raises(gr.Error, match="Analyse an image first"):
        scripted.submit(None, "", None, None, None, None, [], [], "", "")
    bad = pd.DataFrame([["Some sentence.", "perhaps", ""]], columns=ui.VERDICT_HEADERS)
    with pytest.raises(gr.Error, match="verdict 'perhaps' is not accept, edit or reject"):
        scripted.submit(study, study.final, bad, 3, None, None, [], [], "", "")
    with pytest.raises(gr.Error, match="tick omission under “Errors” before"):
        scripted.submit(study, study.final, None, 3, None, None, [], ["omission"], "", "")
    with pytest.raises(gr.Error, match="image_ref|reviewer"):
        scripted.submit(study, study.final, None, 3, None, None, [], [], "", "x" * 500)


def test_untrained_model_on_a_real_dicom_says_no_report_and_out_of_distribution(app_model, tmp_path):
    service = make_service(app_model, tmp_path / "data", tmp_path / "up")
    path = upload(EXAMPLES / "rg1_chest.dcm", service.upload_root, name="IM0001")  # extension-less DICOM
    updates = [as_dict(u) for u in service.analyze(str(path))]
    merged = {}
    for u in updates:
        merged.update(u)
    assert merged["report"]["value"] == "" and merged["report"]["placeholder"] == ui.NO_REPORT
    # a micro model carries no training-film statistics: the gate says it cannot tell, RG1's tags pass (CR, PA, chest)
    assert merged["input_check"] == {"__type__": "update", "value": "ℹ " + ui.DISTRIBUTION_UNKNOWN, "visible": True}
    assert merged["report_fold"]["open"] is True and "CR" in merged["provenance"]
    assert ui.OUT_OF_DISTRIBUTION not in merged["provenance"]
    assert "failed\">✗ saliency" in merged["stages"] and merged["overlay"]["interactive"] is False
    # recognised by its bytes, not its (renamed) file name: feedback can name the bundled example
    assert merged["truth"]["visible"] is False and merged["study"].image_ref == "rg1_chest.dcm"


def test_a_film_the_gate_flags_shows_why_and_folds_the_report(app_model, tmp_path):
    from pydicom.data import get_testdata_file

    service = make_service(app_model, tmp_path / "data", tmp_path / "up")
    path = upload(Path(get_testdata_file("CT_small.dcm")), service.upload_root, name="CT0001")  # a CT slice
    merged = {}
    for u in service.analyze(str(path)):
        merged.update(as_dict(u))
    gate = merged["input_check"]
    assert gate["visible"] is True and gate["value"].startswith(f"⚠ **This image is {ui.OUT_OF_DISTRIBUTION}**")
    assert "modality CT" in gate["value"] and ui.REPORT_ANYWAY in gate["value"]
    assert merged["report_fold"] == {"__type__": "update", "label": ui.REPORT_ANYWAY, "open": False}
    assert ui.OUT_OF_DISTRIBUTION not in merged["provenance"]  # said once, above the report
    assert merged["study"].input_check["in_distribution"] is False  # kept with the study


@pytest.mark.slow
def test_the_shipped_models_gate_folds_the_real_rg1_film_and_passes_a_phantom(tmp_path):
    service = make_service(ROOT / "assets" / "model", tmp_path / "data", tmp_path / "up")
    service.pipeline.config.max_new_tokens = 640  # the whole answer, as the app runs it
    verdicts = {}
    for name in ("rg1_chest.dcm", "phantom_effusion.png"):
        merged = {}
        for u in service.analyze(str(upload(EXAMPLES / name, service.upload_root))):
            merged.update(as_dict(u))
        verdicts[name] = (merged["study"].input_check["in_distribution"], merged["report_fold"]["open"])
    assert verdicts == {"rg1_chest.dcm": (False, False), "phantom_effusion.png": (True, True)}
    # the last study (the effusion phantom): its stated finding carries a calibrated confidence in the table
    table = merged["findings"]["value"].data  # the update carries a pandas Styler over the table
    assert list(table.columns)[-1] == "Confidence"
    effusion = table[table.iloc[:, 0].str.startswith("Pleural Effusion")].iloc[0, -1]
    assert 0.9 < float(effusion.rstrip(" ⚠")) <= 0.99


def test_an_upload_named_like_an_example_is_not_taken_for_it(scripted, tmp_path):
    from PIL import Image

    fake = tmp_path / "phantom_effusion.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(fake)
    path = upload(fake, scripted.upload_root)
    *_, last = [as_dict(u) for u in scripted.analyze(str(path))]
    assert last["study"].image_ref is None and last["study"].truth is None
    # gradio's cache owns uploads (content-addressed, shared by identical uploads; delete_cache removes them)
    assert path.exists(), "a session must not delete a cached upload other sessions may share"


def test_bad_file_gives_the_imaging_message(scripted, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    path = upload(bad, scripted.upload_root)
    with pytest.raises(gr.Error, match="not a DICOM, PNG or JPEG"):
        list(scripted.analyze(str(path)))


def test_the_last_update_carries_the_report_for_api_callers_but_leaves_the_report_box_alone(analysed):
    _, updates = analysed
    last = updates[-1]
    assert "report" not in last  # never re-sent: it would overwrite a reviewer's edits made during saliency
    study = last["study"]
    assert last["result"]["report"] == study.final and "effusion" in study.final.lower()
    assert last["result"]["labels"]["final"] == study.labels["final"]
    assert [m["target"] for m in last["result"]["saliency"]] == [m.target for m in study.maps]
    assert all("result" not in u for u in updates[:-1]) or updates[0]["result"] is None


def test_clearing_the_upload_resets_the_panels(scripted):
    (only,) = [as_dict(u) for u in scripted.analyze(None)]
    assert only["study"] is None and only["report"] == "" and only["view"] is None
    assert list(only["findings"].columns) == ui.FINDINGS_HEADERS and len(only["findings"]) == 14


def test_a_pasted_correction_sets_the_stored_verdicts_whatever_the_table_says(scripted, analysed):

    study = dataclasses.replace(analysed[1][-1]["study"], reviewer=None)  # a fresh session
    pasted = study.final.replace("No pneumothorax.", "Small right pneumothorax.")
    stale = pd.DataFrame(ui.verdict_rows(study.final, study.final), columns=ui.VERDICT_HEADERS)  # all "accept"
    msg = scripted.submit(study, pasted, stale, 3, None, None, [], [], "", "reader-paste")
    assert "Stored review" in msg
    _, rec = list(scripted.store.iter_records())[-1]
    assert rec.corrected_report == pasted and rec.labels["reviewer"]["Pneumothorax"] == 1
    assert {"sentence": "No pneumothorax.", "verdict": "edit", "edited_text": "Small right pneumothorax."} in rec.sentence_verdicts
    # text unchanged, a reject typed in the table: the stored correction follows the table
    table = pd.DataFrame([[r[0], "reject" if r[0] == "No pneumothorax." else "accept", ""]
                          for r in ui.verdict_rows(study.final, study.final)], columns=ui.VERDICT_HEADERS)
    scripted.submit(study, study.final, table, 3, None, None, [], [], "", "reader-paste")
    _, rec = list(scripted.store.iter_records())[-1]
    assert "No pneumothorax." not in rec.corrected_report
    assert {"sentence": "No pneumothorax.", "verdict": "reject"} in rec.sentence_verdicts


def test_submit_is_idempotent_refuses_empty_reviews_and_a_second_handle(scripted, analysed):

    study = dataclasses.replace(analysed[1][-1]["study"], reviewer=None)  # a fresh session
    with pytest.raises(gr.Error, match="Review not stored: the review is empty"):
        scripted.submit(study, study.final, None, None, None, None, [], [], "  ", "dr-y")
    with pytest.raises(gr.Error, match="enter your reviewer handle"):
        scripted.submit(study, study.final, None, 4, None, None, [], [], "", " ")
    before = scripted.store.count()
    first = scripted.submit(study, study.final, None, "5 excellent", None, None, ["omission"], [], "ok", "dr-y")
    again = scripted.submit(study, study.final, None, 5, None, None, ["omission"], [], "ok", "dr-y")
    assert "Stored review" in first and "already stored" in again and scripted.store.count() == before + 1
    assert list(scripted.store.iter_records())[-1][1].rating == 5
    with pytest.raises(gr.Error, match="already submitted as “dr-y”"):
        scripted.submit(study, study.final, None, 4, None, None, [], [], "", "dr-z")


def test_files_outside_the_upload_folder_are_never_deleted(scripted):
    example = EXAMPLES / "phantom_normal.png"
    list(scripted.analyze(str(example)))
    assert example.exists()


# ---------------------------------------------------------------- the launched app, via gradio_client
def _launch(service, **kw):
    import app

    demo = app.build_demo(service, **kw)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **app.launch_settings())
    return demo


@pytest.mark.slow
def test_client_streams_stages_in_order_and_gets_curated_errors(scripted, tmp_path):
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo = _launch(scripted)
    try:
        client = Client(demo.local_url, verbose=False)
        job = client.submit(handle_file(str(EXAMPLES / "phantom_effusion.png")), api_name="/analyze")
        stages = [out[0] for out in job]
        first_seen = {}
        for i, html in enumerate(stages):
            for stage in ui.STAGES:
                if f"✓ {stage}" in html:
                    first_seen.setdefault(stage, i)
        assert sorted(first_seen, key=first_seen.get) == list(ui.STAGES) and len(stages) >= 5
        # the API's final output carries the report, last (the API leaves out the page state and the fold)
        result = job.outputs()[-1][-1]
        assert "pleural effusion" in result["report"].lower() and result["labels"]["final"]["Pleural Effusion"] == 1
        bad = tmp_path / "scan.dcm"
        bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
        with pytest.raises(AppError, match="DICOM") as err:
            client.predict(handle_file(str(bad)), api_name="/analyze")
        assert "Traceback" not in str(err.value) and str(tmp_path) not in str(err.value)
        config = httpx.get(f"{demo.local_url}config").json()
        assert config["show_error"] is False and config["run_history"] is False
        assert config["max_file_size"] == 64 * 1024 * 1024
        assert httpx.get(f"{demo.local_url}monitoring").status_code == 403  # 200 when monitoring is on
    finally:
        demo.close()


@pytest.mark.slow
def test_queue_overflow_gives_the_busy_error(app_model, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    slow = make_service(app_model, tmp_path / "data", tmp_path / "up", script=effusion_trace()[:400], delay_s=0.01)
    demo = _launch(slow, concurrency=1, queue_size=1)
    try:
        image = handle_file(str(EXAMPLES / "phantom_normal.png"))
        clients = [Client(demo.local_url, verbose=False) for _ in range(4)]
        outcomes: list[str] = []

        def one(client):
            try:
                client.predict(image, api_name="/analyze")
                outcomes.append("ok")
            except QueueError:
                outcomes.append("busy")
            except AppError as exc:  # any other error is a failure of the test
                outcomes.append(f"error: {exc}")

        threads = [threading.Thread(target=one, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert outcomes.count("busy") >= 1 and outcomes.count("ok") >= 1, outcomes
        assert all(o in ("ok", "busy") for o in outcomes), outcomes
    finally:
        demo.close()


@pytest.mark.slow
def test_concurrent_identical_uploads_all_succeed(app_model, tmp_path):
    """gradio stores uploads by content hash: eight readers uploading the same file share one cached path, so
    no session may delete it after decoding (that failed all but one of them)."""
    from gradio_client import Client, handle_file
    from PIL import Image

    service = make_service(app_model, tmp_path / "data", tmp_path / "up", script=effusion_trace()[:300])
    service.upload_root = Path(gr.utils.get_upload_folder())
    same = tmp_path / "film.png"
    Image.fromarray((np.arange(96 * 96).reshape(96, 96) % 241).astype(np.uint8)).save(same)
    demo = _launch(service, concurrency=1, queue_size=32)
    try:
        clients = [Client(demo.local_url, verbose=False) for _ in range(8)]
        outcomes: list[str] = []

        def one(client):
            try:
                client.predict(handle_file(str(same)), api_name="/analyze")
                outcomes.append("ok")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                outcomes.append(f"error: {exc}")

        threads = [threading.Thread(target=one, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert outcomes == ["ok"] * 8, outcomes
    finally:
        demo.close()
