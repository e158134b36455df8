"""Where did the model look? Per-finding saliency maps for a generated report (Grad-CAM by default).

For one `StudyResult` (prompt + generated ids kept by the pipeline) this module:
1. locates the targets in the generated text: each positive/uncertain finding of the final report (its
   sentences, found with the same labeler as the findings table), each abnormal perception line, and the
   whole report — char spans mapped to generated-token spans (`medr2.saliency.targets`);
2. re-runs the model teacher-forced on prompt + generated ids once, with probes on the explained vision
   layers (`layers_for`: by default every vision block the language model reads), and takes one backward
   pass per target: target = summed log-probability of its tokens;
3. turns activations x gradients into a patch-grid map per layer (gradient x activation by default;
   Grad-CAM: ReLU(sum_c mean_hw(dS/dA_c) A_c)); with several layers, each layer's map is rectified and
   scaled to a maximum of 1 and the maps are summed (LayerCAM-style fusion across depth), optionally with
   per-finding block weights (`depth_weights`: a model's `saliency.json`, chosen on validation phantoms by
   `medr2 saliency-depth`); the result is normalised to [0, 1] and upsampled to the original image size.

Hands on a `SaliencyResult` (arrays only) that the app overlays with `overlay` + `legend_image`.
`gradcam` / `gradxact` compute exactly captum's `LayerGradCam` / `LayerGradientXActivation` per layer (a
test holds them equal) but share one forward across targets and layers; `ig` is captum's
`IntegratedGradients` on the pixels; `random` / `center` are the baselines of
`benchmarks/saliency_faithfulness.py`.
"""
from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medr2.saliency.layers import (
    DEFAULT_LAYER,
    LayerProbe,
    PatchLayout,
    layers_for,
    patch_layout,
    qwen_patch_order,
    vlm_arch,
    vlm_base,
)
from medr2.saliency.targets import (
    EVIDENCE_MIN,
    Target,
    evidence_share,
    locate_targets,
    plausible_region,
    token_char_spans,
    token_weights,
)

log = logging.getLogger(__name__)

# Chosen by benchmarks/saliency_faithfulness.py with the embedded model: gradient x activation beat Grad-CAM
# and Integrated Gradients on pointing game and energy in mask (300 held-out phantoms), and fusing all vision
# blocks beat the last block alone on validation phantoms (seed 2) before it was measured on the test seed.
# See docs/saliency.md and benchmarks/results/saliency_faithfulness.json.
DEFAULT_METHOD = "gradxact"
DEPTH_FILE = "saliency.json"  # in a model folder: which vision blocks each finding's map fuses (see depth_rows)
IG_STEPS = 8  # Integrated Gradients steps: a baseline, so few (each step costs a forward + backward)


@dataclass
class SaliencyMap:
    """One explained target. `heatmap` is at the original image size, `grid` on the vision patch grid."""

    target: str  # "Pleural Effusion", "report", or a perception region "right lung, lower zone"
    kind: str  # "finding" | "perception" | "report"
    text: str  # the sentence(s) / perception line the map explains
    value: int | None  # 1 positive / -1 uncertain for findings
    heatmap: np.ndarray  # float32 [H, W] in [0, 1]
    grid: np.ndarray  # float32 [gh, gw] in [0, 1]
    method: str
    score: float = 0.0  # the target's summed log-probability (teacher-forced)
    evidence: float | None = None  # findings: share of the map's energy in the anatomically plausible region
    weak_evidence: bool = False  # evidence < EVIDENCE_MIN: show "weak visual evidence"


@dataclass
class SaliencyResult:
    maps: list[SaliencyMap]
    method: str
    seconds: float

    def for_target(self, target: str) -> SaliencyMap | None:
        return next((m for m in self.maps if m.target == target), None)


# ------------------------------------------------------------------------------------------ engine
def _n_images(model, inputs, pixel_values: torch.Tensor) -> int:
    if vlm_arch(model) == "llava":  # [B, C, H, W], or [B, views, C, H, W] (LLaVA-OneVision, Idefics3)
        return pixel_values.shape[0]
    per_image = int(inputs["image_grid_thw"][0].prod())
    return pixel_values.shape[0] // per_image


