"""Our own tokenizer for the embedded demo VLM: byte-level BPE trained on report / trace text.

Why not reuse a pretrained tokenizer: nothing may download here, and a 2,000-token vocabulary trained on
radiology text keeps the embedding matrix small (2,000 x 256 ≈ 0.5M parameters of a ~5M model) while
the byte-level alphabet still encodes any input losslessly.

Token layout (ids are fixed by `SPECIAL_TOKENS` order, so configs can rely on them):
- special tokens (dropped by `decode(skip_special_tokens=True)`): `<pad>`, ChatML `<|im_start|>` /
  `<|im_end|>` (the eos), the image placeholder `<image>`, and Qwen-VL's `<|video_pad|>`,
  `<|vision_start|>`, `<|vision_end|>` (Qwen-VL configs need integer ids for them);
- the Med-R2 schema tags (`<think>`, `<perception>`, … `</report>`) as *ordinary* added tokens: one id
  each, but kept when decoding, because the schema parser needs them in the text.

Hands on: a `PreTrainedTokenizerFast` with a ChatML chat template; `medr2.modeling.model.build_tiny_vlm` wraps it in
a processor. Run: `train_tokenizer(lines, vocab_size=2000)`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from medr2.report.schema import LOOK_TAGS, SCHEMA_TAGS  # the Med-R2 tags, one token each

TAG_TOKENS: tuple[str, ...] = SCHEMA_TAGS + LOOK_TAGS

log = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn = eos for generation
IMAGE_TOKEN = "<image>"
VISION_START, VISION_END, VIDEO_TOKEN = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END)


# ChatML, as Qwen uses it. Content may be a string or a list of parts ({"type": "image"} / {"type": "text"}),
# the form TRL and `processor.apply_chat_template` pass. The image becomes <|vision_start|><image><|vision_end|>;
# the processor then expands <image> to one token per visual patch. Assistant turns sit in
# {% generation %} blocks so TRL's `assistant_only_loss=True` can mask everything else; an assistant turn marked
# `context_only` renders the same but carries no loss (a training draft that holds a deliberately injected error is
# context for the reflection, not a draft to imitate).
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' -%}{{- '" + VISION_START + IMAGE_TOKEN + VISION_END + "\n' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '" + IM_START + "' + message.role + '\n' -}}"
    "{%- if message.role == 'assistant' and not message.context_only -%}"
    "{%- generation -%}{{- render(message.content) + '" + IM_END + "' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}{{- render(message.content) + '" + IM_END + "\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + IM_START + "assistant\n' -}}{%- endif -%}"
)

ASSISTANT_TURN = "{%- if message.role == 'assistant' -%}"


def with_context_turns(template: str) -> str:
    """An older medr2 chat template -> the same template with `context_only` assistant turns (no loss on them);
    templates that already have them, or that are not medr2's, come back unchanged."""
    return template.replace(ASSISTANT_TURN, "{%- if message.role == 'assistant' and not message.context_only -%}")


# Byte-level BPE needs at least the 256-byte alphabet plus the special and schema tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(TAG_TOKENS)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (case kept) on `texts` and return it with the chat template set.

    Args:
        texts: training text, e.g. report and trace lines (any iterable of strings, read once).
        vocab_size: target size including special tokens; the result may be smaller on a tiny corpus.

    Returns:
        A `PreTrainedTokenizerFast` with pad `<pad>`, eos `<|im_end|>`, `image_token` `<image>`, and the
        schema tags as single, non-special tokens.

    Example:
        >>> tok = train_tokenizer(["No acute cardiopulmonary process."] * 10, vocab_size=300)
        >>> len(tok.encode("<report>", add_special_tokens=False))
        1
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs >= {MIN_VOCAB_SIZE}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the first word of a report and the same word mid-sentence stay distinct
    # pieces, but decoding is exact, which the schema parser relies on.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),  # leave room: the tags are added after training
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    fast.chat_template = CHAT_TEMPLATE
    log.info("trained tokenizer: %d tokens (asked for %d)", len(fast), vocab_size)
    return fast


def add_look_tokens(model, tokenizer) -> int:
    """Give a model trained before looks existed the look tags as single tokens (new embedding rows start at the
    mean of the old ones, so the untrained rows do not dominate). Returns how many tokens were added."""
    missing = [t for t in LOOK_TAGS if t not in tokenizer.get_vocab()]
    if not missing:
        return 0
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return len(missing)
