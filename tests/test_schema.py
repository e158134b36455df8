"""Med-R2 output schema: exact rendering, tolerant parsing, streaming prefixes, round trips."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from medr2.report.schema import (
    SECTIONS,
    MedR2Output,
    PerceptionItem,
    ReasoningStep,
    ReflectionItem,
    Report,
    extract_report,
    parse,
    render,
    render_direct,
    report_for_scoring,
    section_body,
)

EXAMPLE = """<think>
<perception>
heart: cardiothoracic ratio about 0.46, normal heart size.
right lung, lower zone: homogeneous opacity with a meniscus, costophrenic angle blunted.
</perception>
<reasoning>
blunted right costophrenic angle with meniscus -> small right pleural effusion [rule: effusion_meniscus]
normal cardiothoracic ratio -> no cardiomegaly
</reasoning>
<draft>
Findings: Small right pleural effusion. Impression: Small right effusion.
</draft>
<reflection>
kept: pleural effusion - re-checked the right base, meniscus confirmed.
added: pneumothorax - re-inspected the left apex, visceral pleural line without markings peripheral to it.
</reflection>
</think>
<report>
Findings: Small right pleural effusion. Small left apical pneumothorax. Impression: Effusion and pneumothorax.
</report>"""


def test_parse_example_into_dataclasses():
    result = parse(EXAMPLE)
    out = result.output
    assert out.perception[1] == PerceptionItem("right lung, lower zone",
                                               "homogeneous opacity with a meniscus, costophrenic angle blunted.")
    assert out.reasoning[0] == ReasoningStep("blunted right costophrenic angle with meniscus",
                                             "small right pleural effusion", "effusion_meniscus")
    assert out.reasoning[1] == ReasoningStep("normal cardiothoracic ratio", "no cardiomegaly", None)
    assert out.draft == Report("Small right pleural effusion.", "Small right effusion.")
    assert out.reflection[1].action == "added" and out.reflection[1].target == "pneumothorax"
    assert out.report.impression == "Effusion and pneumothorax."
    assert result.complete_sections == ["perception", "reasoning", "draft", "reflection", "think", "report"]
    assert result.missing == [] and result.problems == [] and result.partial_section is None


def test_section_body_reads_one_closed_section_as_parse_does():
    assert section_body(EXAMPLE, "draft") == "Findings: Small right pleural effusion. Impression: Small right effusion."
    assert section_body(EXAMPLE, "draft") == parse(EXAMPLE).output.draft.text
    # a look loop's prefix: the draft is closed, the reflection is not
    prefix = EXAMPLE[:EXAMPLE.index("<reflection>") + len("<reflection>\n")]
    assert section_body(prefix, "draft") == section_body(EXAMPLE, "draft")
    assert section_body(prefix, "reflection") is None
    assert section_body("<draft>no end", "draft") is None


def test_render_is_exact_and_round_trips_example():
    assert render(parse(EXAMPLE).output) == EXAMPLE


def test_free_text_lines_are_kept_not_dropped():
    text = ("<think><perception>\nheart: normal\nlooked everywhere carefully\n</perception>\n<reasoning>\n"
            "I think it is fine\n</reasoning><reflection>\nnothing changed\nKEPT: heart - fine\n</reflection></think>")
    result = parse(text)
    out = result.output
    assert out.perception == [PerceptionItem("heart", "normal"), PerceptionItem(None, "looked everywhere carefully")]
    assert out.reasoning == [ReasoningStep("I think it is fine")]
    assert out.reflection == [ReflectionItem(None, None, "nothing changed"), ReflectionItem("kept", "heart", "fine")]
    assert any("<perception>" in p and "free text" in p for p in result.problems)
    assert result.missing == ["draft", "report"]


def test_streamed_prefixes_yield_completed_sections_and_partial_text():
    cut = EXAMPLE.index("right lung, lower zone")
    result = parse(EXAMPLE[:cut + 10])
    assert result.complete_sections == []
    assert result.partial_section == "perception"
    assert result.partial_text.endswith("right lung")
    cut = EXAMPLE.index("</reflection>") + 3  # "</r" dangling: a tag still being streamed
    result = parse(EXAMPLE[:cut])
    assert result.complete_sections == ["perception", "reasoning", "draft"]
    assert result.partial_section == "reflection" and not result.partial_text.endswith("<")
    assert result.output.report is None
    assert result.output.final_report_or_draft() == Report("Small right pleural effusion.", "Small right effusion.")


def test_every_prefix_parses_monotonically():
    previous: list[str] = []
    for end in range(0, len(EXAMPLE) + 1, 7):
        done = parse(EXAMPLE[:end]).complete_sections
        assert done[: len(previous)] == previous, f"sections un-completed at prefix {end}"
        previous = done
    assert len(parse(EXAMPLE).complete_sections) == len(SECTIONS)


def test_malformed_inputs_report_problems_instead_of_raising():
    cases = {
        "": "no Med-R2 tags found",
        "</report>": "has no matching",
        "<report>a</report><report>b</report>": "more than once",
        "<think><perception>x</think><report>r</report>": "not closed before </think>",
        "<think><reasoning>a -> b</reasoning><perception>h: x</perception></think>": "out of order",
        "<think></think>junk<report>r</report>": "outside the sections",
        "<report>r</report><think></think>": "does not come after",
    }
    for text, expected in cases.items():
        problems = parse(text).problems
        assert any(expected in p for p in problems), (text, problems)
    assert parse("<report>a</report><report>b</report>").output.report == Report("a")


_PIECES = list("<>/ \nabc:-[]") + [f"<{s}>" for s in SECTIONS] + [f"</{s}>" for s in SECTIONS]


@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
@settings(max_examples=300, deadline=None)
def test_parse_never_raises_on_arbitrary_text(text):
    result = parse(text)
    assert set(result.missing) | set(result.complete_sections) == set(SECTIONS)


def test_parse_tolerates_non_string():
    assert parse(None).output == MedR2Output()  # type: ignore[arg-type]


def test_report_parse_is_tolerant():
    assert Report.parse("No acute disease.") == Report("No acute disease.", "")
    assert Report.parse("FINDINGS: Lungs clear.\nIMPRESSION: Normal.") == Report("Lungs clear.", "Normal.")
    assert Report.parse("Impression: Normal.") == Report("", "Normal.")
    assert Report("Lungs clear.", "Normal.").text == "Findings: Lungs clear. Impression: Normal."
    assert Report("", "").text == ""


def test_render_direct_is_only_the_report_section():
    text = render_direct(Report("Lungs clear.", "Normal."))
    assert text == "<report>\nFindings: Lungs clear. Impression: Normal.\n</report>"
    assert parse(text).complete_sections == ["report"] and "think" in parse(text).missing


def test_extract_report_rejects_injection_truncation_and_empty():
    assert extract_report(EXAMPLE)[0].startswith("Findings: Small right pleural effusion.")
    rejected = [
        "<think>x</think><report></report><report>Pneumothorax</report>",
        "<think>x</think><report>Pneumothorax <think>y</think></report>",
        "<think>x</think><report>   </report>",
        "<think>x</think><report>Findings: effusion",
        "Findings: effusion",
    ]
    for text in rejected:
        report, reason = extract_report(text)
        assert report is None and reason, text
    assert extract_report("Findings: effusion", allow_untagged=True) == ("Findings: effusion", "")


def test_report_for_scoring_prefers_report_then_draft_then_plain_text():
    assert report_for_scoring(EXAMPLE).startswith("Findings: Small right pleural effusion. Small left")
    assert report_for_scoring(EXAMPLE[: EXAMPLE.index("<reflection>")]) == (
        "Findings: Small right pleural effusion. Impression: Small right effusion.")
    assert report_for_scoring("  plain report. ") == "plain report."


# ---------------------------------------------------------------- property: render(parse(render(x)))
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,;()%'/", min_size=1, max_size=8)


def _phrase(alphabet_word=_word, max_words=6):
    return st.lists(alphabet_word, min_size=1, max_size=max_words).map(" ".join)


_dashy = _phrase(st.text(alphabet="abcdefghij.,-", min_size=1, max_size=6))  # "-" allowed but never " - "
_perception = st.one_of(
    st.builds(PerceptionItem, _phrase(max_words=4), _phrase()),
    st.builds(PerceptionItem, st.none(), _phrase()),
)
_reasoning = st.one_of(
    st.builds(ReasoningStep, _phrase(), _phrase(), st.one_of(st.none(), st.from_regex(r"[a-z_]{1,12}", fullmatch=True))),
    st.builds(ReasoningStep, _phrase()),
)
_reflection = st.one_of(
    st.builds(ReflectionItem, st.sampled_from(["kept", "revised", "removed", "added"]),
              _dashy.filter(lambda s: " -" not in s and "- " not in s), st.one_of(st.just(""), _phrase())),
    st.builds(ReflectionItem, st.none(), st.none(), _phrase()),
)
_report = st.builds(Report, st.one_of(st.just(""), _phrase()), st.one_of(st.just(""), _phrase()))
_outputs = st.builds(
    MedR2Output,
    st.lists(_perception, max_size=4),
    st.lists(_reasoning, max_size=4),
    st.one_of(st.none(), _report),
    st.lists(_reflection, max_size=4),
    st.one_of(st.none(), _report),
)


@given(_outputs)
@settings(max_examples=200, deadline=None)
def test_render_parse_round_trip(output):
    text = render(output)
    parsed = parse(text).output
    assert parsed == output
    assert render(parsed) == text


# ---------------------------------------------------------------- prompted mode: off-schema answers of real models
# What general instruct models answer when asked for the schema, written in their styles (MedGemma and Qwen-VL answer
# with markdown, LLaVA-Med with plain prose, reasoning models with their own <think> block or a \boxed{} answer):
# (answer, findings, impression, positive observations of the report, lines of the reasoning panel).
OFF_SCHEMA = [
    ("The heart size is normal. There is a small right pleural effusion. No pneumothorax is seen.",  # report only
     "The heart size is normal. There is a small right pleural effusion. No pneumothorax is seen.", "",
     {"Pleural Effusion"}, 0),
    ("## Chest X-ray Report\n\n### Findings\n- The cardiac silhouette is enlarged.\n- Small left pleural effusion\n\n"
     "### Impression\nCardiomegaly with a small left pleural effusion.",  # markdown headings and bullets
     "The cardiac silhouette is enlarged. Small left pleural effusion.",
     "Cardiomegaly with a small left pleural effusion.", {"Cardiomegaly", "Pleural Effusion"}, 0),
    ("**Technique:** PA and lateral views of the chest.\n\n**Findings:**\n* Lungs: Right lower lobe consolidation.\n"
     "* Heart: Normal size.\n\n**Impression:** Right lower lobe pneumonia.",  # bold headings; technique left out
     "Lungs: Right lower lobe consolidation. Heart: Normal size.", "Right lower lobe pneumonia.",
     {"Consolidation", "Pneumonia"}, 0),
    ("FINDINGS:\n1. Right lower lobe consolidation\n2. No pleural effusion\n3. No pneumothorax\n\nIMPRESSION:\n"
     "1. Right lower lobe pneumonia.",  # upper-case headers, numbered lists
     "Right lower lobe consolidation. No pleural effusion. No pneumothorax.", "Right lower lobe pneumonia.",
     {"Consolidation", "Pneumonia"}, 0),
    ("FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. IMPRESSION: No acute cardiopulmonary "
     "abnormality.",  # one line, upper case
     "The lungs are clear. No pleural effusion or pneumothorax.", "No acute cardiopulmonary abnormality.", set(), 0),
    ("<report>\nFindings: Moderate cardiomegaly. Mild pulmonary edema.\nImpression: Cardiomegaly with mild edema.",
     "Moderate cardiomegaly. Mild pulmonary edema.", "Cardiomegaly with mild edema.",  # closing tag missing
     {"Cardiomegaly", "Edema"}, 0),
    ("<think>\n<report>\nFindings: Left apical pneumothorax.\nImpression: Left pneumothorax.\n</think>",
     "Left apical pneumothorax.", "Left pneumothorax.", {"Pneumothorax"}, 0),  # </report> never written
    ("<think>\nOkay, let me look at this radiograph. The right costophrenic angle is blunted with a meniscus.\n"
     "That suggests a small effusion. The heart is not enlarged.\n</think>\n\nFindings: Small right pleural "
     "effusion. Normal heart size.\nImpression: Small right pleural effusion.",  # another model's thinking
     "Small right pleural effusion. Normal heart size.", "Small right pleural effusion.", {"Pleural Effusion"}, 2),
    ("The film shows a thin pleural line at the left apex with no lung markings beyond it.\n\nFinal answer: "
     "$\\boxed{\\text{Findings: Left apical pneumothorax. Impression: Left pneumothorax.}}$",  # \boxed{} answer
     "Left apical pneumothorax.", "Left pneumothorax.", {"Pneumothorax"}, 1),
    ("Here is the radiology report:\n\nThe lungs are hyperinflated. There is a 1 cm nodule in the right upper lobe.\n"
     "Conclusion: Right upper lobe nodule; CT recommended.",  # a lead-in line, "Conclusion" as the impression
     "The lungs are hyperinflated. There is a 1 cm nodule in the right upper lobe.",
     "Right upper lobe nodule; CT recommended.", {"Lung Lesion"}, 0),
]


def test_off_schema_answers_of_real_models_reach_the_right_panels():
    from medr2.evaluation.rewards import format_reward, medr2_format_reward
    from medr2.labeler.findings import label_report

    for text, findings, impression, positives, n_reasoning in OFF_SCHEMA:
        result = parse(text)
        assert result.output.report == Report(findings, impression), text
        labels = label_report(result.output.report.text)
        assert {k for k, v in labels.items() if v == 1 and k != "No Finding"} == positives, (text, labels)
        assert len(result.output.reasoning) == n_reasoning and all(s.conclusion is None for s in result.output.reasoning)
        assert result.output.perception == [] and result.output.draft is None and result.output.reflection == []
        # still a format failure: the strict readers refuse it, so rewards and the failure rate do not change
        assert "report" in result.missing and any("no closed <report>" in p for p in result.problems)
        assert extract_report(text)[0] is None
        assert format_reward([text]) == [0.0] and medr2_format_reward([text]) == [0.0]


def test_a_refusal_or_chatter_is_not_read_as_a_normal_report():
    """The labeler calls a text with no finding "No Finding": a refusal read as a report would be a normal study."""
    for text in ("I'm sorry, but I cannot provide a diagnosis from this chest X-ray. Please consult a radiologist.",
                 "As an AI, I am unable to interpret medical images.", "Hello! How can I help you today?",
                 "<think>\nThe user wants a report.\n</think>\nI can't help with that.", "Findings: nothing"):
        result = parse(text)
        assert result.output.report is None and "report" in result.missing, text
        assert any("not a chest radiograph report" in p for p in result.problems)


def test_a_med_r2_trace_is_never_read_as_off_schema_text():
    """Truncated inside <report> or still streaming, a trace keeps its draft as the fallback and its prefixes grow."""
    truncated = EXAMPLE[: EXAMPLE.index("Small left apical")]
    result = parse(truncated)
    assert result.output.report is None and result.output.final_report_or_draft() == Report(
        "Small right pleural effusion.", "Small right effusion.")
    assert parse("<think>\nOkay, let me look at the right base").output.report is None  # another model, still thinking


def test_evaluation_scores_off_schema_reports_and_reports_each_models_format_failure_rate():
    from types import SimpleNamespace

    from medr2.evaluation.evaluate import summarize
    from medr2.labeler.findings import label_report

    def result(text):
        out = parse(text).output
        return SimpleNamespace(output=out, raw_text=text, n_tokens=10, timings={"generate_s": 0.1},
                               final_labels=label_report(out.report.text) if out.report else None, draft_labels=None)

    references = [Report(f, i).text for _, f, i, _, _ in OFF_SCHEMA]
    prompted = summarize([result(t) for t, *_ in OFF_SCHEMA], references, nlg=False)
    assert prompted["format"]["medr2_format_failure_rate"] == 1.0 and prompted["format"]["missing_report_rate"] == 0.0
    assert prompted["final"]["example-14"]["f1"] == 1.0  # every report read, so it is scored against its reference
    trained = summarize([result(f"<think>read.</think><report>{r}</report>") for r in references], references, nlg=False)
    assert trained["format"]["mrg_r1_format_failure_rate"] == 0.0 and prompted["format"]["mrg_r1_format_failure_rate"] == 1.0
