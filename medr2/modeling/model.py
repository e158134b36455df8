"""Build the tiny vision-language model (VLM) and its processor; turn (image, prompt) into model inputs.

Two ways in, one interface out — `(model, processor)` with the standard `Auto*` classes, so the pipeline,
training, saliency and evaluation never care which architecture they hold:
- `build_tiny_vlm(tokenizer, TinyVLMConfig(...))`: the embedded demo architecture from config, nothing
  downloaded. LLaVA (SigLIP vision tower + Qwen2 text model, stock `LlavaProcessor`) by default; tiny
  Qwen2-VL / Qwen2.5-VL / Qwen3-VL and LLaVA-OneVision through the no-video processors of
  `medr2.modeling.qwen_processor`; tiny Gemma 3 (MedGemma's architecture) with the stock `Gemma3Processor`;
  tiny Idefics3 (SmolVLM's architecture) with the stock `Idefics3Processor`, which has no video half.
- `load_model(path_or_hub_id)`: any image-text-to-text checkpoint; it lives in `medr2.modeling.loading` (with
  `ModelLoadError`, `check_multimodal_processor`, `weights_sha256`) and is re-exported here.

Hands on: `prepare_inputs` turns (image, chat messages) into model-ready tensors for every architecture, batches
included (Qwen-VL additionally needs `mm_token_type_ids` and `image_grid_thw`, Gemma 3 `token_type_ids`; the
processor returns them; Gemma 3's processor takes a batch's images as one list per prompt; Idefics3 adds
`pixel_attention_mask`);
`build_chat`, `generation_kwargs` and `generate_text` drive `model.generate`.
The "prompted mode" for off-the-shelf instruct LVLMs is `medr2.report.knowledge.prompted_system_prompt()`.
CLI: `medr2 build-tiny --arch llava --output_dir DIR [--corpus FILE.txt]`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    BatchFeature,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from medr2.modeling import qwen_processor  # registers the no-video Qwen processors with AutoProcessor
from medr2.modeling.loading import ModelLoadError, check_multimodal_processor, load_model, weights_sha256, weights_sha256_short  # noqa: F401  (public API)  # noqa: F401  (public API)
from medr2.modeling.tokenizer import IM_END, IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START, train_tokenizer

log = logging.getLogger(__name__)

IMAGE_SIZE = 224  # px; 224 / 28 = 8 x 8 patches = 64 image tokens for the LLaVA default
ARCHS = ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "llava_onevision", "idefics3")
QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # merged patches, M-RoPE, no-video processors
# Qwen-VL merges 2 x 2 neighbouring patches into one token; patch_size // 2 keeps the token count equal
# to LLaVA's at the same `patch_size` (the tower then sees 4x as many patches: slower, ~0.9 s/step).
QWEN_MERGE = 2
# Idefics3 (SmolVLM) folds 2 x 2 neighbouring patches into one token by pixel shuffle: the same halving of the
# patch as for Qwen keeps the token count equal to LLaVA's.
IDEFICS3_SCALE = 2


@dataclass
class TinyVLMConfig:
    """The embedded demo architecture. Defaults: a ~6M-parameter LLaVA (vocabulary 2,000; 64 image tokens at
    224 px; 24 MB of fp32 safetensors). `text_intermediate=512` saves 0.8M if the 25 MB asset budget gets tight.
    The shipped model starts here and its trained tower was later deepened to 6 blocks (`grow_siglip_depth`,
    6.7M parameters), so `assets/model` stores float16 weights (`medr2.training.export --store_dtype`)."""

    arch: str = field(default="llava", metadata={"help": " | ".join(ARCHS)})
    image_size: int = field(default=IMAGE_SIZE, metadata={"help": "input side in px (images are resized to it)"})
    patch_size: int = field(default=28, metadata={"help": "px per image token side; 28 beat 16 at equal CPU time"})
    vision_hidden: int = field(default=192, metadata={"help": "vision tower width"})
    vision_layers: int = field(default=4, metadata={"help": "vision transformer blocks"})
    vision_heads: int = field(default=4, metadata={"help": "vision attention heads"})
    vision_intermediate: int = field(default=768, metadata={"help": "vision MLP width"})
    text_hidden: int = field(default=256, metadata={"help": "language-model width"})
    text_layers: int = field(default=4, metadata={"help": "language-model decoder blocks"})
    text_heads: int = field(default=4, metadata={"help": "query heads (head_dim = text_hidden / text_heads)"})
    text_kv_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention)"})
    text_intermediate: int = field(default=768, metadata={"help": "language-model MLP width"})
    max_position: int = field(default=1024, metadata={"help": "longest prompt + completion in tokens"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base; short sequences need no more"})
    tie_word_embeddings: bool = field(default=True, metadata={"help": "share input/output embeddings (-0.5M)"})
    seed: int = field(default=0, metadata={"help": "torch seed for the random initialisation"})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not supported: use one of {', '.join(ARCHS)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.arch in (*QWEN_ARCHS, "idefics3") and self.patch_size % QWEN_MERGE:
            raise ValueError(f"patch_size={self.patch_size} must be even for {self.arch} (2x2 patch merging)")
        for width, heads, name in (
            (self.vision_hidden, self.vision_heads, "vision"),
            (self.text_hidden, self.text_heads, "text"),
        ):
            if width % heads:
                raise ValueError(f"{name}_hidden={width} must be divisible by {name}_heads={heads}")
        if self.arch == "qwen2_vl" and self.vision_intermediate % self.vision_hidden:
            raise ValueError(f"qwen2_vl sets its MLP by an integer ratio: vision_intermediate="
                             f"{self.vision_intermediate} must be a multiple of vision_hidden={self.vision_hidden}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads={self.text_heads} must be a multiple of text_kv_heads={self.text_kv_heads}")

    @property
    def num_image_tokens(self) -> int:
        """Image tokens in the language model's sequence per (square) image (LLaVA-OneVision: of its base view; its
        any-resolution crop and row-end tokens come on top; Idefics3: plus its wrapping tokens)."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def micro(cls, arch: str = "llava", **overrides: Any) -> TinyVLMConfig:
        """A ~0.2M-parameter config for fast tests (same token layout as the default)."""
        small = dict(vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64,
                     text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128,
                     max_position=512)
        return cls(arch=arch, **{**small, **overrides})


