"""Med-R2 training targets: from a phantom study's ground truth to perceive -> reason -> draft -> reflect -> report.

Hands on tagged target text (rendered by `medr2.report.schema.render`) for SFT, plus the *direct* target (the
report alone) for the direct-SFT ablation. Every sentence is derived from ground truth (finding
records, anatomy) and the knowledge base (`medr2.report.knowledge`), never from a model.

Reflection is taught honestly: in a documented fraction of traces (`TraceConfig.error_rate`) the
perception and the draft carry one realistic error — a missed (preferably subtle) finding, a
hallucinated finding, the wrong side, or the wrong severity — and the reflection re-inspects that
region, names the error and fixes it, so the final report is always the ground-truth report. Otherwise
the reflection confirms each finding.

A trace can also be built on a model's own draft (`draft_from_text` reads it back into findings,
`build_look_trace_on_draft` writes the reflection of the looks the pipeline proposed): there the final report
corrects only the errors a look reaches, so it is the ground truth only where the looks could show it.

Real datasets have no image ground truth: their traces are read from the reference report
(`medr2.report.report_traces`).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medr2.phantom.reports import zones_phrase
from medr2.report.schema import MedR2Output, PerceptionItem, ReasoningStep, ReflectionItem, Report, render, render_direct

MEDR2_PROMPT = "Read this chest radiograph: perceive each region, reason with radiology knowledge, draft, reflect, then report."
DIRECT_PROMPT = "Write the radiology report for this chest radiograph."

ERROR_KINDS = ("missed", "hallucinated", "wrong_side", "wrong_severity")

# kind -> (perception sign, short sign for the reasoning line, conclusion noun, knowledge rule id)
SIGNS: dict[str, tuple[str, str, str, str]] = {
    "cardiomegaly": ("enlarged cardiac silhouette", "cardiothoracic ratio above 0.5", "cardiomegaly", "ctr_cardiomegaly"),
    "widened_mediastinum": ("widened mediastinal contour", "widened mediastinum", "enlarged cardiomediastinum", "mediastinum_widened"),
    "effusion": ("blunted costophrenic angle with a meniscus", "blunted angle with meniscus", "pleural effusion", "effusion_meniscus"),
    "pneumothorax": ("visceral pleural line with no markings beyond it", "pleural line without peripheral markings", "pneumothorax", "ptx_pleural_line"),
    "consolidation": ("homogeneous airspace opacity with air bronchograms", "airspace opacity with air bronchograms", "consolidation", "consolidation_airspace"),
    "pneumonia": ("multifocal patchy airspace opacities", "multifocal patchy consolidation", "pneumonia", "pneumonia_consolidation"),
    "atelectasis": ("linear plate-like opacity with volume loss", "plate-like opacity", "atelectasis", "atelectasis_linear"),
    "opacity": ("patchy hazy opacity", "patchy opacity without air bronchograms", "lung opacity", "opacity_patchy"),
    "edema": ("bilateral perihilar haze with septal lines", "perihilar haze and septal lines", "pulmonary edema", "edema_perihilar"),
    "nodule": ("well-defined round opacity", "small round opacity", "pulmonary nodule", "nodule_round"),
    "mass": ("large round opacity", "round opacity of 3 cm or more", "lung mass", "mass_round"),
    "fracture": ("cortical break of a rib", "rib cortical step-off", "rib fracture", "fracture_cortex"),
    "pleural_thickening": ("smooth pleural-based soft tissue", "pleural soft tissue without meniscus", "pleural thickening", "pleural_thickening"),
    "ett": ("endotracheal tube", "tube in the trachea", "endotracheal tube", "device_visible"),
    "central_line": ("central venous catheter", "line over the superior vena cava", "central venous catheter", "device_visible"),
    "ng_tube": ("nasogastric tube", "tube coursing below the diaphragm", "nasogastric tube", "device_visible"),
    "pacemaker": ("pacemaker with leads", "pacemaker generator and leads", "pacemaker", "device_visible"),
    "sternotomy": ("sternotomy wires", "midline sternotomy wires", "sternotomy wires", "device_visible"),
}
DEVICE_KINDS = {"ett", "central_line", "ng_tube", "pacemaker", "sternotomy"}
LUNG_KINDS = {"consolidation", "pneumonia", "atelectasis", "opacity", "nodule", "mass"}
PLEURAL_KINDS = {"effusion", "pneumothorax", "pleural_thickening"}
# Hallucination candidates: findings a reader plausibly imagines in overlapping normal structures.
HALLUCINATION_KINDS = ("nodule", "effusion", "opacity", "atelectasis")
SEVERITY_SWAP = {"small": "moderate", "moderate": "large", "large": "moderate", "mild": "moderate", "severe": "moderate"}


@dataclass
class TraceConfig:
    """How training traces are written."""

    error_rate: float = 0.2  # fraction of traces whose draft carries one error that reflection fixes
    seed: int = 0
    # Look traces: the error kinds in given proportions ('missed:0.52,hallucinated:0.30,...'), drawn before asking
    # whether the study allows the kind (a study that does not gets no error); empty = a uniform choice among the
    # kinds the study allows.
    look_error_weights: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        parse_look_error_weights(self.look_error_weights)


LOOK_ERROR_KINDS = (*ERROR_KINDS, "wrong_zone")


def parse_look_error_weights(spec: str) -> dict[str, float]:
    """'missed:0.52,hallucinated:0.3' -> {'missed': 0.52, 'hallucinated': 0.3}; unknown kinds and bad weights are errors."""
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, weight = item.partition(":")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if kind not in LOOK_ERROR_KINDS or value < 0:
            raise ValueError(f"look_error_weights: expected 'kind:weight' with kind in {', '.join(LOOK_ERROR_KINDS)} "
                             f"and a weight >= 0, got {item!r}")
        out[kind] = value
    if spec.strip() and not sum(out.values()):
        raise ValueError("look_error_weights: at least one weight must be above 0")
    return out


def _sign(f, which: int = 0) -> str:
    """The sign phrase of finding `f` (0 = as perceived, 1 = short, for reasoning); a healing fracture's
    callus is part of its sign."""
    sign = SIGNS[f.kind][which]
    return f"{sign} with callus" if f.kind == "fracture" and (getattr(f, "details", None) or {}).get("healing") else sign


def region_of(f) -> str:
    """The perception-tree region (and zone) where finding `f`'s sign is looked for."""
    if f.kind == "cardiomegaly":
        return "heart"
    if f.kind == "widened_mediastinum":
        return "mediastinum"
    if f.kind == "edema":
        return "hila"
    if f.kind in DEVICE_KINDS:
        return "devices"
    if f.kind == "fracture":
        return "bones"
    if f.kind in PLEURAL_KINDS:
        return f"{f.side} pleura" if f.side in ("right", "left") else "pleura"
    lung = f"{f.side} lung" if f.side in ("right", "left") else "both lungs"
    return f"{lung}, {zones_phrase(f)}" if f.zone else lung


