"""Study sources that share a name (two model folders both called `model`, two report files with the same name)
get distinct labels when the study is frozen, and the report, its tables, plots and export keep them apart."""
from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from medr2.study.analysis import analyse, export, markdown, write_report
from medr2.study.create import create_study
from medr2.study.manifest import Source, StudyFolder, distinct_labels, source_labels
from medr2.study.session import ReviewStore

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
NORMAL = "Findings: Normal heart size. The lungs are clear. No pleural effusion. No pneumothorax."
TERSE = "No acute findings."


def _cases(tmp_path: Path) -> Path:
    cases = tmp_path / "cases"
    cases.mkdir()
    for p in sorted(EXAMPLES.glob("phantom_*.png")):
        (cases / p.name).write_bytes(p.read_bytes())
        (cases / p.with_suffix(".json").name).write_bytes(p.with_suffix(".json").read_bytes())
    return cases


def _jsonl(path: Path, cases: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"image": p.name, "report": text}) + "\n" for p in sorted(cases.glob("*.png"))))
    return str(path)


def _save(store, reader, case, source, *, overall, preference=None, correction=""):
    store.save(reader, case, source, side="A", correction=correction, items={"overall": overall}, errors=[],
               significant=[], edit_reasons="content" if correction else None, preference=preference, comment="",
               opened_at=datetime.now(timezone.utc), order_index=0)


def test_labels_grow_to_the_shortest_distinguishing_path_suffix_or_are_numbered():
    assert distinct_labels([("runs", "a", "model"), ("runs", "b", "model")]) == ["a/model", "b/model"]
    assert distinct_labels([("x", "a", "r.jsonl"), ("y", "a", "r.jsonl"), ("r.jsonl",)]) == [
        "x/a/r.jsonl", "y/a/r.jsonl", "r.jsonl"]
    assert distinct_labels([("reference",), ("reference",), ("reference",)]) == [
        "reference", "reference (2)", "reference (3)"]
    # a name the report's tables use for something else is never a source's label
    assert distinct_labels([("equal",), ("runs", "sign_test_p")]) == ["equal (2)", "runs/sign_test_p"]
    assert distinct_labels([("assets", "model"), ("checkpoint-5",)]) == ["model", "checkpoint-5"]  # no clash: short


def test_create_labels_two_model_folders_named_alike_by_their_parents(tmp_path, monkeypatch):
    a, b = tmp_path / "runs" / "a" / "model", tmp_path / "runs" / "b" / "model"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    sources = [Source(str(a), "model"), Source(str(b), "model"), Source("reference", "reference"),
               Source("org/model", "model"), Source("other/model", "model")]  # the last two: hub ids
    assert source_labels(sources) == ["a/model", "b/model", "reference", "org/model", "other/model"]
    # the same folder spelled two ways is one path: numbered, not grown to the whole path
    monkeypatch.chdir(tmp_path)
    rel = Source(str(a.relative_to(tmp_path)), "model")
    assert source_labels([Source(str(a), "model"), rel]) == ["model", "model (2)"]


@pytest.fixture
def twin_study(tmp_path) -> StudyFolder:
    """A/B of two report files both named normal.jsonl (different folders, different reports)."""
    cases = _cases(tmp_path)
    first = _jsonl(tmp_path / "site_a" / "normal.jsonl", cases, NORMAL)
    second = _jsonl(tmp_path / "site_b" / "normal.jsonl", cases, TERSE)
    return StudyFolder.open(create_study(cases, [first, second], "ab", tmp_path / "S", seed=2, study_id="twins"))


def _fill(study: StudyFolder) -> None:
    """alice and bob read six cases: S1 rated 4 and preferred on 5 cases (tie on the last); S2 rated 2, and
    alice corrects S2 on the first case (2 words changed)."""
    store = ReviewStore(study)
    for reader in ("alice", "bob"):
        for n, case in enumerate(study.case_ids):
            tie = n == 5
            _save(store, reader, case, "S1", overall=4, preference="equal" if tie else "this")
            correction = "No acute pleural effusion." if (reader, n) == ("alice", 0) else ""
            _save(store, reader, case, "S2", overall=2, preference="equal" if tie else "other", correction=correction)
    store.close()