# ----------------------------------------------------------------------------------------------- build
def _token_id(tokenizer, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tid) != token:
        raise ValueError(f"tokenizer has no {token!r} token: build it with medr2.modeling.tokenizer.train_tokenizer")
    return int(tid)


def _text_kwargs(cfg: TinyVLMConfig, tokenizer, mrope: bool) -> dict[str, Any]:
    """Decoder settings shared by every architecture (Qwen2 / Qwen3 / Gemma 3 text models)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if mrope:
        # M-RoPE splits each head's rotary half-dimension into (time, height, width) sections;
        # Qwen's 128-dim heads use [16, 24, 24] — the same 1 : 1.5 : 1.5 proportions here.
        half = cfg.text_hidden // cfg.text_heads // 2
        t = half // 4
        rope["mrope_section"] = [t, (half - t) // 2, half - t - (half - t) // 2]
    return dict(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=cfg.max_position,
        rope_parameters=rope, tie_word_embeddings=cfg.tie_word_embeddings, rms_norm_eps=1e-6,
        pad_token_id=_token_id(tokenizer, PAD_TOKEN), eos_token_id=_token_id(tokenizer, IM_END), bos_token_id=None,
    )


def _build_llava(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size,
        vision_use_head=False,  # LLaVA reads patch states, the pooling head would be dead weight
    )
    config = LlavaConfig(
        vision_config=vision, text_config=Qwen2Config(**_text_kwargs(cfg, tokenizer, mrope=False)),
        image_token_index=_token_id(tokenizer, IMAGE_TOKEN), image_seq_length=cfg.num_image_tokens,
        # SigLIP has no CLS token: "full" keeps all patches ("default" would drop the first one), and the
        # last layer (-1, not LLaVA's usual -2) so stage-0 perception training of the tower carries over.
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = SiglipImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,  # [0, 1] -> [-1, 1]; grayscale films, no RGB statistics
        do_convert_rgb=True,  # PIL "L" (grayscale) images become 3 identical channels
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
        vision_feature_select_strategy="full", num_additional_image_tokens=0,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


def _build_qwen(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    patch = cfg.patch_size // QWEN_MERGE
    common = dict(depth=cfg.vision_layers, num_heads=cfg.vision_heads, patch_size=patch,
                  spatial_merge_size=QWEN_MERGE, temporal_patch_size=2)
    if cfg.arch == "qwen2_vl":
        vision = dict(common, embed_dim=cfg.vision_hidden, hidden_size=cfg.text_hidden,
                      mlp_ratio=cfg.vision_intermediate // cfg.vision_hidden)
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    else:
        vision = dict(common, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                      out_hidden_size=cfg.text_hidden,
                      window_size=cfg.image_size // 2,  # 2 x 2 windows of merged tokens per image
                      fullatt_block_indexes=[cfg.vision_layers - 1])  # global attention in the last block
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        text_config=_text_kwargs(cfg, tokenizer, mrope=True), vision_config=vision,
        image_token_id=_token_id(tokenizer, IMAGE_TOKEN), video_token_id=_token_id(tokenizer, VIDEO_TOKEN),
        vision_start_token_id=_token_id(tokenizer, VISION_START),
        vision_end_token_id=_token_id(tokenizer, VISION_END), tie_word_embeddings=cfg.tie_word_embeddings,
    )
    model = model_cls(config)
    pixels = cfg.image_size * cfg.image_size  # min = max: every image is resized to ~image_size² pixels
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch, merge_size=QWEN_MERGE,
        temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True,
    )
    processor_cls = qwen_processor.NO_VIDEO_PROCESSORS[cfg.arch]
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=tokenizer.chat_template)
    return model, processor


def _siglip(cfg: TinyVLMConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                              image_size=cfg.image_size, patch_size=cfg.patch_size, vision_use_head=False)


def _build_qwen3(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen3-VL: Qwen3 decoder (interleaved M-RoPE), a vision tower with learned position embeddings and DeepStack
    (mid-tower features added to the first decoder layers; here from the first block)."""
    patch = cfg.patch_size // QWEN_MERGE
    text = _text_kwargs(cfg, tokenizer, mrope=True)
    text["rope_parameters"]["mrope_interleaved"] = True
    text["head_dim"] = cfg.text_hidden // cfg.text_heads
    vision = dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                  num_heads=cfg.vision_heads, patch_size=patch, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                  out_hidden_size=cfg.text_hidden, num_position_embeddings=(cfg.image_size // patch) ** 2,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=_token_id(tokenizer, IMAGE_TOKEN), video_token_id=_token_id(tokenizer, VIDEO_TOKEN),
        vision_start_token_id=_token_id(tokenizer, VISION_START),
        vision_end_token_id=_token_id(tokenizer, VISION_END), tie_word_embeddings=cfg.tie_word_embeddings,
    )
    pixels = cfg.image_size * cfg.image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch, merge_size=QWEN_MERGE,
        temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True,
    )
    processor = qwen_processor.NoVideoQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                       chat_template=tokenizer.chat_template)
    return Qwen3VLForConditionalGeneration(config), processor


