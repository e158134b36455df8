"""Stage 0: pretrain the vision tower on the phantoms' dense ground truth, before any language.

Why: a tiny VLM trained from scratch learns only the global findings (cardiomegaly, large effusion)
and writes the normal sentence for focal ones — its loss plateaus at the entropy of the findings prior
(see ../shared/FACTS.md). Med-R2 starts from perception, so do we: the SigLIP tower learns, per 28 px
patch, which findings cover it and which lung zone it lies in, plus image-level labels and the
cardiothoracic ratio. The VLM is then built on this tower (frozen at first) by `medr2 train-sft`.

The budget is `max_steps` optimizer steps of `batch_size` films (never wall-clock: the same recipe gives the same
tower on any machine). Every `save_steps` steps the run writes `<output_dir>/checkpoint/` (weights, optimizer,
schedule, step, loss history); rerun with the same `output_dir` it resumes from there and ends at the same step with
the same weights as an uninterrupted run (the data order and the exposure jitter are functions of seed and step).

Hands on: `<output_dir>/vision_tower.safetensors` (SiglipVisionModel weights the SFT stage loads),
`<output_dir>/perception_heads.safetensors`, `<output_dir>/perception_metrics.json` (per-class val metrics and
`steps`), a loss curve PNG, and the config used.

Run: `medr2 train-perception --config recipes/demo/stage0.yaml` (flags override the YAML, e.g. `--max_steps 20`).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from medr2.labeler.findings import OBSERVATIONS
from medr2.phantom.specs import FOCAL_KINDS, FilmSourceArguments, PhantomConfig

logger = logging.getLogger(__name__)

FINDING_OBS = tuple(o for o in OBSERVATIONS if o != "No Finding")  # 13 channels
ZONES = ("outside", "right upper", "right mid", "right lower", "left upper", "left mid", "left lower")


@dataclass
class PerceptionConfig(FilmSourceArguments):
    """Stage-0 perception pretraining (one config per entry point; every field documented)."""

    output_dir: str = field(default="runs/perception", metadata={"help": "output folder (also the film cache and the checkpoint)",
                                                                 "aliases": ["--out"]})
    n_train: int = field(default=6000, metadata={"help": "phantom studies for training"})
    n_val: int = field(default=400, metadata={"help": "phantom studies for validation (separate seed)"})
    train_seed: int = field(default=1, metadata={"help": "phantom seed of the training studies (must match SFT's)"})
    val_seed: int = field(default=2, metadata={"help": "phantom seed of the validation studies"})
    image_size: int = field(default=224, metadata={"help": "model input size"})
    patch_size: int = field(default=28, metadata={"help": "ViT patch size (224/28 = 8x8 = 64 tokens)"})
    vision_hidden: int = field(default=192, metadata={"help": "tower width"})
    vision_layers: int = field(default=4, metadata={"help": "tower depth"})
    vision_heads: int = field(default=4, metadata={"help": "attention heads"})
    vision_intermediate: int = field(default=768, metadata={"help": "MLP width"})
    batch_size: int = field(default=32, metadata={"help": "batch size"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW, cosine decay, warm-up 3 percent)"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps (the budget; the cosine schedule ends here); the films are reshuffled every pass"})
    save_steps: int = field(default=500, metadata={"help": "write <output_dir>/checkpoint every this many steps (a rerun resumes from it); 0 = never"})
    focal_oversample: int = field(default=2, metadata={"help": "studies with a focal finding are seen this many times per epoch"})
    patch_coverage_full: float = field(default=0.05, metadata={"help": "mask coverage of a patch that counts as fully positive (small nodules cover ~5 percent)"})
    workers: int = field(default=2, metadata={"help": "processes for phantom generation"})
    seed: int = field(default=0, metadata={"help": "torch seed"})
    init_from: str = field(default="", metadata={"help": "continue from an earlier stage-0 output folder (tower + heads), or take the tower of a trained VLM folder (e.g. assets/model; heads start fresh); a fresh LR schedule"})
    head_warmup_steps: int = field(default=0, metadata={"help": "train only the heads (tower frozen) for this many first steps: fresh heads must not push random gradients into a trained tower"})
    photometric_augment: float = field(default=0.0, metadata={"help": "strength of label-preserving exposure jitter (gamma, contrast, noise) on training films; 0 = off"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.n_train < 1 or self.n_val < 1:
            raise ValueError("n_train and n_val must be positive")
        if self.max_steps < 1 or self.save_steps < 0:
            raise ValueError(f"max_steps must be >= 1 and save_steps >= 0, got {self.max_steps} and {self.save_steps}")
        if not 0.0 <= self.photometric_augment <= 1.0:
            raise ValueError(f"photometric_augment must be in [0, 1], got {self.photometric_augment}")
        self.check_film_source()

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _block_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each grid cell covered by a boolean mask, any input size. -> [grid, grid]"""
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(img.resize((grid, grid), Image.Resampling.BOX), dtype=np.float32)


