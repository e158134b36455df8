"""CE metrics against hand-computed values (arithmetic written out), NLG sanity, and `medr2 score`."""
from __future__ import annotations

import json

import pytest

from medr2.cli import main as medr2_main
from medr2.evaluation import metrics
from medr2.labeler import findings

C, E, P, N, X = "Cardiomegaly", "Edema", "Pleural Effusion", "No Finding", "Pneumothorax"


def lab(**values: int) -> dict:
    """Labels with every observation blank except the given ones (keys: short names above)."""
    names = {"C": C, "E": E, "P": P, "N": N, "X": X}
    out = {obs: None for obs in findings.OBSERVATIONS}
    out.update({names[k]: v for k, v in values.items()})
    return out


# pred r1 {C, E}, r2 {P, E uncertain}, r3 {N};   ref r1 {C, P}, r2 {P, E}, r3 {X}
PREDS = [lab(C=1, E=1), lab(P=1, E=-1), lab(N=1)]
REFS = [lab(C=1, P=1), lab(P=1, E=1), lab(X=1)]


def test_r2gen_micro_macro_by_hand():
    r = metrics.ce_micro_macro(PREDS, REFS)
    assert r["protocol"] == "r2gen-14" and r["n"] == 3
    # TP: C@r1, P@r2 = 2; FP: E@r1, N@r3 = 2; FN: P@r1, E@r2, X@r3 = 3
    assert r["micro"]["precision"] == pytest.approx(2 / 4)
    assert r["micro"]["recall"] == pytest.approx(2 / 5)
    assert r["micro"]["f1"] == pytest.approx(2 / (2 + 0.5 * (2 + 3)))
    # per label: C P=1 R=1 F=1; P P=1 R=1/2 F=2/3; E, N, X all 0; the other 9 labels 0/0 -> 0
    assert r["macro"]["precision"] == pytest.approx((1 + 1) / 14)
    assert r["macro"]["recall"] == pytest.approx((1 + 0.5) / 14)
    assert r["macro"]["f1"] == pytest.approx((1 + 2 / 3) / 14)


