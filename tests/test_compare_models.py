"""The paired bootstrap that says whether one model's CE-F1 is really above another's (benchmarks/compare_models.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compare_models import paired_bootstrap  # noqa: E402

from medr2.evaluation import metrics  # noqa: E402
from medr2.labeler.findings import OBSERVATIONS  # noqa: E402


def _labels(rows: np.ndarray) -> list[dict]:
    return [{obs: (1 if v else None) for obs, v in zip(OBSERVATIONS, row)} for row in rows]


@pytest.fixture()
def sets():
    rng = np.random.default_rng(0)
    ref = rng.random((400, len(OBSERVATIONS))) < 0.15
    good = ref ^ (rng.random(ref.shape) < 0.03)  # few label errors
    poor = ref ^ (rng.random(ref.shape) < 0.12)  # many
    return ref, good, poor


def test_scores_match_the_evaluation_metrics(sets):
    ref, good, _ = sets
    preds, refs = _labels(good), _labels(ref)
    assert metrics.example_f1_matrix(good, ref).mean() == pytest.approx(metrics.ce_example_based(preds, refs)["f1"])
    assert metrics.macro_f1_matrix(good, ref) == pytest.approx(metrics.ce_five_label(preds, refs)["f1_macro_14"])


def test_a_clearly_better_model_wins_and_its_interval_excludes_zero(sets):
    ref, good, poor = sets
    result = paired_bootstrap(poor, good, ref, n_boot=300)
    for name in ("example_f1", "macro_f1"):
        r = result[name]
        assert r["difference"] > 0 and r["ci95_low"] > 0 and r["p_b_better"] > 0.99
        assert r["ci95_low"] <= r["difference"] <= r["ci95_high"]
    reverse = paired_bootstrap(good, poor, ref, n_boot=300)
    assert reverse["macro_f1"]["difference"] == pytest.approx(-result["macro_f1"]["difference"])
    assert reverse["macro_f1"]["p_b_better"] < 0.01


def test_identical_models_differ_by_nothing(sets):
    ref, good, _ = sets
    r = paired_bootstrap(good, good.copy(), ref, n_boot=100)["macro_f1"]
    assert r["difference"] == 0 and r["ci95_low"] == 0 and r["ci95_high"] == 0 and r["p_b_better"] == 0


def test_runs_on_different_films_are_not_compared():
    from compare_models import same_evaluation_set

    v6 = {"data": None, "split": "test", "n": 500, "seed": 3, "phantom_generator_version": 6}
    assert same_evaluation_set(v6, dict(v6))
    assert not same_evaluation_set(v6, {**v6, "phantom_generator_version": 7})
    v9 = {**v6, "phantom_generator_version": 9, "opacity_placement": "clear"}
    assert same_evaluation_set(v9, dict(v9)) and not same_evaluation_set(v9, {**v9, "opacity_placement": "free"})
    legacy = {k: v for k, v in v6.items() if k != "phantom_generator_version"}  # before the version was recorded
    assert same_evaluation_set(legacy, dict(legacy)) and not same_evaluation_set(legacy, v6)
    assert not same_evaluation_set(v6, {**v6, "seed": 2})


def test_references_of_an_evaluation_from_before_v8_carry_v7_labels():
    """An eval.json without `hedging` was scored on v7's randomly hedged labels; its references must be those."""
    from compare_models import reference_reports

    from medr2.evaluation.evaluate import EvalConfig, load_eval_set

    old = {"data": None, "split": "test", "n": 60, "seed": 3, "phantom_generator_version": 7}
    _, refs = reference_reports(old)
    assert refs == load_eval_set(EvalConfig(n=60, seed=3, hedging="random", opacity_placement="free"))[2]
    assert refs != reference_reports({**old, "hedging": "visibility"})[1]


def test_references_of_an_evaluation_from_before_v9_are_on_v8_films():
    """An eval.json without `opacity_placement` ran on v8's films (opacity placed anywhere); its references too."""
    from compare_models import reference_reports

    from medr2.evaluation.evaluate import EvalConfig, load_eval_set

    v8 = {"data": None, "split": "test", "n": 150, "seed": 2, "phantom_generator_version": 8, "hedging": "visibility"}
    _, refs = reference_reports(v8)
    assert refs == load_eval_set(EvalConfig(n=150, seed=2, opacity_placement="free"))[2]
    assert refs != reference_reports({**v8, "opacity_placement": "clear"})[1]
