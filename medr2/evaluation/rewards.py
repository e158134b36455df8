"""GRPO rewards (TRL signature): MCCS (MRG-R1's report-level clinical reward), format rewards, CE-F1.

Every reward is a plain callable `f(completions, report=None, **kwargs) -> list[float | None]`.
`completions` are strings or conversations (`[{"role": "assistant", "content": str | [{"type": "text",
"text": ...}]}]`); the reference report arrives as the dataset column `report` (TRL passes dataset
columns as keyword arguments). `None` means "cannot be scored" (no reference for that example);
malformed completions score 0.0, never None, so the policy is pushed away from them.

Report extraction (`schema.extract_report`): the single closed `<report>` section. Rejected, hence 0:
no `<report>`, truncated (no `</report>`), `<report>` opened twice ("<report></report><report>
Pneumothorax</report>"), schema tags inside the report, empty report. A completion with no tags at
all is rejected too unless the factory is built with `allow_untagged=True` (plain-text policies).

MCCS (MRG-R1): labels from `medr2.labeler.findings` (the evaluation's labeler) for generated and reference;
signed vectors over the 13 observations without "No Finding" (positive +1, negative -1, uncertain
`uncertain_value`, unmentioned 0); CCS = cosine; MCCS = max((CCS - m) / (1 - m), 0).
Zero vectors: both zero -> `both_empty` (1.0: both reports assert nothing, they agree), one zero ->
`one_empty` (0.0). Default margin m = DEFAULT_MARGIN = 0.5; the paper does not publish it (reason below).

The CE-F1 reward calls `metrics.example_prf`, the very function the evaluation averages, so the
training signal and the reported metric cannot drift apart.

Example:
    >>> from medr2.evaluation.rewards import get_reward_funcs
    >>> mccs, fmt = get_reward_funcs(["mccs", "format"], mccs={"margin": 0.5})
    >>> fmt(["<think>heart: normal</think>\\n<report>Findings: No effusion.</report>"])
    [1.0]
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from medr2.evaluation.metrics import example_prf
from medr2.labeler import findings
from medr2.report.schema import SECTIONS, TAG_RE, THINK_SECTIONS, extract_report, report_for_scoring

# MRG-R1 does not publish m. Measured with this labeler on the 3,927 IU X-Ray reports: random report
# pairs have CCS median 0.41 (mean 0.35), because shared negatives ("no effusion, no pneumothorax, heart
# normal") align unrelated reports. m = 0.5 sits just above that chance level: random pairs then average
# MCCS 0.15 (0.39 at m = 0), a generic normal report earns 0.13 on abnormal references vs 0.34 on normal
# ones, and 36 % of random pairs stay > 0, so GRPO groups rarely collapse to all-zero rewards (m = 0.7: 0.07).
DEFAULT_MARGIN = 0.5
DEFAULT_WEIGHTS: Mapping[str, float] = {"mccs": 0.75, "format": 0.25}

_MRG_FORMAT = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<report>(?P<report>.*?)</report>\s*\Z", re.S)
_MEDR2_THINK = re.compile(r"\A\s*" + r"\s*".join(rf"<{n}>(?P<{n}>.*?)</{n}>" for n in THINK_SECTIONS) + r"\s*\Z",
                          re.S)


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (assistant turns joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        content = completion.get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):  # [{"type": "text", "text": ...}, {"type": "image"}, ...]
            return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
        return ""
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "".join(completion_text(m) for m in assistant)
    return ""


def _references(report: Sequence[str | None] | None, n: int, name: str) -> list[str | None]:
    if report is None:
        raise ValueError(f"{name} needs the reference report: give the dataset a column named `report`")
    if isinstance(report, str) or len(report) != n:
        raise ValueError(f"{name}: `report` must be a list with one reference per completion "
                         f"(got {type(report).__name__} of length {len(report)} for {n} completions)")
    return [report_for_scoring(r) or None if isinstance(r, str) else None for r in report]


def _label_texts(texts: list[str | None]) -> list[dict | None]:
    """Labels for each non-None text; each distinct text is labelled once (a GRPO group repeats refs)."""
    unique = sorted({t for t in texts if t is not None})
    labelled = dict(zip(unique, findings.label_reports(unique)))
    return [labelled[t] if t is not None else None for t in texts]


# ---------------------------------------------------------------- MCCS
def signed_vector(labels: Mapping[str, int | None], uncertain_value: float = 1.0) -> np.ndarray:
    """[13] float: +1 positive, -1 negative, `uncertain_value` uncertain, 0 unmentioned; No Finding dropped."""
    value = {findings.POSITIVE: 1.0, findings.NEGATIVE: -1.0, findings.UNCERTAIN: uncertain_value}
    return np.array([value.get(labels.get(obs), 0.0) for obs in findings.OBSERVATIONS if obs != "No Finding"])


def mccs(gen: Mapping[str, int | None], ref: Mapping[str, int | None], margin: float = DEFAULT_MARGIN,
         uncertain_value: float = 1.0, both_empty: float = 1.0, one_empty: float = 0.0) -> float:
    """Margin-rescaled cosine of the signed label vectors of one generated/reference pair."""
    g, r = signed_vector(gen, uncertain_value), signed_vector(ref, uncertain_value)
    ng, nr = float(np.linalg.norm(g)), float(np.linalg.norm(r))
    if ng == 0.0 and nr == 0.0:
        return both_empty
    if ng == 0.0 or nr == 0.0:
        return one_empty
    ccs = min(float(g @ r) / (ng * nr), 1.0)
    # Rounded so that identical label vectors give exactly 1.0 rather than 0.9999999999999996.
    return round(max((ccs - margin) / (1.0 - margin), 0.0), 12)


class _MCCSReward:
    # A class, not a closure: TRL may pickle reward funcs into rollout workers; __name__ is its log key.
    __name__ = "mccs_reward"

    def __init__(self, margin: float, uncertain_value: float, both_empty: float, one_empty: float,
                 allow_untagged: bool):
        self.params = dict(margin=margin, uncertain_value=uncertain_value, both_empty=both_empty, one_empty=one_empty)
        self.allow_untagged = allow_untagged

    def __call__(self, completions: Sequence[Any], report: Sequence[str] | None = None, **kwargs) -> list[float | None]:
        refs = _references(report, len(completions), self.__name__)
        gens = [extract_report(completion_text(c), self.allow_untagged)[0] for c in completions]
        gen_labels, ref_labels = _label_texts(gens), _label_texts(refs)
        return [None if rl is None else 0.0 if gl is None else mccs(gl, rl, **self.params)
                for gl, rl in zip(gen_labels, ref_labels)]


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")


def make_mccs_reward(margin: float = DEFAULT_MARGIN, uncertain_value: float = 1.0, both_empty: float = 1.0,
                     one_empty: float = 0.0, allow_untagged: bool = False) -> Callable[..., list[float | None]]:
    """MRG-R1's MCCS reward.

    Args:
        margin: m in max((CCS - m) / (1 - m), 0); must lie in [0, 1).
        uncertain_value: vector value of an uncertain (-1) label, in [-1, 1] (MRG-R1 summaries: +1).
        both_empty / one_empty: reward when both / exactly one label vector is all zero, in [0, 1].
        allow_untagged: score a completion without any schema tag as a plain report (else 0).
    Returns:
        `f(completions, report, **kwargs) -> list[float | None]`, `__name__ == "mccs_reward"`.
    Example:
        >>> f = make_mccs_reward(margin=0.0)
        >>> f(["<think>x</think><report>Large right pleural effusion.</report>"], report=["Right pleural effusion."])
        [1.0]
    """
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"margin={margin!r} must be in [0, 1): 1 would divide by zero, negative would reward anti-correlation")
    if not (isinstance(uncertain_value, (int, float)) and -1.0 <= uncertain_value <= 1.0):
        raise ValueError(f"uncertain_value={uncertain_value!r} must be in [-1, 1]")
    _check_unit("both_empty", both_empty)
    _check_unit("one_empty", one_empty)
    return _MCCSReward(float(margin), float(uncertain_value), float(both_empty), float(one_empty), bool(allow_untagged))


# ---------------------------------------------------------------- format
def _tags_exactly_once(text: str, names: Sequence[str]) -> bool:
    """Each `<name>`/`</name>` appears exactly once, in exact lower case, and no other schema tag at all."""
    found = [m.group(0) for m in TAG_RE.finditer(text)]
    expected = sorted([f"<{n}>" for n in names] + [f"</{n}>" for n in names])
    return sorted(found) == expected


def mrg_format_ok(text: str) -> bool:
    """MRG-R1 format: `<think>…</think>` then `<report>…</report>`, each once, only whitespace around,
    non-empty report. Tags of the Med-R2 sections are allowed inside <think> (each at most once)."""
    m = _MRG_FORMAT.match(text)
    if not m or not m["report"].strip() or TAG_RE.search(m["report"]):
        return False
    inner = [(bool(t.group(1)), t.group(2).lower()) for t in TAG_RE.finditer(m["think"])]
    return len(inner) == len(set(inner)) and not any(name in ("think", "report") for _, name in inner)


def medr2_format_ok(text: str) -> bool:
    """MRG-R1 format plus perception, reasoning, draft, reflection inside <think>: in order, once, non-empty."""
    if not (_tags_exactly_once(text, SECTIONS) and mrg_format_ok(text)):
        return False
    inner = _MEDR2_THINK.match(_MRG_FORMAT.match(text)["think"])
    return bool(inner) and all(inner[n].strip() for n in THINK_SECTIONS)


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when a completion has MRG-R1's format (`mrg_format_ok`), else 0.0."""
    return [1.0 if mrg_format_ok(completion_text(c)) else 0.0 for c in completions]


