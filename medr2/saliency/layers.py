"""Which vision layers a saliency map explains, per architecture, and how their rows map to the image grid.

The layer registry of `medr2.saliency.maps`: `layers_for` / `layer_for` name the explained modules (every vision
block the language model reads by default, the last block alone, or the projector / patch merger / connector) for
LLaVA, Gemma 3 (MedGemma), LLaVA-OneVision, Idefics3 (SmolVLM), Qwen2-VL, Qwen2.5-VL and Qwen3-VL; any other
architecture gets one line, "saliency unavailable for this architecture" (`SaliencyUnavailable`). `patch_layout` says
how the layer's token rows map to the row-major patch grid (Qwen's 2 x 2 merge windows, Qwen2.5-VL's attention
windows, LLaVA's optional CLS token, Idefics3's pixel shuffle) and which of an image's views the grid shows: a model
that reads a film as several views (LLaVA-OneVision's base view + any-resolution crops, SmolVLM's crops + global
view) is explained on the one view that covers the whole film. `LayerProbe` routes a module's output through a
grid-shaped tensor whose gradient the attribution engine reads. Hands those to `medr2.saliency.maps`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_LAYER = "blocks"
LAYERS = ("blocks", "block", "projector")
SUPPORTED_ARCHS = ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "llava_onevision", "idefics3")
# Saliency (and the input gate) read a model by its vision layout. Gemma 3, LLaVA-OneVision and Idefics3 have LLaVA's:
# a SigLIP-style tower on square pixels whose patch rows [views, N, D] reach the projector in grid order (the latter two
# take [B, views, C, H, W] pixels). The Qwen-VL types each have their own (merged patches in 2 x 2 windows,
# `image_grid_thw`).
LAYOUT_OF = {"gemma3": "llava", "llava_onevision": "llava", "idefics3": "llava"}
# Idefics3 names LLaVA's parts differently.
PART_NAMES = {"idefics3": {"vision_tower": "vision_model", "multi_modal_projector": "connector"}}
# Which view of a film the grid shows, where a model reads several: LLaVA-OneVision puts its base view (the whole film
# at the tower's size) first, Idefics3 / SmolVLM its global view last (after any crops). Other models: their only one.
VIEW_OF = {"idefics3": -1}


class SaliencyUnavailable(ValueError):
    """Saliency cannot be computed for this model (an architecture without a layer entry, a served model without
    local weights); the message is one line for the user, starting "saliency unavailable"."""


def vlm_base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper


def vlm_model_type(model) -> str | None:
    return getattr(vlm_base(model).config, "model_type", None)


def vlm_arch(model) -> str:
    """The model's vision layout: 'llava' for LLaVA, Gemma 3, LLaVA-OneVision and Idefics3, else its Qwen-VL model
    type; a one-line `SaliencyUnavailable` (a ValueError) for an architecture saliency has no layer entry for."""
    arch = vlm_model_type(model)
    if arch not in SUPPORTED_ARCHS:
        raise SaliencyUnavailable(f"saliency unavailable for this architecture (model_type={arch!r}; supported: "
                         f"{', '.join(SUPPORTED_ARCHS)})")
    return LAYOUT_OF.get(arch, arch)


def vlm_part(model, name: str):
    """A part of the model by LLaVA's / Qwen's name ("vision_tower", "multi_modal_projector", "visual")."""
    base = vlm_base(model)
    name = PART_NAMES.get(vlm_model_type(model), {}).get(name, name)
    part = getattr(getattr(base, "model", base), name, None)
    return part if part is not None else getattr(base, name)


def _vision_blocks(model) -> list[torch.nn.Module]:
    """The vision transformer blocks whose output reaches the language model, in forward order."""
    if vlm_arch(model) != "llava":
        return list(vlm_part(model, "visual").blocks)
    tower = vlm_part(model, "vision_tower")
    blocks = list(next(m for n, m in tower.named_modules() if n.endswith("encoder.layers")))
    # Gemma 3 and Idefics3 read the tower's last output (no vision_feature_layer setting)
    feature_layer = getattr(vlm_base(model).config, "vision_feature_layer", -1)
    # hidden_states[i] for i < 0 is the output of blocks[i]: stop at the block LLaVA actually reads.
    last = len(blocks) + feature_layer if isinstance(feature_layer, int) and feature_layer < 0 else len(blocks) - 1
    return blocks[:last + 1]


def _check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise ValueError(f"layer={layer!r}: use one of {', '.join(repr(x) for x in LAYERS)}")


def layer_for(model, layer: str = "block") -> torch.nn.Module:
    """One explained vision module: "block" = the vision tower's (feature) block, "projector" = LLaVA's
    multi_modal_projector / Qwen's patch merger / Idefics3's pixel-shuffle connector."""
    vlm_arch(model)
    _check_layer(layer)
    if layer == "blocks":
        raise ValueError("layer='blocks' is several modules: use layers_for")
    if layer == "projector":
        return vlm_part(model, "multi_modal_projector") if vlm_arch(model) == "llava" else vlm_part(model, "visual").merger
    return _vision_blocks(model)[-1]


def layers_for(model, layer: str = DEFAULT_LAYER) -> list[torch.nn.Module]:
    """The explained vision modules in forward order: "blocks" = every vision block the language model
    reads (their maps are fused), "block" / "projector" = the one module of `layer_for`."""
    vlm_arch(model)
    _check_layer(layer)
    return _vision_blocks(model) if layer == "blocks" else [layer_for(model, layer)]


@dataclass
class PatchLayout:
    """How the explained layer's rows map to the image grid: rows[order] is the grid in row-major order."""

    gh: int
    gw: int
    order: torch.Tensor  # [gh * gw] long
    skip: int = 0  # leading non-patch rows (LLaVA "default" strategy: a CLS token)
    batched: bool = True  # LLaVA: [B, N, D]; Qwen: [B * N, D]
    view: int = 0  # the row of [views, ...] the grid shows (LLaVA-OneVision's base view, Idefics3's global view)


