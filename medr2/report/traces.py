"""Med-R2 training targets: from a phantom study's ground truth to perceive -> reason -> draft -> reflect -> report.

Hands on tagged target text (rendered by `medr2.report.schema.render`) for SFT, plus the *direct* target (the
report alone) for the direct-SFT ablation. Every sentence is derived from ground truth (finding
records, anatomy) and the knowledge base (`medr2.report.knowledge`), never from a model.

Reflection is taught honestly: in a documented fraction of traces (`TraceConfig.error_rate`) the
perception and the draft carry one realistic error — a missed (preferably subtle) finding, a
hallucinated finding, the wrong side, or the wrong severity — and the reflection re-inspects that
region, names the error and fixes it, so the final report is always the ground-truth report. Otherwise
the reflection confirms each finding.

Traces whose reflection looks again (magnified crops), on injected errors or on a model's own draft, are built in
`medr2.report.look_traces` from the pieces here.

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
