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
