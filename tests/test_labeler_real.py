"""The findings labeler on real report text: a hand-labelled sample of IU X-Ray sentences.

The IU X-Ray reports are CC BY-NC-ND, so no sentence is committed: tests/data/iu_xray_labeler_sample.jsonl holds, per
sentence, where it lies in the release (report uid, section, character span as `split_sentences` cut it), a short
SHA-1 of its text (so a changed archive is caught, not silently mis-scored) and the labels a reader gives it (13
observations; a missing key = not mentioned; No Finding is a report-level rule and not scored on sentences). The text
is read from the torchxrayvision wheel at test time.

The sample, 294 sentences in two draws, each labelled by reading it (CheXpert conventions: 1 positive, 0 negated or
resolved, -1 hedged, "X or Y" / "X versus Y" or a finding stated only as stable; a sentence whose deciding word is an
XXXX was left out):
- draw 1 (159): 72 drawn for the phrasing the labeler got wrong ("no visualized", "not well-seen", "suspicious
  appearing", chest-wall masses, non-calcified nodules, resolved / prior findings, XXXX anonymisation, hemothorax, typos
  and markup), 78 drawn at random from the unique sentences (seed 24), 9 named by the issue that asked for this check;
- draw 2 (135, `"draw": 2`): 95 more at random (seed 2027) and 40 drawn for hedges ("versus", "differential", "question
  of"), costophrenic blunting, borderline / top-normal heart size, low lung volumes and stable or chronic findings.

    python tests/test_labeler_real.py      # accuracy on the sample and each sentence the labeler still gets wrong
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from medr2.labeler.findings import OBSERVATIONS, label_report

SAMPLE_PATH = Path(__file__).parent / "data" / "iu_xray_labeler_sample.jsonl"
SAMPLE = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
SCORED = tuple(o for o in OBSERVATIONS if o != "No Finding")


def sample_sentences(reports) -> list[tuple[dict, str]]:
    """(case, sentence text) for every case of the sample, read from the IU reports; fails on a changed archive."""
    by_uid = {r.uid: r for r in reports}
    out = []
    for case in SAMPLE:
        text = getattr(by_uid[case["uid"]], case["section"])[case["start"]:case["end"]]
        assert hashlib.sha1(text.encode()).hexdigest()[:12] == case["sha1"], f"{case['uid']} changed: not the labelled text"
        out.append((case, text))
    return out


def predicted(text: str) -> dict:
    return {o: v for o, v in label_report(text).items() if o in SCORED and v is not None}


def accuracy(pairs: list[tuple[dict, str]]) -> tuple[float, float, list[tuple[dict, str, dict]]]:
    """Share of sentences with every observation right, share of (sentence, observation) cells right, and the misses."""
    misses = [(case, text, got) for case, text in pairs if (got := predicted(text)) != case["labels"]]
    cells_wrong = sum(sum(got.get(o) != case["labels"].get(o) for o in SCORED) for case, _, got in misses)
    return 1 - len(misses) / len(pairs), 1 - cells_wrong / (len(pairs) * len(SCORED)), misses


@pytest.fixture(scope="module")
def sentences(iu_reports):
    return sample_sentences(iu_reports)


def test_sample_is_large_and_covers_the_phrasing_it_was_drawn_for():
    assert len(SAMPLE) >= 290 and len({(c["uid"], c["section"], c["start"]) for c in SAMPLE}) == len(SAMPLE)
    categories = {case["category"] for case in SAMPLE}
    assert {"no_visualized", "not_well_seen", "resolved", "prior", "xxxx", "random", "issue", "hedge", "blunting",
            "borderline", "low_volume", "chronic"} <= categories
    assert all(set(case["labels"]) <= set(SCORED) and set(case["labels"].values()) <= {1, 0, -1} for case in SAMPLE)


def test_labeler_accuracy_on_hand_labelled_real_sentences(sentences):
    # Draw 1: 131/159 sentences (82.4 %, cells 98.55 %) before the fixes for real IU phrasing; 152/159 (95.6 %, 99.66 %)
    # after. Draw 2 read 126/135 before its fixes ("in the differential", "is a possibility", "favored to represent",
    # "near top normal", "monitor leads", "increased lung markings") and 132/135 after: 284/294 (96.6 %, 99.74 %).
    sentence_acc, cell_acc, misses = accuracy(sentences)
    assert sentence_acc >= 0.96, [(c["uid"], c["labels"], got) for c, _, got in misses]
    assert cell_acc >= 0.997


@pytest.mark.parametrize("category", ["no_visualized", "not_well_seen", "appearing", "noncalcified", "blunting",
                                      "borderline", "low_volume", "chronic"])
def test_every_sampled_sentence_of_a_fixed_phrasing_is_right(sentences, category):
    wrong = [(case["uid"], text, case["labels"], got) for case, text in sentences
             if case["category"] == category and (got := predicted(text)) != case["labels"]]
    assert not wrong


# The three errors the issue names: "No visualized pneumothorax." (negative), a previously noted nodule "not
# well-seen on today's study" (not positive), an "anterior chest wall mass" (not a lung lesion).
ISSUE_CASES = {("CXR1111", "findings", 97): {"Pneumothorax": 0}, ("CXR3683", "findings", 47): {"Lung Lesion": -1},
               ("CXR1299", "impression", 0): {"Lung Opacity": 1}}


def test_the_errors_named_by_the_issue_are_fixed(sentences):
    found = {(c["uid"], c["section"], c["start"]): text for c, text in sentences}
    for key, expected in ISSUE_CASES.items():
        assert predicted(found[key]) == expected, key


if __name__ == "__main__":
    from medr2.data.datasets import iter_iu_reports_archive, locate_iu_reports_archive

    archive = locate_iu_reports_archive()
    if archive is None:
        sys.exit("IU X-Ray reports not found: install torchxrayvision --no-deps (bash scripts/setup_env.sh)")
    pairs = sample_sentences(list(iter_iu_reports_archive(archive)))
    sentence_acc, cell_acc, misses = accuracy(pairs)
    right = len(pairs) - len(misses)
    print(f"{right}/{len(pairs)} sentences right ({sentence_acc:.1%}); cells right {cell_acc:.2%}")
    for case, text, got in misses:
        print(f"  {case['uid']} {case['section']}[{case['start']}:{case['end']}] expected {case['labels']} got {got}: {text}")