def test_example_based_by_hand():
    r = metrics.ce_example_based(PREDS, REFS)
    assert r["protocol"] == "example-14"
    # r1 tp1 fp1 fn1: P 1/2 R 1/2 F 1/(1+1) ; r2 tp1 fp0 fn1: P 1 R 1/2 F 1/1.5 ; r3 tp0 fp1 fn1: 0 0 0
    assert r["precision"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["recall"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert r["f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_uncertain_as_positive_changes_counts():
    r = metrics.ce_example_based(PREDS, REFS, uncertain_as_positive=True)
    # r2 pred becomes {P, E} = ref: F 1; r1 and r3 unchanged
    assert r["f1"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["uncertain_as_positive"] is True
    micro = metrics.ce_micro_macro(PREDS, REFS, uncertain_as_positive=True)
    assert micro["micro"]["f1"] == pytest.approx(3 / (3 + 0.5 * (2 + 2)))  # TP 3, FP 2, FN 2


def test_five_label_by_hand():
    r = metrics.ce_five_label(PREDS, REFS)
    assert r["protocol"] == "chexbert-5" and r["labels"] == list(metrics.COMPETITION_5)
    # 5 labels: C tp1; E fp1 fn1; P tp1 fn1  -> TP 2, FP 1, FN 2
    assert r["micro"]["f1"] == pytest.approx(2 / (2 + 0.5 * 3))
    assert r["micro"]["precision"] == pytest.approx(2 / 3) and r["micro"]["recall"] == pytest.approx(2 / 4)
    assert r["macro"]["f1"] == pytest.approx((1 + 0 + 0 + 0 + 2 / 3) / 5)
    assert r["f1_micro_14"] == pytest.approx(metrics.ce_micro_macro(PREDS, REFS)["micro"]["f1"])


def test_empty_empty_case_is_configurable_and_promptmrg_by_default():
    empty = lab()
    assert metrics.example_prf(empty, empty) == (0.0, 0.0, 0.0)  # PromptMRG: nan_to_num(0/0) = 0
    assert metrics.example_prf(empty, empty, empty_score=1.0) == (1.0, 1.0, 1.0)
    assert metrics.example_prf(empty, lab(C=1), empty_score=1.0) == (0.0, 0.0, 0.0)


def test_per_observation_table():
    rows = {r["observation"]: r for r in metrics.per_observation(PREDS, REFS)}
    assert list(rows) == list(findings.OBSERVATIONS)
    assert rows[P] == {"observation": P, "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                       "support": 2, "predicted": 1}
    assert rows[N]["support"] == 0 and rows[N]["predicted"] == 1 and rows[N]["precision"] == 0.0


def test_ce_scores_bundle_and_length_check():
    out = metrics.ce_scores(PREDS, REFS)
    assert {"r2gen-14", "example-14", "chexbert-5", "per_observation"} <= set(out)
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        metrics.ce_micro_macro(PREDS[:2], REFS)


def test_ce_from_reports_uses_the_labeler():
    preds = ["Large right pleural effusion.", "No pneumothorax."]
    refs = ["There is a right pleural effusion.", "There is a large left pneumothorax."]
    out = metrics.ce_scores_from_reports(preds, refs)
    expected = metrics.ce_scores(findings.label_reports(preds), findings.label_reports(refs))
    assert out == expected
    assert metrics.example_prf(findings.label_report(preds[0]), findings.label_report(refs[0]))[2] == 1.0


def test_clean_report_follows_r2gen():
    text = "FINDINGS: The heart is normal. 1. No effusion, no pneumothorax.\nIMPRESSION: Normal (chest)."
    assert metrics.clean_report(text) == "the heart is normal . no effusion no pneumothorax . normal chest ."
    assert metrics.clean_report("") == ""


REPORTS = ["the heart is normal in size. the lungs are clear.", "large right pleural effusion with atelectasis."]


def test_nlg_identical_and_disjoint_without_meteor():
    same = metrics.nlg_scores(REPORTS, REPORTS, meteor=False)
    for n in range(1, 5):
        assert same[f"BLEU_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE_L"] == pytest.approx(1.0) and same["CIDEr"] > 1.0
    assert "METEOR" in same["unavailable"]
    disjoint = metrics.nlg_scores(REPORTS, ["xyz qqq", "www vvv uuu"], meteor=False)
    # R2Gen cleaning keeps "." as a token: only the 2 sentence-final "." of the 19 hypothesis tokens
    # (12 + 7) match, so BLEU-1 = 2/19 and every higher order is ~0; "." is in every document: idf 0.
    assert disjoint["BLEU_1"] == pytest.approx(2 / 19, abs=1e-6)
    assert max(disjoint[f"BLEU_{n}"] for n in (2, 3, 4)) < 1e-6
    assert disjoint["ROUGE_L"] < 0.2 and disjoint["CIDEr"] == 0.0


def test_meteor_missing_java_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    out = metrics.nlg_scores(REPORTS, REPORTS)
    assert "java not found" in out["unavailable"]["METEOR"] and out["BLEU_4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_meteor_runs_with_java():  # ~8 s: starts the METEOR jar once
    out = metrics.nlg_scores(REPORTS + ["small left effusion."], REPORTS + ["no acute disease."])
    assert out["unavailable"] == {}
    assert 0.4 < out["METEOR"] < 1.0  # two perfect matches, one unrelated


# ---------------------------------------------------------------- medr2 score
def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_cli_score_aligns_by_id_and_writes_json(tmp_path, capsys):
    refs = [{"id": "a", "report": "Large right pleural effusion."}, {"id": "b", "report": "No pneumothorax."}]
    preds_path = tmp_path / "p.csv"
    preds_path.write_text('id,report\nb,No pneumothorax.\na,"<think>x</think><report>Large right pleural effusion.</report>"\n')
    out_path = tmp_path / "out" / "score.json"
    code = medr2_main(["score", "--predictions", str(preds_path), "--references",
                       _write_jsonl(tmp_path / "r.jsonl", refs), "--output", str(out_path), "--no-nlg"])
    assert code == 0
    result = json.loads(out_path.read_text())
    assert result["n"] == 2 and "nlg" not in result
    assert result["ce"]["r2gen-14"]["micro"]["f1"] == 1.0  # tagged prediction scored on its <report>
    assert "example-14" in capsys.readouterr().out


@pytest.mark.parametrize("preds, refs, message", [
    ("report\nA\nB\n", "report\nA\n", "2 predictions but 1 references"),
    ("id,report\n1,A\n2,B\n", "id,report\n1,A\n3,B\n", "ids differ"),
    ("text\nA\n", "report\nA\n", "`report` column"),
    ("id,report\n1,A\n1,B\n", "id,report\n1,A\n2,B\n", "duplicate ids"),
])
def test_cli_score_user_errors_exit_2(tmp_path, capsys, preds, refs, message):
    (tmp_path / "p.csv").write_text(preds)
    (tmp_path / "r.csv").write_text(refs)
    code = metrics.cli_score(["--predictions", str(tmp_path / "p.csv"), "--references", str(tmp_path / "r.csv"),
                              "--no-nlg"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_score_missing_file_and_bad_jsonl(tmp_path, capsys):
    assert metrics.cli_score(["--predictions", str(tmp_path / "nope.csv"), "--references", "x.csv"]) == 2
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "report": "ok"}\nnot json\n')
    assert metrics.cli_score(["--predictions", str(tmp_path / "bad.jsonl"),
                              "--references", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
