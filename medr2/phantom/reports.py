"""Report writer for phantom studies: ground-truth finding records -> Findings + Impression text + labels.

Written the way chest radiograph reports are (several phrasings per finding, explicit pertinent
negatives, hedged language for uncertain findings), from our own templates: no text of any real report
corpus is copied. Every sentence that names a lateralised or zonal finding names its side AND zone in the
same sentence ("Consolidation in the left lower zone."), so location can be recovered from the sentence
(`parse_location`). Each template also declares its effect on the 14 CheXpert labels, so the writer
returns the ground-truth labels the rule-based labeler (`medr2.labeler.findings.label_report`) must reproduce.

Hands on: `write_report(findings, rng) -> ReportText(findings, impression, labels)` (also used by the
trace builder to write draft reports with injected errors) and `parse_location(sentence)`.
"""
from __future__ import annotations

import random
import re
from typing import NamedTuple, Sequence

from medr2.labeler.findings import OBSERVATIONS

DEVICE_KINDS = ("ett", "central_line", "ng_tube", "pacemaker", "sternotomy")
# reading order of the Findings section
ORDER = ("ett", "central_line", "ng_tube", "pacemaker", "sternotomy", "cardiomegaly", "widened_mediastinum",
         "consolidation", "pneumonia", "opacity", "atelectasis", "edema", "nodule", "mass", "effusion",
         "pneumothorax", "pleural_thickening", "fracture")


class ReportText(NamedTuple):
    findings: str
    impression: str
    labels: dict[str, int | None]

    @property
    def text(self) -> str:
        return f"Findings: {self.findings} Impression: {self.impression}"


def zones_phrase(f) -> str:
    """'lower zone'; 'mid and lower zones' for a finding drawn in several zones (a multifocal pneumonia).
    Reports and training traces (`medr2.report.traces`) both word zones with it, so they always agree."""
    zones = (getattr(f, "details", None) or {}).get("zones") or [f.zone]
    return f"{zones[0]} zone" if len(zones) == 1 else f"{', '.join(zones[:-1])} and {zones[-1]} zones"


def _zone_words(f) -> str:
    """'right lower zone'; 'right mid and lower zones' for a finding drawn in several zones."""
    return f"{f.side} {zones_phrase(f)}"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def noun_phrase(f, rng: random.Random) -> str:
    """A noun phrase naming finding `f` with its severity, side and zone (lower case)."""
    k, side, sev = f.kind, f.side, f.severity
    if k == "effusion":
        plural = "effusions" if side == "bilateral" else "effusion"
        return f"{sev} {side} pleural {plural}"
    if k == "pneumothorax":
        return f"small {side} apical pneumothorax" if f.zone == "upper" else f"{sev} {side} pneumothorax"
    if k == "consolidation":
        phrase = rng.choice([f"consolidation in the {_zone_words(f)}", f"focal consolidation in the {_zone_words(f)}"])
        return phrase.replace("focal ", "multifocal ") if len(f.details.get("zones") or []) > 1 else phrase
    if k == "pneumonia":
        return f"pneumonia in the {_zone_words(f)}"
    if k == "opacity":
        return rng.choice([f"patchy opacity in the {_zone_words(f)}", f"hazy opacity in the {_zone_words(f)}"])
    if k == "atelectasis":
        if side == "bilateral":
            return "bibasilar atelectasis"
        return rng.choice([f"plate-like atelectasis in the {_zone_words(f)}", f"subsegmental atelectasis in the {_zone_words(f)}"])
    if k == "edema":
        return f"{sev} bilateral pulmonary edema"
    if k in ("nodule", "mass"):
        return f"{round(f.size_mm)} mm {'nodule' if k == 'nodule' else 'mass'} in the {_zone_words(f)}"
    if k == "fracture":
        return f"fracture of the {side} {_ordinal(f.details.get('rib', 6))} posterior rib, projecting over the {f.zone} zone"
    if k == "pleural_thickening":
        return f"{side} apical pleural thickening" if f.zone == "upper" else f"pleural thickening along the {_zone_words(f)}"
    if k == "cardiomegaly":
        return f"{sev} cardiomegaly"
    if k == "widened_mediastinum":
        return "widened mediastinum"
    return device_sentence(f, rng).rstrip(".").lower()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def device_sentence(f, rng: random.Random) -> str:
    side = f.side or "right"
    if f.kind == "ett":
        cm = f.details.get("tip_cm", 4)
        return rng.choice([f"Endotracheal tube with tip {cm} cm above the carina.",
                           f"The endotracheal tube terminates {cm} cm above the carina.",
                           f"Endotracheal tube in standard position, {cm} cm above the carina."])
    if f.kind == "central_line":
        return rng.choice([f"{_cap(side)} internal jugular central venous catheter with tip in the superior vena cava.",
                           f"{_cap(side)}-sided central venous catheter terminating in the superior vena cava.",
                           f"A {side} central line ends in the lower superior vena cava."])
    if f.kind == "ng_tube":
        return rng.choice(["Nasogastric tube courses below the diaphragm into the stomach.",
                           "Enteric tube with tip in the stomach.",
                           "The nasogastric tube tip projects over the gastric fundus."])
    if f.kind == "pacemaker":
        return rng.choice([f"{_cap(side)} chest wall pacemaker with leads in the right atrium and right ventricle.",
                           f"Dual-chamber pacemaker, generator over the {side} chest.",
                           f"Pacemaker generator in the {side} chest wall with two leads."])
    return rng.choice(["Median sternotomy wires.", "Intact median sternotomy wires.", "Postoperative changes of median sternotomy."])