def qwen_patch_order(h: int, w: int) -> torch.Tensor:
    """Qwen's processor emits patches in 2 x 2 merge windows: row of grid cell (y, x)."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((y // 2) * (w // 2) + x // 2) * 4 + (y % 2) * 2 + x % 2).reshape(-1)


def patch_layout(model, inputs, layer: str) -> PatchLayout:
    _check_layer(layer)
    layer = "block" if layer == "blocks" else layer  # every block has the same token layout
    arch, cfg = vlm_arch(model), vlm_base(model).config
    if arch == "llava":
        model_type = vlm_model_type(model)
        side = inputs["pixel_values"].shape[-1] // cfg.vision_config.patch_size  # square views of the tower's size
        if model_type == "gemma3" and layer == "projector":  # the projector average-pools patches to mm_tokens_per_image
            side = int(round(cfg.mm_tokens_per_image ** 0.5))
        if model_type == "idefics3" and layer == "projector":  # pixel shuffle: scale x scale patches per token, row-major
            side //= cfg.scale_factor
        skip = 1 if getattr(cfg, "vision_feature_select_strategy", "full") == "default" and layer == "block" else 0
        return PatchLayout(side, side, torch.arange(side * side), skip, view=VIEW_OF.get(model_type, 0))
    t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
    merge = cfg.vision_config.spatial_merge_size
    if layer == "block":
        order = qwen_patch_order(h, w)
    else:
        h, w, order = h // merge, w // merge, torch.arange(h * w // merge ** 2)
    if arch == "qwen2_5_vl":  # blocks and merger run in window order; map merged units through it
        from transformers.vision_utils import get_vision_window_index

        visual = vlm_part(model, "visual")
        window, _ = get_vision_window_index(inputs["image_grid_thw"][:1].cpu(), spatial_merge_size=merge,
                                            window_size=visual.window_size, patch_size=visual.patch_size)
        pos = torch.argsort(window)  # merged unit m sits at window position pos[m]
        unit = merge * merge if layer == "block" else 1
        order = pos[order // unit] * unit + order % unit
    return PatchLayout(h, w, order.long(), 0, False)


class LayerProbe:
    """Routes the layer's output through a grid-shaped tensor [B, D, gh, gw] and keeps it for gradients.

    A leaf by default, so backward stops here; `chain=True` (a later layer of a multi-layer probe) keeps it
    in the graph instead, so gradients still flow on to the earlier probed layers."""

    def __init__(self, module: torch.nn.Module, layout: PatchLayout, chain: bool = False):
        self.module, self.layout, self.acts, self.chain = module, layout, None, chain
        self.identity = torch.nn.Identity()  # what captum hooks in the equality test

    def _hook(self, module, args, output):
        x = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
        lay = self.layout
        rows = x[:, lay.skip:] if lay.batched else x.reshape(-1, len(lay.order), x.shape[-1])  # [B, N, D]
        grid = rows[:, lay.order].transpose(1, 2).reshape(rows.shape[0], -1, lay.gh, lay.gw)
        if not (self.chain and grid.requires_grad):
            grid = grid.detach().requires_grad_(True)  # a leaf: backward stops here
        grid = self.identity(grid)
        self.acts = grid
        back = torch.empty_like(rows)
        back[:, lay.order] = grid.flatten(2).transpose(1, 2)
        new = torch.cat([x[:, :lay.skip], back], 1) if lay.batched else back.reshape(x.shape)
        if isinstance(output, tuple):
            return (new,) + output[1:]
        if hasattr(output, "last_hidden_state"):
            output.last_hidden_state = new
            return output
        return new

    def __enter__(self) -> LayerProbe:
        # prepend: transformers' output-capturing hooks must record the probed tensor, not the original.
        self.handle = self.module.register_forward_hook(self._hook, prepend=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
