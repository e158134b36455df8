"""Fitting the look heads (`medr2 fit-look-heads`): linear per-patch heads on a model's frozen vision tower, then
optionally a look reader (a copy of the tower tuned on films and region crops) and a region classifier.

Trained on phantom films rendered at 512 px (the crops then hold real extra detail) and on crops of them, with the
per-patch truth of the phantom masks; thresholds per observation are chosen on validation films (seed 2) as the
F1-best of the region-max probability (of the crop maximum for a reader, of the classifier's reading for a region
classifier). Hands on a `look_heads.npz` that `medr2.reflection.heads.LookHeads.load` reads.

`--renderer drr|mix` fits them on films projected from the real chest CT too (as a model trained on them needs).

Hands on: `LookHeadsConfig`, `films_of`, `fit_look_heads`, `fit_region_classifier`, `tune_reader`, `view_images`,
`cli_fit_look_heads`.
"""
from __future__ import annotations

import copy
import functools
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medr2.phantom.specs import FilmSourceArguments, PhantomConfig
from medr2.reflection.heads import (
    OBSERVATIONS,
    LookHeads,
    RegionClassifier,
    patch_targets,
    to_input,
    tower_checksum,
    tower_features,
    tower_of,
)
from medr2.reflection.regions import LOOK_REGIONS, crop_region, regions_for

logger = logging.getLogger(__name__)


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


def choose_thresholds(heads: LookHeads, tower, n: int, seed: int, films: PhantomConfig) -> tuple[np.ndarray, dict]:
    """Per-observation thresholds: the F1-best cut of the whole-film maximum probability on validation films. Whole
    films, because that is where the reflection reads the heads (crops are out of the tower's training scale and
    read much worse: measured in docs/reflection.md)."""
    from medr2.phantom.generator import generate_studies

    scores, truth = [], []
    for study in generate_studies(n, seed, films):
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


def choose_crop_thresholds(heads: LookHeads, tower, n: int, seed: int, films: PhantomConfig) -> tuple[np.ndarray, dict]:
    """Per-observation thresholds of the look reader on region crops: the F1-best cut of a crop's maximum
    probability against the crop's mask truth, over every look region of `n` validation films."""
    from medr2.phantom.generator import generate_studies
    from medr2.reflection.regions import region_box

    scores, truth = [], []
    for study in generate_studies(n, seed, films):
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
class LookHeadsConfig(FilmSourceArguments):
    """`medr2 fit-look-heads`: fit the look heads on a model's vision tower (frozen), and optionally tune a copy of
    the tower at the look scale (the look reader); the renderer is that of the films the model was trained on."""

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


def films_of(config: LookHeadsConfig) -> PhantomConfig:
    """The fitting and validation films of `config`: its renderer at its film size (the CT prepared once, here)."""
    return _film_config(config.renderer, config.drr_fraction, config.film_size)


@functools.lru_cache(maxsize=4)
def _film_config(renderer: str, drr_fraction: float, film_size: int) -> PhantomConfig:
    from medr2.phantom.generator import film_config

    return film_config(renderer, drr_fraction, size=film_size)


def _study_views(args) -> list[tuple[np.ndarray, np.ndarray]]:
    from medr2.phantom.generator import generate_study

    study_seed, films, random_crops = args
    study = generate_study(study_seed, films)
    return [(to_input(image), target) for image, target in study_views(study, random.Random(study_seed), random_crops)]


def view_images(n: int, seed: int, films: PhantomConfig, random_crops: int = 1, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every view (film and region crops) of `n` phantom studies of `seed` at the tower's input size: uint8
    [V, 224, 224] and their per-patch truth [V, 64, 13]."""
    from multiprocessing import Pool

    from tqdm import tqdm

    from medr2.phantom.generator import study_seeds

    images, targets = [], []
    with Pool(workers) as pool:
        jobs = [(s, films, random_crops) for s in study_seeds(n, seed)]
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
    from medr2.phantom.generator import generate_study
    from medr2.reflection.regions import region_box

    study_seed, films = args
    study = generate_study(study_seed, films)
    crops = np.stack([to_input(crop_region(study.image, r)) for r in LOOK_REGIONS])
    truth = np.stack([(patch_targets(study.findings, study.image.shape, region_box(r, study.image.shape)) > 0.5).any(axis=0)
                      for r in LOOK_REGIONS])
    return to_input(study.image), crops, truth


def region_features(heads: LookHeads, tower, n: int, seed: int, films: PhantomConfig, workers: int = 2):
    """Every look region of `n` phantom studies of `seed`: crop features (the look reader) [N*R, 64, D], film
    features (the model's tower) [N, 64, D], region index [N*R] and truth [N*R, 13] (mask inside the window)."""
    from tqdm import tqdm

    from medr2.phantom.generator import map_in_workers, study_seeds

    jobs = [(s, films) for s in study_seeds(n, seed)]
    whole_films, crops, truth = [], [], []
    views = map_in_workers(_region_views, jobs, workers)
    for film, crop, t in tqdm(views, total=n, desc="region classifier: views", mininterval=10):
        whole_films.append(film)
        crops.append(crop)
        truth.append(t)
    r = len(LOOK_REGIONS)
    film_features = tower_features(tower, np.stack(whole_films)).half()
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
    crop, film, index, truth = region_features(heads, tower, config.n_train, config.train_seed, films_of(config))
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
    v_crop, v_film, v_index, v_truth = region_features(heads, tower, config.n_val, config.val_seed, films_of(config))
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

    films_of(config)  # a bad renderer or a missing CT fails here, before the model loads
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
    images, targets = view_images(config.n_train, config.train_seed, films_of(config), config.random_crops)
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
    kind = "phantom" if config.renderer == "procedural" else (
        "CT-rendered" if config.renderer == "drr" else f"mixed ({config.drr_fraction:.0%} CT-rendered)")
    heads.meta = {"fitted_on": f"{kind} phantom films {config.film_size} px, seed {config.train_seed}, n={config.n_train}, whole films and region crops",
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
    heads.thresholds, per_obs = choose_thresholds(heads, tower, config.n_val, config.val_seed, films_of(config))
    heads.meta.update(thresholds_from=f"validation seed {config.val_seed}, n={config.n_val}: F1-best of the whole-film maximum",
                      per_observation=per_obs)
    if heads.reader is not None:
        heads.crop_thresholds, per_crop = choose_crop_thresholds(heads, tower, config.n_val, config.val_seed, films_of(config))
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
    from medr2.phantom.ct_volume import CTUnavailable

    try:
        result = fit_look_heads(config)
    except (ValueError, FileNotFoundError, CTUnavailable) as exc:
        return fail("medr2 fit-look-heads", exc)
    for obs, row in result["per_observation"].items():
        crop = f" | crops F1 {row['val_crop_f1']:.3f} at {row['crop_threshold']:.3f}" if "val_crop_f1" in row else ""
        crop += f" | regions F1 {row['val_region_f1']:.3f} (crop max {row['val_crop_max_f1']:.3f})" if "val_region_f1" in row else ""
        print(f"{obs:28s} films F1 {row['val_film_f1']:.3f} at {row['threshold']:.3f} ({row['val_positive_films']} positive){crop}")
    print(result["path"])
    return 0