def test_two_report_files_with_the_same_name_are_reported_apart(twin_study, tmp_path):
    key = twin_study.key()["sources"]
    assert (key["S1"]["label"], key["S2"]["label"]) == ("site_a/normal.jsonl", "site_b/normal.jsonl")
    public = (twin_study.root / "study.json").read_text() + (twin_study.root / "reports.jsonl").read_text()
    assert "site_a" not in public and "normal.jsonl" not in public  # the labels stay in the key
    _fill(twin_study)
    result = analyse(twin_study)
    assert result["sources"] == {"S1": "site_a/normal.jsonl", "S2": "site_b/normal.jsonl"}
    pref = result["preference"]
    assert (pref["site_a/normal.jsonl"], pref["site_b/normal.jsonl"], pref["equal"]) == (10, 0, 2)
    assert pref["sign_test_p"] == pytest.approx(2 * 0.5 ** 10)
    assert result["ratings"]["S1"]["overall"]["n"] == 12 and result["ratings"]["S1"]["overall"]["mean"] == 4.0
    assert result["ratings"]["S2"]["overall"]["n"] == 12 and result["ratings"]["S2"]["overall"]["mean"] == 2.0
    seconds = result["seconds_per_review"]["source"]
    assert seconds["site_a/normal.jsonl"]["n"] == 12 and seconds["site_b/normal.jsonl"]["n"] == 12
    # alice's one correction: "No acute findings." -> "No acute pleural effusion." (1 substitution + 1 insertion)
    dist = result["edit_distance"]
    assert dist["site_a/normal.jsonl"]["mean"] == 0.0
    assert dist["site_b/normal.jsonl"]["mean"] == pytest.approx(2 / 12) and dist["site_b/normal.jsonl"]["n"] == 12
    md = markdown(result)
    assert "**Preference** site_a/normal.jsonl: 10 · site_b/normal.jsonl: 0 · equal: 2" in md
    assert md.count("| site_a/normal.jsonl | overall | 12 | 4.00 |") == 1

    out = tmp_path / "long.csv"
    export(twin_study, out)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["item"] == "rating:overall"]
    assert Counter((r["source"], r["source_label"]) for r in rows) == {
        ("S1", "site_a/normal.jsonl"): 12, ("S2", "site_b/normal.jsonl"): 12}
    written = write_report(twin_study)
    assert {"ratings_by_source.png", "preference.png"} <= {p.name for p in written.iterdir()}


def test_a_key_without_labels_still_keeps_same_named_sources_apart(twin_study):
    """A study frozen before labels were recorded: key.json names both files only 'normal.jsonl'."""
    path = twin_study.root / "key.json"
    key = json.loads(path.read_text())
    for entry in key["sources"].values():
        del entry["label"]
    path.write_text(json.dumps(key))
    _fill(twin_study)
    result = analyse(twin_study)
    assert result["sources"] == {"S1": "normal.jsonl", "S2": "normal.jsonl (2)"}
    pref = result["preference"]
    assert (pref["normal.jsonl"], pref["normal.jsonl (2)"], pref["equal"]) == (10, 0, 2)
    assert set(result["edit_distance"]) == {"normal.jsonl", "normal.jsonl (2)"}


def test_multi_study_counts_best_per_same_named_source(tmp_path):
    cases = _cases(tmp_path)
    sources = ["reference", _jsonl(tmp_path / "x" / "r.jsonl", cases, NORMAL),
               _jsonl(tmp_path / "y" / "r.jsonl", cases, TERSE)]
    study = StudyFolder.open(create_study(cases, sources, "multi", tmp_path / "M", seed=4, study_id="m"))
    store = ReviewStore(study)
    picks = ["S2", "S2", "S3", "S1", "S1", "S1"]  # one reader: best per case
    for case, pick in zip(study.case_ids, picks):
        for s in study.sources:
            _save(store, "carol", case, s, overall=3, preference="this" if s == pick else "other")
    store.close()
    best = analyse(study)["best"]
    assert (best["reference"], best["x/r.jsonl"], best["y/r.jsonl"], best["equal"]) == (3, 2, 1, 0)
