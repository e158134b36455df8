"""Look heads: small per-patch finding classifiers on the model's own vision tower — the reflection's independent
signal.

Why: about half of the embedded model's focal misses are the language model's (the tower's features carried the
finding, the report dropped it), and a draft cannot catch its own blind spot by re-reading itself. A linear head per
observation over the tower's patch features (the tensor the projector reads) gives a second opinion that does not
pass through the language model. It reads the whole film (where to look) and each magnified crop (what the look
found). The model's tower stays frozen, so the heads stay valid as long as it is unchanged (the weights file records
the tower's checksum and loading refuses a mismatch).

The model's tower was trained at the film's scale and reads crops poorly, so `--tune_tower` adds a look reader: a
copy of the tower tuned with the heads on films and region crops (per-patch mask truth at both scales: stage 0 at the
look scale). The heads then read each crop itself, at thresholds chosen on validation crops. The copy lives in the
heads file (float16), so the language model's tower — and the draft — stay exactly as trained.

Trained on phantom films rendered at 512 px (the crops then hold real extra detail) and on crops of them, with the
per-patch truth of the phantom masks; thresholds per observation are chosen on validation films (seed 2) as the
F1-best of the region-max probability. Stored beside the model as `look_heads.npz` (npz, not safetensors: the model's
weights checksum covers every *.safetensors file).

Hands on: `LookHeads` (`read(images) -> [B, 64, 13]` probabilities, `region_reading`, `thresholds`), `region_max`,
`fit_look_heads`, `cli_fit_look_heads` (`medr2 fit-look-heads`).
"""
from __future__ import annotations

import copy
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
READER_PREFIX = "reader::"  # npz keys of the look reader's tower weights
REGION_PREFIX = "region::"  # npz keys of the region classifier's weights
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