def _where(f) -> str:
    parts = [p for p in (f.side, zones_phrase(f) if f.zone and f.kind not in PLEURAL_KINDS | DEVICE_KINDS else None) if p]
    return " ".join(parts)


def finding_phrase(f) -> str:
    """'small right pleural effusion', '14 mm pulmonary nodule, right upper zone', ..."""
    noun = SIGNS[f.kind][2]
    if f.kind in ("nodule", "mass") and f.size_mm:
        noun = f"{round(f.size_mm)} mm {noun}"
    lead = " ".join(p for p in (f.severity if f.kind not in ("nodule", "mass") else None, f.side if f.kind not in LUNG_KINDS else None) if p)
    text = f"{lead} {noun}".strip()
    if f.kind in LUNG_KINDS or f.kind == "fracture":
        text += f", {_where(f)}" if _where(f) else ""
    return text


def _perception_line(f) -> PerceptionItem:
    sign = _sign(f)
    if f.kind in ("nodule", "mass") and f.size_mm:
        sign += f" about {round(f.size_mm)} mm"
    if f.kind == "effusion" and f.severity:
        sign += f", {f.severity}"
    return PerceptionItem(region_of(f), sign + ".")


def _group(region: str) -> str:
    """The reading-order slot of a region: 'right lung, lower zone' -> 'right lung', 'left pleura' -> 'pleura'."""
    head = region.split(",")[0]
    return "pleura" if head.endswith("pleura") else head


