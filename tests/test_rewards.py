"""Rewards with hand-written completions: valid, malformed, empty, truncated, tag-injected, conversational."""
from __future__ import annotations

import math
import pickle

import pytest

from medr2.evaluation import metrics, rewards
from medr2.evaluation.rewards import (
    REWARDS,
    format_reward,
    get_reward_funcs,
    make_ce_f1_reward,
    make_combined_reward,
    make_mccs_reward,
    mccs,
    medr2_format_reward,
)
from medr2.labeler import findings

THINK = ("<think>\n<perception>\nright lung, lower zone: meniscus, blunted costophrenic angle.\n</perception>\n"
         "<reasoning>\nblunted angle with meniscus -> pleural effusion [rule: effusion_meniscus]\n</reasoning>\n"
         "<draft>\nFindings: Right pleural effusion.\n</draft>\n<reflection>\nkept: pleural effusion - meniscus "
         "confirmed.\n</reflection>\n</think>")
EFFUSION = "Findings: Large right pleural effusion. No pneumothorax."
VALID = f"{THINK}\n<report>\n{EFFUSION}\n</report>"
MRG_ONLY = f"<think>\nthe right base is blunted\n</think>\n<report>\n{EFFUSION}\n</report>"

BAD = {
    "empty": "",
    "tag_only": "<think></think><report></report>",
    "blank_report": f"{THINK}<report>   </report>",
    "injected_twice": f"{THINK}<report></report><report>{EFFUSION}</report>",
    "injected_nested": f"{THINK}<report>{EFFUSION} <think>x</think></report>",
    "truncated": VALID[: VALID.index("</report>")],
    "truncated_in_think": VALID[:100],
    "untagged": EFFUSION,
}
# Wrong form around a well-delimited report: the format rewards give 0; MCCS still judges the content
# (form is the format reward's job; the two are summed).
BAD_FORM_ONLY = {
    "preamble": f"Sure, here it is: {VALID}",
    "trailing": f"{VALID} Anything else?",
    "two_thinks": f"{THINK}{THINK}<report>{EFFUSION}</report>",
    "upper_case": VALID.replace("<report>", "<REPORT>").replace("</report>", "</REPORT>"),
}


def vec(**labels: int) -> dict:
    out = {obs: None for obs in findings.OBSERVATIONS}
    out.update({name.replace("_", " "): v for name, v in labels.items()})
    return out


# ---------------------------------------------------------------- MCCS arithmetic
def test_mccs_by_hand():
    gen = vec(Pleural_Effusion=1, Pneumothorax=0)  # [+1, -1]
    ref = vec(Pleural_Effusion=1)  # [+1, 0]
    ccs = 1 / math.sqrt(2)  # (1*1 + -1*0) / (sqrt(2) * 1)
    assert mccs(gen, ref, margin=0.0) == pytest.approx(ccs)
    assert mccs(gen, ref, margin=0.5) == pytest.approx((ccs - 0.5) / 0.5)
    assert mccs(gen, ref, margin=0.8) == 0.0  # below the margin: clipped
    assert mccs(gen, vec(Pleural_Effusion=1, Pneumothorax=1), margin=0.0) == 0.0  # cos 0
    assert mccs(gen, gen) == 1.0


def test_mccs_ignores_no_finding_and_handles_uncertain_and_empty():
    assert mccs(vec(No_Finding=1), vec(No_Finding=1)) == 1.0  # both vectors zero -> both_empty
    assert mccs(vec(No_Finding=1), vec(No_Finding=1), both_empty=0.5) == 0.5
    assert mccs(vec(), vec(Edema=1)) == 0.0  # one zero -> one_empty
    assert mccs(vec(Edema=-1), vec(Edema=1), uncertain_value=1.0) == 1.0
    assert mccs(vec(Edema=-1), vec(Edema=1), uncertain_value=0.0) == 0.0  # gen vector becomes zero
    assert mccs(vec(Edema=-1), vec(Edema=0), uncertain_value=-1.0, margin=0.0) == 1.0


# ---------------------------------------------------------------- MCCS reward on completions
def test_mccs_reward_valid_and_conversational_forms():
    f = make_mccs_reward()
    completions = [
        VALID,
        MRG_ONLY,
        [{"role": "assistant", "content": VALID}],
        [{"role": "assistant", "content": [{"type": "text", "text": VALID[:50]}, {"type": "image"},
                                           {"type": "text", "text": VALID[50:]}]}],
    ]
    assert f(completions, report=[EFFUSION] * 4) == [1.0, 1.0, 1.0, 1.0]


def test_mccs_reward_matches_the_labels():
    ref = "Small right pleural effusion. Mild cardiomegaly."
    got = make_mccs_reward(margin=0.0)([VALID], report=[ref])[0]
    expected = mccs(findings.label_report(EFFUSION), findings.label_report(ref), margin=0.0)
    # generated (effusion +1, pneumothorax -1) vs reference (effusion +1, cardiomegaly +1): cos = 1 / (sqrt 2 sqrt 2)
    assert got == pytest.approx(expected) and got == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_completions_get_zero_from_every_reward(name):
    completion = BAD[name]
    refs = [EFFUSION]
    assert make_mccs_reward()([completion], report=refs) == [0.0], name
    assert make_ce_f1_reward()([completion], report=refs) == [0.0], name
    assert format_reward([completion]) == [0.0], name
    assert medr2_format_reward([completion]) == [0.0], name
    assert make_combined_reward()([completion], report=refs) == [0.0], name


