"""Synthetic PA chest radiographs with exact ground truth: findings, side, zone, severity, pixel masks, report.

No paired chest X-ray data can be fetched here, so the demo model learns from phantoms, which also give
what real datasets never do: the truth for every finding's presence, location and mask, so perception,
reflection and saliency can be measured honestly. One seed -> one `Study` (deterministic):

    sample patient (phantom_anatomy) -> sample findings (prevalence, co-occurrence, subtle cases)
    -> edit the anatomy (cardiomegaly, widened mediastinum, rib break, volume loss) -> render density
    layers -> draw findings (phantom_findings) -> expose the film -> write the report (phantom_reports)

Conventions: radiological orientation (patient RIGHT = image LEFT), bright = dense. Knobs are in
`PhantomConfig` and documented in docs/phantom.md. CLI: `medr2 phantom --n N --out DIR --seed S --size PX`
writes an R2Gen-layout dataset (see `medr2.data`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from medr2 import phantom_findings as draw
from medr2.phantom_anatomy import FIELD_MM, Anatomy, RibBreak, expose, grids, render_anatomy, sample_acquisition, sample_params
from medr2.phantom_reports import OBSERVATIONS, write_report

log = logging.getLogger(__name__)
OBS = OBSERVATIONS

# kind -> CheXpert observation
OBSERVATION_OF: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly", "widened_mediastinum": "Enlarged Cardiomediastinum", "effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "pneumonia": "Pneumonia", "atelectasis": "Atelectasis",
    "opacity": "Lung Opacity", "edema": "Edema", "nodule": "Lung Lesion", "mass": "Lung Lesion", "fracture": "Fracture",
    "pleural_thickening": "Pleural Other", "ett": "Support Devices", "central_line": "Support Devices",
    "ng_tube": "Support Devices", "pacemaker": "Support Devices", "sternotomy": "Support Devices",
}
# Bump when a change alters what a seed draws: caches of generated examples (stage 0) are keyed on it.
# v2: visible rib breaks and plate atelectasis at 224 px, multifocal pneumonia paired with consolidation.
# v3: rib breaks wider and more displaced (the v2 stage-0 tower still could not learn them, AUC 0.55).
# v4: overt rib fractures are healing ones with callus (v3's bare step-off was not learned either, AUC 0.53);
#     only fracture films differ from v3 (the callus draws no random numbers). Reports and traces of a
#     multifocal pneumonia (and its paired consolidation) name every zone with a focus, not only the first.
# v5: denser callus (0.11 -> 0.25): benchmarks/fracture_probe.py showed 0.11 too faint to learn (AUC 0.63 after
#     a fracture-enriched run) and 0.25 learnable (0.78). Only overt-fracture films differ from v4.
# v6: consolidation drawn as segmental airspace disease (elongated, pleura-based, ragged ill-defined margin, 4-6
#     air bronchograms) instead of a round blob of a mass's size, which the stage-0 tower confused with a mass
#     (benchmarks/perception_confusion.py). Only consolidation films differ from v5; pneumonia and opacity
#     draw exactly as before.
# v7: a pneumonia's certainty follows the film: stated when its foci involve all three zones of the lung, hedged
#     ("concerning for pneumonia") when two. v6 and earlier hedged 70 % at random, which no reader could see on
#     the film (positive-only pneumonia F1 was capped near 0 for every model). Films are identical to v6; only
#     pneumonia reports and labels differ.
# v8: a finding's certainty follows its visibility (`PhantomConfig.hedging="visibility"`): a subtle finding (drawn at
#     the edge of visibility) is reported hedged, an overt one stated. v7 and earlier hedged 35 % of subtle and 5 %
#     of overt findings at random, which no reader could see on the film: on the v7 test set the shipped model's
#     positive-only F1 sat 0.04-0.10 below its hedged=found F1 for fracture, lesion and opacity from that alone.
#     Films are identical to v7 (the random draw is kept); only reports and labels differ. `hedging="random"`
#     restores v7's labels.
# v9: an airspace opacity is not drawn where it would merge into another lung finding (`PhantomConfig.opacity_placement
#     ="clear"`): not in a lung a multifocal pneumonia involves, not in the zone of a consolidation, mass, nodule or
#     plate atelectasis of the same lung; it moves to the other lung, or is left out when that lung is taken too. A
#     reader sees one abnormality there, so no report could name both (benchmarks/finding_context.py: the shipped
#     model found 24 % of opacities overlapping another finding; 12 of the 41 it missed on validation lay where v9
#     draws none, 7 of them in a lung with a pneumonia). Only films with such a pair differ from v8;
#     `opacity_placement="free"` draws v8's films.
GENERATOR_VERSION = 9
FRACTURE_CALLUS = 0.25  # peak callus density of an overt (healing) fracture; ribs are 0.045-0.105
DEVICE_KINDS = ("ett", "central_line", "ng_tube", "pacemaker", "sternotomy")
# Probability of each kind in an ABNORMAL study (before co-occurrence rules); tuned so that effusion,
# cardiomegaly, opacity and atelectasis are the most common, as in chest radiograph reports.
DEFAULT_PREVALENCE: dict[str, float] = {
    "effusion": 0.22, "cardiomegaly": 0.2, "opacity": 0.13, "atelectasis": 0.14, "consolidation": 0.09,
    "pneumonia": 0.09, "edema": 0.08, "pneumothorax": 0.1, "nodule": 0.12, "mass": 0.05, "fracture": 0.07,
    "widened_mediastinum": 0.06, "pleural_thickening": 0.06, "ett": 0.05, "central_line": 0.08, "ng_tube": 0.04,
    "pacemaker": 0.05, "sternotomy": 0.05,
}


@dataclass
class FindingRecord:
    """Ground truth for one finding. `mask` marks where its sign is drawn (devices: the device; cardiomegaly: heart)."""

    observation: str
    kind: str
    code: int  # 1 positive, -1 uncertain (hedged in the report)
    side: str | None  # "right" | "left" | "bilateral" | None (patient side)
    zone: str | None  # "upper" | "mid" | "lower" | None
    severity: str | None
    size_mm: float | None
    subtle: bool
    mask: np.ndarray
    details: dict = field(default_factory=dict)  # rib number, tube tip distance, CTR, ...

    def to_dict(self) -> dict:
        """JSON-ready ground truth without the mask (mask area and bounding box instead)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "mask"}
        ys, xs = np.nonzero(self.mask)
        out["mask_area"] = int(len(ys))
        out["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(ys) else None
        return out


@dataclass
class Study:
    study_id: str
    seed: int
    image: np.ndarray  # uint8 [H, W]
    findings: list[FindingRecord]
    anatomy: Anatomy
    labels: dict[str, int | None]
    report: str
    findings_text: str
    impression_text: str

    def ground_truth(self) -> dict:
        """JSON-ready record (no masks, no image)."""
        a = self.anatomy
        return {"id": self.study_id, "seed": self.seed, "labels": self.labels, "report": self.report,
                "findings": [f.to_dict() for f in self.findings],
                "anatomy": {"ctr": round(a.ctr, 3), "mediastinum_ratio": round(a.mediastinum_ratio, 3), "heart_box": list(a.heart_box),
                            "zone_bounds": {k: [round(x, 1) for x in v] for k, v in a.zone_bounds.items()}, "female": a.female}}


@dataclass
class PhantomConfig:
    """Knobs of the generator (documented in docs/phantom.md)."""

    size: int = 256  # image side in pixels (64..1024)
    normal_fraction: float = 0.28  # studies with no finding and no device
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    subtle_fraction: float = 0.18  # findings drawn at the edge of visibility (small, faint)
    hedging: str = "visibility"  # "visibility": subtle findings hedged, overt stated (v8); "random": the fractions below (v7)
    hedge_fraction: float = 0.05  # hedging="random": non-subtle findings reported with hedged language (code -1)
    subtle_hedge_fraction: float = 0.35  # hedging="random": subtle findings reported hedged
    opacity_placement: str = "clear"  # "clear": an opacity never shares a zone with another lung finding (v9); "free": v8
    max_findings: int = 4  # cap on sampled kinds per study (co-occurrence included)
    distractors: bool = True  # breast and nipple shadows
    anatomy_variation: float = 1.0  # 0 = the average patient every time
    acquisition_variation: float = 1.0  # 0 = the same exposure every time

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 1024:
            raise ValueError(f"size must be in 64..1024 px, got {self.size}")
        unknown = set(self.prevalence) - set(OBSERVATION_OF)
        if unknown:
            raise ValueError(f"unknown finding kinds in prevalence: {sorted(unknown)}; valid: {sorted(OBSERVATION_OF)}")
        if self.hedging not in ("visibility", "random"):
            raise ValueError(f"hedging must be 'visibility' or 'random', got {self.hedging!r}")
        if self.opacity_placement not in ("clear", "free"):
            raise ValueError(f"opacity_placement must be 'clear' or 'free', got {self.opacity_placement!r}")
        for name in ("normal_fraction", "subtle_fraction", "hedge_fraction", "subtle_hedge_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class Spec:
    """A finding decided before drawing."""

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    size_px: float | None = None  # lesion diameter at 256 px
    subtle: bool = False
    code: int = 1
    extra: dict = field(default_factory=dict)


def _choice(rng: np.random.Generator, options: dict):
    keys = list(options)
    w = np.asarray([options[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


CO_OCCURRENCE = {  # kind -> [(other kind, probability)]
    "edema": [("cardiomegaly", 0.6), ("effusion", 0.55)],
    "cardiomegaly": [("edema", 0.15), ("effusion", 0.2)],
    "ett": [("ng_tube", 0.6), ("central_line", 0.5)],
    "sternotomy": [("cardiomegaly", 0.3), ("pacemaker", 0.2)],
    "pneumonia": [("effusion", 0.2)],
    "mass": [("effusion", 0.15)],
}


def sample_kinds(rng: np.random.Generator, config: PhantomConfig) -> list[str]:
    if rng.random() < config.normal_fraction:
        return []
    kinds = [k for k, pr in config.prevalence.items() if rng.random() < pr]
    if not kinds:
        kinds = [_choice(rng, {k: v for k, v in config.prevalence.items() if v > 0})]
    for k in list(kinds):
        for other, pr in CO_OCCURRENCE.get(k, []):
            if other not in kinds and rng.random() < pr:
                kinds.append(other)
    if "nodule" in kinds and "mass" in kinds:
        kinds.remove("nodule")
    return kinds[: config.max_findings]


def make_spec(kind: str, rng: np.random.Generator, config: PhantomConfig) -> Spec:
    """Side, zone, severity, size and subtlety of one finding kind."""
    lr = {"right": 0.5, "left": 0.5}
    zones = {"upper": 0.3, "mid": 0.3, "lower": 0.4}
    subtle = bool(rng.random() < config.subtle_fraction) and kind not in DEVICE_KINDS + ("widened_mediastinum", "edema")
    s = Spec(kind, subtle=subtle)
    if kind == "effusion":
        s.side = _choice(rng, {"right": 0.4, "left": 0.3, "bilateral": 0.3})
        s.severity = "small" if subtle else _choice(rng, {"small": 0.4, "moderate": 0.4, "large": 0.2})
    elif kind == "pneumothorax":
        s.side = _choice(rng, lr)
        s.severity = "small" if subtle else _choice(rng, {"small": 0.4, "moderate": 0.35, "large": 0.25})
        s.zone = "upper" if s.severity == "small" else None
    elif kind in ("consolidation", "pneumonia", "opacity"):
        s.side, s.zone = _choice(rng, lr), _choice(rng, {"upper": 0.25, "mid": 0.25, "lower": 0.5})
    elif kind == "atelectasis":
        s.side = _choice(rng, {"right": 0.35, "left": 0.35, "bilateral": 0.3})
        s.zone = "lower" if s.side == "bilateral" else _choice(rng, {"mid": 0.3, "lower": 0.7})
    elif kind == "edema":
        s.side, s.severity = "bilateral", _choice(rng, {"mild": 0.45, "moderate": 0.35, "severe": 0.2})
    elif kind == "nodule":
        s.side, s.zone = _choice(rng, lr), _choice(rng, zones)
        s.size_px = float(rng.uniform(8, 9.5) if subtle else rng.uniform(9, 19))
    elif kind == "mass":
        s.side, s.zone = _choice(rng, lr), _choice(rng, zones)
        s.size_px = float(rng.uniform(22, 38))
    elif kind == "fracture":
        s.side = _choice(rng, lr)
        s.extra = {"index": int(rng.integers(3, 9)), "s": float(rng.uniform(0.62, 0.9)),
                   "step": float(rng.uniform(0.02, 0.026) if subtle else rng.uniform(0.032, 0.048)),
                   "callus": 0.0 if subtle else FRACTURE_CALLUS}
        # step-offs at the 224 px model input: v1 1-2 px and v2 4.5-7 px were not learned by stage 0 (AUC 0.54 / 0.55)
        # on noisy films; v3 draws ~4.5-6 px subtle, ~7-11 px overt; v4 adds callus to the overt ones
    elif kind == "pleural_thickening":
        s.side, s.zone = _choice(rng, lr), _choice(rng, {"upper": 0.5, "mid": 0.3, "lower": 0.2})
    elif kind == "cardiomegaly":
        s.severity = "mild" if subtle else _choice(rng, {"mild": 0.45, "moderate": 0.35, "severe": 0.2})
        lo, hi = {"mild": (0.52, 0.56), "moderate": (0.56, 0.62), "severe": (0.62, 0.7)}[s.severity]
        s.extra = {"ctr": float(rng.uniform(0.515, 0.535) if subtle else rng.uniform(lo, hi))}
    elif kind == "widened_mediastinum":
        s.extra = {"ratio": float(rng.uniform(0.33, 0.42))}
    elif kind == "central_line":
        s.side = _choice(rng, {"right": 0.7, "left": 0.3})
    elif kind == "pacemaker":
        s.side = _choice(rng, {"left": 0.85, "right": 0.15})
    if kind == "pneumonia":
        rng.random()  # v6 drew the pneumonia's certainty here; the draw stays so a seed's films do not change
        s.code = -1  # until drawn: certainty follows the extent of the foci (`pneumonia_code`)
    elif kind not in DEVICE_KINDS:
        # the draw is made under either policy so that a seed's films stay those of v7
        hedged_at_random = rng.random() < (config.subtle_hedge_fraction if subtle else config.hedge_fraction)
        s.code = -1 if (subtle if config.hedging == "visibility" else hedged_at_random) else 1
    return s


# Lung findings an airspace opacity would merge into (generator v9): "lung" = every zone of that lung (a multifocal
# pneumonia's patchy foci), "zone" = the finding's own zone.
OPACITY_MERGES_INTO = {"pneumonia": "lung", "consolidation": "zone", "mass": "zone", "nodule": "zone", "atelectasis": "zone"}


def opacity_merges(opacity: Spec, specs: list[Spec], side: str) -> bool:
    """Would `opacity`, drawn in `side` at its zone, fall on another lung finding of `specs`?"""
    for s in specs:
        if s is opacity or s.kind not in OPACITY_MERGES_INTO:
            continue
        if side in (("right", "left") if s.side == "bilateral" else (s.side,)):
            if OPACITY_MERGES_INTO[s.kind] == "lung" or s.zone == opacity.zone:
                return True
    return False


def _resolve_conflicts(specs: list[Spec], config: PhantomConfig) -> None:
    """Keep two pleural processes off the same side (a pneumothorax goes to the other side of an effusion), and
    (v9, `opacity_placement="clear"`) an airspace opacity off the zone of another lung finding. No random draw: a
    moved opacity draws as many random numbers as before, so a seed's other findings stay as they were; one left
    out shifts the draws of the findings after it."""
    eff = next((s for s in specs if s.kind == "effusion"), None)
    ptx = next((s for s in specs if s.kind == "pneumothorax"), None)
    if eff and ptx:
        if eff.side == "bilateral":
            specs.remove(ptx)
        elif eff.side == ptx.side:
            ptx.side = "left" if eff.side == "right" else "right"
    opacity = next((s for s in specs if s.kind == "opacity"), None)
    if opacity and config.opacity_placement == "clear" and opacity_merges(opacity, specs, opacity.side):
        other = "left" if opacity.side == "right" else "right"
        if opacity_merges(opacity, specs, other):
            specs.remove(opacity)
        else:
            opacity.side = other


def _draw(spec: Spec, c: draw.Canvas) -> tuple[np.ndarray, dict]:
    """Draw one finding; returns its mask and report details."""
    k = spec.kind
    if k == "effusion":
        return draw.draw_effusion(c, spec.side, spec.severity), {}
    if k == "pneumothorax":
        return draw.draw_pneumothorax(c, spec.side, spec.severity), {}
    if k in ("consolidation", "pneumonia", "opacity"):
        mask, zones = draw.draw_airspace(c, spec.side, spec.zone, k)
        return mask, ({"zones": zones} if len(zones) > 1 else {})  # v4: a report names every focus's zone
    if k == "atelectasis":
        return draw.draw_atelectasis(c, spec.side, spec.zone), {}
    if k == "edema":
        return draw.draw_edema(c, spec.severity), {}
    if k in ("nodule", "mass"):
        return draw.draw_lesion(c, spec.side, spec.zone, spec.size_px / 256.0, k), {}
    if k == "fracture":
        healing = spec.extra.get("callus", 0.0) > 0
        mask, _ = draw.fracture_mask(c, spec.side, spec.extra["index"], spec.extra["s"],
                                     callus_step=spec.extra["step"] if healing else None)
        return mask, {"rib": spec.extra["index"] + 1, **({"healing": True} if healing else {})}
    if k == "pleural_thickening":
        return draw.draw_pleural_thickening(c, spec.side, spec.zone), {}
    if k == "cardiomegaly":
        return draw.heart_mask(c), {"ctr": round(spec.extra["ctr"], 2)}
    if k == "widened_mediastinum":
        return draw.mediastinum_mask(c), {"ratio": round(spec.extra["ratio"], 2)}
    return draw.draw_device(c, k, spec.side)


def pneumonia_code(zones: list[str]) -> int:
    """1 (stated) when the bronchopneumonia involves all three zones of the lung, -1 (hedged) when fewer.

    Why: a report's certainty must be readable from the film, or no model can learn it. Extensive multizonal
    airspace disease is the typical picture a reader states as pneumonia; a more limited one is "concerning for".
    """
    return 1 if len(set(zones)) == 3 else -1


def _record(spec: Spec, mask: np.ndarray, details: dict, size: int, kind: str | None = None, code: int | None = None) -> FindingRecord:
    kind = kind or spec.kind
    size_mm = round(spec.size_px * FIELD_MM / 256.0, 1) if spec.size_px else None
    return FindingRecord(OBSERVATION_OF[kind], kind, spec.code if code is None else code, spec.side, spec.zone,
                         spec.severity, size_mm, spec.subtle, mask, details)


def generate_study(seed: int, config: PhantomConfig | None = None) -> Study:
    """One synthetic study, fully determined by `seed` and `config`."""
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    p = sample_params(rng, config.anatomy_variation)
    specs = [make_spec(k, rng, config) for k in sample_kinds(rng, config)]
    _resolve_conflicts(specs, config)
    # findings that change the anatomy itself are applied before rendering
    breaks, upper_gain = [], 1.0
    for s in specs:
        if s.kind == "cardiomegaly":
            p.ctr = s.extra["ctr"]
        elif s.kind == "widened_mediastinum":
            p.mediastinum_ratio = s.extra["ratio"]
        elif s.kind == "fracture":
            breaks.append(RibBreak(s.side, s.extra["index"], s.extra["s"], s.extra["step"], callus=s.extra["callus"]))
        elif s.kind == "edema":
            upper_gain = {"mild": 1.5, "moderate": 1.8, "severe": 2.0}[s.severity]
        elif s.kind == "atelectasis" and s.side != "bilateral" and not s.subtle and rng.random() < 0.5:
            if s.side == "right":  # volume loss: the hemidiaphragm rises on the collapsed side
                p.dome_r -= 0.015
            else:
                p.dome_l = max(p.dome_r, p.dome_l - 0.02)
    u, v = grids(config.size, p.tilt)
    layers, anatomy = render_anatomy(p, config.size, rng, breaks=breaks, upper_gain=upper_gain, distractors=config.distractors, grid=(u, v))
    records: list[FindingRecord] = []
    for s in specs:
        c = draw.Canvas(p, u, v, layers, anatomy, rng, config.size, strength=0.6 if s.subtle else 1.0)
        mask, details = _draw(s, c)
        if s.kind == "pneumonia":
            s.code = pneumonia_code(details.get("zones", [s.zone]))
        if s.kind == "fracture":
            s.zone = anatomy.zone_of(s.side, float(np.nonzero(mask)[0].mean()) if mask.any() else anatomy.zone_bounds[s.side][1])
        if s.kind == "pneumonia":  # a pneumonia's airspace opacity is also reported as consolidation
            paired = "consolidation"  # one reading of the same drawing; a random choice was label noise
            if not any(r.kind == paired for r in records) and not any(x.kind == paired for x in specs):
                records.append(_record(s, mask, dict(details), config.size, kind=paired, code=1))
                details = {**details, "paired": paired}
        records.append(_record(s, mask, details, config.size))
    image = expose(layers.density(), sample_acquisition(rng, config.acquisition_variation), rng)
    text = write_report(records, random.Random(seed))
    return Study(study_id=f"phantom-{seed}", seed=seed, image=image, findings=records, anatomy=anatomy,
                 labels=text.labels, report=text.text, findings_text=text.findings, impression_text=text.impression)


def study_seed(seed: int, i: int) -> int:
    """Seed of the i-th study of a set: distinct sets for distinct base seeds, stable across runs."""
    return seed * 1_000_003 + i


def generate_studies(n: int, seed: int, config: PhantomConfig | None = None) -> Iterator[Study]:
    config = config or PhantomConfig()
    for s in study_seeds(n, seed):
        yield generate_study(s, config)


def cli_phantom(argv: list[str]) -> int:
    """`medr2 phantom --n N --out DIR --seed S --size PX`: write an R2Gen-layout phantom dataset."""
    from tqdm import tqdm

    from medr2.data import write_phantom_dataset

    ap = argparse.ArgumentParser(prog="medr2 phantom", description="Generate synthetic chest radiographs with ground truth (R2Gen layout).")
    ap.add_argument("--n", type=int, default=100, help="number of studies")
    ap.add_argument("--out", required=True, help="output folder (annotation.json, images/, ground_truth.jsonl, masks/)")
    ap.add_argument("--seed", type=int, default=0, help="base seed; study i uses seed*1000003+i")
    ap.add_argument("--size", type=int, default=256, help="image side in px (64..1024)")
    ap.add_argument("--val-frac", type=float, default=0.1)
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--no-masks", action="store_true", help="skip masks/<id>.npz")
    ap.add_argument("--subtle-fraction", type=float, default=PhantomConfig.subtle_fraction)
    ap.add_argument("--normal-fraction", type=float, default=PhantomConfig.normal_fraction)
    args = ap.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        if not (0 <= args.val_frac and 0 <= args.test_frac and args.val_frac + args.test_frac < 1):
            raise ValueError(f"--val-frac + --test-frac must be in [0, 1), got {args.val_frac} + {args.test_frac}")
        config = PhantomConfig(size=args.size, subtle_fraction=args.subtle_fraction, normal_fraction=args.normal_fraction)
    except ValueError as exc:
        print(f"medr2 phantom: {exc}", file=sys.stderr)
        return 2
    studies = tqdm(generate_studies(args.n, args.seed, config), total=args.n, desc="phantoms", unit="study")
    counts = write_phantom_dataset(studies, args.out, val_frac=args.val_frac, test_frac=args.test_frac, masks=not args.no_masks, n=args.n)
    print(f"wrote {sum(counts.values())} studies to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


def study_seeds(n: int, seed: int) -> list[int]:
    """Seeds of the n studies of the set `seed` (what `generate_studies` and `medr2 phantom` use)."""
    return [study_seed(seed, i) for i in range(n)]
