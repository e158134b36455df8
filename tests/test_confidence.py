"""medr2.trust.confidence: calibration code on synthetic scores, per-finding token scores on a micro model
(checked against the model's own logits), and the shipped model's stored calibration (slow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from answers import GENERATED  # tests/answers.py

from medr2.trust import confidence as C

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ ECE
def test_ece_of_a_perfectly_calibrated_set_is_zero():
    # bin 0.2-0.3: p = 0.25, 1 of 4 present; bin 0.7-0.8: p = 0.75, 3 of 4 present
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert C.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    q = rng.random(200_000)
    assert C.expected_calibration_error(q, rng.random(q.size) < q) < 0.01


def test_ece_of_a_known_miscalibration_equals_its_value():
    # 10 findings at 0.9 of which 7 present (gap 0.2), 10 at 0.2 of which 2 present (gap 0): ECE = 0.1
    p = [0.9] * 10 + [0.2] * 10
    y = [1] * 7 + [0] * 3 + [1] * 2 + [0] * 8
    assert C.expected_calibration_error(p, y) == pytest.approx(0.1)
    bins = C.reliability(p, y)
    assert [(b["n"], b["mean_p"], b["freq"]) for b in bins] == [(10, pytest.approx(0.2), 0.2), (10, pytest.approx(0.9), 0.7)]
    assert C.reliability([1.0], [1])[0]["lo"] == 0.9  # p == 1 falls in the last bin


def test_brier_and_auroc():
    assert C.brier([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(0.25 / 3)
    assert C.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert C.auroc([0.3, 0.3], [1, 0]) == pytest.approx(0.5)
    assert C.auroc([0.3, 0.4], [1, 1]) is None


# ------------------------------------------------------------------------------------------ calibrators
def _overconfident(n: int, seed: int):
    """True probability q of being present; the raw score says sigmoid(3 logit q): too sure both ways."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    raw = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return raw, (rng.random(n) < q).astype(int)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_of_overconfident_scores_drops_ece(method):
    raw, y = _overconfident(6000, 1)
    test_raw, test_y = _overconfident(6000, 2)
    cal = C.fit_calibration(raw, y, method=method)
    before = C.expected_calibration_error(test_raw, test_y)
    after = C.expected_calibration_error(cal(test_raw), test_y)
    assert before > 0.08  # the miscalibration is real ...
    assert after < 0.03  # ... and the held-out set's calibrated ECE falls below the bound
    if method == "platt":  # sigmoid(a logit(raw) + b) inverts the known distortion: a = 1/3, b = 0
        assert cal.a == pytest.approx(1 / 3, abs=0.05) and cal.b == pytest.approx(0.0, abs=0.1)


def test_pav_is_the_isotonic_least_squares_fit():
    xs, ys = C.pav(np.array([1.0, 2, 3, 4]), np.array([1.0, 0, 1, 1]))
    # the first two points violate order and pool to 0.5; the last two tie at 1 and pool too
    assert xs.tolist() == [1, 2, 3, 4] and ys.tolist() == [0.5, 0.5, 1.0, 1.0]
    xs, ys = C.pav(np.array([3.0, 1, 2, 2]), np.array([0.0, 1, 0, 1]))  # unsorted, tied x
    assert xs.tolist() == [1, 3] and ys.tolist() == [0.5, 0.5]
    rng = np.random.default_rng(3)
    x, y = rng.random(500), (rng.random(500) < 0.7).astype(float)
    xs, ys = C.pav(x, y)
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) >= 0)
    fit = np.interp(x, xs, ys)
    assert fit.mean() == pytest.approx(y.mean())  # PAV preserves the mean
    # least squares among monotone fits: better than the constant mean, and than the fit's own neighbours
    assert np.sum((fit - y) ** 2) < np.sum((y.mean() - y) ** 2)
    for eps in (0.01, -0.01):
        assert np.sum((fit - y) ** 2) < np.sum((np.interp(x, xs, np.clip(ys * (1 + eps), 0, 1)) - y) ** 2)


