"""Reader studies without a browser: one content / style reason per edited sentence (page matching, storage,
report counts, long export), and the multi design (N sources blinded in a per-reader random order, a best
choice, its statistics and its page)."""
from __future__ import annotations

import csv
import itertools
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from medr2.app import study_views as sv
from medr2.app.views import edit_key, sentence_edits
from medr2.study.analysis import analyse, export, markdown
from medr2.study.create import create_study
from medr2.study.manifest import StudyError, StudyFolder
from medr2.study.session import ReviewStore, ab_sides

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
REPORT = "Findings: Normal heart size. The lungs are clear. No pleural effusion. No pneumothorax."


def _cases(tmp_path: Path, n: int = 6) -> Path:
    cases = tmp_path / "cases"
    cases.mkdir()
    for p in sorted(EXAMPLES.glob("phantom_*.png"))[:n]:
        (cases / p.name).write_bytes(p.read_bytes())
        (cases / p.with_suffix(".json").name).write_bytes(p.with_suffix(".json").read_bytes())
    return cases


def _jsonl(tmp_path: Path, name: str, cases: Path, text: str) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"image": p.name, "report": text}) + "\n" for p in sorted(cases.glob("*.png"))))
    return str(path)


def _save(store, reader, case, source, correction="", reasons=None, preference=None, overall=3, side="A"):
    return store.save(reader, case, source, side=side, correction=correction, items={"overall": overall}, errors=[],
                      significant=[], edit_reasons=reasons, preference=preference, comment="",
                      opened_at=datetime.now(timezone.utc), order_index=0)


def test_sentence_edits_cover_rewritten_deleted_and_added_sentences():
    edited = "Findings: Normal heart size. Moderate left pleural effusion. No pneumothorax. Small nodule."
    assert sentence_edits(REPORT, edited) == [
        {"change": "edit", "sentence": "The lungs are clear.", "edited_text": "Moderate left pleural effusion."},
        {"change": "reject", "sentence": "No pleural effusion.", "edited_text": ""},
        {"change": "add", "sentence": "", "edited_text": "Small nodule."}]
    assert sentence_edits(REPORT, REPORT) == []


def test_page_keeps_a_reason_when_the_reader_retouches_the_edited_sentence():
    first = sentence_edits(REPORT, REPORT.replace("No pleural effusion.", "Small effusion.") + " Nodule.")
    later = sentence_edits(REPORT, REPORT.replace("No pleural effusion.", "Small left effusion.") + " Nodule.")
    given = sv.slot_reasons(first, ["content", "style"] + [None] * (sv.EDIT_SLOTS - 2))
    # the rewritten sentence keeps its reason (same model sentence); the added one is unchanged, so it keeps its own
    assert sv.match_reasons(later, first, given) == ["content", "style"]
    # a different added sentence is a new edit: no reason yet
    other = sentence_edits(REPORT, REPORT.replace("No pleural effusion.", "Small effusion.") + " Mass.")
    assert sv.match_reasons(other, first, given) == ["content", None]
    # past the last slot, its reason stands for every remaining edit
    many = sentence_edits("", " ".join(f"Line {i}." for i in range(10)))
    slots = sv.reason_slots(many, ["style"] * len(many))
    assert [u.get("visible") for u in slots] == [True] * sv.EDIT_SLOTS
    assert slots[-1]["label"].startswith(f"Edits {sv.EDIT_SLOTS}–10 (3 more)") and slots[-1]["value"] == "style"
    values = ["content"] * (sv.EDIT_SLOTS - 1) + ["style"]
    assert sv.slot_reasons(many, values)[-3:] == ["style"] * 3
    assert [u.get("visible") for u in sv.reason_slots(many[:2], [None, None])] == [True, True] + [False] * (sv.EDIT_SLOTS - 2)


@pytest.fixture
def ab_study(tmp_path) -> StudyFolder:
    cases = _cases(tmp_path)
    return StudyFolder.open(create_study(cases, ["reference", _jsonl(tmp_path, "normal.jsonl", cases, REPORT)], "ab",
                                         tmp_path / "S", seed=3, study_id="t"))


