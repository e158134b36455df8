"""Input gate: is this film inside what the model learned? Runs before generation, one line per reason.

Two checks, in this order:
1. **Tags** (DICOM only; no model needed): a modality other than CR / DX / DR, a body part recorded and not chest,
   or — for a radiograph — a view position that is not frontal (lateral, oblique, decubitus, or not recorded).
   PNG and JPEG carry no tags and get no tag reasons.
2. **Content** (models whose folder carries input statistics): the image goes through the processor exactly as the
   pipeline feeds it and through the model's own vision tower once; the patch features are mean-pooled (LLaVA: the
   SigLIP tower's output; Qwen-VL: the merged patch features) and the Mahalanobis distance of that vector from the
   training films' mean, under a Ledoit-Wolf-shrunk covariance, is the score. A score above the threshold — the
   99.5th percentile of held-out validation phantoms' scores, so at most ~0.5 % of training-like films are
   flagged — marks the film as outside the training distribution.

Hands on: `check_input(loaded, model, processor, stats) -> InputCheck(in_distribution, score, threshold, reasons)`
to the pipeline, CLI and app; `fit_gate` / `GateStats.save` / `load_gate` for the statistics stored in the model
folder as `input_gate.json` + `input_gate.npz` (`medr2 fit-gate --model DIR`). Measured in
`benchmarks/bench_gate.py`; see docs/gate.md.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medr2.phantom.specs import FilmSourceArguments

logger = logging.getLogger(__name__)

GATE_JSON = "input_gate.json"
# Not *.safetensors: a model folder's weights hash (provenance) covers every *.safetensors file in it.
GATE_TENSORS = "input_gate.npz"
FEATURE = "tower_mean"  # mean over patches of the vision tower's output (chosen on validation: docs/gate.md)
QUANTILE = 0.995  # threshold = this quantile of validation scores: ~0.5 % of training-like films flagged (target <= 1 %)
TRAIN_SEED, VALIDATION_SEED, TEST_SEED = 1, 2, 3

RADIOGRAPH_MODALITIES = {"CR", "DX", "DR"}  # DR: not a DICOM defined term, but some vendors write it for DX
FRONTAL_VIEWS = {"PA", "AP", "APS", "PAS"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_ABDOMEN", "CHESTABDOMEN", "RIBS", "RIB"}
UNKNOWN_REASON = "distribution unknown: the model folder has no input statistics"
# The loader keeps body_part in the metadata only when it is chest and says so in a warning otherwise:
# read the part from that warning ("body part KNEE is not chest…", "body part recorded in the file is not chest…").
_BODY_WARNING = re.compile(r"^body part (?P<part>[A-Z_]+|recorded in the file) is not chest")


@dataclass
class InputCheck:
    """The gate's verdict on one input.

    in_distribution: False when any reason flags the film (tags or content), True when the content check passed
    and no tag flags it, None when nothing flags it but the model has no input statistics (distribution unknown).
    score / threshold: the content distance and its cut-off (None without statistics).
    reasons: one line each, user-facing; "distribution unknown: …" when there are no statistics.
    """

    in_distribution: bool | None
    score: float | None
    threshold: float | None
    reasons: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return self.in_distribution is False

    def to_json(self) -> dict:
        return {"in_distribution": self.in_distribution,
                "score": None if self.score is None else round(self.score, 3),
                "threshold": None if self.threshold is None else round(self.threshold, 3),
                "reasons": list(self.reasons)}


@dataclass(eq=False)
class GateStats:
    """Training-film statistics in the model's vision feature space and the threshold chosen on validation.

    mean: [D]; precision: [D, D], the inverse of the shrunk covariance; info: how they were fitted (feature,
    seeds, counts, shrinkage, quantile, the weights' hash they belong to).
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    info: dict = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` [N, D] (or one [D] vector) from the training mean."""
        x = np.atleast_2d(np.asarray(features, np.float64)) - self.mean.astype(np.float64)
        d2 = np.einsum("ij,jk,ik->i", x, self.precision.astype(np.float64), x)
        return np.sqrt(np.maximum(d2, 0.0))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / GATE_TENSORS, "wb") as fh:  # plain arrays, read back with allow_pickle=False
            np.savez(fh, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32))
        (folder / GATE_JSON).write_text(json.dumps({"threshold": float(self.threshold), **self.info}, indent=2) + "\n")


def load_gate(folder: str | Path, *, check_weights: bool = True) -> GateStats | None:
    """The model folder's input statistics, or None when it has none (a hub id, a real LVLM without a fit).

    With `check_weights`, statistics fitted on other weights (the folder's safetensors changed since) count as
    none: a distance in another model's feature space means nothing.
    """
    folder = Path(folder)
    if not (folder / GATE_JSON).is_file() or not (folder / GATE_TENSORS).is_file():
        return None
    info = json.loads((folder / GATE_JSON).read_text())
    with np.load(folder / GATE_TENSORS, allow_pickle=False) as arrays:
        mean, precision = arrays["mean"], arrays["precision"]
    if check_weights and info.get("weights_sha256"):
        from medr2.modeling.loading import weights_sha256

        if weights_sha256(folder) != info["weights_sha256"]:
            logger.warning("%s: input statistics were fitted on other weights; ignoring them", folder.name)
            return None
    threshold = float(info.pop("threshold"))
    return GateStats(mean, precision, threshold, info)


# ------------------------------------------------------------------------------------------------ tag checks
def tag_reasons(loaded) -> list[str]:
    """One line per tag that puts a DICOM outside frontal chest radiographs; [] for PNG/JPEG (no tags)."""
    if getattr(loaded, "source_format", None) != "dicom":
        return []
    meta, reasons = loaded.metadata, []
    modality = str(meta.get("modality") or "")
    if modality not in RADIOGRAPH_MODALITIES:
        what = f"modality {modality}" if modality else "no recognised modality"
        reasons.append(f"{what}: not a radiograph (CR/DX); medr2 reads chest radiographs")
    body = str(meta.get("body_part") or "")
    if not body:  # the loader drops non-chest parts from the metadata but names them in a warning
        body = next((m["part"] for w in loaded.warnings if (m := _BODY_WARNING.match(w))), "")
    if body and body not in CHEST_PARTS:
        shown = "the body part recorded in the file" if body == "recorded in the file" else f"body part {body}"
        reasons.append(f"{shown} is not chest")
    if modality in RADIOGRAPH_MODALITIES:  # a view position only means something for a projection radiograph
        view = str(meta.get("view_position") or "")
        if view in LATERAL_VIEWS:
            reasons.append(f"lateral view ({view}): medr2 reads frontal (PA/AP) films")
        elif view and view not in FRONTAL_VIEWS:
            reasons.append(f"{view} view is not frontal (PA/AP)")
        elif not view:
            reasons.append("view position not recorded (or not recognised): medr2 reads frontal (PA/AP) films")
    return reasons


# ------------------------------------------------------------------------------------------------ content check
def pixel_values(processor, images: Sequence) -> dict:
    """Vision inputs exactly as `medr2.modeling.model.prepare_inputs` builds them (same RGB conversion, same
    image processor), without the text: `pixel_values` (+ `image_grid_thw` for Qwen-VL)."""
    from medr2.modeling.model import to_pil_rgb

    pils = [to_pil_rgb(_pixels(im)) for im in images]
    if type(processor.image_processor).__name__.startswith("Idefics3"):  # a flat list would be one sample's images
        pils = [[p] for p in pils]
    out = processor.image_processor(images=pils, return_tensors="pt")
    return {k: out[k] for k in ("pixel_values", "image_grid_thw") if k in out}


def _pixels(image):
    """A LoadedImage, PIL image or array → what `to_pil_rgb` takes (the pipeline feeds `loaded.to_pil()`)."""
    return image.to_pil() if hasattr(image, "to_pil") else image


def features(model, processor=None, images: Sequence = (), *, inputs: dict | None = None):
    """[N, D] float32 features: the vision tower's patch features, mean-pooled; one tower forward per image.

    Pass `images` (LoadedImage / PIL / arrays) with the processor, or `inputs` already built (`pixel_values`,
    `image_grid_thw` for Qwen-VL), e.g. the pipeline's own.
    """
    import torch

    from medr2.saliency import vlm_arch, vlm_base, vlm_part

    if inputs is None:
        inputs = pixel_values(processor, images)
    base = vlm_base(model)
    device = next(base.parameters()).device
    with torch.no_grad():
        if vlm_arch(model) == "llava":
            tower = vlm_part(model, "vision_tower")
            pv = inputs["pixel_values"].to(device, dtype=tower.dtype)
            if pv.dim() == 5:  # several views a film (LLaVA-OneVision, Idefics3): the one that shows the whole film
                pv = whole_film_view(model, pv)
            pooled = tower(pixel_values=pv).last_hidden_state.mean(dim=1)
        else:  # Qwen2(.5)-VL: the merged patch features the language model reads, split per image
            pv = inputs["pixel_values"].to(device, dtype=vlm_part(model, "visual").dtype)
            out = base.get_image_features(pixel_values=pv, image_grid_thw=inputs["image_grid_thw"].to(device))
            per_image = getattr(out, "pooler_output", out)
            pooled = torch.stack([f.mean(dim=0) for f in per_image])
    return pooled.float().cpu().numpy()


def whole_film_view(model, pixel_values):
    """[N, views, C, H, W] -> [N, C, H, W]: each film's whole-film view, the one saliency draws on
    (`medr2.saliency.layers.VIEW_OF`: LLaVA-OneVision's first; Idefics3's last real one, before its all-zero padding)."""
    import torch

    from medr2.saliency.layers import VIEW_OF, vlm_model_type

    if VIEW_OF.get(vlm_model_type(model), 0) == 0:
        return pixel_values[:, 0]
    real = pixel_values.flatten(2).abs().sum(-1) > 0  # [N, views]
    last = real.shape[1] - 1 - torch.flip(real, dims=[1]).int().argmax(dim=1)
    return pixel_values[torch.arange(len(pixel_values)), last]


def batched_features(model, processor, images: Iterable, batch_size: int = 32) -> np.ndarray:
    rows, chunk = [], []
    for image in images:
        chunk.append(image)
        if len(chunk) == batch_size:
            rows.append(features(model, processor, chunk))
            chunk = []
    if chunk:
        rows.append(features(model, processor, chunk))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, shrunk covariance, shrinkage) by Ledoit & Wolf (2004): the sample covariance pulled towards a
    scaled identity by the amount that minimises the expected Frobenius error (as sklearn's LedoitWolf)."""
    x = np.asarray(x, np.float64)
    n, p = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = float(((s - mu * np.eye(p)) ** 2).sum())
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - n ||S||_F^2 (no N x p x p tensor)
    b2 = float(((xc ** 2).sum(axis=1) ** 2).sum() - n * (s ** 2).sum()) / n ** 2
    shrink = 0.0 if d2 == 0 else min(max(b2, 0.0), d2) / d2
    return mean, (1.0 - shrink) * s + shrink * mu * np.eye(p), shrink


def fit_gate(model, processor, images: Iterable, validation_images: Iterable | None = None, *,
             quantile: float = QUANTILE, batch_size: int = 32, info: dict | None = None) -> GateStats:
    """Fit mean + shrunk covariance on training-like `images`; threshold = `quantile` of the held-out
    `validation_images`' scores (without them, of the fitting images' own scores — optimistic, for tests)."""
    train = batched_features(model, processor, images, batch_size)
    if len(train) < 2:
        raise ValueError(f"fit_gate needs at least 2 training images, got {len(train)}")
    mean, cov, shrink = ledoit_wolf(train)
    precision = np.linalg.inv(cov)
    stats = GateStats(mean.astype(np.float32), precision.astype(np.float32), 0.0,
                      {"feature": FEATURE, "dim": int(train.shape[1]), "n_fit": int(len(train)),
                       "shrinkage": round(shrink, 6), "quantile": quantile, **(info or {})})
    val = train if validation_images is None else batched_features(model, processor, validation_images, batch_size)
    scores = stats.score(val)
    stats.threshold = float(np.quantile(scores, quantile))
    stats.info.update({"n_val": int(len(val)), "val_score_median": round(float(np.median(scores)), 4),
                       "val_score_max": round(float(scores.max()), 4)})
    return stats


def check_input(loaded, model=None, processor=None, stats: GateStats | None = None, *,
                inputs: dict | None = None) -> InputCheck:
    """The gate's verdict on one LoadedImage: tag reasons, then the content distance when `stats` (and the model
    and processor, or the pipeline's `inputs`) are given. Cost of the content check: one vision-tower forward."""
    reasons = tag_reasons(loaded)
    if stats is None or model is None or (processor is None and inputs is None):
        if not reasons:
            return InputCheck(None, None, None, [UNKNOWN_REASON])
        return InputCheck(False, None, None, reasons + [UNKNOWN_REASON])
    score = float(stats.score(features(model, processor, [loaded], inputs=inputs))[0])
    if score > stats.threshold:
        reasons.append(f"the image is unlike the films the model was trained on (distance {score:.1f}, "
                       f"threshold {stats.threshold:.1f})")
    return InputCheck(not reasons, score, stats.threshold, reasons)


# ------------------------------------------------------------------------------------------------ command
@dataclass
class FitGateConfig(FilmSourceArguments):
    """`medr2 fit-gate` options (flags or a `--config` YAML file); the renderer is that of the films the model was
    trained on."""

    model: str | None = field(default=None, metadata={"help": "model folder; the statistics are written into it"})
    n: int = field(default=2000, metadata={"help": "training-like phantom films to fit mean and covariance on"})
    seed: int = field(default=TRAIN_SEED, metadata={"help": "phantom seed of the fitting films (a training seed)"})
    val_n: int = field(default=1000, metadata={"help": "held-out phantom films the threshold is chosen on"})
    val_seed: int = field(default=VALIDATION_SEED, metadata={"help": "phantom seed of the threshold films (2 = validation)"})
    quantile: float = field(default=QUANTILE, metadata={"help": "threshold = this quantile of the validation scores"})
    batch_size: int = field(default=32, metadata={"help": "images per tower forward"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    output_dir: str | None = field(default=None, metadata={"help": "write the statistics here instead of the model folder"})


def phantom_images(n: int, seed: int, films=None):
    """Phantom films (`films`: a `PhantomConfig`, default the procedural one) as the pipeline sees them: PNG-encoded
    and loaded back (`as_loaded`), so pixels match."""
    from medr2.inference.pipeline import as_loaded
    from medr2.phantom.generator import generate_studies

    for study in generate_studies(n, seed=seed, config=films):
        yield as_loaded(study.image)


def cli_fit_gate(argv: list[str]) -> int:
    """`medr2 fit-gate --model DIR`: fit the input gate's statistics on phantoms and store them in the model folder."""
    from medr2.cli import UsageError, fail, parse_config
    from medr2.phantom.ct_volume import CTUnavailable

    prog = "medr2 fit-gate"
    try:
        config = parse_config(prog, FitGateConfig, argv, description=__doc__.splitlines()[0])
        if not config.model or not Path(config.model).is_dir():
            raise UsageError(f"--model must be a model folder, got {config.model!r}")
        if TEST_SEED in (config.seed, config.val_seed):
            raise UsageError(f"seed {TEST_SEED} is the test split; fit on a training seed, choose on {VALIDATION_SEED}")
        if config.seed == config.val_seed:
            raise UsageError("--seed and --val_seed must differ: the threshold is chosen on held-out films")
        if config.n < 2 or config.val_n < 1 or not 0.5 <= config.quantile < 1:
            raise UsageError("--n >= 2, --val_n >= 1 and 0.5 <= --quantile < 1 are needed")
        films = config.films()
    except (UsageError, ValueError, CTUnavailable) as exc:
        return fail(prog, exc)
    import torch

    from medr2.modeling.loading import ModelLoadError, load_model, weights_sha256

    torch.set_num_threads(config.threads)
    try:
        model, processor = load_model(config.model, device="cpu")
    except ModelLoadError as exc:
        return fail(prog, exc)
    t0 = time.perf_counter()
    info = {"fit_seed": config.seed, "val_seed": config.val_seed, "weights_sha256": weights_sha256(config.model),
            "renderer": config.renderer, "command": " ".join([prog, *argv])}
    if config.renderer == "mix":
        info["drr_fraction"] = config.drr_fraction
    stats = fit_gate(model, processor, phantom_images(config.n, config.seed, films),
                     phantom_images(config.val_n, config.val_seed, films), quantile=config.quantile,
                     batch_size=config.batch_size, info=info)
    out = Path(config.output_dir or config.model)
    stats.save(out)
    print(f"fitted on {config.n} {config.renderer} phantoms (seed {config.seed}), threshold {stats.threshold:.3f} = "
          f"{config.quantile:g} quantile of {config.val_n} validation phantoms (seed {config.val_seed}); "
          f"{time.perf_counter() - t0:.0f} s; wrote {out / GATE_JSON} and {out / GATE_TENSORS}", file=sys.stderr)
    print(json.dumps({"threshold": stats.threshold, **stats.info}, indent=2))
    return 0


__all__ = ["InputCheck", "GateStats", "check_input", "tag_reasons", "fit_gate", "load_gate", "features",
           "pixel_values", "ledoit_wolf", "cli_fit_gate", "GATE_JSON", "GATE_TENSORS", "UNKNOWN_REASON"]