def test_isotonic_calibration_is_monotone_and_clipped():
    rng = np.random.default_rng(4)
    x = rng.random(2000)
    cal = C.fit_calibration(x, (rng.random(2000) < x ** 2).astype(int), method="isotonic")
    grid = cal(np.linspace(0, 1, 1001))
    assert np.all(np.diff(grid) >= 0)
    assert grid.min() >= C.P_MIN and grid.max() <= C.P_MAX
    assert isinstance(cal(0.3), float)
    with pytest.raises(ValueError):
        C.fit_calibration([0.2, 1.5], [1, 0])
    with pytest.raises(ValueError):
        C.fit_calibration([0.2, 0.5], [1, 0], method="beta")


def test_calibration_round_trips_through_the_model_folder(tmp_path):
    assert C.load_calibration(tmp_path) is None  # a model without confidence.json: no calibration
    cal = C.fit_calibration([0.1, 0.4, 0.6, 0.9], [0, 0, 1, 1], method="isotonic", fitted_on={"seed": 2})
    cal.save(tmp_path)
    back = C.load_calibration(tmp_path)
    assert back == cal and back(0.8) == cal(0.8)
    assert back.fitted_on["seed"] == 2 and back.fitted_on["n"] == 4
    assert C.is_low(0.3, back) and not C.is_low(0.7, back)
    assert C.is_low(0.49) and not C.is_low(0.5)


def test_agreement_is_the_share_of_samples_stating_a_finding():
    sampled = [{"Pneumothorax": 1}, {"Pneumothorax": -1}, {"Pneumothorax": 0}, None]
    assert C.agreement_scores(sampled, ["Pneumothorax", "Edema"]) == {"Pneumothorax": 0.5, "Edema": 0.0}


# ------------------------------------------------------------------------------------------ micro model
@pytest.fixture(scope="module")
def micro():
    """An untrained micro LLaVA and a result that 'answered' GENERATED on a film, as Pipeline.run hands it on."""
    from medr2.inference.pipeline import as_loaded
    from medr2.inference.results import StudyResult
    from medr2.labeler.findings import label_report
    from medr2.modeling.model import TinyVLMConfig, build_chat, build_tiny_vlm, prepare_inputs
    from medr2.modeling.tokenizer import train_tokenizer
    from medr2.report.schema import parse

    torch.manual_seed(0)
    tokenizer = train_tokenizer([GENERATED] * 20, vocab_size=400)
    model, processor = build_tiny_vlm(tokenizer, TinyVLMConfig.micro("llava"))
    y, x = np.mgrid[0:200, 0:232]
    film = ((np.sin(x / 9.0) * np.cos(y / 13.0) + 1) * 120).astype(np.uint8)
    inputs = prepare_inputs(processor, film, build_chat("Read this chest radiograph."))
    new_ids = torch.tensor([tokenizer.encode(GENERATED + "<|im_end|>", add_special_tokens=False)])
    parsed = parse(GENERATED)
    result = StudyResult(GENERATED, parsed, None, label_report(parsed.output.report.text), {}, None,
                         new_ids.shape[1], as_loaded(film), {"inputs": inputs, "new_ids": new_ids})
    return model, processor, result


