"""The one pipeline (stream / run / batch), its CLI, and the evaluation's scoring, on a micro model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medr2.evaluation.evaluate import location_scores, summarize
from medr2.inference.generate import format_result
from medr2.inference.pipeline import Pipeline, PipelineConfig
from medr2.inference.results import Event, StudyResult
from medr2.phantom.generator import generate_studies

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("micro") / "model"
    proc = subprocess.run([sys.executable, "-m", "medr2", "build-tiny", "--micro", "--out", str(out), "--vocab-size", "400"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (out / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": True, "training_data": "test"}))
    return out


@pytest.fixture(scope="module")
def pipe(micro_model) -> Pipeline:
    return Pipeline(PipelineConfig(model=str(micro_model), max_new_tokens=12))


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "study.png"
    Image.fromarray(next(generate_studies(1, seed=99)).image).save(path)
    return path


def test_stream_yields_tokens_then_done_then_result(pipe, phantom_png):
    events = list(pipe.stream(str(phantom_png)))
    assert isinstance(events[-1], StudyResult)
    assert isinstance(events[-2], Event) and events[-2].kind == "done"
    tokens = [e for e in events[:-2] if e.kind == "token"]
    assert tokens, "no token events streamed"
    assert all(len(a.text) <= len(b.text) for a, b in zip(tokens, tokens[1:])), "streamed text must only grow"
    result = events[-1]
    assert 0 < result.n_tokens <= 12
    assert result.timings["generate_s"] > 0 and "first_token_s" in result.timings
    assert result.provenance.demo and "not for clinical use" in result.provenance.line()
    assert len(result.provenance.weights_sha256) == 64


def test_every_result_carries_a_reproducibility_stamp_and_a_sampled_report_is_reproduced_by_its_seed(
        pipe, micro_model, phantom_png):
    import medr2
    from medr2.app.views import provenance_markdown

    greedy = pipe.run(str(phantom_png))
    assert greedy.provenance.decoding == {"greedy": True, "max_new_tokens": 12}
    assert greedy.to_json()["provenance"]["decoding"] == {"greedy": True, "max_new_tokens": 12}
    stamp = greedy.provenance.stamp()
    assert stamp == f"medr2 {medr2.__version__} · weights {greedy.provenance.weights_sha256[:12]} · greedy · max 12 new tokens"
    assert f"**Reproduce** {stamp}" in provenance_markdown(vars(greedy.provenance))  # what the app shows
    assert f"REPRODUCE: {stamp}" in format_result(greedy)  # what `medr2 generate` prints

    def sampled(seed: int) -> str:
        sampler = Pipeline(PipelineConfig(model=str(micro_model), max_new_tokens=12, greedy=False, temperature=1.0, seed=seed))
        result = sampler.run(str(phantom_png))
        assert result.provenance.decoding == {"greedy": False, "max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95,
                                              "seed": seed}
        assert "sampled (temperature 1.0, top-p 0.95, seed %d)" % seed in result.provenance.stamp()
        return result.raw_text

    first = sampled(7)
    assert sampled(7) == first  # the same seed reproduces the sampled report
    # an untrained micro model samples near-uniformly over 400 tokens: two seeds agreeing on 12 tokens is ~impossible
    assert sampled(8) != first


def test_run_is_deterministic_and_reports_missing_sections(pipe, phantom_png):
    a, b = pipe.run(str(phantom_png)), pipe.run(str(phantom_png))
    assert a.raw_text == b.raw_text  # greedy
    assert "report" in a.parsed.missing  # an untrained micro model never closes <report> in 12 tokens
    text = format_result(a)
    assert "REPORT" in text and "did not finish a report" in text and "DEMO MODEL" in text
    assert set(a.to_json()) >= {"report", "perception", "reasoning", "reflection", "provenance", "timings"}


def test_run_batch_keeps_input_order(pipe):
    images = [s.image for s in generate_studies(3, seed=5)]
    batch = pipe.run_batch(images, batch_size=2)
    assert len(batch) == 3
    single = [pipe.run(im).raw_text for im in images]
    assert [r.raw_text for r in batch] == single


def test_run_batch_continues_from_forced_prefixes_tokenised_as_in_training(pipe):
    """A forced answer start (e.g. a draft with a known error) is tokenised exactly as the same text inside a
    training conversation, and generation continues from it; the result's text and parse include it."""
    from medr2.modeling.model import prepare_inputs
    from medr2.report.schema import render
    from medr2.report.traces import TraceConfig, build_trace

    studies = list(generate_studies(2, seed=5))
    traces = [render(build_trace(s, TraceConfig(error_rate=1.0))[0]) for s in studies]
    prefixes = [t[: t.index("</draft>") + len("</draft>\n")] for t in traces]
    forced = prepare_inputs(pipe.processor, studies[0].image, pipe.messages(), assistant_prefixes=prefixes[:1])
    conversation = pipe.messages() + [{"role": "assistant", "content": [{"type": "text", "text": traces[0]}]}]
    full = prepare_inputs(pipe.processor, studies[0].image, conversation, add_generation_prompt=False)
    n = forced["input_ids"].shape[1]
    assert forced["input_ids"][0].tolist() == full["input_ids"][0, :n].tolist()
    results = pipe.run_batch([s.image for s in studies], batch_size=2, prefixes=prefixes)
    for result, prefix, trace in zip(results, prefixes, traces):
        assert result.raw_text.startswith(prefix)
        assert result.parsed.output.draft.text in trace and result.n_tokens == 12
    with pytest.raises(ValueError, match="prefixes"):
        pipe.run_batch([studies[0].image], prefixes=prefixes)