def zone_masks(anatomy, shape: tuple[int, int]) -> list[np.ndarray]:
    """Six lung-zone masks (right upper/mid/lower, left upper/mid/lower), with the phantom's own zone bounds."""
    rows = np.arange(shape[0])[:, None]
    out = []
    for side in ("right", "left"):
        lung, (b1, b2) = anatomy.lung(side), anatomy.zone_bounds[side]
        out += [lung & (rows < b1), lung & (rows >= b1) & (rows < b2), lung & (rows >= b2)]
    return out


def example_from_study(study, config: PerceptionConfig) -> dict[str, np.ndarray]:
    """Model input and dense targets for one phantom study."""
    g = config.grid
    image = Image.fromarray(study.image).resize((config.image_size,) * 2, Image.Resampling.BICUBIC)  # as SigLIP's processor
    patch = np.zeros((g * g, len(FINDING_OBS)), dtype=np.float32)
    labels = np.zeros(len(FINDING_OBS), dtype=np.float32)
    for f in study.findings:
        k = FINDING_OBS.index(f.observation)
        labels[k] = 1.0
        cov = np.clip(_block_coverage(f.mask, g).reshape(-1) / config.patch_coverage_full, 0, 1)
        patch[:, k] = np.maximum(patch[:, k], cov)
    cover = np.stack([_block_coverage(m, g).reshape(-1) for m in zone_masks(study.anatomy, study.image.shape)])  # [6, g*g]
    zone = np.where(cover.max(0) > 0.2, cover.argmax(0) + 1, 0).astype(np.int64)
    focal = any(f.kind in FOCAL_KINDS for f in study.findings)
    return {"image": np.asarray(image, dtype=np.uint8), "patch": patch, "zone": zone, "labels": labels,
            "ctr": np.float32(study.anatomy.ctr), "focal": np.bool_(focal)}


def _make(args) -> dict[str, np.ndarray]:
    from medr2.phantom.generator import generate_study

    seed, config = args
    return example_from_study(generate_study(seed, PhantomConfig(renderer=config.renderer, drr_fraction=config.drr_fraction)), config)


def build_examples(n: int, seed: int, config: PerceptionConfig) -> dict[str, np.ndarray]:
    """Generate `n` phantom studies (same seeds as `medr2 phantom --seed`) and stack their examples.

    Cached as `<out>/examples_v<generator version>[_drr|_mix<fraction>]_<seed>_<n>_<image_size>.npz`: generation costs minutes, a
    retrain should not repeat it, and a changed generator must not silently reuse old images.
    """
    from tqdm import tqdm

    from medr2.phantom.generator import GENERATOR_VERSION

    films = {"procedural": "", "drr": "_drr", "mix": f"_mix{config.drr_fraction:g}"}[config.renderer]
    cache = Path(config.output_dir) / f"examples_v{GENERATOR_VERSION}{films}_{seed}_{n}_{config.image_size}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}

    from medr2.phantom.generator import study_seeds

    jobs = [(s, config) for s in study_seeds(n, seed)]
    with Pool(config.workers) as pool:
        rows = list(tqdm(pool.imap(_make, jobs, chunksize=16), total=n, desc=f"phantoms (seed {seed})", mininterval=10))
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **stacked)
    return stacked