def finding_sentence(f, rng: random.Random) -> str:
    """One Findings sentence for `f` (hedged when f.code == -1)."""
    if f.kind in DEVICE_KINDS:
        return device_sentence(f, rng)
    np_ = noun_phrase(f, rng)
    if f.code == -1:
        return rng.choice([f"Possible {np_}.", f"Questionable {np_}.", f"Findings may represent {np_}."])
    k = f.kind
    article = "an" if np_[0] in "aeiou" else "a"
    there = f"There is {article} {np_}." if k in ("effusion", "pneumothorax", "nodule", "mass") else f"There is {np_}."
    choices = [f"{_cap(np_)}.", there]
    if k == "effusion":
        choices.append(f"{_cap(np_)} with blunting of the costophrenic angle.")
    elif k == "pneumothorax":
        choices.append(f"{_cap(np_)}, with a visible visceral pleural line.")
    elif k == "consolidation":
        choices.append(f"{_cap(np_)} with air bronchograms.")
    elif k == "cardiomegaly":
        choices = [f"The heart is {dict(mild='mildly', moderate='moderately', severe='severely').get(f.severity, '')} enlarged.".replace("  ", " "),
                   f"{_cap(np_)}.", f"{_cap(np_)}, cardiothoracic ratio about {f.details.get('ctr', 0.55):.2f}."]
    elif k == "widened_mediastinum":
        choices = ["The mediastinum is widened.", "Widened mediastinum.", "Mediastinal widening."]
    elif k == "edema":
        choices.append(f"{_cap(np_)} with septal lines.")
    elif k in ("nodule", "mass"):
        choices.append(f"{_cap(np_.replace(' in the ', ' projecting over the '))}.")
    elif k == "fracture":
        rib = f"{f.side} {_ordinal(f.details.get('rib', 6))} posterior rib, projecting over the {f.zone} zone"
        if f.details.get("healing"):  # callus around the break (generator v4's overt fractures)
            choices = [f"Healing {np_}, with callus.", f"Displaced healing {np_}.",
                       f"Callus around a cortical step-off of the {rib}, consistent with a healing fracture."]
        else:
            choices = [f"Acute {np_}.", f"Displaced {np_}.", f"Cortical step-off of the {rib}, consistent with a fracture."]
    elif k == "pleural_thickening":
        choices.append(f"Smooth {np_}.")
    return rng.choice(choices)


# pertinent negatives: (sentence choices, labels set to 0)
NEGATIVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "heart": (("Heart size is normal.", "The heart is not enlarged.", "Normal heart size."), ("Cardiomegaly",)),
    "mediastinum": (("Mediastinal contours are normal.", "The mediastinum is not widened.", "Normal mediastinal contours."), ("Enlarged Cardiomediastinum",)),
    "pleura": (("No pneumothorax or pleural effusion.", "No pleural effusion or pneumothorax.", "There is no pneumothorax or pleural effusion."), ("Pneumothorax", "Pleural Effusion")),
    "pneumothorax": (("No pneumothorax.", "There is no pneumothorax."), ("Pneumothorax",)),
    "effusion": (("No pleural effusion.", "There is no pleural effusion."), ("Pleural Effusion",)),
    "consolidation": (("No focal consolidation.", "No consolidation."), ("Consolidation",)),
    "edema": (("No pulmonary edema.", "No evidence of pulmonary edema."), ("Edema",)),
    "fracture": (("No displaced rib fracture.", "No acute rib fracture."), ("Fracture",)),
}
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.", "No active cardiopulmonary disease.")
CLEAR_LUNGS = ("The lungs are clear.", "The lungs are well expanded and clear.", "Clear lungs.")


def _present(findings: Sequence) -> set[str]:
    return {f.observation for f in findings}