def medr2_format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when a completion has the full Med-R2 format (`medr2_format_ok`), else 0.0."""
    return [1.0 if medr2_format_ok(completion_text(c)) else 0.0 for c in completions]


# ---------------------------------------------------------------- CE-F1 (MRG-R1's ablation baseline)
class _CEF1Reward:
    __name__ = "ce_f1_reward"

    def __init__(self, uncertain_as_positive: bool, empty_score: float, allow_untagged: bool):
        self.uncertain_as_positive, self.empty_score = uncertain_as_positive, empty_score
        self.allow_untagged = allow_untagged

    def __call__(self, completions: Sequence[Any], report: Sequence[str] | None = None, **kwargs) -> list[float | None]:
        refs = _references(report, len(completions), self.__name__)
        gens = [extract_report(completion_text(c), self.allow_untagged)[0] for c in completions]
        gen_labels, ref_labels = _label_texts(gens), _label_texts(refs)
        return [None if rl is None else 0.0 if gl is None
                else example_prf(gl, rl, self.uncertain_as_positive, self.empty_score)[2]
                for gl, rl in zip(gen_labels, ref_labels)]


def make_ce_f1_reward(uncertain_as_positive: bool = False, empty_score: float = 0.0,
                      allow_untagged: bool = False) -> Callable[..., list[float | None]]:
    """Example-based CE-F1 of generated vs reference labels (`metrics.example_prf`, the evaluation's code)."""
    _check_unit("empty_score", empty_score)
    return _CEF1Reward(bool(uncertain_as_positive), float(empty_score), bool(allow_untagged))


# ---------------------------------------------------------------- combined + registry
class _CombinedReward:
    __name__ = "combined_reward"

    def __init__(self, parts: list[tuple[float, Callable]]):
        self.parts = parts

    def __call__(self, completions: Sequence[Any], **kwargs) -> list[float | None]:
        columns = [[w * v if v is not None else None for v in f(completions, **kwargs)] for w, f in self.parts]
        # Like TRL's own weighting: sum what is defined; None only when no component scored the example.
        return [None if all(v is None for v in vals) else sum(v for v in vals if v is not None)
                for vals in zip(*columns)]


def make_combined_reward(weights: Mapping[str, float] | None = None,
                         params: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[..., list[float | None]]:
    """Weighted sum of registered rewards, default 0.75·MCCS + 0.25·format (MRG-R1 summaries; unverified).

    `params` gives factory arguments per component, e.g. `{"mccs": {"margin": 0.3}}`. Equivalent to passing
    the components to GRPOTrainer with `reward_weights`, but logs one number.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if not weights:
        raise ValueError("weights is empty: give at least one {reward name: weight}")
    for name, w in weights.items():
        if name == "combined" or name not in REWARDS:
            raise ValueError(f"unknown reward {name!r} in weights: choose from {sorted(set(REWARDS) - {'combined'})}")
        if not (isinstance(w, (int, float)) and math.isfinite(w)):
            raise ValueError(f"weight for {name!r} is {w!r}: must be a finite number")
    funcs = get_reward_funcs(list(weights), **{k: v for k, v in (params or {}).items()})
    return _CombinedReward([(float(weights[n]), f) for n, f in zip(weights, funcs)])


REWARDS: dict[str, Callable[..., Callable]] = {
    "mccs": make_mccs_reward,
    "format": lambda: format_reward,
    "medr2_format": lambda: medr2_format_reward,
    "ce_f1": make_ce_f1_reward,
    "combined": make_combined_reward,
}


def get_reward_funcs(names: Sequence[str], **params: Mapping[str, Any]) -> list[Callable]:
    """Reward callables by name; `params[name]` holds that factory's keyword arguments.

    >>> [f.__name__ for f in get_reward_funcs(["mccs", "format"], mccs={"margin": 0.3})]
    ['mccs_reward', 'format_reward']
    """
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward name(s) {unknown}: choose from {sorted(REWARDS)}")
    stray = sorted(set(params) - set(names))
    if stray:
        raise ValueError(f"parameters given for {stray}, which are not among the requested rewards {list(names)}")
    return [REWARDS[n](**dict(params.get(n) or {})) for n in names]