class PerceptionNet(nn.Module):
    """SigLIP tower + per-patch finding and zone heads + pooled image-level and CTR heads."""

    def __init__(self, config: PerceptionConfig):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        vc = SiglipVisionConfig(hidden_size=config.vision_hidden, num_hidden_layers=config.vision_layers,
                                num_attention_heads=config.vision_heads, intermediate_size=config.vision_intermediate,
                                image_size=config.image_size, patch_size=config.patch_size, vision_use_head=False)
        self.tower = SiglipVisionModel(vc)
        d = config.vision_hidden
        self.patch_head = nn.Linear(d, len(FINDING_OBS))
        self.zone_head = nn.Linear(d, len(ZONES))
        self.image_head = nn.Linear(d, len(FINDING_OBS))
        self.ctr_head = nn.Linear(d, 1)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # LLaVA reads hidden_states[vision_feature_layer]; we build it with vision_feature_layer=-1, i.e. the
        # last encoder block *before* post_layernorm, so pretrain on exactly that tensor.
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[-1]  # [B, 64, D]

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(pixel_values)
        pooled = h.max(dim=1).values  # max-pool: a small nodule in one patch must still reach the image head
        return {"patch": self.patch_head(h), "zone": self.zone_head(h), "image": self.image_head(pooled),
                "ctr": self.ctr_head(h.mean(dim=1)).squeeze(-1)}


def load_perception(net: PerceptionNet, folder: Path) -> None:
    """Load a saved stage-0 tower and heads into `net` (strict: every key must match).

    A folder holding a trained VLM instead (config.json + weights, as `assets/model`) gives only its vision
    tower; the heads keep their fresh initialisation. Why: the shipped model carries the newest tower even
    where the stage-0 run that made it is gone (runs/ is not committed).
    """
    from safetensors.torch import load_file

    if not (folder / "vision_tower.safetensors").is_file() and (folder / "config.json").is_file():
        load_tower_grown(net.tower, vlm_tower_state(folder))
        logger.info("continuing stage 0 from the vision tower of the VLM in %s (heads start fresh)", folder)
        return
    load_tower_grown(net.tower, load_file(str(folder / "vision_tower.safetensors")))
    heads = load_file(str(folder / "perception_heads.safetensors"))
    for name in ("patch_head", "zone_head", "image_head", "ctr_head"):
        getattr(net, name).load_state_dict({k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith(name + ".")})
    logger.info("continuing stage 0 from %s", folder)