class RegionClassifier(torch.nn.Module):
    """What a look region holds, read from both scales at once: the look reader's patch features of the region's
    magnified crop (pooled three ways: mean, max and a learned attention) beside the model's own patch features of the
    same region on the whole film (mean and max) and the region's identity -> one logit per observation.

    Why not the per-patch heads' maximum: a lung finding is told from its siblings by its shape and extent over
    several patches (a round, sharp nodule; a pleura-based consolidation with air bronchograms; a faint patch that
    keeps the markings), which no single patch's linear reading holds. Measured on validation regions: opacity F1
    0.41 -> 0.70, pneumonia 0.57 -> 0.80, fracture 0.53 -> 0.84 (docs/reflection.md)."""

    def __init__(self, dim: int, hidden: int = 256, n_regions: int = len(LOOK_REGIONS)):
        super().__init__()
        self.attention = torch.nn.Linear(dim, len(OBSERVATIONS))
        self.region = torch.nn.Embedding(n_regions, 32)
        width = dim * 5 + 32
        self.mlp = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, hidden), torch.nn.GELU(),
                                       torch.nn.Dropout(0.1), torch.nn.Linear(hidden, len(OBSERVATIONS)))
        self.register_buffer("patches", torch.from_numpy(np.stack([region_patches(r, 8) for r in LOOK_REGIONS])).float(),
                             persistent=False)

    def forward(self, crop: torch.Tensor, film: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """crop, film: patch features [B, 64, D]; region: index into LOOK_REGIONS [B] -> logits [B, 13]."""
        weights = torch.softmax(self.attention(crop).mean(-1, keepdim=True), dim=1)
        inside = self.patches[region].unsqueeze(-1)  # the film's patches inside the region's window
        film_mean = (film * inside).sum(1) / inside.sum(1)
        film_max = (film * inside + (inside - 1) * 1e4).max(1).values
        parts = [crop.mean(1), crop.max(1).values, (weights * crop).sum(1), film_mean, film_max, self.region(region)]
        return self.mlp(torch.cat(parts, -1))


class LookHeads:
    """One linear head per observation over patch features; probabilities per patch."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, thresholds: np.ndarray, checksum: str, meta: dict,
                 reader: torch.nn.Module | None = None, crop_thresholds: np.ndarray | None = None,
                 region_classifier: RegionClassifier | None = None, region_thresholds: np.ndarray | None = None):
        self.weight = torch.from_numpy(weight.astype(np.float32))  # [13, D]
        self.bias = torch.from_numpy(bias.astype(np.float32))  # [13]
        self.thresholds = thresholds.astype(np.float32)  # cuts of the whole-film maximum (where to look)
        self.checksum = checksum
        self.meta = meta
        # A look reader: a copy of the model's tower tuned at the look scale (films and region crops). With it the
        # heads read each crop itself (new evidence); without it they read the whole film only (the frozen tower
        # reads crops far worse than films).
        self.reader = reader
        self.crop_thresholds = None if crop_thresholds is None else crop_thresholds.astype(np.float32)
        # A region classifier (needs the reader): reads a region from the crop and the film together.
        self.region_classifier = region_classifier
        self.region_thresholds = None if region_thresholds is None else region_thresholds.astype(np.float32)

    @property
    def reads_crops(self) -> bool:
        return self.reader is not None and self.crop_thresholds is not None

    @property
    def reads_regions(self) -> bool:
        return self.reads_crops and self.region_classifier is not None and self.region_thresholds is not None

    @classmethod
    def load(cls, folder: str | Path, tower: torch.nn.Module | None = None) -> LookHeads | None:
        """The heads stored beside a model, or None when it has none; with `tower`, None (and a log line) when the
        heads were fitted on another tower."""
        path = Path(folder) / HEADS_FILE
        if not path.is_file():
            return None
        with np.load(path) as data:
            reader_state = {k[len(READER_PREFIX):]: torch.from_numpy(data[k].astype(np.float32))
                            for k in data.files if k.startswith(READER_PREFIX)}
            region_state = {k[len(REGION_PREFIX):]: torch.from_numpy(data[k].astype(np.float32))
                            for k in data.files if k.startswith(REGION_PREFIX)}
            heads = cls(data["weight"], data["bias"], data["thresholds"], str(data["checksum"]),
                        json.loads(str(data["meta"])),
                        crop_thresholds=data["crop_thresholds"] if "crop_thresholds" in data.files else None,
                        region_thresholds=data["region_thresholds"] if "region_thresholds" in data.files else None)
        if tower is not None and tower_checksum(tower) != heads.checksum:
            logger.warning("%s was fitted on another vision tower; the reflection runs without its heads", path)
            return None
        if reader_state:
            if tower is None:
                raise ValueError(f"{path} carries a look reader: pass the model's vision tower to load it")
            heads.reader = copy.deepcopy(tower).float().eval()
            heads.reader.load_state_dict(reader_state)
        if region_state:
            heads.region_classifier = RegionClassifier(heads.weight.shape[1]).eval()
            heads.region_classifier.load_state_dict(region_state)
        return heads

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / HEADS_FILE
        extra = {}
        if self.reader is not None:  # float16 keeps the model folder small; the reader runs in float32
            extra = {READER_PREFIX + k: v.detach().to(torch.float16).numpy() for k, v in self.reader.state_dict().items()}
        if self.crop_thresholds is not None:
            extra["crop_thresholds"] = self.crop_thresholds
        if self.region_classifier is not None:
            extra.update({REGION_PREFIX + k: v.detach().to(torch.float16).numpy()
                          for k, v in self.region_classifier.state_dict().items()})
        if self.region_thresholds is not None:
            extra["region_thresholds"] = self.region_thresholds
        np.savez(path, weight=self.weight.numpy(), bias=self.bias.numpy(), thresholds=self.thresholds,
                 checksum=np.array(self.checksum), meta=np.array(json.dumps(self.meta)), **extra)
        return path

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(features @ self.weight.T + self.bias).numpy()  # [B, 64, 13]

    def read(self, tower: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
        """Per-patch probabilities [B, 64, 13] of full films or crops (any size, grayscale uint8), through the look
        reader when there is one, else through the model's `tower`."""
        return self.probabilities(tower_features(self.reader or tower, np.stack([to_input(im) for im in images])))

    def region_reading(self, tower: torch.nn.Module, film: np.ndarray, film_probs: np.ndarray,
                       region: str) -> tuple[np.ndarray, np.ndarray]:
        """What the heads see in a looked-at region: (probability per observation [13], the thresholds that go with
        it) — read by the region classifier from the crop and the film when there is one, else on the region's
        magnified crop when there is a look reader, else the whole film's reading."""
        if self.reads_regions:
            return self.read_regions(tower, film, [region])[0], self.region_thresholds
        if self.reads_crops:
            return self.read(tower, [crop_region(film, region)])[0].max(axis=0), self.crop_thresholds
        return region_max(film_probs, region), self.thresholds

    @torch.no_grad()
    def read_regions(self, tower: torch.nn.Module, film: np.ndarray, regions: list[str]) -> np.ndarray:
        """The region classifier's probabilities [len(regions), 13] for regions of one full-resolution film."""
        film_features = tower_features(tower, to_input(film)[None]).expand(len(regions), -1, -1)
        crop_features = tower_features(self.reader, np.stack([to_input(crop_region(film, r)) for r in regions]))
        index = torch.tensor([list(LOOK_REGIONS).index(r) for r in regions])
        return torch.sigmoid(self.region_classifier(crop_features, film_features, index)).numpy()


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
        f1, thresholds[k] = _best_cut(score[:, k], truth[:, k])
        per_obs[obs] = {"val_film_f1": round(f1, 3), "threshold": float(thresholds[k]), "val_positive_films": int(truth[:, k].sum())}
    return thresholds, per_obs


def _best_cut(score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(F1, threshold): the F1-best cut of `score` against bool `truth`."""
    best = (0.0, 0.5)
    for t in np.concatenate([np.linspace(0.05, 0.95, 19), [0.97, 0.98, 0.99, 0.995, 0.998]]):
        pred = score >= t
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        best = max(best, (float(2 * tp / max(2 * tp + fp + fn, 1)), float(t)))
    return best


def choose_crop_thresholds(heads: LookHeads, tower, n: int, seed: int, film_size: int) -> tuple[np.ndarray, dict]:
    """Per-observation thresholds of the look reader on region crops: the F1-best cut of a crop's maximum
    probability against the crop's mask truth, over every look region of `n` validation films."""
    from medr2.phantom.generator import PhantomConfig, generate_studies
    from medr2.reflection.regions import region_box

    scores, truth = [], []
    for study in generate_studies(n, seed, PhantomConfig(size=film_size)):
        probs = heads.read(tower, [crop_region(study.image, r) for r in LOOK_REGIONS])
        scores.append(probs.max(axis=1))
        truth.append([(patch_targets(study.findings, study.image.shape, region_box(r, study.image.shape)) > 0.5).any(axis=0)
                      for r in LOOK_REGIONS])
    score, truth = np.concatenate(scores), np.concatenate(truth)
    thresholds, per_obs = np.full(len(OBSERVATIONS), 0.5, dtype=np.float32), {}
    for k, obs in enumerate(OBSERVATIONS):
        f1, thresholds[k] = _best_cut(score[:, k], truth[:, k])
        per_obs[obs] = {"val_crop_f1": round(f1, 3), "crop_threshold": float(thresholds[k]), "val_positive_crops": int(truth[:, k].sum())}
    return thresholds, per_obs


@dataclass
class LookHeadsConfig:
    """`medr2 fit-look-heads`: fit the look heads on a model's vision tower (frozen), and optionally tune a copy of
    the tower at the look scale (the look reader)."""

    model: str = field(default="assets/model", metadata={"help": "model folder whose vision tower the heads read"})
    output_dir: str | None = field(default=None, metadata={"help": "where look_heads.npz goes (default: the model folder)", "aliases": ["--out"]})
    n_train: int = field(default=2000, metadata={"help": "phantom studies to fit on"})
    train_seed: int = field(default=31, metadata={"help": "phantom seed of the fitting studies (not a seed the model trained on)"})
    n_val: int = field(default=400, metadata={"help": "validation studies (thresholds)"})
    val_seed: int = field(default=2, metadata={"help": "validation seed"})
    film_size: int = field(default=512, metadata={"help": "phantom film side in px (crops keep the extra detail)"})
    random_crops: int = field(default=1, metadata={"help": "crops of random regions per study besides its findings' regions (normal looks must read as normal)"})
    steps: int = field(default=600, metadata={"help": "full-batch optimizer steps of the linear heads on the frozen tower"})
    tune_tower: bool = field(default=False, metadata={"help": "then tune a copy of the tower with the heads on films and crops: a look reader that reads each crop itself"})
    tune_steps: int = field(default=800, metadata={"help": "optimizer steps of the look reader (batches of batch_size views)"})
    batch_size: int = field(default=32, metadata={"help": "views per look-reader step"})
    tower_lr: float = field(default=3e-4, metadata={"help": "peak learning rate of the look reader's tower (the heads take 3x; warm-up 50 steps, cosine decay)"})
    region_classifier: bool = field(default=False, metadata={"help": "fit a region classifier on the look reader in output_dir (or the one tuned now): it reads each looked-at region from the crop and the film together"})
    region_epochs: int = field(default=25, metadata={"help": "epochs of the region classifier over its regions (n_train films x 8 regions)"})
    thresholds_only: bool = field(default=False, metadata={"help": "keep the heads in output_dir (or the model folder) and only choose their thresholds again"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _study_views(args) -> list[tuple[np.ndarray, np.ndarray]]:
    from medr2.phantom.generator import PhantomConfig, generate_study

    study_seed, film_size, random_crops = args
    study = generate_study(study_seed, PhantomConfig(size=film_size))
    return [(to_input(image), target) for image, target in study_views(study, random.Random(study_seed), random_crops)]


def view_images(n: int, seed: int, film_size: int, random_crops: int = 1, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every view (film and region crops) of `n` phantom studies of `seed` at the tower's input size: uint8
    [V, 224, 224] and their per-patch truth [V, 64, 13]."""
    from multiprocessing import Pool

    from tqdm import tqdm

    from medr2.phantom.generator import study_seeds

    images, targets = [], []
    with Pool(workers) as pool:
        jobs = [(s, film_size, random_crops) for s in study_seeds(n, seed)]
        for views in tqdm(pool.imap(_study_views, jobs, chunksize=8), total=n, desc="look heads: views", mininterval=10):
            for image, target in views:
                images.append(image)
                targets.append(target)
    return np.stack(images), np.stack(targets).astype(np.float32)


def _pos_weight(targets: torch.Tensor) -> torch.Tensor:
    positive = (targets.reshape(-1, targets.shape[-1]) > 0.5).float().mean(0).clamp_min(1e-4)
    return ((1 - positive) / positive).clamp(1.0, 50.0)  # rare, small findings must count


def tune_reader(tower: torch.nn.Module, head: torch.nn.Linear, images: np.ndarray, targets: np.ndarray,
                config: LookHeadsConfig) -> torch.nn.Module:
    """A copy of `tower` tuned with `head` (in place) on the views' per-patch truth: the look reader."""
    import math

    from tqdm import tqdm

    from medr2.training.perception import to_pixels

    reader = copy.deepcopy(tower).float().train()
    y = torch.from_numpy(targets)
    pos_weight = _pos_weight(y)
    optimizer = torch.optim.AdamW([{"params": reader.parameters(), "lr": config.tower_lr},
                                   {"params": head.parameters(), "lr": 3 * config.tower_lr}], weight_decay=0.01)
    warmup = min(50, config.tune_steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * step / config.tune_steps)))
    rng = np.random.default_rng(config.seed)
    for step in tqdm(range(config.tune_steps), desc="look reader", mininterval=30):
        batch = rng.integers(0, len(images), config.batch_size)
        features = reader(pixel_values=to_pixels(images[batch]), output_hidden_states=True).hidden_states[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(features), y[batch], pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            logger.info("look reader step %d loss %.4f", step, loss.item())
    return reader.eval()


def _region_views(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from medr2.phantom.generator import PhantomConfig, generate_study
    from medr2.reflection.regions import region_box

    study_seed, film_size = args
    study = generate_study(study_seed, PhantomConfig(size=film_size))
    crops = np.stack([to_input(crop_region(study.image, r)) for r in LOOK_REGIONS])
    truth = np.stack([(patch_targets(study.findings, study.image.shape, region_box(r, study.image.shape)) > 0.5).any(axis=0)
                      for r in LOOK_REGIONS])
    return to_input(study.image), crops, truth


def region_features(heads: LookHeads, tower, n: int, seed: int, film_size: int, workers: int = 2):
    """Every look region of `n` phantom studies of `seed`: crop features (the look reader) [N*R, 64, D], film
    features (the model's tower) [N, 64, D], region index [N*R] and truth [N*R, 13] (mask inside the window)."""
    from multiprocessing import Pool

    from tqdm import tqdm

    from medr2.phantom.generator import study_seeds

    films, crops, truth = [], [], []
    with Pool(workers) as pool:
        jobs = [(s, film_size) for s in study_seeds(n, seed)]
        for film, crop, t in tqdm(pool.imap(_region_views, jobs, chunksize=8), total=n, desc="region classifier: views", mininterval=10):
            films.append(film)
            crops.append(crop)
            truth.append(t)
    r = len(LOOK_REGIONS)
    film_features = tower_features(tower, np.stack(films)).half()
    crop_features = tower_features(heads.reader, np.concatenate(crops)).half()
    index = torch.arange(r).repeat(n)
    return crop_features, film_features, index, torch.from_numpy(np.concatenate(truth)).float()


def _region_logits(classifier: RegionClassifier, crop, film, index, rows, r: int) -> torch.Tensor:
    return classifier(crop[rows].float(), film[rows // r].float(), index[rows])


def fit_region_classifier(heads: LookHeads, tower, config: LookHeadsConfig) -> dict:
    """Train `heads.region_classifier` on fresh phantom films (`n_train` of `train_seed`) and choose its thresholds
    (F1-best per observation) on the validation films' regions; per-observation validation F1 of the classifier and,
    as its baseline, of the reader's crop maximum on the same regions."""
    if heads.reader is None:
        raise ValueError("a region classifier reads the look reader's crop features: fit the reader first (--tune_tower true)")
    r = len(LOOK_REGIONS)
    crop, film, index, truth = region_features(heads, tower, config.n_train, config.train_seed, config.film_size)
    classifier = RegionClassifier(crop.shape[-1])
    positive = truth.mean(0).clamp_min(1e-3)
    pos_weight = ((1 - positive) / positive).clamp(1.0, 20.0)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    from tqdm import tqdm

    for _ in tqdm(range(config.region_epochs), desc="region classifier", mininterval=30):
        classifier.train()
        order = torch.randperm(len(truth), generator=generator)
        for i in range(0, len(order), 256):
            rows = order[i:i + 256]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                _region_logits(classifier, crop, film, index, rows, r), truth[rows], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    classifier.eval()
    del crop, film
    v_crop, v_film, v_index, v_truth = region_features(heads, tower, config.n_val, config.val_seed, config.film_size)
    with torch.no_grad():
        score = torch.sigmoid(_region_logits(classifier, v_crop, v_film, v_index, torch.arange(len(v_truth)), r)).numpy()
        baseline = heads.probabilities(v_crop.float()).max(axis=1)
    v_truth = v_truth.numpy() > 0.5
    heads.region_classifier = classifier
    heads.region_thresholds = np.full(len(OBSERVATIONS), 0.5, dtype=np.float32)
    per_obs = {}
    for k, obs in enumerate(OBSERVATIONS):
        f1, heads.region_thresholds[k] = _best_cut(score[:, k], v_truth[:, k])
        per_obs[obs] = {"val_region_f1": round(f1, 3), "region_threshold": float(heads.region_thresholds[k]),
                        "val_crop_max_f1": round(_best_cut(baseline[:, k], v_truth[:, k])[0], 3),
                        "val_positive_regions": int(v_truth[:, k].sum())}
    heads.meta["region_classifier"] = (f"crop (look reader) + film (model tower) patch features of each look region, "
                                       f"pooled, MLP; {config.n_train} phantom films of seed {config.train_seed}, "
                                       f"{config.region_epochs} epochs; thresholds: validation seed {config.val_seed}, n={config.n_val}")
    for obs, row in per_obs.items():
        heads.meta.setdefault("per_observation", {}).setdefault(obs, {}).update(row)
    return per_obs


def fit_look_heads(config: LookHeadsConfig) -> dict:
    from medr2.modeling.loading import load_model

    torch.manual_seed(config.seed)
    model, _ = load_model(config.model)
    tower = tower_of(model).float().eval()
    out = Path(config.output_dir or config.model)
    if config.thresholds_only:
        heads = LookHeads.load(out, tower)
        if heads is None:
            raise FileNotFoundError(f"no look heads for this tower in {out}")
        _choose_thresholds(heads, tower, config)
        return {"path": str(heads.save(out)), **heads.meta}
    if config.region_classifier and not config.tune_tower:  # add a classifier to the reader already in output_dir
        heads = LookHeads.load(out, tower)
        if heads is None:
            raise FileNotFoundError(f"no look heads for this tower in {out}")
        fit_region_classifier(heads, tower, config)
        return {"path": str(heads.save(out)), **heads.meta}
    images, targets = view_images(config.n_train, config.train_seed, config.film_size, config.random_crops)
    x, y = tower_features(tower, images), torch.from_numpy(targets)
    d = x.shape[-1]
    head = torch.nn.Linear(d, len(OBSERVATIONS))
    flat_x, flat_y = x.reshape(-1, d), y.reshape(-1, len(OBSERVATIONS))
    pos_weight = _pos_weight(flat_y)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(config.steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(flat_x), flat_y, pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            logger.info("look heads step %d loss %.4f", step, loss.item())
    del x, flat_x
    reader = tune_reader(tower, head, images, targets, config) if config.tune_tower else None
    heads = LookHeads(head.weight.detach().numpy(), head.bias.detach().numpy(), np.full(len(OBSERVATIONS), 0.5, np.float32),
                      tower_checksum(tower), {}, reader=reader)
    heads.meta = {"fitted_on": f"phantom films {config.film_size} px, seed {config.train_seed}, n={config.n_train}, whole films and region crops",
                  "observations": list(OBSERVATIONS)}
    if reader is not None:
        heads.meta["look_reader"] = (f"a copy of the model's vision tower tuned {config.tune_steps} steps of {config.batch_size} views "
                                     f"(films and region crops, per-patch mask truth): the heads read each crop itself")
    _choose_thresholds(heads, tower, config)
    if config.region_classifier:
        fit_region_classifier(heads, tower, config)
    path = heads.save(out)
    logger.info("look heads written to %s", path)
    return {"path": str(path), **heads.meta}


def _choose_thresholds(heads: LookHeads, tower, config: LookHeadsConfig) -> None:
    heads.thresholds, per_obs = choose_thresholds(heads, tower, config.n_val, config.val_seed, config.film_size)
    heads.meta.update(thresholds_from=f"validation seed {config.val_seed}, n={config.n_val}: F1-best of the whole-film maximum",
                      per_observation=per_obs)
    if heads.reader is not None:
        heads.crop_thresholds, per_crop = choose_crop_thresholds(heads, tower, config.n_val, config.val_seed, config.film_size)
        heads.meta["crop_thresholds_from"] = (f"validation seed {config.val_seed}, n={config.n_val}: F1-best of a region crop's "
                                              "maximum against the crop's mask truth, every look region")
        for obs, row in per_crop.items():
            per_obs[obs].update(row)


def cli_fit_look_heads(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_config("medr2 fit-look-heads", LookHeadsConfig, argv)
    except UsageError as exc:
        return fail("medr2 fit-look-heads", exc)
    if config.output_dir:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        result = fit_look_heads(config)
    except (ValueError, FileNotFoundError) as exc:
        return fail("medr2 fit-look-heads", exc)
    for obs, row in result["per_observation"].items():
        crop = f" | crops F1 {row['val_crop_f1']:.3f} at {row['crop_threshold']:.3f}" if "val_crop_f1" in row else ""
        crop += f" | regions F1 {row['val_region_f1']:.3f} (crop max {row['val_crop_max_f1']:.3f})" if "val_region_f1" in row else ""
        print(f"{obs:28s} films F1 {row['val_film_f1']:.3f} at {row['threshold']:.3f} ({row['val_positive_films']} positive){crop}")
    print(result["path"])
    return 0
