"""The look conversation: how a look enters the model's context, where the pipeline proposes to look, and the rows
that teach it.

A look is a chat turn, so the same loop serves the embedded model and any chat LVLM in prompted mode:

    user:      [film] Read this chest radiograph: ...
    assistant: <think> ... </draft>\n<reflection>\n<look>right mid zone</look>
    user:      [magnified crop] magnified right mid zone (2.2x); finding heads here: lung lesion likely.
    assistant: added: pulmonary nodule - magnified right mid zone: well-defined round opacity, missed in the draft.\n<look>...
    ...
    assistant: ... </reflection>\n</think>\n<report> ... </report>

The full trace is the assistant turns joined by newlines, which `medr2.report.schema.parse` reads (each item knows
its look). The evidence line states the look heads' reading of the region in words calibrated on validation
("likely" at or above an observation's threshold, "possible" above half of it), never raw logits.

A look model trained with `--evidence_names_draft` also reads which of the draft's findings in the region the heads do
not see ("not seen here: lung lesion"): the words a tiny language model needs to remove a finding the evidence does
not support (docs/reflection.md, sixth candidate).

Hands on: `evidence_text` (and `evidence_words`, what it says), `stated_here`, `look_turn`, `join_turns`, `propose_looks`, `look_conversation`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medr2.reflection.regions import WINDOW, regions_for

MAGNIFICATION = f"{1 / WINDOW:.1f}x"


def evidence_words(region_probs: np.ndarray, thresholds: np.ndarray, observations: Sequence[str],
                   stated: Sequence[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """What an evidence line says, as observations: (likely, possible, not seen here). `likely` are at or above
    their threshold and `possible` above half of it (at most three named, the strongest first, likely before
    possible); `not seen here` are the observations of `stated` read below half their threshold. Devices are never
    named: the heads read them too poorly to be evidence."""
    # the comparisons are written as the model's training traces made them (p >= t, t / 2 <= p), to the last bit
    read = [(p, t, o) for p, t, o in zip(region_probs, thresholds, observations) if o != "Support Devices"]
    likely = [o for _, o in sorted(((p / t, o) for p, t, o in read if p >= t), reverse=True)[:3]]
    possible = [o for _, o in sorted(((p / t, o) for p, t, o in read if t / 2 <= p < t), reverse=True)][:max(0, 3 - len(likely))]
    unseen = [o for p, t, o in read if o in stated and p < t / 2]
    return likely, possible, unseen


def evidence_text(region: str, region_probs: np.ndarray | None = None, thresholds: np.ndarray | None = None,
                  observations: Sequence[str] = (), stated: Sequence[str] = ()) -> str:
    """The text beside a look's crop: the region and magnification, and (with heads) what the look heads read
    there (`evidence_words`). `region_probs` is the per-observation maximum [13] with its `thresholds`, from
    `LookHeads.region_reading`: the crop itself when the heads have a look reader (a tower tuned at the look
    scale), else the region's patches of the whole film (the model's own tower reads crops far worse than films:
    docs/reflection.md). `stated`: the observations the draft states in this region (`stated_here`); those the heads
    read below half their threshold are named as not seen there (for a look model trained with these words:
    `train-sft --evidence_names_draft`)."""
    text = f"magnified {region} ({MAGNIFICATION})"
    if region_probs is None or thresholds is None:
        return text + "."
    likely, possible, unseen = evidence_words(region_probs, thresholds, observations, stated)
    words = [f"{o.lower()} likely" for o in likely] + [f"{o.lower()} possible" for o in possible]
    return (f"{text}; finding heads here: {', '.join(words) if words else 'nothing'}"
            + (f"; not seen here: {', '.join(o.lower() for o in unseen)}" if unseen else "") + ".")


def look_turn(evidence: str) -> dict:
    """The user turn that shows the model its look: the crop (filled in by the processor) and the evidence line."""
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": evidence}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def join_turns(turns: Sequence[str]) -> str:
    """The trace as one text: the assistant turns joined by newlines (each look ends a turn)."""
    return "\n".join(t.strip("\n") for t in turns)


def split_at_looks(trace: str) -> list[str]:
    """A rendered trace with looks -> its assistant turns (each but the last ends with `</look>`)."""
    from medr2.report.schema import LOOK_RE

    turns, start = [], 0
    for m in LOOK_RE.finditer(trace):
        turns.append(trace[start:m.end()])
        start = m.end() + (1 if trace[m.end():m.end() + 1] == "\n" else 0)
    turns.append(trace[start:])
    return turns


def look_conversation(prompt_messages: list[dict], turns: Sequence[str], evidences: Sequence[str]) -> list[dict]:
    """Chat messages of a trace with looks: the prompt, then assistant turn / look turn alternating."""
    if len(turns) != len(evidences) + 1:
        raise ValueError(f"{len(turns)} assistant turns need {len(turns) - 1} looks, got {len(evidences)}")
    messages = list(prompt_messages)
    for i, turn in enumerate(turns):
        messages.append(assistant_turn(turn))
        if i < len(evidences):
            messages.append(look_turn(evidences[i]))
    return messages


def _stated_regions(draft_text: str) -> list[tuple[str, list[str]]]:
    """(observation, its regions as the draft states it) for every observation the draft states, hedged too (a
    hedged finding is re-checked as well), read by the project's labeler and location reader."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    labels = label_report(draft_text)
    details = stated_details(draft_text)
    out = []
    for observation, value in labels.items():
        if value in (1, -1):
            sides, zones, _ = details.get(observation, (frozenset(), frozenset(), frozenset()))
            out.append((observation, regions_for(observation, sorted(sides), sorted(zones))))
    return out


def draft_regions(draft_text: str) -> list[str]:
    """The regions of the findings a draft states (read by the project's labeler), in report order, deduplicated."""
    out: list[str] = []
    for _, regions in _stated_regions(draft_text):
        out += [r for r in regions if r not in out]
    return out


def stated_here(draft_text: str, region: str) -> list[str]:
    """The observations a draft states in `region` (hedged too)."""
    return [observation for observation, regions in _stated_regions(draft_text) if region in regions]


def propose_looks(draft_text: str, film_probs: np.ndarray | None, thresholds: np.ndarray | None,
                  observations: Sequence[str], max_looks: int = 4) -> list[str]:
    """Where the reflection looks: the region of every finding the draft states, then the regions where the look
    heads see an observation the draft does not state there (strongest first), at most `max_looks`."""
    from medr2.reflection.heads import region_max
    from medr2.reflection.regions import LOOK_REGIONS

    looks = draft_regions(draft_text)
    if film_probs is not None and thresholds is not None:
        from medr2.labeler.findings import label_report

        stated = {o for o, v in label_report(draft_text).items() if v in (1, -1)}
        flagged = []
        for region in LOOK_REGIONS:
            if region in looks:
                continue
            strength = [p / t for p, t, o in zip(region_max(film_probs, region), thresholds, observations)
                        if o not in stated and o != "Support Devices" and p >= t and regions_for(o) != []]
            if strength:
                flagged.append((max(strength), region))
        looks += [r for _, r in sorted(flagged, reverse=True)]
    return looks[:max_looks]
