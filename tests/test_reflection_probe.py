"""benchmarks/reflection_probe.py: does the reflection fix a draft's error, and does it break a right draft?"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reflection_probe import disagreements, forced_prefix, score_study, seen_vs_unseen, summarize  # noqa: E402

from medr2.phantom.generator import generate_studies  # noqa: E402
from medr2.report.schema import ReflectionItem, parse, render  # noqa: E402
from medr2.report.traces import TraceConfig, build_trace  # noqa: E402

REFERENCE = "Findings: Normal heart size. Moderate right pleural effusion. Nodule in the left upper zone."


def test_disagreements_cover_found_side_zone_and_severity():
    assert disagreements(REFERENCE, REFERENCE) == set()
    assert disagreements(REFERENCE, "Findings: Moderate right pleural effusion.") == {("Lung Lesion", "found")}
    assert disagreements(REFERENCE, REFERENCE.replace("right", "left")) == {("Pleural Effusion", "side")}
    assert disagreements(REFERENCE, REFERENCE.replace("Moderate", "Large")) == {("Pleural Effusion", "severity")}
    assert disagreements(REFERENCE, REFERENCE.replace("upper", "lower")) == {("Lung Lesion", "zone")}
    hallucinated = REFERENCE + " Small left pneumothorax."
    assert disagreements(REFERENCE, hallucinated) == {("Pneumothorax", "found")}
    # hedged = found: "possible" is still a stated finding
    assert ("Lung Lesion", "found") not in disagreements(REFERENCE, REFERENCE.replace("Nodule", "Possible nodule"))


def test_score_and_summary_separate_fixes_from_breakages():
    kept, added = ReflectionItem("kept", "effusion", "confirmed."), ReflectionItem("added", "nodule", "missed.")
    missed = "Findings: Normal heart size. Moderate right pleural effusion."
    fixed = score_study(REFERENCE, missed, REFERENCE, [kept, added])
    assert fixed["draft_wrong"] == [["Lung Lesion", "found"]] and fixed["fixed"] == fixed["draft_wrong"]
    assert fixed["acted"] and not fixed["final_wrong"]
    broke = score_study(REFERENCE, REFERENCE, missed, [kept])
    assert broke["broken"] == [["Lung Lesion", "found"]] and not broke["acted"]
    left = score_study(REFERENCE, missed, missed, [kept])
    s = summarize([fixed, broke, left])
    assert s["n"] == 3 and s["draft_wrong"] == round(2 / 3, 3)
    assert s["acted_when_draft_wrong"] == 0.5 and s["all_fixed_when_draft_wrong"] == 0.5
    assert s["broke_something"] == round(1 / 3, 3) and s["acted_when_draft_right"] == 0.0
    by_own = seen_vs_unseen([fixed, left], [score_study(REFERENCE, REFERENCE, REFERENCE, [kept]),
                                            score_study(REFERENCE, missed, missed, [kept])])
    assert by_own == {"own_run_right": {"n": 1, "fixed": 1, "rate": 1.0},
                      "own_run_wrong": {"n": 1, "fixed": 0, "rate": 0.0}}


def test_forced_prefix_is_the_taught_trace_up_to_its_draft():
    study = next(generate_studies(1, seed=5))
    output, kind = build_trace(study, TraceConfig(error_rate=1.0, seed=1234))
    prefix = forced_prefix(render(output))
    assert kind is not None and prefix.endswith("</draft>\n") and "<reflection>" not in prefix
    parsed = parse(prefix)
    assert parsed.output.draft.text == output.draft.text and "reflection" in parsed.missing
