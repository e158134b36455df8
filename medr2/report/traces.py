"""Med-R2 training targets: from a phantom study's ground truth to perceive -> reason -> draft -> reflect -> report.

Hands on tagged target text (rendered by `medr2.report.schema.render`) for SFT, plus the *direct* target (the
report alone) for the direct-SFT ablation. Every sentence is derived from ground truth (finding
records, anatomy) and the knowledge base (`medr2.report.knowledge`), never from a model.

Reflection is taught honestly: in a documented fraction of traces (`TraceConfig.error_rate`) the
perception and the draft carry one realistic error — a missed (preferably subtle) finding, a
hallucinated finding, the wrong side, or the wrong severity — and the reflection re-inspects that
region, names the error and fixes it, so the final report is always the ground-truth report. Otherwise
the reflection confirms each finding.

Real datasets have no image ground truth: `build_report_trace` / `report_target` write a study's trace from its
reference report (the labeler's mentions and the location reader's side / zone / severity words), with the reference
as draft and report and every finding kept; with a `draft_error_rate` a share of drafts carry one error made from
the reference's own findings (`draft_errors`), which the reflection fixes (`report_trace` says which).
"""
from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

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


LOOK_ERROR_KINDS = ("missed", "hallucinated", "wrong_side", "wrong_zone", "wrong_severity")


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
LOOK_ERROR_KINDS = (*ERROR_KINDS, "wrong_zone")
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


# ---------------------------------------------------------------- traces from real reports
# A real dataset (IU X-Ray, MIMIC-CXR) has a reference report but no image ground truth, so its Med-R2 trace is read
# from the report text: the labeler's mentions (`medr2.labeler.findings`) and the side / zone / severity words the
# evaluation's location reader takes from the same sentences (`medr2.evaluation.evaluate.stated_location`). Perception
# states what the reference says region by region; reasoning cites the knowledge rule of each labelled finding; the
# draft and the final report are the reference, and reflection keeps every finding — unless the study draws a taught
# error (`draft_error_rate`): then the draft is the reference with one error in it (see "taught errors" below), and
# perception, reasoning and reflection follow that draft. Such traces teach the format and the report, not what the
# film shows: a model card says so (`medr2.training.export.REPORT_TRACES`).
REPORT_REGION_ORDER = ("heart", "mediastinum", "both lungs", "lungs", "right lung", "left lung", "hila", "pleura",
                       "bones", "devices", "other findings")
# observation -> the phantom kind whose sign, noun and knowledge rule it takes (Lung Lesion: nodule or mass by wording;
# Support Devices: the device as the report names it).
OBSERVATION_KIND = {"Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "widened_mediastinum",
                    "Lung Opacity": "opacity", "Edema": "edema", "Consolidation": "consolidation", "Pneumonia": "pneumonia",
                    "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Pleural Effusion": "effusion",
                    "Pleural Other": "pleural_thickening", "Fracture": "fracture", "Lung Lesion": "nodule",
                    "Support Devices": "pacemaker"}
LUNG_OBSERVATIONS = ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")
PLEURAL_OBSERVATIONS = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
# Sentences with no labelled mention ("The lungs are clear.", "Mild degenerative changes of the spine.") are placed
# by the anatomy they name, first match wins.
_REGION_WORDS = (("devices", r"\b(?:tube|(?<!pleural )(?<!septal )(?<!kerley )line|catheter|pacemaker|pacer|wires?|clips?|stent|port|device|hardware)s?\b"),
                 ("bones", r"\b(?:bon[ey]|bony|osseous|skelet\w*|spine|spinal|vertebra\w*|rib|ribs|clavicle\w*|sternum|thoracic spine|osteo\w*|degenerative|scoliosis)\b"),
                 ("pleura", r"\b(?:pleura\w*|costophrenic|effusions?)\b"),
                 ("hila", r"\b(?:hila|hilar|hilum|perihilar|pulmonary vascula\w*)\b"),
                 ("heart", r"\b(?:heart|cardiac|cardio\w*)\b"),
                 ("mediastinum", r"\b(?:mediastin\w*|aort\w*|trachea)\b"),
                 ("lungs", r"\b(?:lungs?|pulmonary|airspace|parenchym\w*|interstiti\w*|granulom\w*|emphysem\w*|hyperinflat\w*|nodul\w*)\b"))