def gemma3_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """Our tokenizer as Gemma 3's processor reads it: `<|vision_start|>` is the begin-of-image token it expands to
    begin + image tokens + end, so the chat template writes only that token where the image goes."""
    image_part = VISION_START + IMAGE_TOKEN + VISION_END
    if image_part not in tokenizer.chat_template:
        raise ValueError("tokenizer's chat template has no image placeholder: build it with train_tokenizer")
    template = tokenizer.chat_template.replace(image_part, VISION_START)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token=tokenizer.pad_token, eos_token=tokenizer.eos_token,
        chat_template=template,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": VISION_START, "eoi_token": VISION_END},
    )


def _build_gemma3(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Gemma 3 (MedGemma's architecture): SigLIP tower, pooled projector, Gemma 3 decoder with sliding-window layers
    and bidirectional attention over each image's tokens."""
    tokenizer = gemma3_tokenizer(tokenizer)
    head_dim = cfg.text_hidden // cfg.text_heads
    text = {k: v for k, v in _text_kwargs(cfg, tokenizer, mrope=False).items() if k != "rope_parameters"}
    text_config = Gemma3TextConfig(**text, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                                   sliding_window=cfg.max_position)
    config = Gemma3Config(
        text_config=text_config, vision_config=_siglip(cfg), mm_tokens_per_image=cfg.num_image_tokens,
        boi_token_index=_token_id(tokenizer, VISION_START), eoi_token_index=_token_id(tokenizer, VISION_END),
        image_token_index=_token_id(tokenizer, IMAGE_TOKEN), tie_word_embeddings=cfg.tie_word_embeddings,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size},
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=tokenizer.chat_template, image_seq_length=cfg.num_image_tokens)
    model = Gemma3ForConditionalGeneration(config)
    # Gemma 3 initialises its image projection to zeros: an untrained model would not see the film at all (every
    # image token the same embedding, zero saliency). Trained checkpoints are unaffected; a random one gets std 0.02.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    return model, processor


def _build_llava_onevision(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA-OneVision: SigLIP tower + Qwen2 decoder reading the film at its base size and as any-resolution crops
    (one grid of one crop here, so every film gives the same token count)."""
    grid = [[cfg.image_size, cfg.image_size]]
    config = LlavaOnevisionConfig(
        vision_config=_siglip(cfg), text_config=Qwen2Config(**_text_kwargs(cfg, tokenizer, mrope=False)),
        image_token_index=_token_id(tokenizer, IMAGE_TOKEN), video_token_index=_token_id(tokenizer, VIDEO_TOKEN),
        image_grid_pinpoints=grid, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_1", tie_word_embeddings=cfg.tie_word_embeddings,
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size},
                                                      image_grid_pinpoints=grid, image_mean=[0.5] * 3,
                                                      image_std=[0.5] * 3, do_convert_rgb=True)
    processor = qwen_processor.NoVideoLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=cfg.num_image_tokens,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_1", chat_template=tokenizer.chat_template)
    return LlavaOnevisionForConditionalGeneration(config), processor


# Idefics3's processor writes these around each image (`<fake_token_around_image><global-img><image>...`) and adds
# `<end_of_utterance>` to any tokenizer it is given: in the vocabulary from the start, the model's embedding covers them.
IDEFICS3_TOKENS = ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def idefics3_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """Our tokenizer as Idefics3's processor reads it: its image-wrapping tokens added as special tokens (one id each,
    dropped when decoding), and a chat template that writes only `<image>` where the image goes (the processor wraps
    it in its own tokens, in place of our `<|vision_start|>` / `<|vision_end|>`)."""
    image_part = VISION_START + IMAGE_TOKEN + VISION_END
    if image_part not in tokenizer.chat_template:
        raise ValueError("tokenizer's chat template has no image placeholder: build it with train_tokenizer")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token=tokenizer.pad_token,
        eos_token=tokenizer.eos_token, chat_template=tokenizer.chat_template.replace(image_part, IMAGE_TOKEN),
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    wrapped.add_special_tokens({"additional_special_tokens": list(IDEFICS3_TOKENS)})
    return wrapped


def _build_idefics3(cfg: TinyVLMConfig, tokenizer) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Idefics3 (SmolVLM's architecture): SigLIP-style tower, pixel-shuffle connector, Llama decoder. The film is read
    as one global view (no image splitting: SmolVLM's crops would multiply the tokens of a 224 px film)."""
    tokenizer = idefics3_tokenizer(tokenizer)
    patch = cfg.patch_size // IDEFICS3_SCALE
    vision = Idefics3VisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                  image_size=cfg.image_size, patch_size=patch)
    text = LlamaConfig(**_text_kwargs(cfg, tokenizer, mrope=False), head_dim=cfg.text_hidden // cfg.text_heads)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=IDEFICS3_SCALE,
                            image_token_id=_token_id(tokenizer, IMAGE_TOKEN), tie_word_embeddings=cfg.tie_word_embeddings,
                            pad_token_id=text.pad_token_id)
    side = {"longest_edge": cfg.image_size}
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size=side, max_image_size=side,
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=cfg.num_image_tokens, chat_template=tokenizer.chat_template)
    return Idefics3ForConditionalGeneration(config), processor


