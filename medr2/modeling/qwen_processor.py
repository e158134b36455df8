"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL and LLaVA-OneVision processors without the video slot, so they work without
torchvision.

Why: in transformers 5.x the stock `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` / `Qwen3VLProcessor` /
`LlavaOnevisionProcessor` always build a video
processor, whose base class needs torchvision, and torchvision cannot be installed beside torch 2.13 here.
`video_processor=None` fails (`VIDEO_PROCESSOR_MAPPING has no attribute _extra_content`) and loading from
disk fails (`OSError: Can't load video processor`). These subclasses drop the `video_processor` argument:
`ProcessorMixin` infers a processor's parts from its `__init__` signature, so they consist of an image
processor and a tokenizer only, and everything else (image-token expansion by `image_grid_thw`,
`mm_token_type_ids` for M-RoPE) is inherited unchanged.

Importing this module registers these classes with `AutoProcessor`, so `save_pretrained` (which records
`"processor_class": "NoVideoQwen2VLProcessor"`) round-trips through `AutoProcessor.from_pretrained`.
Caveat: a process that has *not* imported this module gets a bare tokenizer from `AutoProcessor`,
without an error; `medr2.modeling.model.load_model` imports it and checks the type it got.
"""
from __future__ import annotations

from transformers import AutoProcessor, LlavaOnevisionConfig, ProcessorMixin, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

__all__ = ["NoVideoQwen2VLProcessor", "NoVideoQwen2_5_VLProcessor", "NoVideoQwen3VLProcessor",
           "NoVideoLlavaOnevisionProcessor", "NO_VIDEO_PROCESSORS"]

_QWEN_IMAGE_TOKEN = "<|image_pad|>"  # what the official Qwen tokenizers use when they carry no `image_token`


def _init_image_only(processor: ProcessorMixin, image_processor, tokenizer, chat_template) -> None:
    """Shared `__init__` body: image token from the tokenizer (ours: `<image>`), no video token."""
    processor.image_token = getattr(tokenizer, "image_token", None) or _QWEN_IMAGE_TOKEN
    processor.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
        processor.image_token
    )
    # None (not a string) so ProcessorMixin neither expands nor counts video placeholders.
    processor.video_token = None
    processor.video_token_id = None
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template)


class NoVideoQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` made of an image processor and a tokenizer (no video processor, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_only(self, image_processor, tokenizer, chat_template)


class NoVideoQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` made of an image processor and a tokenizer (no video processor, no torchvision)."""

    videos_kwargs = {}  # the parent asks the (absent) video processor for metadata

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_only(self, image_processor, tokenizer, chat_template)


class NoVideoQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` made of an image processor and a tokenizer (no video processor, no torchvision)."""

    videos_kwargs = {}  # the parent asks the (absent) video processor for metadata

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_image_only(self, image_processor, tokenizer, chat_template)
        # the parent's text expansion collapses `<vision_start><video><vision_end>` wrappers: it needs the strings
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        for side, default in (("start", "<|vision_start|>"), ("end", "<|vision_end|>")):
            token = getattr(tokenizer, f"vision_{side}_token", None) or default
            setattr(self, f"vision_{side}_token", token)
            setattr(self, f"vision_{side}_token_id", tokenizer.convert_tokens_to_ids(token))


class NoVideoLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` made of an image processor and a tokenizer (no video processor, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None, vision_feature_select_strategy=None,
                 chat_template=None, image_token="<image>", vision_aspect_ratio="anyres_max_9", **kwargs):
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_aspect_ratio = vision_aspect_ratio
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = None  # None (not a string): ProcessorMixin neither expands nor counts video placeholders
        self.video_token_id = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# model_type -> processor class, used by medr2.modeling.model to rescue checkpoints saved with the stock class.
NO_VIDEO_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": NoVideoQwen2VLProcessor,
    "qwen2_5_vl": NoVideoQwen2_5_VLProcessor,
    "qwen3_vl": NoVideoQwen3VLProcessor,
    "llava_onevision": NoVideoLlavaOnevisionProcessor,
}

# exist_ok: these config classes already map to the stock processors, which cannot load here anyway.
# Checkpoints that name the stock class in processor_config.json still get the stock class.
AutoProcessor.register(Qwen2VLConfig, NoVideoQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, NoVideoQwen2_5_VLProcessor, exist_ok=True)
AutoProcessor.register(Qwen3VLConfig, NoVideoQwen3VLProcessor, exist_ok=True)
AutoProcessor.register(LlavaOnevisionConfig, NoVideoLlavaOnevisionProcessor, exist_ok=True)