def test_accepts_arrays_pil_bytes_and_rejects_bad_input(pipe, phantom_png):
    from PIL import Image

    from medr2.imaging.loader import ImageLoadError

    assert pipe.run(Image.open(phantom_png)).raw_text == pipe.run(phantom_png.read_bytes()).raw_text
    with pytest.raises(ImageLoadError):
        pipe.run(b"this is not an image")


def test_cli_generate_json_and_bad_file(micro_model, phantom_png, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "medr2", "generate", str(phantom_png), "--model", str(micro_model),
                         "--json", "--max_new_tokens", "8"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["provenance"]["demo"] is True and json.loads(ok.stdout)["tokens"] <= 8
    # a bare boolean flag before the positional image does not swallow it; the hyphen spelling still parses
    flag_first = subprocess.run([sys.executable, "-m", "medr2", "generate", "--json", str(phantom_png), "--model",
                                 str(micro_model), "--max-new-tokens", "8"], capture_output=True, text=True, timeout=120)
    assert flag_first.returncode == 0, flag_first.stderr
    assert json.loads(flag_first.stdout)["report"] == json.loads(ok.stdout)["report"]
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    fail = subprocess.run([sys.executable, "-m", "medr2", "generate", str(bad), "--model", str(micro_model)],
                          capture_output=True, text=True, timeout=120)
    assert fail.returncode == 2
    assert "Traceback" not in fail.stderr and len(fail.stderr.strip().splitlines()) == 1



def test_saliency_uses_the_model_folders_depth_weights(micro_model, tmp_path):
    import shutil

    import torch

    from medr2 import saliency as S
    from medr2.inference.pipeline import as_loaded

    folder = tmp_path / "model"
    shutil.copytree(micro_model, folder)
    (folder / S.DEPTH_FILE).write_text(json.dumps({"depth_weights": {"Pleural Effusion": [0, 1]}}))
    weighted, plain = Pipeline(PipelineConfig(model=str(folder))), Pipeline(PipelineConfig(model=str(micro_model)))
    assert weighted.saliency_config["depth_weights"] == {"Pleural Effusion": [0, 1]} and plain.saliency_config == {}
    text = "<report>\nFindings: Small right pleural effusion. Impression: Small right pleural effusion.\n</report>"
    loaded = as_loaded(next(generate_studies(1, seed=7)).image)
    results = []
    for p in (weighted, plain):  # the pipeline's own finish step, with a hand-written generation
        ids = torch.tensor([p.processor.tokenizer.encode(text, add_special_tokens=False)])
        results.append(p._finish(text, loaded, ids.shape[1], {}, p._inputs([loaded.to_pil()]), ids))
    assert results[0].final_labels["Pleural Effusion"] == 1
    shown = weighted.saliency(results[0], include_perception=False).for_target("Pleural Effusion").grid
    last = plain.saliency(results[1], include_perception=False, layer="block").for_target("Pleural Effusion").grid
    fused = plain.saliency(results[1], include_perception=False).for_target("Pleural Effusion").grid
    np.testing.assert_allclose(shown, last, rtol=1e-5, atol=1e-6)
    assert not np.allclose(shown, fused)
    override = weighted.saliency(results[0], include_perception=False, depth_weights=None)
    np.testing.assert_allclose(override.for_target("Pleural Effusion").grid, fused, rtol=1e-5, atol=1e-6)

def _fake_result(text: str) -> StudyResult:
    from medr2.inference.results import Provenance
    from medr2.labeler.findings import label_report
    from medr2.report.schema import parse

    parsed = parse(text)
    out = parsed.output
    return StudyResult(text, parsed, label_report(out.draft.text) if out.draft else None,
                       label_report(out.report.text) if out.report else None, {"generate_s": 0.1},
                       Provenance("m", "0" * 64, True, "t", "0"), 10)


def test_summarize_scores_final_and_draft_against_references():
    studies = list(generate_studies(6, seed=21))
    refs = [s.report for s in studies]
    perfect = [_fake_result(f"<think><perception>heart: x</perception><reasoning>a -> b</reasoning><draft>No pneumothorax.</draft>"
                            f"<reflection>kept: x - y</reflection></think><report>{r}</report>") for r in refs]
    summary = summarize(perfect, refs, nlg=False)
    assert summary["final"]["example-14"]["f1"] == pytest.approx(1.0)
    assert summary["format"]["medr2_format_failure_rate"] == 0.0
    assert summary["final"]["r2gen-14"]["micro"]["f1"] >= summary["draft"]["r2gen-14"]["micro"]["f1"]
    broken = [_fake_result("Findings: nothing") for _ in refs]
    bad = summarize(broken, refs, nlg=False)
    assert bad["format"]["missing_report_rate"] == 1.0 and bad["format"]["mrg_r1_format_failure_rate"] == 1.0


def test_summarize_counts_hedged_mentions_as_found_only_in_the_detection_view():
    refs = ["Findings: Consolidation in the left lower zone. Impression: Findings concerning for pneumonia."] * 2
    hedged = [_fake_result(f"<report>{r}</report>") for r in refs]
    summary = summarize(hedged, ["Findings: Consolidation in the left lower zone. Impression: Pneumonia."] * 2, nlg=False)
    f1 = {r["observation"]: r["f1"] for r in summary["final"]["per_observation"]}
    detected = {r["observation"]: r["f1"] for r in summary["final_uncertain_as_positive"]["per_observation"]}
    assert f1["Pneumonia"] == 0.0 and detected["Pneumonia"] == 1.0
    assert f1["Consolidation"] == detected["Consolidation"] == 1.0


def test_location_scores_check_side_and_zone():
    ref = "Findings: A 12 mm nodule in the right upper zone. Impression: Right upper zone nodule."
    right = location_scores([ref], ["Findings: There is a 14 mm nodule in the right upper zone."])
    wrong_side = location_scores([ref], ["Findings: There is a 14 mm nodule in the left upper zone."])
    wrong_zone = location_scores([ref], ["Findings: There is a 14 mm nodule in the right lower zone."])
    both_sides = location_scores([ref], ["Findings: Nodules in the right and left upper zones."])
    assert (right["side_accuracy"], right["zone_accuracy"]) == (1.0, 1.0)
    assert (wrong_side["side_accuracy"], wrong_side["zone_accuracy"]) == (0.0, 1.0)
    assert (wrong_zone["side_accuracy"], wrong_zone["zone_accuracy"]) == (1.0, 0.0)
    assert both_sides["side_accuracy"] == 0.0  # naming the wrong side as well is not "correct"
    missed = location_scores([ref], ["Findings: The lungs are clear."])
    assert missed["side_total"] == 0  # a missed finding is a CE error, not a location error


def test_location_scores_read_devices_bibasilar_and_unlocated_statements_as_radiologists_write_them():
    pacemaker = "Findings: Left chest wall pacemaker with leads in the right atrium and right ventricle."
    assert location_scores([pacemaker], [pacemaker])["side_accuracy"] == 1.0
    assert location_scores([pacemaker], ["Findings: Right chest wall pacemaker with leads in the right ventricle."])["side_accuracy"] == 0.0
    bibasilar = "Findings: There is bibasilar atelectasis."
    spelled_out = "Findings: Atelectasis in the right lower zone and the left lower zone."
    scores = location_scores([bibasilar], [spelled_out])
    assert (scores["side_accuracy"], scores["zone_accuracy"]) == (1.0, 1.0)
    # the reference names no place for the pneumonia itself: nothing to score, rather than a miss
    unlocated = location_scores(["Impression: Findings concerning for pneumonia."], ["Impression: Possible pneumonia."])
    assert unlocated["side_total"] == unlocated["zone_total"] == 0


def test_phantom_reference_reports_agree_with_their_own_ground_truth_locations():
    """The text-based check must recover the generator's side for every lateralised lung/pleural finding."""
    from medr2.evaluation.evaluate import stated_location

    checked = 0
    for study in generate_studies(80, seed=8):
        for f in study.findings:
            if f.side in ("right", "left") and f.kind in ("nodule", "mass", "effusion", "pneumothorax") \
                    and sum(g.observation == f.observation for g in study.findings) == 1:
                sides, _ = stated_location(study.report, f.observation)
                assert sides == {f.side}, (study.report, f)
                checked += 1
    assert checked >= 20


def test_stated_severity_reads_the_severity_of_the_sentences_that_name_the_finding():
    from medr2.evaluation.evaluate import stated_severity

    report = "Findings: Moderately enlarged heart. Small right pleural effusion. No pneumothorax."
    assert stated_severity(report, "Pleural Effusion") == {"small"}
    assert stated_severity(report, "Cardiomegaly") == {"moderate"}
    assert stated_severity(report, "Pneumothorax") == frozenset()  # negated: no sentence names it
    checked = 0
    for study in generate_studies(80, seed=8):
        effusions = [f for f in study.findings if f.kind == "effusion"]
        if len(effusions) == 1 and effusions[0].severity:
            assert stated_severity(study.report, "Pleural Effusion") == {effusions[0].severity}, study.report
            checked += 1
    assert checked >= 5


def test_phantom_eval_set_is_the_current_generators_test_studies():
    """`medr2 evaluate` without --dataset_dir scores the current film generator's studies of its seed."""
    from medr2.evaluation.evaluate import EvalConfig, load_eval_set

    ids, images, refs = load_eval_set(EvalConfig(n=6, seed=3))
    studies = list(generate_studies(6, 3))
    assert ids == [s.study_id for s in studies] and refs == [s.report for s in studies]
    assert all(np.array_equal(np.asarray(im), s.image) for im, s in zip(images, studies))


def test_every_result_carries_the_input_gates_verdict_and_evaluation_counts_it(pipe, phantom_png):
    from pydicom.data import get_testdata_file

    from medr2.evaluation.evaluate import count_input_checks

    png = pipe.run(str(phantom_png))
    # a micro model has no stored training-film statistics: only the tags can flag, and a PNG has none
    assert png.to_json()["input_check"] == {"in_distribution": None, "score": None, "threshold": None,
                                            "reasons": [png.input_check.reasons[0]]}
    assert png.input_check.reasons[0].startswith("distribution unknown") and png.warnings == []
    # and no calibration file: no confidence is shown rather than an uncalibrated number
    assert png.confidence is None and png.to_json()["confidence"] is None
    ct_path = get_testdata_file("CT_small.dcm")
    batch = pipe.run_batch([str(phantom_png), ct_path, str(phantom_png)], batch_size=2)
    assert [r.input_check.in_distribution for r in batch] == [None, False, None]
    assert any(w.startswith("input outside the model's training distribution: modality CT") for w in batch[1].warnings)
    assert "WARNING: input outside the model's training distribution" in format_result(batch[1])
    assert count_input_checks(batch) == {"n": 3, "flagged": 1, "unknown": 2}


def test_evaluation_scores_the_confidence_against_the_references():
    from types import SimpleNamespace

    from medr2.evaluation.evaluate import confidence_summary

    results = [SimpleNamespace(confidence={"Pneumothorax": 0.9, "Cardiomegaly": 0.6}, low_confidence=["Cardiomegaly"]),
               SimpleNamespace(confidence={"Pleural Effusion": 0.8}, low_confidence=[]),
               SimpleNamespace(confidence=None, low_confidence=[])]
    references = ["Small left pneumothorax. Normal heart size.", "Possible small right pleural effusion.", "Normal."]
    summary = confidence_summary(results, references)
    # right: pneumothorax (stated), effusion (hedged = found); wrong: cardiomegaly (the reference negates it)
    assert summary["n_findings"] == 3 and summary["share_right"] == 2 / 3 and summary["low"] == 1
    assert summary["brier"] == ((0.9 - 1) ** 2 + (0.6 - 0) ** 2 + (0.8 - 1) ** 2) / 3
    assert confidence_summary(results[2:], references[2:]) == {"n_findings": 0}