@pytest.mark.parametrize("name", sorted(BAD_FORM_ONLY))
def test_badly_formed_but_delimited_reports_lose_only_the_format_reward(name):
    completion = BAD_FORM_ONLY[name]
    assert format_reward([completion]) == [0.0] and medr2_format_reward([completion]) == [0.0]
    assert make_mccs_reward()([completion], report=[EFFUSION]) == [1.0]
    assert make_combined_reward()([completion], report=[EFFUSION]) == [0.75]


def test_untagged_completions_can_be_allowed():
    assert make_mccs_reward(allow_untagged=True)([EFFUSION], report=[EFFUSION]) == [1.0]
    assert make_mccs_reward(allow_untagged=True)([BAD["truncated"]], report=[EFFUSION]) == [0.0]


def test_injection_cannot_farm_the_both_empty_case():
    # A reference with no labelled observation would give an empty generated report both_empty = 1.
    ref = "Degenerative changes of the spine."
    assert make_mccs_reward()([BAD["injected_twice"], BAD["tag_only"]], report=[ref, ref]) == [0.0, 0.0]


def test_missing_references():
    f = make_mccs_reward()
    assert f([VALID, VALID], report=[EFFUSION, None]) == [1.0, None]
    assert f([VALID], report=[""]) == [None]
    with pytest.raises(ValueError, match="column named `report`"):
        f([VALID])
    with pytest.raises(ValueError, match="one reference per completion"):
        f([VALID, VALID], report=[EFFUSION])


# ---------------------------------------------------------------- format rewards
@pytest.mark.parametrize("text, mrg, medr2", [
    (VALID, 1.0, 1.0),
    (MRG_ONLY, 1.0, 0.0),
    ("  \n" + VALID + "\n\n", 1.0, 1.0),
    (VALID.replace("<reasoning>", "<tmp>").replace("</reasoning>", "</tmp>"), 1.0, 0.0),  # section missing
    (VALID.replace("Findings: Right pleural effusion.", " "), 1.0, 0.0),  # empty draft
    (THINK.replace("<draft>", "<x>").replace("</draft>", "</x>").replace("<perception>", "<draft>")
     .replace("</perception>", "</draft>").replace("<x>", "<perception>").replace("</x>", "</perception>")
     + f"<report>{EFFUSION}</report>", 1.0, 0.0),  # out of order
    (f"{THINK}<report>{EFFUSION}</report>".replace("</reflection>", "</reflection><draft>d</draft>"), 0.0, 0.0),
])
def test_format_rewards(text, mrg, medr2):
    assert format_reward([text]) == [mrg]
    assert medr2_format_reward([text]) == [medr2]


# ---------------------------------------------------------------- CE-F1, combined, registry
def test_ce_f1_reward_is_the_metric():
    refs = ["Right pleural effusion. Mild cardiomegaly.", "No acute disease.", EFFUSION]
    got = make_ce_f1_reward()([VALID] * 3, report=refs)
    gen = findings.label_report(EFFUSION)
    for value, ref in zip(got, refs):
        assert value == metrics.ce_example_based([gen], [findings.label_report(ref)])["f1"]
    assert got[2] == 1.0


def test_ce_f1_reward_calls_the_shared_function(monkeypatch):
    calls = []
    monkeypatch.setattr(rewards, "example_prf", lambda *a: calls.append(a) or (0.0, 0.0, 0.25))
    assert make_ce_f1_reward()([VALID], report=[EFFUSION]) == [0.25] and len(calls) == 1


def test_combined_reward_weights():
    # generated (effusion +1, pneumothorax -1) vs reference (effusion +1): CCS = 1 / sqrt 2, strictly between the
    # default margin 0.5 and 1, so both the MCCS term and its weight show in the sum (format reward 1)
    ref = "Small right pleural effusion."
    ccs = 1 / math.sqrt(2)
    assert make_combined_reward()([VALID], report=[ref]) == [pytest.approx(0.75 * (ccs - 0.5) / 0.5 + 0.25)]
    f = make_combined_reward({"format": 1.0, "medr2_format": 2.0})
    assert f.__name__ == "combined_reward" and f([MRG_ONLY], report=[ref]) == [1.0]  # 1 * 1 + 2 * 0
    g = make_combined_reward(params={"mccs": {"margin": 0.0}})
    assert g([VALID], report=[ref]) == [pytest.approx(0.75 * ccs + 0.25)]


def test_registry_resolves_every_name_to_a_picklable_named_reward():
    funcs = get_reward_funcs(list(REWARDS))
    assert [f.__name__ for f in funcs] == ["mccs_reward", "format_reward", "medr2_format_reward",
                                           "ce_f1_reward", "combined_reward"]
    for f in funcs:
        clone = pickle.loads(pickle.dumps(f))
        assert clone([VALID], report=[EFFUSION]) == f([VALID], report=[EFFUSION])
    assert get_reward_funcs(["mccs"], mccs={"margin": 0.2})[0].params["margin"] == 0.2


@pytest.mark.parametrize("call, message", [
    (lambda: make_mccs_reward(margin=1.0), "margin=1.0"),
    (lambda: make_mccs_reward(margin=-0.1), "margin=-0.1"),
    (lambda: make_mccs_reward(uncertain_value=2), "uncertain_value=2"),
    (lambda: make_mccs_reward(both_empty=1.5), "both_empty=1.5"),
    (lambda: make_ce_f1_reward(empty_score=float("nan")), "empty_score=nan"),
    (lambda: make_combined_reward({"bleu": 1.0}), "unknown reward 'bleu'"),
    (lambda: make_combined_reward({}), "weights is empty"),
    (lambda: make_combined_reward({"format": float("inf")}), "must be a finite number"),
    (lambda: get_reward_funcs(["nope"]), "unknown reward name"),
    (lambda: get_reward_funcs(["format"], mccs={"margin": 0.1}), "not among the requested"),
])
def test_factories_validate_arguments(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        call()