def token_logprobs(model, inputs, new_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced log-probability of each generated token: [B, T] for B copies of the image rows."""
    pv = inputs["pixel_values"] if pixel_values is None else pixel_values
    b, t = _n_images(model, inputs, pv), new_ids.shape[1]
    new_ids = new_ids.to(inputs["input_ids"].device)
    kwargs = {"input_ids": torch.cat([inputs["input_ids"][:1], new_ids[:1]], 1).expand(b, -1),
              "attention_mask": torch.cat([inputs["attention_mask"][:1], torch.ones_like(new_ids[:1])], 1).expand(b, -1),
              "pixel_values": pv.to(vlm_base(model).dtype)}
    # Qwen-VL (transformers 5) builds M-RoPE positions from mm_token_type_ids; Gemma 3 lets image tokens attend to each
    # other both ways where token_type_ids marks them (without it the image rows attend causally: other log-probs
    # than the generation's). The generated tokens are text (0) in both.
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            kwargs[key] = torch.cat([inputs[key][:1], torch.zeros_like(new_ids[:1])], 1).expand(b, -1)
    if "image_grid_thw" in inputs:
        kwargs["image_grid_thw"] = inputs["image_grid_thw"][:1].expand(b, -1)
    # LLaVA-OneVision places its crops by the film's size; Idefics3 masks padded pixels (and drops all-zero views)
    for key in ("image_sizes", "pixel_attention_mask"):
        if key in inputs:
            kwargs[key] = inputs[key][:1].expand(b, *inputs[key].shape[1:])
    logits = model(**kwargs, logits_to_keep=t + 1).logits[:, :t].float()  # [B, T, V]: position P-1+j predicts token j
    return torch.log_softmax(logits, -1).gather(-1, new_ids[:1].expand(b, -1)[..., None])[..., 0]


@dataclass
class _Context:
    model: torch.nn.Module
    inputs: object
    new_ids: torch.Tensor
    weights: torch.Tensor  # [K, T]
    layout: PatchLayout
    layers: list[torch.nn.Module]
    names: list[str]
    depth: torch.Tensor | None = None  # [K, L] block weights of each target's fused map; None = all 1
    cache: dict = field(default_factory=dict)

    def layer_grads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward, one backward per target: activations [L, D, gh, gw], gradients [K, L, D, gh, gw],
        scores [K] (L = explained layers)."""
        if "grads" not in self.cache:
            probes = [LayerProbe(m, self.layout, chain=i > 0) for i, m in enumerate(self.layers)]
            with ExitStack() as stack, torch.enable_grad():
                for probe in probes:
                    stack.enter_context(probe)
                lp = token_logprobs(self.model, self.inputs, self.new_ids)[0]  # [T]
                scores = self.weights.to(lp.device) @ lp  # [K]
                k, acts = len(scores), [p.acts for p in probes]
                view = self.layout.view  # the image's row in [views, D, gh, gw]: its only one, or the whole-film view
                grads = [torch.stack([g[view] for g in torch.autograd.grad(scores[i], acts, retain_graph=i < k - 1)])
                         for i in range(k)]
            self.cache["grads"] = (torch.stack([a[view] for a in acts]).detach(), torch.stack(grads).detach(), scores.detach())
        return self.cache["grads"]


def fuse_layers(per_layer: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
    """[K, L, gh, gw] -> [K, gh, gw]. One layer: its raw map (what captum returns). Several: each layer's
    map rectified and scaled to a maximum of 1, then summed with the targets' block weights `depth` [K, L]
    (default all 1), so no layer dominates by its activation scale."""
    if per_layer.shape[1] == 1:
        return per_layer[:, 0]
    pos = per_layer.clamp_min(0)
    scaled = pos / pos.amax((2, 3), keepdim=True).clamp_min(torch.finfo(pos.dtype).tiny)
    return scaled.sum(1) if depth is None else (scaled * depth.to(scaled)[..., None, None]).sum(1)


def _gradcam_layers(ctx: _Context) -> torch.Tensor:
    acts, grads, _ = ctx.layer_grads()
    return (grads.mean((3, 4), keepdim=True) * acts).sum(2)  # captum LayerGradCam per layer, channels summed


def _gradxact_layers(ctx: _Context) -> torch.Tensor:
    acts, grads, _ = ctx.layer_grads()
    return (grads * acts).sum(2)  # captum LayerGradientXActivation per layer, channels summed


def _gradcam(ctx: _Context) -> torch.Tensor:
    return fuse_layers(_gradcam_layers(ctx), ctx.depth)


def _gradxact(ctx: _Context) -> torch.Tensor:
    return fuse_layers(_gradxact_layers(ctx), ctx.depth)


def _ig(ctx: _Context) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    k, pv = len(ctx.weights), ctx.inputs["pixel_values"]

    def forward(pixels: torch.Tensor) -> torch.Tensor:  # row r of an expanded batch is target r % K
        lp = token_logprobs(ctx.model, ctx.inputs, ctx.new_ids, pixels)
        return (lp * ctx.weights.to(lp.device)[torch.arange(lp.shape[0]) % k]).sum(-1)

    with torch.enable_grad():
        attr = IntegratedGradients(forward).attribute(torch.cat([pv] * k), baselines=0.0, n_steps=IG_STEPS,
                                                      internal_batch_size=2 * k * len(pv)).detach()  # 2 steps a chunk
    if vlm_arch(ctx.model) == "llava":  # [K, C, H, W] -> sum each patch
        if attr.dim() == 5:  # [K, views, C, H, W]: the view the grid shows
            attr = attr[:, ctx.layout.view]
        g = ctx.layout.gh
        return F.adaptive_avg_pool2d(attr.sum(1, keepdim=True), (g, g))[:, 0]
    per = attr.reshape(k, -1, attr.shape[-1]).sum(-1)  # [K, patches] in merge-window order
    t, h, w = (int(v) for v in ctx.inputs["image_grid_thw"][0])
    cells = per[:, qwen_patch_order(h, w)].reshape(k, h, w)
    return F.adaptive_avg_pool2d(cells[:, None], (ctx.layout.gh, ctx.layout.gw))[:, 0]


def _random(ctx: _Context) -> torch.Tensor:
    seeds = [zlib.crc32(n.encode()) for n in ctx.names]
    return torch.stack([torch.from_numpy(np.random.default_rng(s).random((ctx.layout.gh, ctx.layout.gw)))
                        for s in seeds]).float()


def _center(ctx: _Context) -> torch.Tensor:
    gh, gw = ctx.layout.gh, ctx.layout.gw
    y, x = torch.meshgrid((torch.arange(gh) + 0.5) / gh - 0.5, (torch.arange(gw) + 0.5) / gw - 0.5, indexing="ij")
    return torch.exp(-(x ** 2 + y ** 2) / (2 * 0.25 ** 2)).expand(len(ctx.names), gh, gw)


METHODS: dict[str, Callable[[_Context], torch.Tensor]] = {
    "gradcam": _gradcam, "gradxact": _gradxact, "ig": _ig, "random": _random, "center": _center,
}
PER_LAYER: dict[str, Callable[[_Context], torch.Tensor]] = {"gradcam": _gradcam_layers, "gradxact": _gradxact_layers}


def depth_rows(names: Sequence[str], depth_weights: Mapping[str, Sequence[float]] | None, n_layers: int) -> torch.Tensor | None:
    """[K, L] block weights for targets `names` from a {target name: [w_1 .. w_L]} map ("*" = any other
    target; a target in neither is fused over all blocks with weight 1). None when there are no weights."""
    if not depth_weights:
        return None
    rows = []
    for name in names:
        w = depth_weights.get(name, depth_weights.get("*"))
        w = [1.0] * n_layers if w is None else [float(x) for x in w]
        if len(w) != n_layers or min(w) < 0 or max(w) <= 0:
            raise ValueError(f"depth weights for {name!r} must be {n_layers} non-negative numbers, not all 0 "
                             f"(one per vision block); got {w}")
        rows.append(w)
    return torch.tensor(rows, dtype=torch.float32)


def occlude(model, inputs, cells: np.ndarray, layer: str = DEFAULT_LAYER) -> torch.Tensor:
    """pixel_values with the image under the True cells of a [gh, gw] map set to 0 (the normalisation
    mean: mid-gray), for deletion checks."""
    lay, pv = patch_layout(model, inputs, layer), inputs["pixel_values"].clone()
    cells = np.asarray(cells, dtype=bool)
    if cells.shape != (lay.gh, lay.gw):
        raise ValueError(f"cells shape {cells.shape} != the {layer} grid {(lay.gh, lay.gw)}")
    if vlm_arch(model) == "llava":  # [1, C, S, S]: one cell = S / gh pixels a side
        up = F.interpolate(torch.from_numpy(cells)[None, None].float(), size=pv.shape[-2:], mode="nearest")[0, 0]
        view = pv[:, lay.view] if pv.dim() == 5 else pv  # [1, views, C, S, S]: blank the explained view only
        view[..., up > 0] = 0.0
        return pv
    t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
    if layer == "projector":  # a merged cell covers 2 x 2 patches
        cells = np.kron(cells, np.ones((h // lay.gh, w // lay.gw), dtype=bool))
    pv[qwen_patch_order(h, w)[torch.from_numpy(cells.reshape(-1))]] = 0.0
    return pv


def normalise(grid: np.ndarray | torch.Tensor) -> np.ndarray:
    """ReLU, then divide by the maximum (an all-zero map stays zero): float32 in [0, 1]."""
    g = np.clip(np.nan_to_num(np.asarray(grid, dtype=np.float32)), 0.0, None)
    top = float(g.max()) if g.size else 0.0
    return g / top if top > 0 else np.zeros_like(g)


def upsample(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a [gh, gw] map to `shape` (the processor resizes the whole image: no crop)."""
    up = F.interpolate(torch.from_numpy(grid)[None, None], size=tuple(shape), mode="bilinear", align_corners=False)
    return normalise(up[0, 0].numpy())


def attribute(model, inputs, new_ids: torch.Tensor, targets: Sequence[Target], offsets: np.ndarray, *,
              methods: Sequence[str] = (DEFAULT_METHOD,), layer: str = DEFAULT_LAYER,
              depth_weights: Mapping[str, Sequence[float]] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw patch-grid maps {method: [K, gh, gw]} and the targets' log-probs [K]; methods share one pass.
    `depth_weights` (layer "blocks" only): per-target block weights of the fused map, see `depth_rows`."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown saliency method(s) {unknown}: use one of {', '.join(METHODS)}")
    layers, names = layers_for(model, layer), [t.name for t in targets]
    depth = depth_rows(names, depth_weights, len(layers)) if layer == "blocks" else None
    ctx = _Context(model, inputs, new_ids, token_weights(targets, offsets), patch_layout(model, inputs, layer),
                   layers, names, depth)
    was_training = model.training
    model.eval()  # no dropout: the same result gives the same maps
    try:
        grids = {m: METHODS[m](ctx).float().cpu().numpy() for m in methods}
        scores = ctx.layer_grads()[2].cpu().numpy() if "grads" in ctx.cache else np.zeros(len(targets))
    finally:
        model.train(was_training)
    return grids, scores


def layer_maps(model, inputs, new_ids: torch.Tensor, targets: Sequence[Target], offsets: np.ndarray, *,
               method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER) -> np.ndarray:
    """Raw per-layer maps [K, L, gh, gw] before fusion (gradcam / gradxact), for choosing depth weights."""
    if method not in PER_LAYER:
        raise ValueError(f"per-layer maps exist for {', '.join(PER_LAYER)}, not {method!r}")
    ctx = _Context(model, inputs, new_ids, token_weights(targets, offsets), patch_layout(model, inputs, layer),
                   layers_for(model, layer), [t.name for t in targets])
    was_training = model.training
    model.eval()
    try:
        return PER_LAYER[method](ctx).float().cpu().numpy()
    finally:
        model.train(was_training)


def explain(model, processor, result, *, method: str = DEFAULT_METHOD, targets: Sequence[str] | None = None,
            include_perception: bool = True, layer: str = DEFAULT_LAYER,
            depth_weights: Mapping[str, Sequence[float]] | None = None) -> SaliencyResult:
    """Saliency maps for a `StudyResult` from `Pipeline.run/stream`: one per positive/uncertain finding of
    the final report, per abnormal perception line (`include_perception`) and for the whole report.
    `depth_weights`: per-finding block weights of the fused map (`Pipeline.saliency` passes the model's own).

    `targets` keeps only those names (e.g. ["Pleural Effusion", "report"]); a finding whose sentence is
    not in the generated text gets no map. Arrays only; nothing is written.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}: use one of {', '.join(METHODS)}")
    saved = getattr(result, "saliency_inputs", None)
    if not saved:
        raise ValueError("this result kept no model inputs: explain results of Pipeline.run/stream, not run_batch")
    pixels = getattr(result.image, "pixels", None)
    if pixels is None:
        raise ValueError("the result carries no image (result.image.pixels): run it through Pipeline.run")
    new_ids = saved["new_ids"]
    text, offsets = token_char_spans(processor.tokenizer, new_ids[0].tolist())
    found = locate_targets(text, result.final_labels, include_perception=include_perception)
    if targets is not None:
        found = [t for t in found if t.name in set(targets)]
    found = [t for t in found if token_weights([t], offsets).sum() > 0]
    if not found:
        return SaliencyResult([], method, time.perf_counter() - t0)
    grids, scores = attribute(model, saved["inputs"], new_ids, found, offsets, methods=(method,), layer=layer,
                              depth_weights=depth_weights)
    maps = [grid_map(t.name, t.kind, t.text, t.value, raw, pixels.shape[:2], method, float(score))
            for t, raw, score in zip(found, grids[method], scores)]
    return SaliencyResult(maps, method, time.perf_counter() - t0)


def grid_map(target: str, kind: str, text: str, value: int | None, raw_grid: np.ndarray, shape: tuple[int, int],
             method: str, score: float = 0.0) -> SaliencyMap:
    """A `SaliencyMap` from any per-patch grid (an attribution, or another stage's per-patch finding map):
    normalised, upsampled to the image and checked against the finding's plausible region."""
    grid = normalise(raw_grid)
    heat = upsample(grid, shape)
    region = plausible_region(target, text, heat.shape) if kind == "finding" else None
    share = None if region is None else evidence_share(heat, region)
    return SaliencyMap(target, kind, text, value, heat, grid, method, score, share, share is not None and share < EVIDENCE_MIN)


# ------------------------------------------------------------------------------------------ render
def overlay(gray_u8: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, cmap: str = "inferno") -> np.ndarray:
    """Blend a [0, 1] heatmap (colour-mapped) over a grayscale image: uint8 [H, W, 3]; alpha=0 = the image."""
    from matplotlib import colormaps

    gray = np.asarray(gray_u8)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(-1)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != gray.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} != image shape {gray.shape[:2]}: use SaliencyMap.heatmap")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    base = np.repeat(gray.astype(np.float32)[..., None], 3, -1)
    colour = colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255.0
    # Weight the colour by the heat itself so cold regions keep the radiograph visible.
    a = alpha * np.clip(heat, 0, 1)[..., None]
    return np.clip(base * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8)


def legend_image(cmap: str = "inferno", width: int = 220, height: int = 36) -> np.ndarray:
    """A colour bar from 'low' to 'high' saliency: uint8 [height, width, 3] on white."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    bar_h = height // 2
    ramp = colormaps[cmap](np.linspace(0, 1, width))[:, :3] * 255
    img = np.full((height, width, 3), 255, np.uint8)
    img[:bar_h] = ramp[None].astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.text((2, bar_h + 2), "low", fill=(0, 0, 0))
    draw.text((width - 28, bar_h + 2), "high", fill=(0, 0, 0))
    return np.asarray(pil)