_BUILDERS = {"llava": _build_llava, "qwen2_vl": _build_qwen, "qwen2_5_vl": _build_qwen, "qwen3_vl": _build_qwen3,
             "gemma3": _build_gemma3, "llava_onevision": _build_llava_onevision, "idefics3": _build_idefics3}


def build_tiny_vlm(tokenizer, config: TinyVLMConfig | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build an untrained tiny VLM and its processor from `config` (nothing downloaded).

    Args:
        tokenizer: from `medr2.modeling.tokenizer.train_tokenizer` (needs `<image>`, `<pad>`, `<|im_end|>`, the
            Qwen vision tokens and a chat template).
        config: architecture; `TinyVLMConfig()` by default.

    Returns:
        `(model, processor)` in eval mode, fp32, on CPU; `save_pretrained` both into one directory and
        `load_model(dir)` gives them back.
    """
    cfg = config or TinyVLMConfig()
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat_template: build it with medr2.modeling.tokenizer.train_tokenizer")
    with torch.random.fork_rng():  # reproducible init without resetting the caller's RNG stream
        torch.manual_seed(cfg.seed)
        model, processor = _BUILDERS[cfg.arch](cfg, tokenizer)
    text_config = model.config.text_config
    model.generation_config.update(eos_token_id=text_config.eos_token_id, pad_token_id=text_config.pad_token_id,
                                   bos_token_id=None)
    log.info("built %s: %.2fM parameters, %d image tokens", cfg.arch, count_parameters(model) / 1e6,
             cfg.num_image_tokens)
    return model.eval(), processor


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; tied embeddings are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)



def siglip_layers(tower: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder blocks of a SigLIP vision tower (a SiglipVisionModel, alone or inside a LLaVA)."""
    body = getattr(tower, "vision_model", tower)  # transformers < 5 nested the encoder one level deeper
    return body.encoder.layers


def siglip_depth(tower: torch.nn.Module) -> int:
    """Encoder blocks in a SigLIP vision tower."""
    return len(siglip_layers(tower))


def state_depth(state: Mapping[str, torch.Tensor]) -> int:
    """Encoder blocks in a saved SigLIP tower state dict (0 if it holds none)."""
    return 1 + max((int(k.split("encoder.layers.")[1].split(".")[0]) for k in state if "encoder.layers." in k), default=-1)


def grow_siglip_depth(tower: torch.nn.Module, num_layers: int) -> int:
    """Deepen a trained SigLIP tower to `num_layers` blocks without changing what it computes; returns the
    number of blocks added.

    Each new block is a copy of the last one with its two residual output projections (attention `out_proj`,
    MLP `fc2`) zeroed, so it adds nothing until trained: the tower's output, and so every stage-0 head, projector
    and language model built on it, is unchanged at the start. Why: the perception capacity of the 4-block tower
    had plateaued (stage-0 opacity AUC ~0.94 over five continuations), and retraining a larger tower from scratch
    would throw away hours of stage 0 and SFT; zero-initialised residual branches are the standard way to add
    depth to a trained network (as in ReZero / "Net2DeeperNet").
    """
    import copy

    layers = siglip_layers(tower)
    if num_layers < len(layers):
        raise ValueError(f"cannot shrink a {len(layers)}-block tower to {num_layers} blocks")
    added = 0
    while len(layers) < num_layers:
        block = copy.deepcopy(layers[-1])
        for linear in (block.self_attn.out_proj, block.mlp.fc2):
            torch.nn.init.zeros_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
        layers.append(block)
        added += 1
    tower.config.num_hidden_layers = num_layers
    return added

# ---------------------------------------------------------------------------------------------- inputs
def to_pil_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or array (H x W grayscale, H x W x 3; float in [0, 1] or uint8) -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise ValueError(f"image array has shape {arr.shape}: expected H x W or H x W x 3")
    if np.issubdtype(arr.dtype, np.floating):  # imaging hands on floats in [0, 1]
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:  # e.g. raw 12/16-bit pixels: stretch to the full 8-bit range
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / max(hi - lo, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr.squeeze()).convert("RGB")


def build_chat(prompt_text: str, system: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for one study: optional system turn, then a user turn with one image placeholder.

    Content is always a list of parts (the format TRL and every VLM chat template accept).
    """
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]})
    return messages


def prepare_inputs(
    processor: ProcessorMixin,
    image: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
    messages: list[dict[str, Any]] | Sequence[list[dict[str, Any]]],
    *,
    add_generation_prompt: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    assistant_prefixes: Sequence[str] | None = None,
) -> BatchFeature:
    """Model-ready tensors for one study or a batch, for any of the supported architectures.

    Pass one image + one conversation; a list of images + one conversation (used for every image); or
    equal-length lists of both. Batches are left-padded, as generation needs. Returns `input_ids`,
    `attention_mask`, `pixel_values` and, for Qwen-VL, `image_grid_thw` + `mm_token_type_ids`; floating
    tensors are cast to `dtype` (pass the model's dtype). `assistant_prefixes` (one per study) start the
    assistant's answer, so generation continues from them (e.g. a given draft, to see what the reflection does).
    """
    batched = not isinstance(image, (Image.Image, np.ndarray))
    images = [to_pil_rgb(im) for im in (image if batched else [image])]
    single = not messages or isinstance(messages[0], dict)  # one conversation = a list of message dicts
    conversations = [messages] * len(images) if single else list(messages)
    if len(images) != len(conversations):
        raise ValueError(f"{len(images)} images but {len(conversations)} conversations: pass one per study")
    texts = [processor.apply_chat_template(c, add_generation_prompt=add_generation_prompt, tokenize=False)
             for c in conversations]
    if assistant_prefixes is not None:
        if len(assistant_prefixes) != len(texts) or not add_generation_prompt:
            raise ValueError("assistant_prefixes needs one prefix per study and the generation prompt")
        texts = [text + prefix for text, prefix in zip(texts, assistant_prefixes)]
    inputs = processor(images=per_study_images(processor, images, conversations), text=texts, return_tensors="pt",
                       padding=True, padding_side="left")
    # BatchFeature.to(device, dtype=...) moves every tensor and casts only the floating ones (pixel_values).
    moves = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return inputs.to(**moves) if moves else inputs


# Processors that read a batch's images as one list per prompt (a flat list is taken as all images of one prompt).
NESTED_IMAGE_PROCESSORS = ("Gemma3Processor",)


def per_study_images(processor: ProcessorMixin, images: list[Image.Image], conversations: Sequence[list[dict]]) -> list:
    """The images as `processor` wants them: flat for most, one list per conversation for Gemma 3 (MedGemma), whose
    batched call otherwise fails ("number of <start_of_image> tokens in each prompt should be the same ...")."""
    if not any(cls.__name__ in NESTED_IMAGE_PROCESSORS for cls in type(processor).__mro__):
        return images
    counts = [sum(isinstance(m.get("content"), list) and sum(p.get("type") == "image" for p in m["content"]) for m in c)
              for c in conversations]
    if sum(counts) != len(images):
        raise ValueError(f"{len(images)} images but the conversations hold {sum(counts)} image placeholders")
    nested, start = [], 0
    for n in counts:
        nested.append(images[start:start + n])
        start += n
    return nested


def generation_kwargs(greedy: bool = True, max_new_tokens: int = 512, temperature: float = 0.7,
                      top_p: float = 0.9) -> dict[str, Any]:
    """Keyword arguments for `model.generate`: greedy by default (reproducible), or nucleus sampling."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if greedy:
        return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    return {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature, "top_p": top_p}


@torch.inference_mode()
def generate_text(model: PreTrainedModel, processor: ProcessorMixin, image: Image.Image | np.ndarray,
                  prompt_text: str, *, system: str | None = None, **gen: Any) -> str:
    """One study, no streaming: the decoded completion (schema tags kept, chat special tokens dropped)."""
    inputs = prepare_inputs(processor, image, build_chat(prompt_text, system), device=model.device,
                            dtype=model.dtype)
    output = model.generate(**inputs, **(gen or generation_kwargs()))
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return processor.decode(new_tokens, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------- CLI
# Used when `build-tiny` gets no --corpus: typical report phrasing, so the BPE merges are not all bytes.
_DEFAULT_CORPUS = (
    "The heart size is normal. The mediastinal contours are within normal limits.",
    "The lungs are clear. No focal consolidation, pleural effusion or pneumothorax.",
    "Cardiomegaly with a cardiothoracic ratio above 0.5.",
    "Small right pleural effusion with blunting of the right costophrenic angle.",
    "Large left pleural effusion with a meniscus sign.",
    "Right apical pneumothorax with a visible pleural line.",
    "Consolidation in the left lower zone with air bronchograms, consistent with pneumonia.",
    "A 1 cm nodule in the right upper zone.",
    "No acute cardiopulmonary process.",
    "Findings: Impression: perception reasoning draft reflection report kept revised removed",
)


@dataclass
class BuildTinyConfig:
    """`medr2 build-tiny` options (flags or a `--config` YAML file)."""

    output_dir: str | None = field(default=None, metadata={"help": "output directory (created)", "aliases": ["--out"]})
    arch: str = field(default="llava", metadata={"help": "architecture: " + " | ".join(ARCHS)})
    corpus: str | None = field(default=None, metadata={"help": "UTF-8 text file, one training line per line, for the tokenizer"})
    vocab_size: int = field(default=2000, metadata={"help": "tokenizer vocabulary size"})
    micro: bool = field(default=False, metadata={"help": "micro widths for tests (~0.2M parameters)"})
    seed: int = field(default=0, metadata={"help": "initialisation seed"})
    force: bool = field(default=False, metadata={"help": "overwrite a model already in --output_dir"})


def cli_build_tiny(argv: list[str]) -> int:
    """`medr2 build-tiny`: build an untrained tiny VLM + processor from config and save it to --output_dir."""
    from medr2.cli import UsageError, fail, parse_config

    prog = "medr2 build-tiny"
    try:
        config = parse_config(prog, BuildTinyConfig, argv, description=cli_build_tiny.__doc__)
        if not config.output_dir:
            raise UsageError(f"the following arguments are required: --output_dir (see `{prog} --help`)")
        if config.arch not in ARCHS:
            raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, got {config.arch!r}")
        out, corpus = Path(config.output_dir), Path(config.corpus) if config.corpus else None
        if (out / "config.json").exists() and not config.force:
            raise ValueError(f"{out} already holds a model: pass --force to overwrite it")
        if corpus is not None and not corpus.is_file():
            raise ValueError(f"--corpus {corpus}: no such file")
        lines: Iterable[str] = (corpus.read_text(encoding="utf-8").splitlines() if corpus
                                else list(_DEFAULT_CORPUS) * 20)
        cfg = (TinyVLMConfig.micro if config.micro else TinyVLMConfig)(arch=config.arch, seed=config.seed)
        tokenizer = train_tokenizer(lines, vocab_size=config.vocab_size)
        model, processor = build_tiny_vlm(tokenizer, cfg)
    except (UsageError, ValueError, OSError, UnicodeDecodeError) as exc:
        return fail(prog, exc)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "medr2_tiny_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    print(f"built untrained {cfg.arch}: {count_parameters(model) / 1e6:.2f}M parameters, "
          f"{len(processor.tokenizer)} tokens, {cfg.num_image_tokens} image tokens -> {out}")
    return 0