def test_each_edit_is_stored_with_its_own_reason_and_counted_per_source(ab_study, tmp_path):
    store = ReviewStore(ab_study)
    correction = "Findings: Normal heart size. Moderate left pleural effusion. No pneumothorax. Small nodule."
    edits = sentence_edits(REPORT, correction)
    assert [e["change"] for e in edits] == ["edit", "reject", "add"]
    with pytest.raises(StudyError, match="Edit 2: deleted “No pleural effusion.” — say whether it is about content or style"):
        _save(store, "alice", "case-001", "S2", correction, {edit_key(edits[0]): "content"}, "other")
    reasons = dict(zip(map(edit_key, edits), ("content", "style", "content")))
    _save(store, "alice", "case-001", "S2", correction, reasons, "other")
    _save(store, "alice", "case-001", "S1", "", None, "this")
    _save(store, "bob", "case-001", "S2", REPORT.replace("No pneumothorax.", "No pneumothorax seen."),
          "style", "other")
    _save(store, "bob", "case-001", "S1", "", None, "this")
    rec = store.get("alice", "case-001", "S2")
    assert [(e["change"], e["reason"]) for e in rec.study["edit_reasons"]] == [
        ("edit", "content"), ("reject", "style"), ("add", "content")]
    assert rec.study["edit_reasons"][2]["edited_text"] == "Small nodule."
    store.close()

    result = analyse(ab_study)
    assert result["edit_reasons"]["S2"] == {"content": 2, "style": 2,
                                            "by_change": {"add:content": 1, "edit:content": 1, "edit:style": 1,
                                                          "reject:style": 1}}
    assert result["edit_reasons"]["S1"] == {"content": 0, "style": 0, "by_change": {}}
    assert "**Edits** (content / style) reference: 0 / 0 · normal.jsonl: 2 / 2" in markdown(result)

    out = tmp_path / "long.csv"
    export(ab_study, out)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["item"].startswith("edit_reason:")]
    assert sorted((r["reader"], r["item"], r["value"]) for r in rows) == [
        ("alice", "edit_reason:1:edit", "content"), ("alice", "edit_reason:2:reject", "style"),
        ("alice", "edit_reason:3:add", "content"), ("bob", "edit_reason:1:edit", "style")]
    dictionary = (out.with_suffix(".dictionary.csv")).read_text()
    assert "edit_reason:<edit no.>" in dictionary and "content / style" in dictionary


@pytest.fixture
def multi_study(tmp_path) -> StudyFolder:
    cases = _cases(tmp_path)
    sources = ["reference", _jsonl(tmp_path, "normal.jsonl", cases, REPORT),
               _jsonl(tmp_path, "terse.jsonl", cases, "No acute findings.")]
    return StudyFolder.open(create_study(cases, sources, "multi", tmp_path / "M", seed=5, study_id="m"))


def test_multi_design_shuffles_every_source_per_reader_and_case(multi_study, tmp_path):
    orders = [tuple(ab_sides(multi_study, r, c)) for r in ("alice", "bob", "carol") for c in multi_study.case_ids]
    assert all(sorted(o) == ["S1", "S2", "S3"] for o in orders)
    assert len(set(orders)) >= 4  # 18 draws of 6 permutations: several placements occur
    assert ab_sides(multi_study, "alice", "case-002") == ab_sides(multi_study, "alice", "case-002")
    public = (multi_study.root / "study.json").read_text() + (multi_study.root / "reports.jsonl").read_text()
    assert "normal.jsonl" not in public and "terse" not in public and "phantom" not in public
    with pytest.raises(StudyError, match="at least two sources"):
        create_study(multi_study.root / "images", ["reference"], "multi", tmp_path / "X")
    cases = multi_study.root / "images"
    too_many = [_jsonl(tmp_path, f"r{i}.jsonl", cases, "x") for i in range(7)]
    with pytest.raises(StudyError, match="at most 6 reports"):
        create_study(cases, too_many, "multi", tmp_path / "Y")


def test_multi_design_best_counts_match_hand_computation(multi_study):
    store = ReviewStore(multi_study)
    # alice: reference best on all 6 cases; bob: reference on 4, terse on 1, no clear best on 1
    for reader, picks in (("alice", ["S1"] * 6), ("bob", ["S1"] * 4 + ["S3", "equal"])):
        for case, pick in zip(multi_study.case_ids, picks):
            for s in multi_study.sources:
                pref = "equal" if pick == "equal" else "this" if s == pick else "other"
                _save(store, reader, case, s, preference=pref, overall=5 if s == "S1" else 2)
    store.close()
    result = analyse(multi_study)
    best = result["best"]
    assert (best["reference"], best["normal.jsonl"], best["terse.jsonl"], best["equal"]) == (10, 0, 1, 1)
    # exact test by hand: P(a, b, c) = 11!/(a! b! c!) / 3^11; (10, 0, 1) has coefficient 11, and only (11, 0, 0)
    # (coefficient 1, 3 orders) and (10, 1, 0) (11, 6 orders) are no likelier: p = (3 + 66) / 3^11
    assert best["equal_shares_p"] == pytest.approx(69 / 3 ** 11)
    assert "preference" not in result and "**Best report** reference: 10" in markdown(result)
    assert result["ratings"]["S3"]["overall"]["mean"] == 2.0 and result["agreement"]["cases"] == 6


def test_multi_page_shows_every_report_blinded_with_a_best_choice(multi_study):
    demo = sv.build_study_demo(multi_study.root)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c["props"].get("elem_id")}
    assert {"correction_A", "correction_B", "correction_C"} <= set(ids) and "correction_D" not in ids
    assert [c[1] for c in ids["preference"]["choices"]] == ["A", "B", "C", "equal"]
    assert all(f"reason_{s}_{j}" in ids for s, j in itertools.product("ABC", range(1, sv.EDIT_SLOTS + 1)))
    text = json.dumps(config, default=str)
    assert not any(w in text for w in ("normal.jsonl", "terse", "phantom", str(multi_study.root)))
    assert not re.search(r"\breference\b", text)  # the source's name ('preference' is a property name)
    assert sv.stored_preference(["other", "this", "other"]) == "B"
    assert sv.stored_preference(["equal", "equal", "equal"]) == "equal" and sv.stored_preference([None, None]) is None
