"""Knowledge base and Med-R2 training traces built from phantom ground truth."""
from __future__ import annotations

import collections

import pytest

from medr2.evaluation.rewards import format_reward, medr2_format_ok
from medr2.labeler.findings import OBSERVATIONS, label_report
from medr2.phantom.generator import OBSERVATION_OF, generate_studies
from medr2.report import knowledge
from medr2.report.schema import parse
from medr2.report.traces import SIGNS, TraceConfig, build_trace, direct_target, medr2_target, region_of


@pytest.fixture(scope="module")
def studies():
    return list(generate_studies(240, seed=11))


def test_perception_tree_in_reading_order_and_valid():
    names = [r.name for r in knowledge.perception_tree()]
    assert names[:2] == ["heart", "mediastinum"]
    order = ["right lung", "left lung", "pleura", "bones", "devices"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    assert all(obs in OBSERVATIONS for r in knowledge.perception_tree() for obs in r.findings)


def test_every_drawn_kind_has_a_sign_and_a_known_rule():
    assert set(OBSERVATION_OF) <= set(SIGNS), f"kinds without a sign: {set(OBSERVATION_OF) - set(SIGNS)}"
    for kind, (_, _, _, rule_id) in SIGNS.items():
        rule = knowledge.rule(rule_id)
        assert rule is not None, f"{kind}: unknown rule {rule_id}"
        if kind in OBSERVATION_OF and rule_id != "device_visible":
            assert rule.observation == OBSERVATION_OF[kind], f"{kind}: rule {rule_id} is about {rule.observation}"


def test_prompt_text_cites_every_rule():
    text = knowledge.prompt_knowledge_text()
    assert all(rule_id in text for rule_id in knowledge.rules())
    assert knowledge.rule("no_such_rule") is None


def test_traces_parse_cleanly_and_end_in_the_ground_truth_report(studies):
    for study in studies:
        text = medr2_target(study, TraceConfig(error_rate=0.3))
        parsed = parse(text)
        assert not parsed.problems, (study.study_id, parsed.problems)
        assert medr2_format_ok(text)
        assert parsed.output.report.text == f"Findings: {study.findings_text} Impression: {study.impression_text}"
        rules_used = [s.rule_id for s in parsed.output.reasoning]
        assert all(knowledge.rule(r) for r in rules_used)


def _stated(labels: dict) -> set[str]:
    return {k for k, v in labels.items() if v in (1, -1) and k != "No Finding"}


def test_error_rate_and_reflection_fix_the_draft(studies):
    kinds = collections.Counter()
    for study in studies:
        output, error = build_trace(study, TraceConfig(error_rate=0.3))
        kinds[error] += 1
        actions = {r.action for r in output.reflection}
        if error is None:
            assert actions == {"kept"}
            assert output.draft == output.report
            continue
        assert actions - {"kept"}, f"{study.study_id}: error {error} but reflection only confirms"
        assert output.draft != output.report, f"{study.study_id}: error {error} but the draft equals the report"
        devices = any(f.kind in ("ett", "central_line", "ng_tube", "pacemaker", "sternotomy") for f in study.findings)
        if error in ("missed", "hallucinated") and not devices:
            changed = _stated(label_report(output.draft.text)) != _stated(label_report(output.report.text))
            same_obs = sum(f.observation == output.reflection[-1].target for f in study.findings) > 1
            assert changed or error == "hallucinated" or same_obs, f"{study.study_id}: {error} left the labels unchanged"
    n_err = sum(v for k, v in kinds.items() if k)
    assert 0.2 < n_err / len(studies) < 0.4, kinds
    assert {"missed", "hallucinated", "wrong_side"} <= set(kinds), kinds


def test_trace_is_a_function_of_study_and_seed(studies):
    """Same study and seed: the same trace, whatever ran before; another seed injects other draft errors."""
    cfg, other = TraceConfig(error_rate=0.5, seed=4), TraceConfig(error_rate=0.5, seed=5)
    first = [medr2_target(s, cfg) for s in studies[:40]]
    medr2_target(studies[40], other)  # a call in between must not shift the next ones
    assert [medr2_target(s, cfg) for s in studies[:40]] == first
    assert [medr2_target(s, other) for s in studies[:40]] != first


def test_perception_names_the_side_and_zone_of_lung_findings(studies):
    for study in studies:
        output, error = build_trace(study, TraceConfig(error_rate=0.0))
        regions = [p.region for p in output.perception]
        for f in study.findings:
            if f.kind in ("nodule", "consolidation", "atelectasis", "opacity") and f.side in ("right", "left"):
                assert region_of(f) in regions
                zones = f.details.get("zones")  # the consolidation paired with a multifocal pneumonia
                expected = f"{', '.join(zones[:-1])} and {zones[-1]} zones" if zones else f"{f.zone} zone"
                assert region_of(f) == f"{f.side} lung, {expected}"


def test_direct_target_is_the_report_alone(studies):
    text = direct_target(studies[0])
    assert text.startswith("<report>") and text.rstrip().endswith("</report>")
    assert "<think>" not in text
    assert format_reward([text]) == [0.0]  # no thinking: the MRG-R1 format does not apply


def test_trace_config_validates():
    with pytest.raises(ValueError, match="error_rate"):
        TraceConfig(error_rate=1.5)