def _negatives(findings: Sequence, rng: random.Random) -> list[tuple[str, tuple[str, ...]]]:
    obs = _present(findings)
    kinds = {f.kind for f in findings}
    out = []
    if "Cardiomegaly" not in obs and rng.random() < 0.85:
        out.append("heart")
    if "Enlarged Cardiomediastinum" not in obs and rng.random() < 0.5:
        out.append("mediastinum")
    ptx, eff = "Pneumothorax" in obs, "Pleural Effusion" in obs
    if not ptx and not eff:
        if rng.random() < 0.9:
            out.append("pleura")
    elif not ptx and rng.random() < 0.7:
        out.append("pneumothorax")
    elif not eff and rng.random() < 0.7:
        out.append("effusion")
    if not obs & {"Consolidation", "Pneumonia", "Lung Opacity"} and rng.random() < 0.6:
        out.append("consolidation")
    if "Edema" not in obs and kinds & {"cardiomegaly", "effusion"} and rng.random() < 0.6:
        out.append("edema")
    if "Fracture" not in obs and rng.random() < 0.2:
        out.append("fracture")
    return [(rng.choice(NEGATIVES[n][0]), NEGATIVES[n][1]) for n in out]


def labels_for(findings: Sequence, negated: Sequence[str]) -> dict[str, int | None]:
    """Ground truth over the 14 observations: positive beats uncertain beats negative (labeler aggregation)."""
    labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    for name in negated:
        labels[name] = 0
    for f in findings:
        cur = labels[f.observation]
        labels[f.observation] = 1 if (f.code == 1 or cur == 1) else -1
    if not any(labels[o] in (1, -1) for o in OBSERVATIONS[1:] if o != "Support Devices"):
        labels["No Finding"] = 1
    return labels


def write_report(findings: Sequence, rng: random.Random) -> ReportText:
    """Findings + Impression text for a list of finding records, and the labels the text states."""
    ordered = sorted(findings, key=lambda f: ORDER.index(f.kind))
    lung_kinds = {"consolidation", "pneumonia", "opacity", "atelectasis", "edema", "nodule", "mass"}
    sentences = []
    for f in ordered:
        if f.kind == "pneumonia" and f.details.get("paired"):
            continue  # stated in the impression, its opacity is described by the paired record
        sentences.append(finding_sentence(f, rng))
    negs = _negatives(findings, rng)
    n_dev = sum(f.kind in DEVICE_KINDS for f in ordered)
    n_heart = sum(f.kind in ("cardiomegaly", "widened_mediastinum") for f in ordered)
    heart = [s for s, names in negs if names[0] in ("Cardiomegaly", "Enlarged Cardiomediastinum")]
    rest = [s for s, names in negs if names[0] not in ("Cardiomegaly", "Enlarged Cardiomediastinum")]
    # reading order: devices, heart and mediastinum, lungs, pleura, bones, remaining negatives
    body = sentences[: n_dev + n_heart] + heart
    if not any(f.kind in lung_kinds for f in findings):
        body.append(rng.choice(CLEAR_LUNGS))
    body += sentences[n_dev + n_heart:] + rest
    impression = []
    for f in ordered:
        if f.kind in DEVICE_KINDS:
            continue
        if f.kind == "pneumonia":
            hedge = rng.choice(["Findings concerning for pneumonia.", "Possible pneumonia.", "Pneumonia is suspected."])
            impression.append(hedge if f.code == -1 else rng.choice(["Findings consistent with pneumonia.", "Pneumonia."]))
        elif f.code == -1:
            impression.append(f"Possible {noun_phrase(f, rng)}.")
        else:
            impression.append(_cap(noun_phrase(f, rng)) + ".")
    if not impression:
        impression = [rng.choice(NORMAL_IMPRESSIONS)] if not findings else [rng.choice(NORMAL_IMPRESSIONS)]
    negated = [n for _, names in negs for n in names]
    return ReportText(" ".join(body), " ".join(impression[:4]), labels_for(findings, negated))


_SIDE = re.compile(r"\b(right|left|bilateral|bibasilar)\b", re.I)
_ZONE = re.compile(r"\b(upper|mid|lower|apical|basilar|bibasilar)\b", re.I)


def parse_location(sentence: str) -> tuple[str | None, str | None]:
    """(side, zone) named in one report sentence: 'Small right apical pneumothorax.' -> ('right', 'upper')."""
    side_m = _SIDE.search(re.sub(r"right (atrium|ventricle)", "", sentence))
    zone_m = _ZONE.search(sentence)
    side = side_m.group(1).lower() if side_m else None
    zone = zone_m.group(1).lower() if zone_m else None
    side = "bilateral" if side == "bibasilar" else side
    zone = {"apical": "upper", "basilar": "lower", "bibasilar": "lower"}.get(zone, zone)
    return side, zone
