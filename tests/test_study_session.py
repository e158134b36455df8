"""Reader-study bookkeeping without a browser: creation from a manifest, per-reader order, revise-until-lock,
one review per reader x case x source, statistics on hand-made data, and durability under SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from medr2.study.analysis import cohen_kappa, fleiss_kappa, icc_2_1
from medr2.study.create import create_study
from medr2.study.manifest import StudyError, StudyFolder
from medr2.study.session import ReviewStore, ab_sides, add_reader, check_password, reader_order, word_edit_distance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


@pytest.fixture
def study(tmp_path) -> StudyFolder:
    rows = [{"image": f"../ex/{p.name}", "reference": json.loads(p.with_suffix(".json").read_text())["report"],
             "indication": "dyspnoea"} for p in sorted(EXAMPLES.glob("phantom_*.png"))]
    (tmp_path / "ex").mkdir()
    for p in EXAMPLES.glob("phantom_*.png"):
        (tmp_path / "ex" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cases.json").write_text(json.dumps(rows))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"image": r["image"].split("/")[-1], "report": "No finding."}) + "\n"
                                              for r in rows))
    return StudyFolder.open(create_study(tmp_path / "m" / "cases.json", ["reference", str(tmp_path / "r.jsonl")], "ab",
                                         tmp_path / "S", seed=11, study_id="t"))


def test_a_frozen_study_is_portable_and_blind(study):
    assert sorted(p.name for p in (study.root / "images").iterdir()) == [f"case-00{i}.png" for i in range(1, 7)]
    assert not any(p.is_symlink() for p in study.root.rglob("*"))
    public = (study.root / "study.json").read_text() + (study.root / "reports.jsonl").read_text()
    assert "phantom" not in public and "reference" not in public and study.seed == 11
    assert study.key()["cases"]["case-001"]["original_name"].startswith("phantom_")
    with pytest.raises(StudyError, match="exactly two sources"):
        create_study(study.root / "images", ["reference"], "ab", study.root.parent / "X")


def test_reader_order_and_sides_are_reproducible_per_reader(study):
    a, b = reader_order(study, "alice"), reader_order(study, "bob")
    assert sorted(a) == sorted(study.case_ids) and a == reader_order(study, "alice") and a != b
    sides = [ab_sides(study, "alice", c) for c in study.case_ids]
    assert {tuple(s) for s in sides} == {("S1", "S2"), ("S2", "S1")}  # both placements occur


def test_passwords_are_hashed_and_checked(study):
    add_reader(study.root, "alice", "correct horse")
    assert "correct horse" not in (study.root / "readers.json").read_text()
    assert check_password(study.root, "alice", "correct horse") and not check_password(study.root, "alice", "x")
    assert not check_password(study.root, "mallory", "correct horse")
    with pytest.raises(StudyError, match="at least 8"):
        add_reader(study.root, "bob", "short")


def _save(store, reader, case, source, lock=False, correction="", overall=4):
    return store.save(reader, case, source, side="A", correction=correction, items={"overall": overall},
                      errors=[], significant=[], edit_reasons="content" if correction else None, preference="this",
                      comment="", opened_at=datetime.now(timezone.utc) - timedelta(seconds=5), order_index=0, lock=lock)


def test_one_review_per_reader_case_source_revised_until_locked(study):
    store = ReviewStore(study)
    first = _save(store, "alice", "case-001", "S1", overall=2)
    assert _save(store, "alice", "case-001", "S1", overall=3) == first  # a revision, not a second review
    rec = store.get("alice", "case-001", "S1")
    assert rec.rating == 3 and rec.study["revision"] == 2 and rec.study["seconds"] >= 10
    _save(store, "alice", "case-001", "S2", lock=True, correction="No finding. Small left effusion.")
    with pytest.raises(Exception, match="locked"):
        _save(store, "alice", "case-001", "S2")
    assert store.case_state("alice", "case-001") == "saved" and store.progress("alice") == (1, 0, 6)
    assert store.reviews("bob") == [] and len(store.reviews("alice")) == 2
    assert store.get("alice", "case-001", "S2").study["edit_distance"] == 3
    store.close()


def test_agreement_statistics_match_hand_computation():
    # two raters, 4 items: agree on 3 (po = .75); marginals a: 2x, 2y; b: 3x, 1y -> pe = .5*.75 + .5*.25 = .5
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "x", "x", "y"]) == pytest.approx(0.5)
    # Fleiss' textbook case (3 raters, all agree on every item of two categories used equally): kappa 1
    assert fleiss_kappa([["a"] * 3, ["b"] * 3], ("a", "b")) == pytest.approx(1.0)
    assert icc_2_1([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert word_edit_distance("a b c", "a x c d") == 2


def test_a_sigkill_mid_study_loses_no_saved_review(study, tmp_path):
    """A real process saves reviews in a loop and reports each saved id; SIGKILL it and reopen the store."""
    script = textwrap.dedent(f"""
        import sys
        from datetime import datetime, timezone
        from medr2.study.manifest import StudyFolder
        from medr2.study.session import ReviewStore
        store = ReviewStore(StudyFolder.open({str(study.root)!r}))
        for i in range(10_000):
            case = "case-00%d" % (1 + i % 6)
            store.save("r%d" % i, case, "S1", side="A", correction="", items={{"overall": 1 + i % 5}}, errors=[],
                       significant=[], edit_reasons=None, preference="this", comment="", opened_at=datetime.now(timezone.utc),
                       order_index=0)
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    acknowledged = -1
    deadline = time.time() + 60
    while acknowledged < 15 and time.time() < deadline:
        acknowledged = int(proc.stdout.readline().strip() or acknowledged)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 15, "the writer did not get going"
    store = ReviewStore(StudyFolder.open(study.root))
    readers = {r.reviewer for _, r in store.reviews()}
    assert {f"r{i}" for i in range(acknowledged + 1)} <= readers
    store.close()


def test_create_generates_model_reports_once_and_keeps_the_model_in_the_key_only(app_model, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("phantom_normal.png", "phantom_effusion.png", "phantom_nodule.png"):
        (cases / name).write_bytes((EXAMPLES / name).read_bytes())
    out = create_study(cases, [str(app_model)], "single", tmp_path / "S", seed=1, batch_size=2, max_new_tokens=8)
    study = StudyFolder.open(out)
    assert len(study.reports) == 3 and study.sources == ["S1"]
    key = study.key()["sources"]["S1"]
    assert key["kind"] == "model" and key["model"] == str(app_model) and len(key["provenance"]["weights_sha256"]) == 64
    assert key["label"] == "micro"  # the folder's name (no other source to tell it from)
    public = (out / "study.json").read_text() + (out / "reports.jsonl").read_text()
    assert str(app_model) not in public and key["provenance"]["weights_sha256"] not in public
