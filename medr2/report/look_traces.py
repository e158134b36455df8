"""Med-R2 training targets whose reflection looks again: a magnified look per re-checked region.

Two kinds, both from a phantom study's ground truth (`medr2.report.traces` writes the perception, reasoning and
reports they share):
- `build_look_trace`: the draft carries an injected error of a kind a first look plausibly makes and a magnified look
  shows (`inject_look_error`); every draft finding is re-checked in a look at its region and the final report is
  always the ground truth;
- `build_look_trace_on_draft`: the draft is a model's own (`draft_from_text` reads it back into findings) and the
  looks are the ones the pipeline proposed; the final report corrects only the errors a look reaches, so it is the
  ground truth only where the looks could show it.

Hands on MedR2Output traces to `medr2.reflection.traces`, which adds the crops and the heads' words.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medr2.report.schema import MedR2Output, ReflectionItem, Report
from medr2.report.traces import (
    DEVICE_KINDS,
    LUNG_KINDS,
    SEVERITY_SWAP,
    SIGNS,
    TraceConfig,
    _confirmations,
    _sign,
    _trace_output,
    build_perception,
    build_reasoning,
    make_hallucination,
    parse_look_error_weights,
    region_of,
    write_report,
)

# ---------------------------------------------------------------- traces with looks
NORMAL_LOOK_TARGET = "no finding"  # the target of an item after a look at a region the draft calls normal


def look_region(f, side: str | None = None, zone: str | None = None) -> str | None:
    """The look region where finding `f` (as stated: `side` / `zone` override its own) is re-checked; None for
    diffuse findings and devices, which a magnified window does not help."""
    from medr2.reflection.regions import regions_for

    if f.kind in DEVICE_KINDS:
        return None
    regions = regions_for(f.observation, [side or f.side or ""], [zone or f.zone or ""])
    return regions[0] if regions else None


def inject_look_error(findings: list, rng: random.Random, weights: dict[str, float] | None = None):
    """One error a first look plausibly makes and a magnified look shows: `inject_error`'s kinds plus the wrong
    lung zone. Returns (draft findings, error kind, the true finding or None, the draft's version or None); with
    `weights` the kind is drawn by weight first and a study that does not allow it keeps its draft right (kind None)."""
    options = ["hallucinated"]
    focal = [f for f in findings if f.kind not in DEVICE_KINDS]
    if focal:
        options.append("missed")
    if any(f.side in ("right", "left") and f.kind not in DEVICE_KINDS for f in findings):
        options.append("wrong_side")
    if any(f.severity in SEVERITY_SWAP for f in findings):
        options.append("wrong_severity")
    if any(f.kind in LUNG_KINDS and f.zone in ("upper", "mid", "lower") for f in findings):
        options.append("wrong_zone")
    if weights:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind not in options:
            return list(findings), None, None, None
    else:
        kind = rng.choice(options)
    draft = list(findings)
    if kind == "missed":
        pool = [f for f in focal if f.subtle] or focal  # subtle findings are the ones a first look misses
        f = rng.choice(pool)
        draft.remove(f)
        return draft, kind, f, None
    if kind == "hallucinated":
        f = make_hallucination(rng)
        draft.append(f)
        return draft, kind, None, f
    if kind == "wrong_side":
        f = rng.choice([f for f in findings if f.side in ("right", "left") and f.kind not in DEVICE_KINDS])
        wrong = dataclasses.replace(f, side="left" if f.side == "right" else "right")
    elif kind == "wrong_severity":
        f = rng.choice([f for f in findings if f.severity in SEVERITY_SWAP])
        wrong = dataclasses.replace(f, severity=SEVERITY_SWAP[f.severity])
    else:
        f = rng.choice([f for f in findings if f.kind in LUNG_KINDS and f.zone in ("upper", "mid", "lower")])
        wrong = dataclasses.replace(f, zone=rng.choice([z for z in ("upper", "mid", "lower") if z != f.zone]))
    draft[draft.index(f)] = wrong
    return draft, kind, f, wrong


def _look_item(action: str, f, region: str, text: str) -> ReflectionItem:
    return ReflectionItem(action, SIGNS[f.kind][2], f"magnified {region}: {text}", region)


def build_look_trace(study, config: TraceConfig | None = None, normal_look: str | None = None,
                     max_looks: int = 4) -> tuple[MedR2Output, str | None]:
    """The Med-R2 output with a reflection that looks again, and the draft's error kind (None: draft right).

    Every finding of the draft is re-checked in a magnified look at its region (kept / removed / revised); a finding
    the draft missed is found in a look at its region (added); `normal_look` adds a look at a region the draft calls
    normal, confirmed normal there (so a look does not mean a finding). Diffuse findings and devices are confirmed
    without a look, after the looks. At most `max_looks` looks; the final report is always the ground truth."""
    config = config or TraceConfig()
    rng = random.Random(f"look:{config.seed}:{study.study_id}")
    findings = list(study.findings)
    final = Report(study.findings_text, study.impression_text)
    error_kind, truth_f, wrong_f = None, None, None
    draft_findings = findings
    if rng.random() < config.error_rate:
        draft_findings, error_kind, truth_f, wrong_f = inject_look_error(findings, rng, parse_look_error_weights(config.look_error_weights))
    looks: list[ReflectionItem] = []
    plain: list[ReflectionItem] = []
    for f in draft_findings:
        region = look_region(f)
        if region is None:
            plain.append(ReflectionItem("kept", SIGNS[f.kind][2], f"re-checked the {region_of(f)}, {_sign(f)} confirmed."))
        elif f is wrong_f and error_kind == "hallucinated":
            looks.append(_look_item("removed", f, region, f"no {_sign(f)}; overlapping normal structures."))
        elif f is wrong_f and error_kind == "wrong_side":
            looks.append(_look_item("revised", f, region, f"no {_sign(f)} on the {f.side}; it is on the {truth_f.side}."))
        elif f is wrong_f and error_kind == "wrong_zone":
            looks.append(_look_item("revised", f, region, f"no {_sign(f)} in the {f.zone} zone; it is in the {truth_f.zone} zone."))
        elif f is wrong_f and error_kind == "wrong_severity":
            looks.append(_look_item("revised", f, region, f"{_sign(f)}, {truth_f.severity}, not {f.severity}."))
        else:
            looks.append(_look_item("kept", f, region, f"{_sign(f)} confirmed."))
    extra = []
    if error_kind == "missed":
        region = look_region(truth_f)
        extra.append(_look_item("added", truth_f, region, f"{_sign(truth_f)}, missed in the draft."))
    if normal_look and len(looks) + len(extra) < max_looks:
        extra.append(ReflectionItem("kept", NORMAL_LOOK_TARGET, f"magnified {normal_look}: no abnormal sign.", normal_look))
    rng.shuffle(extra)
    room = max_looks - len(extra)
    if len(looks) > room:  # keep the error's look: it is what the trace teaches
        must = [i for i in looks if i.action != "kept"]
        looks = must + [i for i in looks if i.action == "kept"][:max(room - len(must), 0)]
    reflection = looks + extra + plain
    if not reflection:
        reflection = _confirmations([])
    return _trace_output(study, draft_findings, reflection, final, error_kind, rng), error_kind


# ---------------------------------------------------------------- traces on a model's own draft
# A finding a draft states where the truth has none, made concrete for the trace: the kind a reader most plausibly
# imagines for the observation, with the severity or size the phantom report writer needs.
_STATED_KIND = {"Lung Lesion": "nodule", "Support Devices": "central_line"}
_DEFAULT_SEVERITY = {"effusion": "small", "pneumothorax": "small", "cardiomegaly": "mild", "edema": "mild"}
_DEFAULT_SIZE_MM = {"nodule": 12.0, "mass": 35.0}


@dataclass
class OwnDraft:
    """A model's draft of a phantom study as phantom findings: `findings` are the truth's, changed where the draft
    differs; `errors` are (kind, the true finding or None, the draft's version or None), kind one of missed,
    hallucinated, wrong_side, wrong_zone; `report` is the draft rendered from `findings`."""

    findings: list
    errors: list[tuple[str, object, object]]
    report: Report


def _only(values, allowed: tuple[str, ...]) -> str | None:
    picked = [v for v in values if v in allowed]
    return picked[0] if len(picked) == 1 else None


def _stated_finding(observation: str, sides, zones, severities):
    """The finding a draft states for `observation` (which the truth lacks), at the side and zone it names."""
    from medr2.phantom.generator import OBSERVATION_OF, FindingRecord

    kind = _STATED_KIND.get(observation) or next(k for k, o in OBSERVATION_OF.items() if o == observation)
    side = _only(sides, ("right", "left")) or ("bilateral" if sides else None)
    if kind in DEVICE_KINDS or kind in ("cardiomegaly", "widened_mediastinum", "edema"):
        side = None
    zone = _only(zones, ("upper", "mid", "lower")) if kind in LUNG_KINDS or kind == "fracture" else None
    if kind == "fracture":
        side, zone = side if side in ("right", "left") else "right", zone or "mid"
    severity = _only(severities, tuple(SEVERITY_SWAP)) or _DEFAULT_SEVERITY.get(kind)
    return FindingRecord(observation=observation, kind=kind, code=1, side=side, zone=zone, severity=severity,
                         size_mm=_DEFAULT_SIZE_MM.get(kind), subtle=True, mask=np.zeros((1, 1), dtype=bool))


def draft_from_text(study, draft_text: str) -> OwnDraft:
    """`draft_text` (a model's draft of `study`, read by the project's labeler and location reader, hedged = stated)
    as the study's findings changed at each cell the evaluation counts wrong: an observation the draft omits drops
    its true findings (missed), one it states without truth gets a finding where it says (hallucinated), and a true
    positive stated on the other side or in another lung zone moves there (only for an observation with one true
    finding: with several, which one moved cannot be read from the text)."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    labels = label_report(draft_text)
    details = stated_details(draft_text)
    stated = {o for o, v in labels.items() if v in (1, -1) and o != "No Finding"}
    truth: dict[str, list] = {}
    for f in study.findings:
        truth.setdefault(f.observation, []).append(f)
    findings, errors = list(study.findings), []
    for observation in sorted(stated | set(truth)):
        sides, zones, severities = details.get(observation, (frozenset(), frozenset(), frozenset()))
        true_findings = truth.get(observation, [])
        if observation not in stated:
            for f in true_findings:
                findings.remove(f)
                errors.append(("missed", f, None))
        elif not true_findings:
            f = _stated_finding(observation, sides, zones, severities)
            findings.append(f)
            errors.append(("hallucinated", None, f))
        elif len(true_findings) == 1 and true_findings[0].kind not in DEVICE_KINDS:
            f = true_findings[0]
            side, zone = _only(sides, ("right", "left")), _only(zones, ("upper", "mid", "lower"))
            if f.side in ("right", "left") and side and side != f.side:
                wrong, kind = dataclasses.replace(f, side=side), "wrong_side"
            elif f.kind in LUNG_KINDS and f.zone in ("upper", "mid", "lower") and zone and zone != f.zone:
                wrong, kind = dataclasses.replace(f, zone=zone), "wrong_zone"
            else:
                continue
            findings[findings.index(f)] = wrong
            errors.append((kind, f, wrong))
    rng = random.Random(f"own-draft:{study.study_id}")
    report = write_report(findings, rng) if errors else Report(study.findings_text, study.impression_text)
    return OwnDraft(findings, errors, report)


def build_look_trace_on_draft(study, draft: OwnDraft, looks: Sequence[str],
                              shown: dict[str, tuple[set[str], set[str]]] | None = None) -> tuple[MedR2Output, dict[str, int]]:
    """The Med-R2 output whose draft is `draft` (a model's own) and whose reflection looks at `looks` (the regions
    the pipeline proposes for that draft), and counts of its errors: `errors`, `corrected`.

    Each look gets an item for every draft finding in its region (kept, or removed / revised where the draft is
    wrong) and one for every finding the draft missed there (added); a look where the draft and the truth have
    nothing says so. An error in a region no look reaches stays in the final report: the reflection corrects only
    what a look shows, so the model is not taught to add or drop findings without new evidence. Diffuse findings
    and devices are confirmed without a look, after the looks, as in `build_look_trace`.

    `shown` (region -> the observations its evidence line calls likely, and those it names as not seen there) narrows
    "what a look shows" to its words: a missed finding is added only where they call it likely, a stated one is
    removed or moved only where they say it is not seen; elsewhere the draft's finding is kept and the miss stays, as
    a reader of those words would leave them. Without it every error a look reaches is corrected."""
    wrong_of = {id(wrong): (kind, true) for kind, true, wrong in draft.errors if wrong is not None}
    by_region: dict[str, list[ReflectionItem]] = {region: [] for region in looks}
    final, plain, corrected = list(draft.findings), [], 0
    for f in draft.findings:
        region = look_region(f)
        if region is None:
            plain.append(ReflectionItem("kept", SIGNS[f.kind][2], f"re-checked the {region_of(f)}, {_sign(f)} confirmed."))
            continue
        if region not in by_region:
            continue
        kind, true = wrong_of.get(id(f), (None, None))
        if kind is not None and shown is not None and f.observation not in shown[region][1]:
            kind = None  # the words do not say the draft is wrong here: the look confirms what it was told
        if kind == "hallucinated":
            item = _look_item("removed", f, region, f"no {_sign(f)}; overlapping normal structures.")
            final.remove(f)
        elif kind == "wrong_side":
            item = _look_item("revised", f, region, f"no {_sign(f)} on the {f.side}; it is on the {true.side}.")
            final[final.index(f)] = true
        elif kind == "wrong_zone":
            item = _look_item("revised", f, region, f"no {_sign(f)} in the {f.zone} zone; it is in the {true.zone} zone.")
            final[final.index(f)] = true
        else:
            item = _look_item("kept", f, region, f"{_sign(f)} confirmed.")
        corrected += kind is not None
        by_region[region].append(item)
    for kind, true, _ in draft.errors:
        region = look_region(true) if kind == "missed" else None
        if region in by_region and (shown is None or true.observation in shown[region][0]):
            by_region[region].append(_look_item("added", true, region, f"{_sign(true)}, missed in the draft."))
            final.append(true)
            corrected += 1
    reflection: list[ReflectionItem] = []
    for region in looks:
        items = by_region[region] or [ReflectionItem("kept", NORMAL_LOOK_TARGET, f"magnified {region}: no abnormal sign.", region)]
        # one crop per region: the items after the first belong to the same look
        reflection += [items[0]] + [dataclasses.replace(item, look=None) for item in items[1:]]
    reflection += plain
    if not reflection:
        reflection = _confirmations([])
    if not draft.errors:
        report = draft.report
    elif {id(f) for f in final} == {id(f) for f in study.findings} and len(final) == len(study.findings):
        report = Report(study.findings_text, study.impression_text)
    elif corrected == 0:
        report = draft.report
    else:
        report = write_report(final, random.Random(f"own-final:{study.study_id}"))
    output = MedR2Output(perception=build_perception(draft.findings, study.anatomy), reasoning=build_reasoning(draft.findings),
                         draft=draft.report, reflection=reflection, report=report)
    return output, {"errors": len(draft.errors), "corrected": corrected}
