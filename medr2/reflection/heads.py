"""Look heads: small per-patch finding classifiers on the model's own vision tower — the reflection's independent
signal.

Why: about half of the embedded model's focal misses are the language model's (the tower's features carried the
finding, the report dropped it), and a draft cannot catch its own blind spot by re-reading itself. A linear head per
observation over the tower's patch features (the tensor the projector reads) gives a second opinion that does not
pass through the language model. It reads the whole film (where to look) and each magnified crop (what the look
found). The tower stays frozen, so the heads stay valid as long as the tower is unchanged (the weights file records
the tower's checksum and loading refuses a mismatch).

Trained on phantom films rendered at 512 px (the crops then hold real extra detail) and on crops of them, with the
per-patch truth of the phantom masks; thresholds per observation are chosen on validation films (seed 2) as the
F1-best of the region-max probability. Stored beside the model as `look_heads.npz` (npz, not safetensors: the model's
weights checksum covers every *.safetensors file).

Hands on: `LookHeads` (`read(images) -> [B, 64, 13]` probabilities, `region_max`, `thresholds`), `fit_look_heads`,
`cli_fit_look_heads` (`medr2 fit-look-heads`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medr2.reflection.regions import LOOK_REGIONS, crop_region, region_patches, regions_for

logger = logging.getLogger(__name__)

HEADS_FILE = "look_heads.npz"
OBSERVATIONS = ('Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Lesion', 'Lung Opacity', 'Edema', 'Consolidation',
                'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
                'Support Devices')  # the 13 finding observations of stage 0 (CheXpert order, no "No Finding")
INPUT = 224
COVERAGE_FULL = 0.05  # mask coverage at which a patch counts as fully positive (a small nodule covers ~5 %)


def tower_of(model) -> torch.nn.Module:
    from medr2.training.sft import vision_tower_path

    return model.get_submodule(vision_tower_path(model))


def tower_checksum(tower: torch.nn.Module) -> str:
    """Short checksum of the tower's weights: heads are only valid on the tower they were fitted on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().round(4).tobytes())
    return digest.hexdigest()[:16]


def to_input(image: np.ndarray) -> np.ndarray:
    """Any grayscale uint8 image (film or crop) -> the tower's 224-px input, resized as SigLIP's processor does."""
    return np.asarray(Image.fromarray(image).convert("L").resize((INPUT, INPUT), Image.Resampling.BICUBIC), dtype=np.uint8)


@torch.no_grad()
def tower_features(tower: torch.nn.Module, images_224: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """uint8 [B, 224, 224] -> the patch features the projector reads (last block, before post-layernorm) [B, 64, D]."""
    from medr2.training.perception import to_pixels

    dtype = next(tower.parameters()).dtype
    out = []
    for i in range(0, len(images_224), batch_size):
        pixels = to_pixels(images_224[i:i + batch_size]).to(dtype)
        out.append(tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1].float())
    return torch.cat(out)