def _reference_logprobs(model, result) -> np.ndarray:
    """Each generated token's log-probability from a plain full forward pass (no logits_to_keep)."""
    inputs, new_ids = result.saliency_inputs["inputs"], result.saliency_inputs["new_ids"]
    ids = torch.cat([inputs["input_ids"], new_ids], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"]).logits[0]
    p = inputs["input_ids"].shape[1]
    lp = torch.log_softmax(logits[p - 1:-1].double(), -1)
    return lp.gather(-1, new_ids[0][:, None])[:, 0].numpy()


def _token_mask(tokenizer, ids, text: str, phrases: list[str], start: int = 0) -> np.ndarray:
    """Tokens overlapping any occurrence of the phrases after char `start`, from decoded prefixes (independent
    of token_char_spans)."""
    ends = [len(tokenizer.decode(ids[:k + 1], skip_special_tokens=False)) for k in range(len(ids))]
    starts = [0] + ends[:-1]
    spans = []
    for phrase in phrases:
        at = text.find(phrase, start)
        assert at >= 0, phrase
        while at >= 0:
            spans.append((at, at + len(phrase)))
            at = text.find(phrase, at + 1)
    return np.array([any(s < b and e > a for a, b in spans) for s, e in zip(starts, ends)])


def test_token_scores_match_the_models_logits(micro):
    model, processor, result = micro
    scores = C.token_scores(model, processor, result)
    assert set(scores) == {"Pleural Effusion", "Pneumothorax"}  # the report's positive and uncertain finding
    ids = result.saliency_inputs["new_ids"][0].tolist()
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    report_at = text.index("<report>")
    lp = _reference_logprobs(model, result)
    effusion_report = _token_mask(processor.tokenizer, ids, text, ["Small right pleural effusion."], report_at)
    effusion_seen = _token_mask(processor.tokenizer, ids, text, ["right lung, lower zone: blunted costophrenic angle with a meniscus."])
    effusion_all = effusion_report | effusion_seen
    s = scores["Pleural Effusion"]
    assert s["report_min"] == pytest.approx(np.exp(lp[effusion_report].min()), rel=1e-4)
    assert s["tokens_min"] == pytest.approx(np.exp(lp[effusion_all].min()), rel=1e-4)
    assert s["tokens_mean"] == pytest.approx(np.exp(lp[effusion_all].mean()), rel=1e-4)
    pneumothorax = _token_mask(processor.tokenizer, ids, text, ["Possible left apical pneumothorax."], report_at)
    assert scores["Pneumothorax"]["report_min"] == pytest.approx(np.exp(lp[pneumothorax].min()), rel=1e-4)
    assert scores["Pneumothorax"]["report_first"] == pytest.approx(np.exp(lp[np.argmax(pneumothorax)]), rel=1e-4)

    # without a calibration: the raw default score; with one: its calibrated value; both strictly inside (0, 1)
    raw = C.finding_confidences(model, processor, result)
    assert raw == {k: pytest.approx(float(np.clip(v[C.DEFAULT_SCORE], C.P_MIN, C.P_MAX))) for k, v in scores.items()}
    cal = C.Calibration(score="report_min", method="platt", a=0.5, b=1.0)
    calibrated = C.finding_confidences(model, processor, result, cal)
    for name, p in calibrated.items():
        z = np.log(scores[name]["report_min"] / (1 - scores[name]["report_min"]))
        assert 0 < p < 1 and p == pytest.approx(1 / (1 + np.exp(-(0.5 * z + 1.0))))


def test_token_scores_need_saved_inputs(micro):
    model, processor, result = micro
    from dataclasses import replace

    with pytest.raises(ValueError, match="kept no model inputs"):
        C.token_scores(model, processor, replace(result, saliency_inputs=None))
    assert C.token_scores(model, processor, replace(result, final_labels={"Pleural Effusion": 0})) == {}


# ------------------------------------------------------------------------------------------ shipped model
@pytest.mark.slow
def test_shipped_calibration_gives_a_confident_pneumothorax():
    from medr2.inference.pipeline import EMBEDDED_MODEL, Pipeline, PipelineConfig

    cal = C.load_calibration(EMBEDDED_MODEL)
    assert cal is not None and cal.score in C.SCORES and cal.fitted_on["seed"] == 2
    grid = cal(np.linspace(0, 1, 101))
    assert np.all(np.diff(grid) >= 0)
    pipe = Pipeline(PipelineConfig(model=str(EMBEDDED_MODEL)))
    result = pipe.run(ROOT / "assets" / "examples" / "phantom_pneumothorax.png")
    conf = C.finding_confidences(pipe.model, pipe.processor, result, cal)
    assert conf["Pneumothorax"] >= 0.8 and not C.is_low(conf["Pneumothorax"], cal)