_DEFAULT_LINES = {"heart": "no abnormality described.", "mediastinum": "no abnormality described.",
                  "lungs": "no abnormality described.", "hila": "no abnormality described.",
                  "pleura": "no abnormality described.", "bones": "no abnormality described.", "devices": "none described."}
_NO_ABNORMALITY = "normal study"


def _side_word(sides: frozenset[str]) -> str | None:
    return next(iter(sides)) if len(sides) == 1 else None


def _zone_phrase(zones: frozenset[str]) -> str:
    ordered = [z for z in ("upper", "mid", "lower") if z in zones]
    if not ordered:
        return ""
    return f"{ordered[0]} zone" if len(ordered) == 1 else f"{', '.join(ordered[:-1])} and {ordered[-1]} zones"


def _observation_region(observation: str, sides: frozenset[str], zones: frozenset[str]) -> str:
    """The perception region (with side and zone when stated) where the reference places an observation."""
    side = _side_word(sides)
    if observation == "Cardiomegaly":
        return "heart"
    if observation == "Enlarged Cardiomediastinum":
        return "mediastinum"
    if observation == "Edema":
        return "hila"
    if observation == "Fracture":
        return "bones"
    if observation == "Support Devices":
        return "devices"
    if observation in PLEURAL_OBSERVATIONS:
        return f"{side} pleura" if side in ("right", "left") else "pleura"
    lung = {"right": "right lung", "left": "left lung", "bilateral": "both lungs"}.get(side or "", "lungs")
    zone = _zone_phrase(zones)
    return f"{lung}, {zone}" if zone else lung


def _region_order(region: str) -> int:
    head = region.split(",")[0]
    head = "pleura" if head.endswith("pleura") else head
    return REPORT_REGION_ORDER.index(head) if head in REPORT_REGION_ORDER else len(REPORT_REGION_ORDER)


def _sentence_regions(sentence: str, mentions: list) -> tuple[str, set[str]]:
    """The region of one report sentence and every region it speaks of. Its region is that of its first abnormal
    mention, else of its first mention (in reading order), else the anatomy it names; a sentence that names several
    regions ("Heart size and mediastinum are normal.") speaks for all of them, so none gets a default line."""
    from medr2.evaluation.evaluate import stated_location

    known = [m for m in mentions if m.observation in OBSERVATION_KIND]
    regions = {}
    for m in known:
        sides, zones = stated_location(sentence, m.observation) if m.value != 0 else (frozenset(), frozenset())
        regions.setdefault(_observation_region(m.observation, sides, zones), m.value != 0)
    low = sentence.lower()
    named = {region for region, words in _REGION_WORDS if re.search(words, low)}
    if regions:
        abnormal = [r for r, stated in regions.items() if stated] or list(regions)
        region = min(abnormal, key=_region_order)
    else:
        region = next((region for region, words in _REGION_WORDS if re.search(words, low)), "other findings")
    return region, {_region_head(r) for r in regions} | named | {_region_head(region)}


def _region_head(region: str) -> str:
    """'right lung, lower zone' -> 'lungs', 'left pleura' -> 'pleura': the slot a default line fills."""
    head = region.split(",")[0]
    return "pleura" if head.endswith("pleura") else "lungs" if head.endswith(("lung", "lungs")) else head