class LookHeads:
    """One linear head per observation over patch features; probabilities per patch."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, thresholds: np.ndarray, checksum: str, meta: dict):
        self.weight = torch.from_numpy(weight.astype(np.float32))  # [13, D]
        self.bias = torch.from_numpy(bias.astype(np.float32))  # [13]
        self.thresholds = thresholds.astype(np.float32)
        self.checksum = checksum
        self.meta = meta

    @classmethod
    def load(cls, folder: str | Path, tower: torch.nn.Module | None = None) -> LookHeads | None:
        """The heads stored beside a model, or None when it has none; with `tower`, None (and a log line) when the
        heads were fitted on another tower."""
        path = Path(folder) / HEADS_FILE
        if not path.is_file():
            return None
        with np.load(path) as data:
            heads = cls(data["weight"], data["bias"], data["thresholds"], str(data["checksum"]),
                        json.loads(str(data["meta"])))
        if tower is not None and tower_checksum(tower) != heads.checksum:
            logger.warning("%s was fitted on another vision tower; the reflection runs without its heads", path)
            return None
        return heads

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / HEADS_FILE
        np.savez(path, weight=self.weight.numpy(), bias=self.bias.numpy(), thresholds=self.thresholds,
                 checksum=np.array(self.checksum), meta=np.array(json.dumps(self.meta)))
        return path

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(features @ self.weight.T + self.bias).numpy()  # [B, 64, 13]

    def read(self, tower: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
        """Per-patch probabilities [B, 64, 13] of full films or crops (any size, grayscale uint8)."""
        return self.probabilities(tower_features(tower, np.stack([to_input(im) for im in images])))


def region_max(probs: np.ndarray, region: str) -> np.ndarray:
    """Whole-film patch probabilities [64, 13] -> the highest probability per observation inside `region` [13]."""
    grid = int(round(np.sqrt(probs.shape[0])))
    return probs[region_patches(region, grid)].max(axis=0)


def patch_targets(findings, image_shape: tuple[int, int], box: tuple[int, int, int, int] | None, grid: int = 8) -> np.ndarray:
    """Soft per-patch truth [grid * grid, 13] from the phantom masks, for the whole film (`box=None`) or a crop."""
    from medr2.training.perception import _block_coverage

    target = np.zeros((grid * grid, len(OBSERVATIONS)), dtype=np.float32)
    for f in findings:
        mask = f.mask
        if mask.shape != image_shape:  # masks are drawn at the film's size
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image_shape[::-1], Image.Resampling.NEAREST)) > 127
        if box is not None:
            top, left, bottom, right = box
            mask = mask[top:bottom, left:right]
        cover = np.clip(_block_coverage(mask, grid).reshape(-1) / COVERAGE_FULL, 0, 1)
        k = OBSERVATIONS.index(f.observation)
        target[:, k] = np.maximum(target[:, k], cover)
    return target


def study_views(study, rng: random.Random, n_random: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, per-patch truth) pairs of one study: the whole film, a crop of each finding's region and
    `n_random` crops of random regions (looks at normal regions must read as normal)."""
    from medr2.reflection.regions import region_box

    views = [(study.image, patch_targets(study.findings, study.image.shape, None))]
    names = {r for f in study.findings for r in regions_for(f.observation, [f.side or ""], [f.zone or ""])}
    names |= set(rng.sample(sorted(LOOK_REGIONS), n_random))
    for name in sorted(names):
        box = region_box(name, study.image.shape)
        views.append((crop_region(study.image, name), patch_targets(study.findings, study.image.shape, box)))
    return views


def choose_thresholds(heads: LookHeads, tower, n: int, seed: int, film_size: int) -> tuple[np.ndarray, dict]:
    """Per-observation thresholds: the F1-best cut of the whole-film maximum probability on validation films. Whole
    films, because that is where the reflection reads the heads (crops are out of the tower's training scale and
    read much worse: measured in docs/reflection.md)."""
    from medr2.phantom.generator import PhantomConfig, generate_studies

    scores, truth = [], []
    for study in generate_studies(n, seed, PhantomConfig(size=film_size)):
        scores.append(heads.read(tower, [study.image])[0].max(axis=0))
        truth.append((patch_targets(study.findings, study.image.shape, None) > 0.5).any(axis=0))
    score, truth = np.array(scores), np.array(truth)
    thresholds, per_obs = np.full(len(OBSERVATIONS), 0.5, dtype=np.float32), {}
    for k, obs in enumerate(OBSERVATIONS):
        best = (0.0, 0.5)
        for t in np.concatenate([np.linspace(0.05, 0.95, 19), [0.97, 0.98, 0.99, 0.995, 0.998]]):
            pred = score[:, k] >= t
            tp, fp, fn = (pred & truth[:, k]).sum(), (pred & ~truth[:, k]).sum(), (~pred & truth[:, k]).sum()
            best = max(best, (float(2 * tp / max(2 * tp + fp + fn, 1)), float(t)))
        thresholds[k] = best[1]
        per_obs[obs] = {"val_film_f1": round(best[0], 3), "threshold": best[1], "val_positive_films": int(truth[:, k].sum())}
    return thresholds, per_obs


