"""Draft -> final consistency: every change the final report makes to the draft is explained by a reflection item,
and no `kept` item's finding changed.

Both reports are read by the project's labeler (presence, hedging) and its location reader (side, zone, severity),
per observation; each reflection item's target is labelled the same way to know which observation it speaks for.
A change is *explained* by a revised / removed / added item on that observation; a `kept` item whose observation
changed *contradicts* the diff. Checked after generation (the model is not constrained while it writes); where it
fails, the pipeline's result, `medr2 generate --json` and the app carry a warning.

Hands on: `check_consistency(output) -> Consistency` (holds, changes, unexplained, contradicted, messages).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from medr2.report.schema import MedR2Output

_STATES = {1: "present", -1: "possible", 0: "absent", None: "absent"}


@dataclass
class Consistency:
    holds: bool
    changes: dict[str, str] = field(default_factory=dict)  # observation -> "what changed"
    unexplained: list[str] = field(default_factory=list)  # observations changed with no item that changes them
    contradicted: list[str] = field(default_factory=list)  # observations of `kept` items that changed

    @property
    def messages(self) -> list[str]:
        out = [f"the final report changes {o.lower()} ({self.changes[o]}) but no reflection item explains it"
               for o in self.unexplained]
        out += [f"the reflection keeps {o.lower()} but the final report changes it ({self.changes[o]})"
                for o in self.contradicted]
        return out

    def to_json(self) -> dict:
        return {"holds": self.holds, "changes": self.changes, "unexplained": self.unexplained,
                "contradicted": self.contradicted, "messages": self.messages}


def _reading(text: str) -> dict[str, tuple]:
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    labels, details = label_report(text), stated_details(text)
    out = {}
    for observation, value in labels.items():
        if observation == "No Finding" or value not in (1, -1):
            continue
        sides, zones, severities = details.get(observation, (frozenset(), frozenset(), frozenset()))
        out[observation] = (_STATES[value], frozenset(sides), frozenset(zones), frozenset(severities))
    return out


def _describe(before: tuple | None, after: tuple | None) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    parts = []
    for name, a, b in zip(("certainty", "side", "zone", "severity"), before, after):
        if a != b:
            show = (lambda v: v if isinstance(v, str) else (", ".join(sorted(v)) or "unstated"))  # noqa: E731
            parts.append(f"{name} {show(a)} -> {show(b)}")
    return "; ".join(parts)


def item_observations(target: str | None) -> set[str]:
    """The observations a reflection item's target names ('pleural effusion' -> {'Pleural Effusion'})."""
    from medr2.labeler.findings import label_report

    if not target:
        return set()
    return {o for o, v in label_report(target).items() if v in (1, -1) and o != "No Finding"}


def check_consistency(output: MedR2Output) -> Consistency | None:
    """None when there is no draft and final report to compare."""
    if output.draft is None or output.report is None:
        return None
    draft, final = _reading(output.draft.text), _reading(output.report.text)
    changes = {o: _describe(draft.get(o), final.get(o)) for o in sorted(set(draft) | set(final))
               if draft.get(o) != final.get(o)}
    changing, keeping = set(), set()
    for item in output.reflection:
        observations = item_observations(item.target)
        if item.action in ("revised", "removed", "added"):
            changing |= observations
        elif item.action == "kept":
            keeping |= observations
    unexplained = [o for o in changes if o not in changing]
    contradicted = [o for o in changes if o in keeping and o not in changing]
    return Consistency(not unexplained and not contradicted, changes, unexplained, contradicted)