def report_perception(report: Report) -> list[PerceptionItem]:
    """What the reference report says, region by region in reading order: each sentence of its findings (and each
    impression sentence that adds an abnormal observation the findings do not state) under the region of its first
    mention; a region the report does not describe gets "no abnormality described." (or "none described." for
    devices)."""
    from medr2.labeler.findings import find_mentions, split_sentences

    findings_text = report.findings or report.impression
    sentences = [(findings_text, s) for s in split_sentences(findings_text)]
    stated = {m.observation for m in find_mentions(findings_text) if m.value != 0}
    if report.findings and report.impression:
        for s in split_sentences(report.impression):
            if {m.observation for m in find_mentions(report.impression[s[0]:s[1]]) if m.value != 0} - stated:
                sentences.append((report.impression, s))
    by_region: dict[str, list[str]] = {}
    covered: set[str] = set()
    for text, (start, end) in sentences:
        sentence = " ".join(text[start:end].split())
        if not any(c.isalnum() for c in sentence):
            continue
        region, spoken_of = _sentence_regions(sentence, find_mentions(sentence))
        by_region.setdefault(region, []).append(sentence)
        covered |= spoken_of
    for region, line in _DEFAULT_LINES.items():
        if region not in covered:
            by_region[region] = [line]
    return [PerceptionItem(region, " ".join(lines)) for region, lines in sorted(by_region.items(), key=lambda kv: _region_order(kv[0]))]


def _report_noun(observation: str, sentences_text: str, mention_text: str) -> str:
    if observation == "Lung Lesion":
        return SIGNS["mass" if "mass" in sentences_text else "nodule"][2]
    if observation == "Support Devices":
        return " ".join(mention_text.lower().split())  # the device as the report names it
    if observation == "Fracture":
        return "rib fracture" if re.search(r"\bribs?\b", sentences_text) else "fracture"
    return SIGNS[OBSERVATION_KIND[observation]][2]


class ReportFinding(NamedTuple):
    """One abnormal observation of a reference report, as the report states it."""

    observation: str
    value: int  # 1 positive, -1 hedged (the labeler's value)
    region: str  # perception region with the stated side and zone: "left lung, lower zone"
    phrase: str  # finding with the stated severity, side and zone: "small right pleural effusion"
    noun: str  # the finding alone: "pleural effusion"


