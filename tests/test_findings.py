"""Tests of the CheXpert-style findings labeler (`medr2.labeler.findings`).

The hand-labelled cases live in tests/data/labeler_cases.jsonl: one JSON object per line with `text`,
`labels` (observation -> 1 / 0 / -1; every observation not listed must be blank) and a `note`. All case
texts are written for this project (IU X-Ray style paraphrased, never copied: its licence is CC BY-NC-ND).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medr2.labeler import findings
from medr2.labeler.cli import cli_label
from medr2.labeler.findings import (
    NEGATIVE,
    OBSERVATIONS,
    OTHER_ABNORMALITY,
    POSITIVE,
    UNCERTAIN,
    Mention,
    aggregate,
    find_mentions,
    label_report,
    label_reports,
    split_sentences,
)

CASES_PATH = Path(__file__).parent / "data" / "labeler_cases.jsonl"
CASES = [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _expected(case: dict) -> dict:
    unknown = set(case["labels"]) - set(OBSERVATIONS)
    assert not unknown, f"case {case['text']!r} names unknown observations {unknown}"
    return {obs: case["labels"].get(obs) for obs in OBSERVATIONS}


def test_observations_in_chexpert_order():
    assert OBSERVATIONS == (
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
        "Fracture", "Support Devices")
    assert (POSITIVE, NEGATIVE, UNCERTAIN) == (1, 0, -1)


@pytest.mark.parametrize("case", CASES, ids=[f"{i:03d}-{c['text'][:40]}" for i, c in enumerate(CASES)])
def test_hand_labelled_case(case):
    assert label_report(case["text"]) == _expected(case), case.get("note", "")


def test_case_file_covers_every_observation_with_every_value():
    assert len(CASES) >= 150
    seen = {(obs, value) for case in CASES for obs, value in case["labels"].items()}
    for obs in OBSERVATIONS[1:]:
        for value in (POSITIVE, NEGATIVE, UNCERTAIN):
            assert (obs, value) in seen, f"no hand-labelled case gives {obs} = {value}"
    assert ("No Finding", POSITIVE) in seen
    assert not any(case["labels"].get("No Finding") == NEGATIVE for case in CASES), "No Finding is never 0"


def _m(obs: str, value: int) -> Mention:
    return Mention(obs, value, 0, 0, 1, "x")


@pytest.mark.parametrize("values, expected", [
    ([POSITIVE, NEGATIVE], POSITIVE),
    ([NEGATIVE, POSITIVE, UNCERTAIN], POSITIVE),
    ([UNCERTAIN, POSITIVE], POSITIVE),
    ([NEGATIVE, UNCERTAIN], UNCERTAIN),
    ([UNCERTAIN, NEGATIVE], UNCERTAIN),
    ([NEGATIVE, NEGATIVE], NEGATIVE),
    ([UNCERTAIN], UNCERTAIN),
])
def test_aggregation_priority(values, expected):
    labels = aggregate([_m("Pleural Effusion", v) for v in values])
    assert labels["Pleural Effusion"] == expected
    assert labels["Cardiomegaly"] is None


def test_no_finding_rules():
    assert aggregate([])["No Finding"] == POSITIVE
    assert aggregate([], empty=True)["No Finding"] is None
    assert aggregate([_m("Pneumothorax", NEGATIVE)])["No Finding"] == POSITIVE
    assert aggregate([_m("Support Devices", POSITIVE)])["No Finding"] == POSITIVE
    assert aggregate([_m("Support Devices", UNCERTAIN)])["No Finding"] == POSITIVE
    assert aggregate([_m("Fracture", UNCERTAIN)])["No Finding"] is None
    assert aggregate([_m(OTHER_ABNORMALITY, POSITIVE)])["No Finding"] is None
    assert aggregate([_m(OTHER_ABNORMALITY, UNCERTAIN)])["No Finding"] is None
    assert aggregate([_m(OTHER_ABNORMALITY, NEGATIVE)])["No Finding"] == POSITIVE
    assert OTHER_ABNORMALITY not in aggregate([_m(OTHER_ABNORMALITY, POSITIVE)])


@pytest.mark.parametrize("text", ["Emphysema.", "Calcified granuloma.", "Thoracic scoliosis.", "Hiatal hernia.",
                                  "Aortic calcification.", "Hyperinflated lungs.", "Degenerative changes of the spine.",
                                  "COPD.", "Tortuous aorta.", "Elevated right hemidiaphragm."])
def test_other_abnormalities_veto_no_finding(text):
    labels = label_report(f"{text} Lungs are clear. No pneumothorax.")
    assert labels["No Finding"] is None and labels["Pneumothorax"] == NEGATIVE
    assert any(m.observation == OTHER_ABNORMALITY for m in find_mentions(text, include_other=True))


_WORDS = ["no", "not", "possible", "may", "represent", "without", "right", "left", "small", "large", "heart",
          "enlarged", "cardiomegaly", "effusion", "pleural", "pneumothorax", "edema", "consolidation", "nodule",
          "atelectasis", "opacity", "fracture", "rib", "tube", "pacemaker", "lungs", "clear", "normal", "and", "or",
          ".", ",", ";", "\n"]


@given(st.lists(st.sampled_from(_WORDS), max_size=30).map(" ".join))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_labels_of_arbitrary_text_keep_the_chexpert_invariants(text):
    """Every key in CheXpert order, values 1 / 0 / -1 / blank, and No Finding = 1 exactly when the text is not
    blank and states nothing present or hedged except support devices (these words name no other abnormality)."""
    labels = label_report(text)
    assert list(labels) == list(OBSERVATIONS)
    assert set(labels.values()) <= {None, POSITIVE, NEGATIVE, UNCERTAIN}
    stated = {obs for obs, value in labels.items() if value in (POSITIVE, UNCERTAIN)} - {"No Finding", "Support Devices"}
    assert labels["No Finding"] == (POSITIVE if text.strip() and not stated else None), labels


def test_mention_spans_point_into_the_original_text():
    text = "FINDINGS: No pneumothorax. Small LEFT pleural effusion.\n\nIMPRESSION: possible pneumonia."
    mentions = find_mentions(text)
    assert [(m.observation, m.value, m.sentence_index) for m in mentions] == [
        ("Pneumothorax", NEGATIVE, 0), ("Pleural Effusion", POSITIVE, 1), ("Pneumonia", UNCERTAIN, 2)]
    sentences = split_sentences(text)
    for m in mentions:
        assert text[m.start:m.end] == m.phrase
        s, e = sentences[m.sentence_index]
        assert s <= m.start < m.end <= e
    assert mentions[1].phrase == "effusion"


def test_mention_spans_survive_case_folding_that_changes_length():
    text = "İİ note. Small right pleural effusion."  # 'İ'.lower() is two characters
    (m,) = find_mentions(text)
    assert text[m.start:m.end] == m.phrase == "effusion"


def test_repeated_sentence_gets_its_own_offsets():
    text = "No pneumothorax. Heart normal. No pneumothorax."
    starts = [m.start for m in find_mentions(text) if m.observation == "Pneumothorax"]
    assert starts == [3, text.rindex("pneumothorax")]


def test_one_phrase_can_mention_two_observations():
    mentions = find_mentions("Right hydropneumothorax.")
    assert {m.observation for m in mentions} == {"Pneumothorax", "Pleural Effusion"}
    assert len({(m.start, m.end) for m in mentions}) == 1


def test_include_other_adds_other_abnormalities():
    text = "Emphysema. No effusion."
    assert [m.observation for m in find_mentions(text)] == ["Pleural Effusion"]
    assert [m.observation for m in find_mentions(text, include_other=True)] == [OTHER_ABNORMALITY, "Pleural Effusion"]


def test_uppercase_reports():
    assert label_report("NO PNEUMOTHORAX. MILD CARDIOMEGALY.")["Cardiomegaly"] == POSITIVE
    assert label_report("NO PNEUMOTHORAX. MILD CARDIOMEGALY.")["Pneumothorax"] == NEGATIVE


@pytest.mark.parametrize("text, expected", [
    ("One. Two.", ["One.", "Two."]),
    ("Nodule measures 2.5 cm. Next.", ["Nodule measures 2.5 cm.", "Next."]),
    ("Atelectasis vs. scarring. Next.", ["Atelectasis vs. scarring.", "Next."]),
    ("1. Chest. 2. No effusion.", ["1. Chest.", "2. No effusion."]),
    ("1. Effusion versus thickening 2. Opacity.", ["1. Effusion versus thickening", "2. Opacity."]),
    ("Heart normal.No effusion", ["Heart normal.", "No effusion"]),
    ("Findings:\n\nLungs clear\n\nImpression: normal", ["Findings:", "Lungs clear", "Impression: normal"]),
    ("  ", []),
    ("", []),
])
def test_split_sentences(text, expected):
    assert [text[s:e] for s, e in split_sentences(text)] == expected


def test_batch_api_matches_single_calls():
    texts = [case["text"] for case in CASES[:30]]
    assert label_reports(texts) == [label_report(t) for t in texts]
    assert label_reports(t for t in texts[:3]) == [label_report(t) for t in texts[:3]]
    assert label_reports([]) == []


def test_missing_and_wrong_types():
    assert label_report(None) == dict.fromkeys(OBSERVATIONS)  # a missing report states nothing
    with pytest.raises(TypeError, match="report must be str"):
        label_report(3.5)


def _write_reports(path: Path, reports: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for report in reports:
            writer.writerow([report])


def test_cli_is_a_chexpert_labeler_drop_in(tmp_path, capsys):
    reports = ["No pneumothorax, effusion, or consolidation.", "Cardiomegaly, possible pneumonia.", "",
               'Small left pleural effusion; "quoted" text.']
    src, out = tmp_path / "reports.csv", tmp_path / "labeled.csv"
    _write_reports(src, reports)
    assert cli_label(["--reports_path", str(src), "--output_path", str(out)]) == 0
    header, *rows = list(csv.reader(out.open(encoding="utf-8")))
    assert header == ["Reports", *OBSERVATIONS]
    assert [row[0] for row in rows] == [r for r in reports if r]  # blank rows skipped, as pandas does
    first = dict(zip(header, rows[0]))
    assert (first["No Finding"], first["Pneumothorax"], first["Pleural Effusion"], first["Consolidation"]) == \
        ("1.0", "0.0", "0.0", "0.0")
    assert first["Cardiomegaly"] == ""
    second = dict(zip(header, rows[1]))
    assert (second["Cardiomegaly"], second["Pneumonia"], second["No Finding"]) == ("1.0", "-1.0", "")
    assert all(v in {"", "1.0", "0.0", "-1.0"} for row in rows for v in row[1:])
    assert "labelled 3 reports" in capsys.readouterr().out


def test_cli_through_the_medr2_entry_point(tmp_path):
    from medr2.cli import main

    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    _write_reports(src, ["Endotracheal tube in place."])
    assert main(["label", "--reports_path", str(src), "--output_path", str(out)]) == 0
    assert out.read_text(encoding="utf-8").splitlines()[1].endswith(",1.0")


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert cli_label(["--reports_path", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.csv" in err
    assert cli_label([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reports_path" in err


def test_phrase_tables_compile_and_name_known_observations():
    spec = json.loads(findings.PHRASES_PATH.read_text(encoding="utf-8"))
    named = {obs for group in spec["mentions"] for obs in group["observations"]}
    assert named == set(OBSERVATIONS) - {"No Finding"}
    assert {group["kind"] for group in spec["mentions"]} <= {"disease", "anatomy", "hedged"}
    tables = findings.phrase_tables()
    assert tables.mention_re.groups == 0  # capturing groups would disable re's first-character skipping


def test_iu_xray_reports_smoke(iu_reports):
    texts = [r.text for r in iu_reports]
    assert len(texts) > 3000
    labels = label_reports(texts)
    n = len(labels)
    rate = {obs: sum(lab[obs] == POSITIVE for lab in labels) / n for obs in OBSERVATIONS}
    assert 0.2 < rate["No Finding"] < 0.6, rate
    assert rate["Cardiomegaly"] > 0.03, rate
    for obs in OBSERVATIONS:
        assert rate[obs] < 0.5, (obs, rate[obs])
    for obs in ("Pleural Effusion", "Pneumothorax", "Lung Opacity", "Atelectasis", "Support Devices"):
        assert rate[obs] > 0.005, (obs, rate[obs])
    # Pertinent negatives dominate normal reports.
    assert sum(lab["Pneumothorax"] == NEGATIVE for lab in labels) / n > 0.4
    for text in texts[:300]:
        for m in find_mentions(text):
            assert text[m.start:m.end] == m.phrase