@dataclass
class LookHeadsConfig:
    """`medr2 fit-look-heads`: fit the look heads on a model's frozen vision tower."""

    model: str = field(default="assets/model", metadata={"help": "model folder whose vision tower the heads read"})
    output_dir: str | None = field(default=None, metadata={"help": "where look_heads.npz goes (default: the model folder)", "aliases": ["--out"]})
    n_train: int = field(default=2000, metadata={"help": "phantom studies to fit on"})
    train_seed: int = field(default=31, metadata={"help": "phantom seed of the fitting studies (not a seed the model trained on)"})
    n_val: int = field(default=400, metadata={"help": "validation studies (thresholds)"})
    val_seed: int = field(default=2, metadata={"help": "validation seed"})
    film_size: int = field(default=512, metadata={"help": "phantom film side in px (crops keep the extra detail)"})
    steps: int = field(default=600, metadata={"help": "full-batch optimizer steps"})
    thresholds_only: bool = field(default=False, metadata={"help": "keep the heads in output_dir (or the model folder) and only choose their thresholds again"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _views_dataset(tower, n: int, seed: int, film_size: int, rng: random.Random, desc: str):
    from tqdm import tqdm

    from medr2.phantom.generator import PhantomConfig, generate_studies

    feats, targets, films = [], [], []
    studies = []
    for study in tqdm(generate_studies(n, seed, PhantomConfig(size=film_size)), total=n, desc=desc, mininterval=10):
        views = study_views(study, rng)
        feats.append(tower_features(tower, np.stack([to_input(v[0]) for v in views])))
        targets.append(torch.from_numpy(np.stack([v[1] for v in views])))
        films.append(len(views))
        studies.append([(f.observation, f.side, f.zone) for f in study.findings])
    return torch.cat(feats), torch.cat(targets), films, studies


def fit_look_heads(config: LookHeadsConfig) -> dict:
    from medr2.modeling.loading import load_model

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model, _ = load_model(config.model)
    tower = tower_of(model).float().eval()
    if config.thresholds_only:
        heads = LookHeads.load(config.output_dir or config.model, tower)
        if heads is None:
            raise FileNotFoundError(f"no look heads for this tower in {config.output_dir or config.model}")
        heads.thresholds, per_obs = choose_thresholds(heads, tower, config.n_val, config.val_seed, config.film_size)
        heads.meta.update(thresholds_from=f"validation seed {config.val_seed}, n={config.n_val}: F1-best of the whole-film maximum",
                          per_observation=per_obs)
        return {"path": str(heads.save(Path(config.output_dir or config.model))), **heads.meta}
    x, y, _, _ = _views_dataset(tower, config.n_train, config.train_seed, config.film_size, rng, "look heads: fitting films")
    d = x.shape[-1]
    head = torch.nn.Linear(d, len(OBSERVATIONS))
    flat_x, flat_y = x.reshape(-1, d), y.reshape(-1, len(OBSERVATIONS))
    positive = (flat_y > 0.5).float().mean(0).clamp_min(1e-4)
    pos_weight = ((1 - positive) / positive).clamp(1.0, 50.0)  # rare, small findings must count
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(config.steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(flat_x), flat_y, pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            logger.info("look heads step %d loss %.4f", step, loss.item())
    heads = LookHeads(head.weight.detach().numpy(), head.bias.detach().numpy(), np.full(len(OBSERVATIONS), 0.5, np.float32),
                      tower_checksum(tower), {})
    thresholds, per_obs = choose_thresholds(heads, tower, config.n_val, config.val_seed, config.film_size)
    heads.thresholds = thresholds
    heads.meta = {"fitted_on": f"phantom films {config.film_size} px, seed {config.train_seed}, n={config.n_train}, whole films and region crops",
                  "thresholds_from": f"validation seed {config.val_seed}, n={config.n_val}: F1-best of the whole-film maximum",
                  "observations": list(OBSERVATIONS), "per_observation": per_obs}
    path = heads.save(Path(config.output_dir or config.model))
    logger.info("look heads written to %s", path)
    return {"path": str(path), **heads.meta}


def cli_fit_look_heads(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_config("medr2 fit-look-heads", LookHeadsConfig, argv)
    except UsageError as exc:
        return fail("medr2 fit-look-heads", exc)
    if config.output_dir:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    result = fit_look_heads(config)
    for obs, row in result["per_observation"].items():
        print(f"{obs:28s} val F1 {row['val_film_f1']:.3f} at {row['threshold']:.3f} ({row['val_positive_films']} positive films)")
    print(result["path"])
    return 0