def report_findings(report: Report) -> list[ReportFinding]:
    """The reference's abnormal observations (the labeler's positive and hedged ones), in reading order."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import find_mentions, label_report, split_sentences

    text = report.text
    labels = label_report(text)
    details = stated_details(text)
    spans = split_sentences(text)
    out = []
    for observation, value in labels.items():
        if value not in (1, -1) or observation not in OBSERVATION_KIND:
            continue
        sides, zones, severities = details.get(observation, (frozenset(), frozenset(), frozenset()))
        mentions = [m for m in find_mentions(text) if m.observation == observation and m.value == value]
        sentences = " ".join(text[spans[m.sentence_index][0]:spans[m.sentence_index][1]] for m in mentions
                             if m.sentence_index < len(spans)).lower()
        noun = _report_noun(observation, sentences, text[mentions[0].start:mentions[0].end] if mentions else observation)
        severity = next(iter(severities)) if len(severities) == 1 else None
        # the heart, the mediastinum and edema have no side: a side word in their sentences belongs to another finding
        side = None if observation in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema") else _side_word(sides)
        if observation in LUNG_OBSERVATIONS:
            where = " ".join(p for p in (side, _zone_phrase(zones)) if p)
            phrase = f"{severity + ' ' if severity else ''}{noun}" + (f", {where}" if where else "")
        elif observation == "Support Devices":
            phrase = noun
        else:
            phrase = " ".join(p for p in (severity, side, noun) if p)
        out.append(ReportFinding(observation, value, _observation_region(observation, sides, zones), phrase, noun))
    return sorted(out, key=lambda f: _region_order(f.region))


def report_reasoning(findings: list[ReportFinding]) -> list[ReasoningStep]:
    """One step per abnormal observation: the knowledge rule's sign -> the finding as the reference states it (hedged
    with "possible" where the report hedges) [rule]; a report with none gets the normal-study step."""
    if not findings:
        return [ReasoningStep("no abnormal sign described in any region", "no acute cardiopulmonary abnormality", "normal_study")]
    steps = []
    for f in findings:
        kind = "mass" if f.noun == SIGNS["mass"][2] else OBSERVATION_KIND[f.observation]
        sign = "tubular or metallic density" if f.observation == "Support Devices" else SIGNS[kind][1]
        if f.observation == "Fracture" and f.noun != "rib fracture":
            sign = "cortical break"
        steps.append(ReasoningStep(sign, f"possible {f.phrase}" if f.value == -1 else f.phrase, SIGNS[kind][3]))
    return steps


def build_report_trace(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0, study_id: str = "") -> MedR2Output:
    """The Med-R2 output for a real study, read from its reference report (a `Report`, or text with or without
    "Findings:" / "Impression:" headers): perception per region from the report's sentences, reasoning from the
    knowledge rules of its labelled findings, draft = report = the reference, reflection keeps every finding. With
    `draft_error_rate` > 0 a share of drafts carry a taught error that the reflection fixes (`report_trace`)."""
    return report_trace(report, draft_error_rate, seed, study_id)[0]


def report_trace(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0,
                 study_id: str = "") -> tuple[MedR2Output, DraftError | None]:
    """`build_report_trace` with the error its draft carries (None: the draft is the reference).

    In a `draft_error_rate` share of studies (drawn from `seed` and `study_id`, so the same study always gets the same
    draft) the draft carries one error read off the reference's own labelled findings (`draft_errors`); perception
    and reasoning follow that draft, as on phantoms, and the reflection item that fixes it comes after the findings it
    keeps. The final report is the reference either way."""
    if not 0.0 <= draft_error_rate <= 1.0:
        raise ValueError(f"draft_error_rate must be in [0, 1], got {draft_error_rate}")
    # the reference as the schema carries it: a section holding a second "FINDINGS:" header (a few IU reports repeat
    # the whole report inside IMPRESSION) reads back split at that header, so the target is written that way
    final = Report.parse(report.text if isinstance(report, Report) else report)
    if not (final.findings or final.impression).strip():
        raise ValueError("an empty reference report gives no Med-R2 trace")
    findings = report_findings(final)
    if draft_error_rate > 0:
        rng = random.Random(f"report:{seed}:{study_id}")
        if rng.random() < draft_error_rate:
            options = draft_errors(final, rng)
            if options:
                kind = rng.choice(sorted(options, key=ERROR_KINDS.index))
                draft, error, item = rng.choice(options[kind])
                kept = [_kept_item(f) for f in report_findings(draft) if f.observation != error.observation]
                return MedR2Output(perception=report_perception(draft), reasoning=report_reasoning(report_findings(draft)),
                                   draft=draft, reflection=[*kept, item], report=final), error
    reflection = [_kept_item(f) for f in findings]
    return MedR2Output(
        perception=report_perception(final),
        reasoning=report_reasoning(findings),
        draft=final,
        reflection=reflection or [ReflectionItem("kept", _NO_ABNORMALITY, "re-checked every region; no abnormality described.")],
        report=final,
    ), None


def report_target(report: Report | str, draft_error_rate: float = 0.0, seed: int = 0, study_id: str = "") -> str:
    """Tagged Med-R2 target text for SFT on a real study (`build_report_trace`, rendered)."""
    return render(build_report_trace(report, draft_error_rate, seed, study_id))


def _kept_item(f: ReportFinding) -> ReflectionItem:
    return ReflectionItem("kept", f.noun, f"re-checked the {f.region}, as described.")


# ---------------------------------------------------------------- taught errors in report traces
# A real study has one report, so an erroneous draft is written from the reference itself: one of the phantom error
# kinds (ERROR_KINDS), made only where the report's own structure supports it — a finding dropped (its sentences
# state nothing else abnormal), its side swapped (it states one side), its severity word changed (it states one), or
# a finding the report does not mention at all added, of the kinds a reader imagines in overlapping normal structures
# (the phantom's HALLUCINATION_KINDS). Every candidate draft is read back by the labeler and the location reader: it
# must differ from the reference in exactly that observation, in exactly that way, or it is not offered.
class DraftError(NamedTuple):
    """The error a taught draft carries: its kind (one of ERROR_KINDS) and the observation it concerns."""

    kind: str
    observation: str


# observation -> the sentence a hallucinated finding is written as (side, zone, size drawn per study)
HALLUCINATED_SENTENCES = {"Lung Lesion": "{size} mm nodule in the {side} {zone} lung zone.",
                          "Pleural Effusion": "Small {side} pleural effusion.",
                          "Lung Opacity": "Patchy opacity in the {side} {zone} lung zone.",
                          "Atelectasis": "Subsegmental atelectasis in the {side} {zone} lung zone."}
# A stated severity word -> the wrong one a draft writes (the phantom's SEVERITY_SWAP, word by word; "moderate" is
# overcalled to "large" where it is a size, to "severe" elsewhere).
_SEVERITY_WORD_SWAP = {"small": "moderate", "large": "moderate", "mild": "moderate", "severe": "moderate",
                       "mildly": "moderately", "severely": "moderately", "moderately": "severely"}
_SIZED_OBSERVATIONS = ("Pleural Effusion", "Pneumothorax", "Lung Lesion")
_SIDELESS_OBSERVATIONS = ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema", "Support Devices")


def _reading(report: Report) -> dict[str, tuple]:
    """observation -> (label, sides, zones, severities) of every positive or hedged observation the report states."""
    from medr2.evaluation.evaluate import stated_details
    from medr2.labeler.findings import label_report

    empty = (frozenset(), frozenset(), frozenset())
    details = stated_details(report.text)
    return {o: (v, *details.get(o, empty)) for o, v in label_report(report.text).items()
            if o in OBSERVATION_KIND and v in (1, -1)}


class _Sentence(NamedTuple):
    section: str  # "findings" | "impression"
    start: int
    end: int
    abnormal: frozenset[str]  # observations it states positive or hedged


def _sentences(report: Report) -> list[_Sentence]:
    from medr2.labeler.findings import find_mentions, split_sentences

    out = []
    for section in ("findings", "impression"):
        text = getattr(report, section)
        spans = split_sentences(text)
        abnormal: dict[int, set[str]] = {}
        for m in find_mentions(text):
            if m.value in (1, -1):
                abnormal.setdefault(m.sentence_index, set()).add(m.observation)
        out += [_Sentence(section, a, b, frozenset(abnormal.get(i, ()))) for i, (a, b) in enumerate(spans)]
    return out


def _edit(report: Report, sentences: list[_Sentence], change) -> Report:
    """`report` with each of `sentences` replaced by `change(sentence text)` ("" drops it)."""
    sections = {"findings": report.findings, "impression": report.impression}
    for s in sorted(sentences, key=lambda s: s.start, reverse=True):
        text = sections[s.section]
        sections[s.section] = text[:s.start] + change(text[s.start:s.end]) + text[s.end:]
    return Report(*(" ".join(sections[k].split()) for k in ("findings", "impression")))


def _swap_words(text: str, swap: dict[str, str]) -> str:
    """Every whole word of `swap` replaced by its partner, its capital kept."""
    def one(m: re.Match) -> str:
        word = swap[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word

    return re.sub(r"\b(?:" + "|".join(swap) + r")\b", one, text, flags=re.IGNORECASE)


def draft_errors(final: Report, rng: random.Random) -> dict[str, list[tuple[Report, DraftError, ReflectionItem]]]:
    """Every taught error the reference supports, by kind: (erroneous draft, the error, the reflection item that fixes
    it). Each draft differs from `final`, as read by the labeler and the location reader, in its error alone."""
    truth = _reading(final)
    by_observation = {f.observation: f for f in report_findings(final)}
    sentences = _sentences(final)
    options: dict[str, list] = {}

    def offer(kind: str, observation: str, draft: Report, item: ReflectionItem, expected: tuple | None) -> None:
        reading = _reading(draft)
        want = {**truth, observation: expected} if expected is not None else {k: v for k, v in truth.items() if k != observation}
        if reading == want and (draft.findings or draft.impression):
            options.setdefault(kind, []).append((draft, DraftError(kind, observation), item))

    for observation, f in by_observation.items():
        own = [s for s in sentences if observation in s.abnormal]
        if not own or any(s.abnormal != {observation} for s in own):
            continue  # a sentence that states another finding too cannot be changed for this one alone
        value, sides, zones, severities = truth[observation]
        phrase = f"possible {f.phrase}" if value == -1 else f.phrase
        missed = _edit(final, own, lambda _: "")
        if not (missed.findings or missed.impression):  # the only finding of the report: the draft calls it normal
            missed = Report("", "No acute cardiopulmonary abnormality.")
        offer("missed", observation, missed,
              ReflectionItem("added", f.noun, f"re-inspected {_the(f.region)}: {phrase}, missed in the draft."), None)
        if observation not in _SIDELESS_OBSERVATIONS and sides in ({"right"}, {"left"}):
            side = next(iter(sides))
            wrong = "left" if side == "right" else "right"
            offer("wrong_side", observation, _edit(final, own, lambda t: _swap_words(t, {"right": "left", "left": "right"})),
                  ReflectionItem("revised", f.noun, f"re-inspected both sides: the {f.noun} is on the {side}, not the {wrong}."),
                  (value, frozenset({wrong}), zones, severities))
        if len(severities) == 1:
            severity = next(iter(severities))
            swap = {**_SEVERITY_WORD_SWAP, "moderate": "large" if observation in _SIZED_OBSERVATIONS else "severe"}
            said = {w.lower() for s in own for w in re.findall(r"[A-Za-z]+", _section_text(final, s))} & set(_severity_forms(severity))
            wrong = {_severity_of_word(swap[w]) for w in said if w in swap}
            if len(wrong) == 1:
                wrong_word = next(iter(wrong))
                offer("wrong_severity", observation, _edit(final, own, lambda t: _swap_words(t, {w: swap[w] for w in said})),
                      ReflectionItem("revised", f.noun, f"re-measured {_the(f.region)}: {severity}, not {wrong_word}."),
                      (value, sides, zones, frozenset(wrong)))
    from medr2.labeler.findings import label_report

    labels = label_report(final.text)
    for observation, sentence in HALLUCINATED_SENTENCES.items():
        if labels.get(observation) is not None:
            continue  # the report speaks of it (even to say it is absent): adding it would contradict the report
        side, zone = rng.choice(("right", "left")), rng.choice(("upper", "mid", "lower"))
        added = sentence.format(size=rng.randint(5, 18), side=side, zone=zone)
        section = "findings" if final.findings else "impression"
        text = getattr(final, section).rstrip()
        text = f"{text}{'' if text.endswith(('.', '!')) else '.'} {added}"
        draft = dataclasses.replace(final, **{section: text})
        noun = SIGNS[OBSERVATION_KIND[observation]][2]
        region = _observation_region(observation, frozenset({side}), frozenset() if observation == "Pleural Effusion" else frozenset({zone}))
        offer("hallucinated", observation, draft,
              ReflectionItem("removed", noun, f"re-inspected {_the(region)}: no {noun}, overlapping normal structures."),
              _reading(Report(added)).get(observation))
    return options


def _the(region: str) -> str:
    return region if region.startswith("both") else f"the {region}"


def _section_text(report: Report, s: _Sentence) -> str:
    return getattr(report, s.section)[s.start:s.end]


def _severity_forms(severity: str) -> tuple[str, ...]:
    from medr2.evaluation.evaluate import SEVERITY_WORDS

    return SEVERITY_WORDS[severity]


def _severity_of_word(word: str) -> str:
    from medr2.evaluation.evaluate import SEVERITY_WORDS

    return next(k for k, words in SEVERITY_WORDS.items() if word in words)


def split_at_draft(target: str) -> tuple[str, str]:
    """A rendered trace -> (the turn that ends with `</draft>`, the rest from `<reflection>`): a training draft that
    holds a taught error is context for the reflection, not an answer to imitate, so it goes in a turn of its own."""
    end = target.index("</draft>") + len("</draft>")
    return target[:end], target[end:].lstrip("\n")
