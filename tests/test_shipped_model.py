"""Golden test of the shipped demo model (`assets/model`) on the six bundled phantoms (`assets/examples`).

Decoding is greedy, so the model's answer to each example is fixed. For every example the answer must parse
with all its sections, and its final report must state exactly the ground truth's findings (the labeler's
positives), each on the ground truth's side, in its zone and with its severity where the ground-truth report
names one. The model card, the weights' hash, the saliency block weights (`saliency.json`) and the saliency
maps of the lateral findings are pinned too. A change of weights, tokenizer, prompt, parser, labeler or
saliency that alters a clinical fact on these films fails here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medr2.evaluation.evaluate import stated_details
from medr2.inference.pipeline import Pipeline, PipelineConfig, read_model_card
from medr2.labeler.findings import POSITIVE, UNCERTAIN
from medr2.report.schema import SECTIONS
from medr2.saliency import DEFAULT_METHOD, DEPTH_FILE, EVIDENCE_MIN, layers_for

pytestmark = pytest.mark.slow  # loads the 13 MB model and generates six reports (~15 s on two CPU cores)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "model"
EXAMPLES = ROOT / "assets" / "examples"
NAMES = ("cardiomegaly", "consolidation", "effusion", "nodule", "normal", "pneumothorax")
# sha256 of assets/model/model.safetensors: the shipped weights never change (the provenance line shows it)
SHIPPED_SHA256 = "86c4881e3952fbe7075f80496293b7531ffc6149afad6ae9c39819b1ea83d975"
# Where the shipped model differs from the ground truth: example -> observation -> (sides, zones, severities)
# it states. The nodule (18 mm, right MID zone) is reported as a 16 mm nodule in the right UPPER zone: the
# side is right, the zone is not. Pinned as it is; a model that fixes it should update this line.
KNOWN_DIFFERENCES = {"nodule": {"Lung Lesion": (frozenset({"right"}), frozenset({"upper"}), frozenset())}}


def truth(name: str) -> dict:
    return json.loads((EXAMPLES / f"phantom_{name}.json").read_text())


def stated(labels: dict) -> set[str]:
    """Observations a report states as present (positive or hedged)."""
    return {obs for obs, value in labels.items() if value in (POSITIVE, UNCERTAIN)}


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(PipelineConfig(model=str(MODEL)))  # the app's settings: greedy, 640 new tokens


@pytest.fixture(scope="module")
def results(pipe) -> dict:
    return {name: pipe.run(str(EXAMPLES / f"phantom_{name}.png")) for name in NAMES}


def test_the_six_examples_are_the_bundled_ones():
    assert sorted(p.stem.removeprefix("phantom_") for p in EXAMPLES.glob("phantom_*.png")) == list(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_answer_parses_with_every_section(results, name):
    result = results[name]
    assert result.parsed.missing == [] and result.parsed.problems == [], (result.parsed.missing, result.parsed.problems)
    assert sorted(result.parsed.complete_sections) == sorted(SECTIONS)  # listed in the order they closed
    out = result.output
    assert out.perception and out.reasoning and out.reflection
    assert out.draft.text and out.report.findings and out.report.impression
    assert result.n_tokens < 640  # the report closed well before the token budget


@pytest.mark.parametrize("name", NAMES)
def test_final_report_states_exactly_the_ground_truth_findings(results, name):
    gt = truth(name)
    final = results[name].final_labels
    assert stated(final) == stated(gt["labels"]), results[name].output.report.text
    negated = {obs for obs, value in gt["labels"].items() if value == 0}
    assert not negated & stated(final)  # nothing the film rules out is reported


@pytest.mark.parametrize("name", NAMES)
def test_side_zone_and_severity_follow_the_ground_truth(results, name):
    expected = {**stated_details(truth(name)["report"]), **KNOWN_DIFFERENCES.get(name, {})}
    said = stated_details(results[name].output.report.text)
    for observation, details in expected.items():
        assert said.get(observation) == details, (observation, results[name].output.report.text)


def test_the_named_findings(results):
    """The same facts in words, so a failure reads clinically."""
    def report(name: str) -> str:
        return results[name].output.report.text

    assert results["normal"].final_labels["No Finding"] == POSITIVE
    assert "Impression: No acute cardiopulmonary abnormality." in report("normal")
    assert "Impression: Moderate left pneumothorax." in report("pneumothorax")
    assert "Impression: Moderate left pleural effusion." in report("effusion")
    assert "Impression: Severe cardiomegaly." in report("cardiomegaly")
    assert "Impression: Focal consolidation in the left lower zone." in report("consolidation")
    assert "Impression: 16 mm nodule in the right upper zone." in report("nodule")  # truth: 18 mm, right mid zone


@pytest.mark.parametrize("name", NAMES)
def test_draft_already_right_and_reflection_keeps_it(results, name):
    """On these six films the draft already states the final findings, so reflection only confirms."""
    result = results[name]
    assert stated(result.draft_labels) == stated(result.final_labels)
    assert {item.action for item in result.output.reflection} == {"kept"}


def test_generation_is_deterministic(pipe, results):
    again = pipe.run(str(EXAMPLES / "phantom_pneumothorax.png"))
    assert again.raw_text == results["pneumothorax"].raw_text


# ---------------------------------------------------------------- model card, provenance, saliency
def test_model_card_says_demo_on_synthetic_phantoms(pipe):
    card = json.loads((MODEL / "medr2_model.json").read_text())
    assert pipe.card == card and card["target"] == "medr2" and card["demo"] is True
    assert "synthetic" in card["training_data"] and "phantom" in card["training_data"]
    assert "no patient data" in card["training_data"] and "NOT for clinical use" in card["intended_use"]
    prov = pipe.provenance
    assert prov.demo is True and prov.training_data == card["training_data"]
    assert "DEMO MODEL trained on synthetic phantoms, not for clinical use" in prov.line()


def test_shipped_weights_are_unchanged(pipe):
    assert hashlib.sha256((MODEL / "model.safetensors").read_bytes()).hexdigest() == SHIPPED_SHA256
    assert pipe.provenance.weights_sha256 == SHIPPED_SHA256
    assert pipe.provenance.line().startswith(f"assets/model (weights {SHIPPED_SHA256[:12]})")


def test_saliency_json_is_read_and_fits_the_vision_tower(pipe, results, monkeypatch):
    shipped = json.loads((MODEL / DEPTH_FILE).read_text())
    assert pipe.saliency_config == shipped == read_model_card(str(MODEL), DEPTH_FILE)
    weights = shipped["depth_weights"]
    assert weights == {"Fracture": [0.0] * 5 + [1.0]}  # fractures: last block only; every other finding fuses all
    assert all(len(w) == len(layers_for(pipe.model)) for w in weights.values())  # one weight per vision block
    # Pipeline.saliency hands the file's weights to the saliency engine unless the caller gives others
    from medr2 import saliency as maps  # the stage's public face, which the pipeline calls

    seen = []
    def explain(*args, **kwargs):
        seen.append(kwargs["depth_weights"])
        return maps.SaliencyResult([], maps.DEFAULT_METHOD, 0.0)

    monkeypatch.setattr(maps, "explain", explain)
    pipe.saliency(results["pneumothorax"])
    pipe.saliency(results["pneumothorax"], depth_weights={"Pneumothorax": [1.0] * 6})
    assert seen == [weights, {"Pneumothorax": [1.0] * 6}]


# finding -> (example, the side of the image its map's energy must mostly lie on, weak visual evidence of the
# gradient map?) Patient left is image right on a frontal film. The nodule's gradient map falls outside the right
# upper zone the report names (and off the real nodule), so the app marks it weak evidence: pinned as it is. Its look
# heads' map, listed first, lies on the nodule's side and is not weak.
SALIENCY = {"Pneumothorax": ("pneumothorax", "image right", False),
            "Pleural Effusion": ("effusion", "image right", False),
            "Consolidation": ("consolidation", "image right", False),
            "Lung Lesion": ("nodule", "image left", True)}


@pytest.mark.parametrize("finding", sorted(SALIENCY))
def test_saliency_of_lateral_findings(pipe, results, finding):
    from medr2.inference.pipeline import HEADS_MAP_METHOD

    name, side, weak = SALIENCY[finding]
    found = pipe.saliency(results[name], targets=[finding]).maps
    assert [m.method for m in found] == [HEADS_MAP_METHOD, DEFAULT_METHOD], f"maps for {finding}: {found}"
    heads, gradients = found
    w = heads.heatmap.shape[1]
    right_share = float(heads.heatmap[:, w // 2:].sum() / heads.heatmap.sum())
    assert (right_share > 0.5) if side == "image right" else (right_share < 0.5), right_share
    assert not heads.weak_evidence and heads.evidence >= EVIDENCE_MIN
    right_share = float(gradients.heatmap[:, w // 2:].sum() / gradients.heatmap.sum())
    if not weak:
        assert (right_share > 0.5) if side == "image right" else (right_share < 0.5), right_share
    assert gradients.weak_evidence is weak and (gradients.evidence < EVIDENCE_MIN) is weak, gradients.evidence
