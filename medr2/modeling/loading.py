"""Load any image-text-to-text model by path or hub id, verify it, hash its weights.

What it does: `load_model(path_or_hub_id)` loads a checkpoint (ours, built by `medr2.modeling.model`, or e.g.
Qwen2.5-VL-7B-Instruct) with the standard `Auto*` classes: fp32 on CPU / bf16 on CUDA, `device_map` for
big models, a peft LoRA adapter on top (a directory holding only an adapter loads the base it names).
It checks that the processor really is multimodal, because `AutoProcessor` silently falls back to a
bare tokenizer, and rescues Qwen2/2.5/3-VL and LLaVA-OneVision checkpoints whose stock processor needs torchvision
(no-video processors, `medr2.modeling.qwen_processor`).
`weights_sha256` hashes the safetensors weights for provenance.

Hands on: `(model, processor)` in eval mode, or one `ModelLoadError` whose message names the source and
the fix. `medr2.modeling.model` re-exports the public names, so `from medr2.modeling.model import load_model` still works.
Importing this module registers the no-video Qwen processors (`medr2.modeling.qwen_processor`) with AutoProcessor.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from medr2.modeling import qwen_processor  # registers the no-video Qwen processors with AutoProcessor

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "check_multimodal_processor", "load_model", "weights_sha256", "weights_sha256_short"]


class ModelLoadError(RuntimeError):
    """A model or processor could not be loaded; the message names the source and the fix."""


_HUB_HELP = ("the Hugging Face Hub is unreachable from this machine: download the model where the Hub is "
             "reachable and pass its local directory (or pre-fill the HF cache); set HF_HUB_OFFLINE=1 to "
             "fail fast instead of retrying")


def _is_local(name_or_path: str) -> bool:
    """True for things that are (or are meant to be) local paths rather than hub ids like `owner/name`."""
    if os.path.exists(name_or_path) or name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path:
        return True
    parts = name_or_path.split("/")
    # "assets/model" is a path when "assets" exists here; a hub id is exactly "owner/name".
    return len(parts) != 2 or not all(parts) or os.path.isdir(parts[0])


def _resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype | str:
    if dtype is None:  # bf16 halves memory on GPUs; CPUs compute bf16 slowly and less exactly
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str) and dtype != "auto":
        aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
        resolved = getattr(torch, aliases.get(dtype, dtype), None)
        if not isinstance(resolved, torch.dtype):
            raise ModelLoadError(f"dtype={dtype!r} is not a torch dtype: use bfloat16, float16, float32 or auto")
        return resolved
    return dtype


def check_multimodal_processor(processor: Any, source: str) -> ProcessorMixin:
    """Raise `ModelLoadError` unless `processor` has both an image processor and a tokenizer."""
    if (isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None
            and getattr(processor, "tokenizer", None) is not None):
        return processor
    raise ModelLoadError(
        f"{source}: AutoProcessor returned {type(processor).__name__}, not a multimodal processor with an image "
        "processor and a tokenizer. If processor_config.json names a custom class (e.g. NoVideoQwen2VLProcessor), "
        "`import medr2.modeling.model` first so it is registered; otherwise save the full processor "
        "(`processor.save_pretrained(dir)`) next to the model."
    )


def _load_processor(source: str) -> ProcessorMixin:
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, AttributeError, ImportError) as exc:
        # Stock Qwen-VL processors need torchvision for their video half: retry with the no-video class.
        model_type = _model_type(source)
        if model_type not in qwen_processor.NO_VIDEO_PROCESSORS:
            if isinstance(exc, ImportError):  # e.g. another video-capable processor that needs torchvision
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelLoadError(f"{source}: the {model_type or 'model'}'s processor needs a package that is not "
                                     f"installed ({message})") from exc
            raise
        log.info("%s: stock %s processor failed (%s); using the no-video processor", source, model_type, exc)
        processor = qwen_processor.NO_VIDEO_PROCESSORS[model_type].from_pretrained(source)
    return check_multimodal_processor(processor, source)


def _model_type(source: str) -> str | None:
    try:
        return AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError):
        return None


def _adapter_base(adapter_dir: str) -> str:
    config = json.loads(Path(adapter_dir, "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path: pass the base model")
    return base


def load_model(name_or_path: str, *, device: str | None = None, dtype: torch.dtype | str | None = None,
               adapter: str | None = None, device_map: str | dict | None = None
               ) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load an image-text-to-text model and its processor from a local directory or a hub id.

    Args:
        name_or_path: model directory or hub id. A directory holding only a peft adapter
            (`adapter_config.json`) loads the base model it names, then the adapter.
        device: "cpu", "cuda", "cuda:1", …; default CUDA when available. Ignored with `device_map`.
        dtype: default float32 on CPU, bfloat16 on CUDA; a torch dtype, "bf16"/"fp32"/… or "auto".
        adapter: a peft LoRA adapter directory to apply on top (processor taken from it when saved there).
        device_map: e.g. "auto" to spread a large model over the available GPUs (needs accelerate).

    Returns:
        `(model, processor)`, model in eval mode.

    Raises:
        ModelLoadError: missing path, unreachable hub, or a processor that is not multimodal.
    """
    name_or_path = str(name_or_path)
    if _is_local(name_or_path):
        name_or_path = os.path.expanduser(name_or_path)
        if not os.path.isdir(name_or_path):
            raise ModelLoadError(f"no model at {name_or_path}: expected a directory saved with save_pretrained "
                                 "(build one with `medr2 build-tiny --output_dir DIR`)")
    if adapter is None and os.path.isfile(os.path.join(name_or_path, "adapter_config.json")):
        adapter, name_or_path = name_or_path, _adapter_base(name_or_path)
    if adapter is not None and not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise ModelLoadError(f"no peft adapter at {adapter}: expected adapter_config.json there")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but this torch build sees no CUDA GPU: use device='cpu'")
    torch_dtype = _resolve_dtype(dtype, device)
    has_own_processor = adapter is not None and any(
        os.path.isfile(os.path.join(adapter, f)) for f in ("processor_config.json", "preprocessor_config.json"))
    try:
        processor = _load_processor(adapter if has_own_processor else name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=torch_dtype, device_map=device_map)
    except OSError as exc:
        if _is_local(name_or_path):
            raise ModelLoadError(f"{name_or_path} is not a loadable model directory: {exc}") from exc
        raise ModelLoadError(f"could not load {name_or_path!r} from the hub: {_HUB_HELP} ({exc})") from exc
    if device_map is None:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel  # optional dependency (medr2[train])

        model = PeftModel.from_pretrained(model, adapter)
    log.info("loaded %s%s: %s, %s on %s", name_or_path, f" + adapter {adapter}" if adapter else "",
             type(model).__name__, torch_dtype, device_map or device)
    return model.eval(), processor


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model's safetensors weights, for provenance.

    A file, or a directory's `*.safetensors` (adapter included): one file hashes like `sha256sum`; several
    are hashed in name order as (name, content) pairs so a renamed shard changes the hash.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise ModelLoadError(f"no safetensors weights at {path}: expected a .safetensors file or a model directory")
    digest = hashlib.sha256()
    for file in files:
        if len(files) > 1:
            digest.update(file.name.encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def weights_sha256_short(path: str | os.PathLike, length: int = 12) -> str:
    """The first `length` hex digits of `weights_sha256(path)` (enough to tell checkpoints apart)."""
    return weights_sha256(path)[:length]
