"""Phantom findings decided before anything is drawn: which kinds a study has, and each one's side, zone,
severity, size, subtlety and certainty.

First stage of `medr2.phantom.generator.generate_study`: `sample_kinds` (prevalence, co-occurrence) -> `make_spec` per kind ->
`resolve_conflicts` (findings a reader could not tell apart on one film are kept apart). Hands on a list of `Spec`s,
which `medr2.phantom.generator` draws (phantom_findings) and reports (phantom_reports). Knobs: `PhantomConfig`
(docs/phantom.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# kind -> CheXpert observation
OBSERVATION_OF: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly", "widened_mediastinum": "Enlarged Cardiomediastinum", "effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "pneumonia": "Pneumonia", "atelectasis": "Atelectasis",
    "opacity": "Lung Opacity", "edema": "Edema", "nodule": "Lung Lesion", "mass": "Lung Lesion", "fracture": "Fracture",
    "pleural_thickening": "Pleural Other", "ett": "Support Devices", "central_line": "Support Devices",
    "ng_tube": "Support Devices", "pacemaker": "Support Devices", "sternotomy": "Support Devices",
}
FRACTURE_CALLUS = 0.25  # peak callus density of an overt (healing) fracture; ribs are 0.045-0.105
DEVICE_KINDS = ("ett", "central_line", "ng_tube", "pacemaker", "sternotomy")
# Findings confined to part of a film (as opposed to global ones such as cardiomegaly or oedema): training
# oversamples studies with one, because a tiny model otherwise learns to write the normal sentence for them.
FOCAL_KINDS = frozenset({"nodule", "mass", "pneumothorax", "fracture", "consolidation", "pneumonia", "atelectasis", "opacity",
                         "pleural_thickening"})
# Probability of each kind in an ABNORMAL study (before co-occurrence rules); tuned so that effusion,
# cardiomegaly, opacity and atelectasis are the most common, as in chest radiograph reports.
DEFAULT_PREVALENCE: dict[str, float] = {
    "effusion": 0.22, "cardiomegaly": 0.2, "opacity": 0.13, "atelectasis": 0.14, "consolidation": 0.09,
    "pneumonia": 0.09, "edema": 0.08, "pneumothorax": 0.1, "nodule": 0.12, "mass": 0.05, "fracture": 0.07,
    "widened_mediastinum": 0.06, "pleural_thickening": 0.06, "ett": 0.05, "central_line": 0.08, "ng_tube": 0.04,
    "pacemaker": 0.05, "sternotomy": 0.05,
}


RENDERERS = ("procedural", "drr", "mix")
# the entry points' --renderer / --drr_fraction (one spelling everywhere films are generated)
RENDERER_HELP = "procedural (drawn films), drr (projected from a real chest CT) or mix (both, --drr_fraction from the CT)"
DRR_FRACTION_HELP = "with --renderer mix: the share of studies rendered from the CT"


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
    renderer: str = "procedural"  # "procedural" (drawn films), "drr" (projected from a real chest CT, docs/drr.md) or "mix"
    drr_fraction: float = 0.5  # renderer="mix": the share of studies rendered from the CT (chosen per study seed)

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 1024:
            raise ValueError(f"size must be in 64..1024 px, got {self.size}")
        unknown = set(self.prevalence) - set(OBSERVATION_OF)
        if unknown:
            raise ValueError(f"unknown finding kinds in prevalence: {sorted(unknown)}; valid: {sorted(OBSERVATION_OF)}")
        if self.hedging not in ("visibility", "random"):
            raise ValueError(f"hedging must be 'visibility' or 'random', got {self.hedging!r}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")
        if self.opacity_placement not in ("clear", "free"):
            raise ValueError(f"opacity_placement must be 'clear' or 'free', got {self.opacity_placement!r}")
        for name in ("normal_fraction", "subtle_fraction", "hedge_fraction", "subtle_hedge_fraction", "drr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class FilmSourceArguments:
    """The `--renderer` / `--drr_fraction` pair of every entry point that generates films (one spelling, one default,
    one validation): entry-point configs inherit it, and `films()` hands the generator's config on."""

    renderer: str = field(default="procedural", metadata={"help": RENDERER_HELP})
    drr_fraction: float = field(default=PhantomConfig.drr_fraction, metadata={"help": DRR_FRACTION_HELP})

    def check_film_source(self) -> None:
        """Raise ValueError on an unknown renderer or a share outside [0, 1], before any work starts."""
        PhantomConfig(renderer=self.renderer, drr_fraction=self.drr_fraction)

    def films(self, **kwargs) -> PhantomConfig:
        """The generator's config for these films (`film_config`: the CT prepared now when it is used)."""
        from medr2.phantom.generator import film_config  # the generator needs scipy: loaded only when films are made

        return film_config(self.renderer, self.drr_fraction, **kwargs)


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
    """Would `opacity`, drawn in `side` at its zone, fall on another lung finding of `specs`? Reads only `kind`,
    `side` and `zone`, so a drawn study's `FindingRecord`s can be checked the same way."""
    for s in specs:
        if s is opacity or s.kind not in OPACITY_MERGES_INTO:
            continue
        if side in (("right", "left") if s.side == "bilateral" else (s.side,)):
            if OPACITY_MERGES_INTO[s.kind] == "lung" or s.zone == opacity.zone:
                return True
    return False


def resolve_conflicts(specs: list[Spec], config: PhantomConfig) -> None:
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
