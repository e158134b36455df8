"""research/finding_context.py: where a model misses one finding kind (alone, beside others, under others)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))
from finding_context import context_of, film_context, summarize  # noqa: E402

from medr2.phantom.generator import generate_study, study_seed  # noqa: E402


def _row(others, found, said=None, overlap=0.0, subtle=False, code=1):
    return {"others": others, "found": found, "said": said or {"Lung Opacity": 1 if found else None},
            "overlap": overlap, "edema": "edema" in others, "subtle": subtle, "code": code}


def test_context_groups_and_misreads_count_only_where_the_other_finding_is_absent():
    rows = [_row([], True), _row([], False, {"Lung Opacity": None, "Consolidation": 1}),
            _row(["consolidation"], False, {"Lung Opacity": None, "Consolidation": 1}, overlap=0.4),
            _row(["effusion", "cardiomegaly"], False), _row(["edema"], True, {"Lung Opacity": -1}, code=-1)]
    assert [context_of(r) for r in rows] == ["alone", "alone", "overlapping another finding",
                                             "beside other findings, clear of them", "beside edema"]
    s = summarize(rows, "opacity")
    assert s["all"] == {"n": 5, "found": 2, "rate": 0.4}
    assert s["by_context"]["alone"] == {"n": 2, "found": 1, "rate": 0.5}
    assert s["by_other_findings"]["2"]["n"] == 1 and s["by_other_findings"]["1"]["n"] == 2
    # the miss on a film with a true consolidation is not counted as a misread
    assert s["misses_reported_as"]["Consolidation"] == 1 and s["misses_without_that_finding"]["Consolidation"] == 2
    assert s["found_stated_vs_reference"]["hedged_when_reference_hedged"] == 1


def test_film_context_reads_the_phantom_ground_truth():
    study = next(s for s in (generate_study(study_seed(77, i)) for i in range(400))
                 if any(f.kind == "opacity" for f in s.findings) and len(s.findings) > 1)
    ctx = film_context(study, "opacity")
    target = next(f for f in study.findings if f.kind == "opacity")
    assert ctx["others"] and "opacity" not in ctx["others"]
    assert ctx["others"] == sorted({f.kind for f in study.findings} - {"opacity"})
    assert (ctx["side"], ctx["zone"], ctx["subtle"]) == (target.side, target.zone, target.subtle)