def build_perception(findings: Sequence, anatomy) -> list[PerceptionItem]:
    """Region-by-region perception in reading order; normal regions get their pertinent negative."""
    by_region: dict[str, list[PerceptionItem]] = {}
    for f in findings:
        item = _perception_line(f)
        by_region.setdefault(_group(item.region), []).append(item)
    ctr = round(anatomy.ctr * 20) / 20  # quantised to 0.05: finer precision than a reader states
    enlarged = any(f.kind == "cardiomegaly" for f in findings)
    items = [PerceptionItem("heart", f"cardiothoracic ratio about {ctr:.2f}, {'enlarged' if enlarged else 'normal size'}.")]
    items += by_region.pop("heart", [])[1:]  # the heart line above already states the sign
    items += by_region.pop("mediastinum", []) or [PerceptionItem("mediastinum", "normal width, trachea midline.")]
    items += by_region.pop("both lungs", [])
    for side in ("right", "left"):
        lung = by_region.pop(f"{side} lung", [])
        items += lung or [PerceptionItem(f"{side} lung", "clear, markings reach the periphery.")]
    items += by_region.pop("hila", []) or [PerceptionItem("hila", "normal, no perihilar haze.")]
    items += by_region.pop("pleura", []) or [PerceptionItem("pleura", "costophrenic angles sharp, no pleural line.")]
    items += by_region.pop("bones", []) or [PerceptionItem("bones", "no cortical break.")]
    items += by_region.pop("devices", []) or [PerceptionItem("devices", "none.")]
    return items


def build_reasoning(findings: Sequence) -> list[ReasoningStep]:
    """One step per finding: sign -> (hedged when subtle or uncertain) conclusion [rule]."""
    if not findings:
        return [ReasoningStep("no abnormal sign in any region", "no acute cardiopulmonary abnormality", "normal_study")]
    steps = []
    for f in findings:
        short_sign, rule_id = _sign(f, 1), SIGNS[f.kind][3]
        conclusion = finding_phrase(f)
        if f.code == -1 or f.subtle:
            conclusion = f"possible {conclusion}"
        steps.append(ReasoningStep(short_sign, conclusion, rule_id))
    return steps


def _confirmations(findings: Sequence) -> list[ReflectionItem]:
    if not findings:
        return [ReflectionItem("kept", "normal study", "re-checked heart, lungs, pleura and bones; no abnormal sign.")]
    return [ReflectionItem("kept", SIGNS[f.kind][2], f"re-checked the {region_of(f)}, {_sign(f)} confirmed.") for f in findings]


def make_hallucination(rng: random.Random):
    """A plausible finding that is not there (empty mask): what a reader imagines in overlapping structures."""
    from medr2.phantom.generator import OBSERVATION_OF, FindingRecord

    kind = rng.choice(HALLUCINATION_KINDS)
    side = rng.choice(("right", "left"))
    zone = None if kind == "effusion" else rng.choice(("upper", "mid", "lower"))
    return FindingRecord(observation=OBSERVATION_OF[kind], kind=kind, code=1, side=side, zone=zone,
                         severity="small" if kind == "effusion" else None, size_mm=float(rng.randint(8, 18)) if kind == "nodule" else None,
                         subtle=True, mask=np.zeros((1, 1), dtype=bool))


def write_report(findings: Sequence, rng: random.Random) -> Report:
    """The phantom report writer's text for an arbitrary finding list (used for erroneous drafts)."""
    from medr2.phantom.reports import write_report as phantom_report

    text = phantom_report(findings, rng)
    return Report(text.findings, text.impression)