def load_tower_grown(tower: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a saved tower into `tower` (strict); a shallower saved tower is loaded into the first blocks and the
    rest start as identity blocks (`medr2.modeling.model.grow_siglip_depth`), so stage 0 can deepen a trained tower."""
    from medr2.modeling.model import grow_siglip_depth, siglip_depth, siglip_layers, state_depth

    target, saved = siglip_depth(tower), state_depth(state)
    if saved < target:
        del siglip_layers(tower)[saved:]
        tower.load_state_dict(state)
        grow_siglip_depth(tower, target)
        logger.info("deepened the saved %d-block tower to %d blocks (new blocks start as the identity)", saved, target)
        return
    tower.load_state_dict(state)


def vlm_tower_state(folder: Path) -> dict[str, torch.Tensor]:
    """The SiglipVisionModel state dict of the vision tower inside a saved VLM folder (strict key match later)."""
    from medr2.modeling.loading import load_model
    from medr2.training.sft import vision_tower_path

    model, _ = load_model(str(folder))
    tower = model.get_submodule(vision_tower_path(model))
    return {k: v.detach().clone() for k, v in tower.state_dict().items()}


def load_trained(folder: Path) -> tuple[PerceptionNet, PerceptionConfig]:
    """A saved stage-0 output folder -> the network (tower + heads, eval mode) and the config it was trained with."""
    saved = json.loads((Path(folder) / "perception_config.json").read_text())
    names = {f.name for f in fields(PerceptionConfig)}
    config = PerceptionConfig(**{k: v for k, v in saved.items() if k in names})  # older runs lack newer fields
    net = PerceptionNet(config)
    load_perception(net, Path(folder))
    return net.eval(), config


def to_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W] -> SigLIP-normalised float [B, 3, H, W] (mean = std = 0.5, as the processor does)."""
    x = torch.from_numpy(images_u8).float().div_(127.5).sub_(1.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def augment_photometric(images_u8: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Exposure jitter that keeps every label true: per film a gamma, a contrast change about mid-grey and
    sensor noise. Geometry is untouched because the patch and zone targets are tied to pixel positions.

    Why: a second pass over the same cached films lets the tower memorise their exact pixels (measured for
    the 24,000-film tower); jitter makes each pass show a slightly different film.
    """
    if strength <= 0:
        return images_u8
    n = len(images_u8)
    x = images_u8.astype(np.float32) / 255.0
    gamma = np.exp(rng.uniform(-strength, strength, n)).astype(np.float32)[:, None, None]
    contrast = (1.0 + rng.uniform(-strength / 2, strength / 2, n)).astype(np.float32)[:, None, None]
    x = (x ** gamma - 0.5) * contrast + 0.5
    x += rng.normal(0.0, 0.03 * strength, x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], pos_weight_patch, pos_weight_image) -> dict[str, torch.Tensor]:
    return {
        "patch": F.binary_cross_entropy_with_logits(out["patch"], batch["patch"], pos_weight=pos_weight_patch),
        "zone": F.cross_entropy(out["zone"].flatten(0, 1), batch["zone"].flatten()),
        "image": F.binary_cross_entropy_with_logits(out["image"], batch["labels"], pos_weight=pos_weight_image),
        "ctr": 20.0 * F.mse_loss(out["ctr"], batch["ctr"]),  # CTR varies ~0.4-0.65: scale its error to the other terms
    }


def _pos_weight(targets: np.ndarray) -> torch.Tensor:
    # Class balance: rare and small findings must count (clipped so one rare class cannot dominate).
    pos = targets.reshape(-1, targets.shape[-1]).mean(0)
    return torch.tensor(np.clip((1 - pos) / np.maximum(pos, 1e-4), 1.0, 30.0), dtype=torch.float32)


@torch.no_grad()
def evaluate(net: PerceptionNet, data: dict[str, np.ndarray], batch_size: int = 64) -> dict:
    """Per-class image-level F1 (threshold 0.5) and AUC, patch-level F1, zone accuracy, CTR MAE on `data`."""
    net.eval()
    probs, patch_probs, zone_pred, ctr = [], [], [], []
    for i in range(0, len(data["image"]), batch_size):
        out = net(to_pixels(data["image"][i:i + batch_size]))
        probs.append(torch.sigmoid(out["image"]).numpy())
        patch_probs.append(torch.sigmoid(out["patch"]).numpy())
        zone_pred.append(out["zone"].argmax(-1).numpy())
        ctr.append(out["ctr"].numpy())
    net.train()
    p, pp = np.concatenate(probs), np.concatenate(patch_probs)
    y, yp = data["labels"] > 0.5, data["patch"] > 0.5
    per_class = {}
    for k, obs in enumerate(FINDING_OBS):
        if y[:, k].sum() == 0:
            continue
        per_class[obs] = {"support": int(y[:, k].sum()), "f1": _f1(p[:, k] > 0.5, y[:, k]), "auc": _auc(p[:, k], y[:, k]),
                          "patch_f1": _f1(pp[..., k] > 0.5, yp[..., k])}
    zone_acc = float((np.concatenate(zone_pred) == data["zone"]).mean())
    return {"per_class": per_class, "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
            "zone_accuracy": zone_acc, "ctr_mae": float(np.abs(np.concatenate(ctr) - data["ctr"]).mean())}


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float((pred & true).sum())
    denom = float(pred.sum() + true.sum())
    return 2 * tp / denom if denom else 1.0


def _auc(score: np.ndarray, true: np.ndarray) -> float:
    # Mann-Whitney U: the probability that a random positive outranks a random negative.
    pos, neg = score[true], score[~true]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


HEADS = ("patch_head", "zone_head", "image_head", "ctr_head")


def _save_weights(net: PerceptionNet, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.tower.state_dict().items()}, folder / "vision_tower.safetensors")
    heads = {f"{name}.{k}": v for name in HEADS for k, v in getattr(net, name).state_dict().items()}
    save_file(heads, folder / "perception_heads.safetensors")


def _save_checkpoint(out_dir: Path, net: PerceptionNet, opt, sched, step: int, history: list[dict]) -> None:
    """Write `<out>/checkpoint` whole or not at all: a kill while writing leaves the previous checkpoint intact."""
    import shutil

    tmp, final = out_dir / "checkpoint.tmp", out_dir / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(net, tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history},
               tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _resume(out_dir: Path, net: PerceptionNet, opt, sched) -> tuple[int, list[dict]]:
    """Load `<out>/checkpoint` into net, optimizer and schedule if there is one: (step, history) to continue from."""
    folder = out_dir / "checkpoint"
    if not (folder / "trainer_state.pt").is_file():
        return 0, []
    load_perception(net, folder)
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    logger.info("resuming stage 0 from %s at step %d", folder, state["step"])
    return state["step"], state["history"]


def _batch_ids(index: np.ndarray, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Film ids of (0-based) `step`: passes over `index` in an order drawn from (seed, pass), so any step's batch
    is known without replaying the run (what makes resume exact)."""
    per_pass = math.ceil(len(index) / batch_size)
    order = np.random.default_rng([seed, step // per_pass]).permutation(index)
    b = step % per_pass
    return np.sort(order[b * batch_size:(b + 1) * batch_size])


def train(config: PerceptionConfig) -> dict:
    """Run (or resume) stage 0 for `max_steps` and write the tower, heads, metrics and curve to `output_dir`."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.renderer != "procedural":
        config.films()  # the CT, prepared once before the workers fork
    train_data = build_examples(config.n_train, config.train_seed, config)
    val_data = build_examples(config.n_val, config.val_seed, config)
    net = PerceptionNet(config)
    if config.init_from:
        load_perception(net, Path(config.init_from))
    pw_patch, pw_image = _pos_weight(train_data["patch"]), _pos_weight(train_data["labels"])
    # Focal studies appear `focal_oversample` times per pass: they carry the small signs the tower must learn.
    index = np.concatenate([np.arange(config.n_train)] + [np.flatnonzero(train_data["focal"])] * (config.focal_oversample - 1))
    total = config.max_steps
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.05)
    # linear warm-up over the first 3 % of the budget, then cosine decay to 0 at max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, 0.03 * total)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    step, history = _resume(out_dir, net, opt, sched)
    start = time.time()
    bar = tqdm(total=total, initial=step, desc="stage 0 perception", mininterval=10)
    net.tower.requires_grad_(step >= config.head_warmup_steps)
    while step < total:
        ids = _batch_ids(index, step, config.batch_size, config.seed)
        batch = {k: torch.from_numpy(train_data[k][ids]) for k in ("patch", "zone", "labels", "ctr")}
        films = augment_photometric(train_data["image"][ids], config.photometric_augment, np.random.default_rng([config.seed, 1, step]))
        parts = losses(net(to_pixels(films)), batch, pw_patch, pw_image)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step == config.head_warmup_steps:
            net.tower.requires_grad_(True)
        history.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)  # the bar redraws every mininterval, not every step
        if config.save_steps and step % config.save_steps == 0 and step < total:
            _save_checkpoint(out_dir, net, opt, sched, step, history)
    bar.close()
    seconds = time.time() - start
    metrics = evaluate(net, val_data)
    metrics.update({"steps": step, "samples_seen": step * config.batch_size, "minutes": seconds / 60})
    logger.info("stage 0 val: macro F1 %.3f, zone acc %.3f, CTR MAE %.3f", metrics["macro_f1"], metrics["zone_accuracy"], metrics["ctr_mae"])
    _save_weights(net, out_dir)
    (out_dir / "perception_config.json").write_text(json.dumps(asdict(config), indent=2))
    (out_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    plot_losses(history, out_dir / "perception_loss.png")
    # written last: its presence with `steps == max_steps` is what marks the stage finished
    (out_dir / "perception_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def plot_losses(history: list[dict], path: Path) -> None:
    """Total and per-head training losses (moving average over 20 steps)."""
    from medr2.training.plots import Panel, plot_panels

    steps = [h["step"] for h in history]
    series = {key: (steps, [h[key] for h in history]) for key in ("loss", "patch", "zone", "image", "ctr")}
    plot_panels(path, [Panel("Stage 0: perception pretraining", series, ylabel="loss (moving avg 20)", log_y=True, smooth=20)])


def parse_config(argv: list[str]) -> PerceptionConfig:
    """Fields from a YAML recipe (`--config`, alias `--recipe`) and/or flags, flags winning (the one CLI parser)."""
    from medr2.cli import parse_config as parse

    return parse("medr2 train-perception", PerceptionConfig, argv)


def cli_train_perception(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_config(argv)
    except UsageError as exc:
        return fail("medr2 train-perception", exc)
    from medr2.phantom.ct_volume import CTUnavailable

    try:
        metrics = train(config)
    except (FileNotFoundError, CTUnavailable) as exc:  # an input of the recipe (a previous stage's folder, the CT) is missing
        return fail("medr2 train-perception", exc)
    print(json.dumps({k: metrics[k] for k in ("macro_f1", "zone_accuracy", "ctr_mae", "steps", "minutes")}, indent=2))
    return 0
