"""`medr2 compare`: the paired bootstrap that says whether one model's CE-F1 is really above another's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medr2.cli import main
from medr2.evaluation import metrics
from medr2.evaluation.compare import paired_bootstrap, reference_reports, same_evaluation_set
from medr2.evaluation.evaluate import EvalConfig, load_eval_set
from medr2.labeler.findings import OBSERVATIONS
from medr2.phantom.generator import GENERATOR_VERSION


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
    v9 = {"data_dir": None, "split": "test", "n": 500, "seed": 3, "phantom_generator_version": 9}
    assert same_evaluation_set(v9, dict(v9))
    assert not same_evaluation_set(v9, {**v9, "phantom_generator_version": 8})
    assert not same_evaluation_set(v9, {**v9, "seed": 2}) and not same_evaluation_set(v9, {**v9, "n": 400})
    # older eval.json files name the dataset folder `data`
    on_disk = {**v9, "data_dir": "iu", "phantom_generator_version": None}
    assert same_evaluation_set(on_disk, {**{k: v for k, v in on_disk.items() if k != "data_dir"}, "data": "iu"})
    assert not same_evaluation_set(on_disk, {**on_disk, "data_dir": "mimic"})


def test_references_are_regenerated_only_from_current_films():
    current = {"data_dir": None, "split": "test", "n": 20, "seed": 3, "phantom_generator_version": GENERATOR_VERSION}
    ids, refs = reference_reports(current)
    assert (ids, refs) == tuple(load_eval_set(EvalConfig(n=20, seed=3))[i] for i in (0, 2))
    with pytest.raises(ValueError, match="re-run `medr2 evaluate`"):
        reference_reports({**current, "phantom_generator_version": GENERATOR_VERSION - 1})
    with pytest.raises(ValueError, match="re-run `medr2 evaluate`"):
        reference_reports({**current, "hedging": "random"})


def _evaluation(folder, n: int, seed: int, texts: list[str]):
    """A `medr2 evaluate` folder as the command writes it (eval.json config + predictions.jsonl)."""
    folder.mkdir(parents=True)
    ids = load_eval_set(EvalConfig(n=n, seed=seed))[0]
    config = {**EvalConfig(n=n, seed=seed).__dict__, "phantom_generator_version": GENERATOR_VERSION}
    (folder / "eval.json").write_text(json.dumps({"config": config}))
    (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    return folder


def test_cli_compare_two_evaluation_folders(tmp_path, capsys):
    n, seed = 30, 3
    refs = load_eval_set(EvalConfig(n=n, seed=seed))[2]
    a = _evaluation(tmp_path / "evals" / "normal", n, seed, ["<report>\nNo acute cardiopulmonary process.\n</report>"] * n)
    b = _evaluation(tmp_path / "evals" / "perfect", n, seed, [f"<report>\n{r}\n</report>" for r in refs])
    assert main(["compare", str(a), str(b), "--n_boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "example_f1" in out and "macro_f1" in out
    saved = json.loads((tmp_path / "evals" / "compare.json").read_text())  # default: beside B's folder
    result = saved[f"{b} vs {a}"]
    assert result["n_boot"] == 200 and result["set"]["n"] == n
    assert result["example_f1"]["difference"] > 0 and result["example_f1"]["ci95_low"] > 0
    assert result["macro_f1"]["p_b_better"] > 0.95
    # --out - prints the JSON instead; the hyphen spelling of a flag parses too
    assert main(["compare", str(b), str(a), "--n-boot", "50", "--out", "-"]) == 0
    reverse = json.loads(capsys.readouterr().out)
    assert reverse["n_boot"] == 50 and reverse["example_f1"]["difference"] < 0
    assert len(json.loads((tmp_path / "evals" / "compare.json").read_text())) == 1


def test_cli_compare_refuses_runs_of_different_sets_in_one_line(tmp_path, capsys):
    a = _evaluation(tmp_path / "a", 10, 3, [""] * 10)
    b = _evaluation(tmp_path / "b", 12, 3, [""] * 12)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different sets" in err and err.count("\n") == 1
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not a `medr2 evaluate` folder" in capsys.readouterr().err
    assert not (tmp_path / "compare.json").exists()


def test_stored_references_are_compared_without_drawing_the_films_again(tmp_path, monkeypatch, capsys):
    """An evaluation stores each study's reference beside its prediction: `medr2 compare` scores against those, so it
    draws no film (a rendered set took minutes) and a set of an older generator version stays comparable."""
    from medr2.evaluation import evaluate

    n, seed = 12, 3
    ids, _, refs = load_eval_set(EvalConfig(n=n, seed=seed))
    old = {**EvalConfig(n=n, seed=seed).__dict__, "phantom_generator_version": GENERATOR_VERSION - 1}
    runs = {}
    for name, texts in (("normal", ["<report>\nNo acute cardiopulmonary process.\n</report>"] * n),
                        ("perfect", [f"<report>\n{r}\n</report>" for r in refs])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps({"config": old}))
        (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "text": t, "reference": r}) + "\n"
                                                          for i, t, r in zip(ids, texts, refs)))
        runs[name] = folder
    monkeypatch.setattr(evaluate, "load_eval_set", lambda *a, **k: pytest.fail("the films were drawn again"))
    assert main(["compare", str(runs["normal"]), str(runs["perfect"]), "--n_boot", "100", "--out", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["example_f1"]["difference"] > 0.3
    # references that disagree mean different films behind the same seed: refused in one line
    rows = (runs["perfect"] / "predictions.jsonl").read_text().splitlines()
    rows[0] = json.dumps({**json.loads(rows[0]), "reference": "Small left pleural effusion."})
    (runs["perfect"] / "predictions.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["compare", str(runs["normal"]), str(runs["perfect"])]) == 2
    assert "different references" in capsys.readouterr().err