def inject_error(findings: list, rng: random.Random):
    """Pick one realistic reader error. Returns (draft findings, reflection item for the error, kind) or None."""
    options = ["hallucinated"]
    if findings:
        options.append("missed")
    if any(f.side in ("right", "left") for f in findings):
        options.append("wrong_side")
    if any(f.severity in SEVERITY_SWAP for f in findings):
        options.append("wrong_severity")
    kind = rng.choice(options)
    draft = list(findings)
    if kind == "missed":
        # Subtle findings are the ones readers miss; prefer them when present.
        pool = [f for f in findings if f.subtle] or list(findings)
        f = rng.choice(pool)
        draft.remove(f)
        item = ReflectionItem("added", SIGNS[f.kind][2], f"re-inspected the {region_of(f)}: {_sign(f)}, missed in the draft.")
    elif kind == "hallucinated":
        f = make_hallucination(rng)
        draft.append(f)
        item = ReflectionItem("removed", SIGNS[f.kind][2], f"re-inspected the {region_of(f)}: no {_sign(f)}, overlapping normal structures.")
    elif kind == "wrong_side":
        f = rng.choice([f for f in findings if f.side in ("right", "left")])
        wrong = "left" if f.side == "right" else "right"
        draft[draft.index(f)] = dataclasses.replace(f, side=wrong)
        item = ReflectionItem("revised", SIGNS[f.kind][2], f"re-inspected both sides: the sign is on the {f.side}, not the {wrong}.")
    else:
        f = rng.choice([f for f in findings if f.severity in SEVERITY_SWAP])
        wrong = SEVERITY_SWAP[f.severity]
        draft[draft.index(f)] = dataclasses.replace(f, severity=wrong)
        item = ReflectionItem("revised", SIGNS[f.kind][2], f"re-measured the {region_of(f)}: {f.severity}, not {wrong}.")
    return draft, item, kind


def _trace_output(study, draft_findings: list, reflection: list[ReflectionItem], final: Report, error_kind: str | None,
                  rng: random.Random) -> MedR2Output:
    """Perception and reasoning follow the draft's findings (right or not); the final report is the ground truth."""
    return MedR2Output(
        perception=build_perception(draft_findings, study.anatomy),
        reasoning=build_reasoning(draft_findings),
        draft=final if error_kind is None else write_report(draft_findings, rng),
        reflection=reflection,
        report=final,
    )


def build_trace(study, config: TraceConfig | None = None) -> tuple[MedR2Output, str | None]:
    """The Med-R2 output for one study, and which error its draft carries (None when the draft is right)."""
    config = config or TraceConfig()
    rng = random.Random(f"{config.seed}:{study.study_id}")
    findings = list(study.findings)
    final = Report(study.findings_text, study.impression_text)
    error_kind = None
    draft_findings, reflection = findings, _confirmations(findings)
    if rng.random() < config.error_rate:
        draft_findings, error_item, error_kind = inject_error(findings, rng)
        kept = [i for i in _confirmations([f for f in findings if f in draft_findings]) if i.target != "normal study"]
        reflection = kept + [error_item]
    return _trace_output(study, draft_findings, reflection, final, error_kind, rng), error_kind


def medr2_target(study, config: TraceConfig | None = None) -> str:
    """Tagged Med-R2 target text for SFT."""
    return render(build_trace(study, config)[0])


def direct_target(study) -> str:
    """The direct-SFT ablation target: the report alone in its <report> tags, no thinking (one parser for both)."""
    return render_direct(Report(study.findings_text, study.impression_text))


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


def build_look_trace_on_draft(study, draft: OwnDraft, looks: Sequence[str]) -> tuple[MedR2Output, dict[str, int]]:
    """The Med-R2 output whose draft is `draft` (a model's own) and whose reflection looks at `looks` (the regions
    the pipeline proposes for that draft), and counts of its errors: `errors`, `corrected`.

    Each look gets an item for every draft finding in its region (kept, or removed / revised where the draft is
    wrong) and one for every finding the draft missed there (added); a look where the draft and the truth have
    nothing says so. An error in a region no look reaches stays in the final report: the reflection corrects only
    what a look shows, so the model is not taught to add or drop findings without new evidence. Diffuse findings
    and devices are confirmed without a look, after the looks, as in `build_look_trace`."""
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
        if region in by_region:
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
