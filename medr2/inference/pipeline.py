"""One call from image to shown work: the pipeline every front end uses (CLI, evaluation, app).

study -> `medr2.imaging.loader` -> processor + prompt -> `generate` (streamed)
-> `medr2.report.schema.parse` (sections as soon as they close) -> `medr2.labeler.findings` labels of draft and final
report -> a `StudyResult` with timings and provenance. Saliency is computed lazily on request
(`Pipeline.saliency`), so text appears before maps.

A study is one image (path / bytes / PIL / array / LoadedImage) or a list of them: several views of one study,
frontal first (`as_study`). Several images go to the model as one chat with one image placeholder each, the user
turn the training rows carry (`medr2.data.datasets.study_chat`); the input gate checks each image, while saliency,
confidence and the look loop read the first (frontal) one only, which the result's warnings say.

Hands on: a stream of `Event`s (tokens, then each completed section), then the `StudyResult`
(`medr2.inference.results`, shared with the served pipeline, `medr2.inference.remote`).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from medr2.inference.results import (
    FRONTAL_ONLY,
    Event,
    Provenance,
    StudyResult,
    clean_text,
    merge_checks,
    note_frontal_only_looks,
    result_of_text,
    text_events,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL = REPO_ROOT / "assets" / "model"
MODEL_CARD_FILE = "medr2_model.json"  # written by our training: target, demo flag, data provenance
HEADS_MAP_METHOD = "look heads"  # the saliency method name of a finding map read by the look heads


def default_model() -> str:
    """`MEDR2_MODEL` (local path or hub id) if set, else the embedded demo model shipped in assets/model."""
    return os.environ.get("MEDR2_MODEL") or str(EMBEDDED_MODEL)


def read_model_card(model: str, name: str = MODEL_CARD_FILE) -> dict:
    """A JSON file our export writes beside the weights (`medr2_model.json`, `saliency.json`); {} for other models."""
    path = Path(model) / name
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class PipelineConfig:
    """Generation settings for one pipeline (one config per entry point)."""

    model: str = field(default_factory=default_model)
    adapter: str | None = None  # LoRA adapter folder (peft) on top of `model`
    max_new_tokens: int = 640
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0  # sampling seed, set before every generation so a sampled report can be reproduced too
    device: str | None = None  # None = cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None = torch default
    # The reflection's looks (medr2.reflection): 'auto' = 'proposed' for a model trained with looks, else 'off';
    # 'proposed' = the pipeline's regions (+ the model's own requests), 'model' = only where the model asks.
    looks: str = "auto"
    max_looks: int = 3
    device_map: str | None = None  # e.g. "auto": spread a model larger than one GPU over all (accelerate)
    # A model served by an OpenAI-compatible server (medr2.inference.remote): its address, the name it is served
    # under (default: the first of /v1/models), an API key (default: $MEDR2_API_KEY, else $OPENAI_API_KEY) and
    # how long to wait for the server. `model` then names the same weights locally, if at all (card, saliency).
    base_url: str | None = None
    served_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.base_url is None and str(self.model).startswith(("http://", "https://")):
            self.base_url, self.model = self.model, ""  # `--model http://host:8000/v1` names a server
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.looks not in ("auto", "proposed", "model", "off"):
            raise ValueError(f"looks must be auto, proposed, model or off, got {self.looks!r}")


def as_loaded(image):
    """Accept a path, bytes, PIL image, uint8 array or LoadedImage; return a LoadedImage (imaging errors propagate)."""
    from medr2.imaging import loader as imaging

    if isinstance(image, imaging.LoadedImage):
        return image
    if isinstance(image, (Image.Image, np.ndarray)):
        import io

        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        return imaging.load_image(buf.getvalue())
    return imaging.load_image(image)


def as_study(study) -> list:
    """One study's images as LoadedImages, frontal first: one image (anything `as_loaded` takes) or a list / tuple of
    them (several views of one study, as `medr2.data.datasets.image_files` lists them)."""
    if isinstance(study, (list, tuple)):
        if not study:
            raise ValueError("a study needs at least one image")
        return [as_loaded(im) for im in study]
    return [as_loaded(study)]


def study_messages(card: dict, n_images: int = 1) -> list[dict]:
    """The chat a model with this card gets for a study of `n_images` images (one placeholder each, frontal first):
    our trained prompt for our own weights (direct or Med-R2), else the prompted-mode system prompt for general
    LVLMs. The local and the served pipeline send the same chat."""
    from medr2.data.datasets import study_chat
    from medr2.report.knowledge import prompted_system_prompt
    from medr2.report.traces import DIRECT_PROMPT, MEDR2_PROMPT

    if card.get("target") == "direct":
        return study_chat(DIRECT_PROMPT, n_images)
    if card:
        return study_chat(MEDR2_PROMPT, n_images)
    return study_chat(MEDR2_PROMPT, n_images, system=prompted_system_prompt())


def _model_label(model: str) -> str:
    """What provenance shows: a hub id as given, a folder inside this repo relative to it, else the folder name.

    Never an absolute path: it may name a user's home folder.
    """
    path = Path(model)
    if not path.exists():
        return model
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path.resolve().name


class Pipeline:
    """Loads a model once; `stream(image)` / `run(image)` / `run_batch(images)` produce reports with shown work."""

    # takes studies of several images (`as_study`); a pipeline without this attribute takes one image a study
    multi_image = True

    def __init__(self, config: PipelineConfig | None = None):
        import torch
        from transformers.utils import logging as hf_logging

        from medr2.modeling.model import load_model, weights_sha256
        from medr2.saliency import DEPTH_FILE

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per start-up is noise in CLI output and app logs

        self.config = config or PipelineConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        t0 = time.perf_counter()
        self.model, self.processor = load_model(self.config.model, device=self.config.device, adapter=self.config.adapter,
                                                device_map=self.config.device_map)
        self.model.eval()
        self.load_seconds = time.perf_counter() - t0
        self.card = read_model_card(self.config.model)
        self.saliency_config = read_model_card(self.config.model, DEPTH_FILE)
        from medr2.trust.gate import load_gate

        # None for models without stored training-film statistics (real LVLMs): tag checks only
        self.gate_stats = load_gate(self.config.model) if Path(self.config.model).is_dir() else None
        from medr2.trust.confidence import load_calibration

        # None without a calibration file: raw token probabilities of an uncalibrated model are not shown
        self.calibration = load_calibration(self.config.model) if Path(self.config.model).is_dir() else None
        self.provenance = Provenance(
            model=_model_label(self.config.model),
            weights_sha256=weights_sha256(self.config.model) if Path(self.config.model).exists() else "hub",
            demo=bool(self.card.get("demo", False)),
            training_data=self.card.get("training_data", "unknown"),
            medr2_version=__import__("medr2").__version__,
            decoding={"greedy": self.config.greedy, "max_new_tokens": self.config.max_new_tokens,
                      **({} if self.config.greedy else {"temperature": self.config.temperature, "top_p": self.config.top_p,
                                                         "seed": self.config.seed})},
            images_per_study=int(self.card.get("images_per_study", 1)),
        )
        from medr2.reflection.heads import LookHeads, tower_of

        trained_to_look = self.card.get("reflection") == "looks"
        self.look_mode = ("proposed" if trained_to_look else "off") if self.config.looks == "auto" else self.config.looks
        # the look heads serve the looks and, for every model that has them, the findings' localisation maps
        self.look_heads = LookHeads.load(self.config.model, tower_of(self.model)) if Path(self.config.model).is_dir() else None
        tok = self.processor.tokenizer
        # Chat/padding markers only: the schema tags may be special tokens too and must stay in the text.
        self._strip = [t for t in {tok.eos_token, tok.pad_token, getattr(tok, "bos_token", None), "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<end_of_turn>"} if t]

    def messages(self, n_images: int = 1) -> list[dict]:
        """The chat for this model (one image placeholder per image of the study): `study_messages`."""
        return study_messages(self.card, n_images)

    def _inputs(self, pil_images: list[Image.Image], prefixes: list[str] | None = None):
        """Model inputs for a batch of one-image studies (one conversation each)."""
        from medr2.modeling.model import prepare_inputs

        inputs = prepare_inputs(self.processor, pil_images, self.messages(), assistant_prefixes=prefixes)
        return inputs.to(self.model.device)

    def study_inputs(self, studies: list[list], prefixes: list[str] | None = None):
        """Model inputs for a batch of studies (lists of LoadedImages, frontal first), left-padded: each study's chat
        holds one image placeholder per image, its images follow in order (nested per study for Gemma 3)."""
        if all(len(study) == 1 for study in studies):
            return self._inputs([study[0].to_pil() for study in studies], prefixes)
        from medr2.modeling.model import per_study_images, to_pil_rgb

        conversations = [self.messages(len(study)) for study in studies]
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        if prefixes is not None:
            texts = [text + prefix for text, prefix in zip(texts, prefixes)]
        # `prepare_inputs` pairs one image with each conversation; the processor itself takes any number per prompt
        images = per_study_images(self.processor, [to_pil_rgb(im.to_pil()) for study in studies for im in study],
                                  conversations)
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left")
        return inputs.to(self.model.device)

    def check_study(self, study: list, inputs=None):
        """The input gate on every image of a study (one verdict, `merge_checks`); `inputs` = the pipeline's inputs
        of a one-image study, reused for its content check."""
        if len(study) == 1:
            return self.check_input(study[0], inputs)
        return merge_checks([self.check_input(loaded) for loaded in study])

    def _gen_kwargs(self) -> dict:
        from medr2.modeling.model import generation_kwargs

        return generation_kwargs(greedy=self.config.greedy, max_new_tokens=self.config.max_new_tokens,
                                 temperature=self.config.temperature, top_p=self.config.top_p)

    def check_input(self, loaded, inputs=None):
        """The input gate (DICOM tags, then distance from the training films in the vision tower's feature space)."""
        from medr2.trust.gate import check_input

        if inputs is None and self.gate_stats is not None:  # without statistics only the tags are read
            inputs = self._inputs([loaded.to_pil()])
        return check_input(loaded, self.model, self.processor, self.gate_stats, inputs=inputs)

    def add_confidence(self, result: StudyResult) -> None:
        """Calibrated per-finding confidence from one teacher-forced pass over the answer (a few % of a study)."""
        from medr2.trust.confidence import finding_confidences, is_low

        if self.calibration is None or result.saliency_inputs is None:
            return
        result.confidence = finding_confidences(self.model, self.processor, result, self.calibration)
        result.low_confidence = [obs for obs, p in result.confidence.items() if is_low(p, self.calibration)]

    def _seed(self) -> None:
        """Sampling draws from torch's global generator: seed it before each generation (greedy needs no seed)."""
        if not self.config.greedy:
            import torch

            torch.manual_seed(self.config.seed)

    def _finish(self, text: str, loaded, n_tokens: int, timings: dict, inputs=None, new_ids=None) -> StudyResult:
        """The result of `text` for one study: `loaded` is its LoadedImage or the list of them (frontal first);
        `inputs` / `new_ids` are what saliency and confidence re-read (a one-image pass over the frontal)."""
        study = loaded if isinstance(loaded, list) else [loaded]
        sal = {"inputs": inputs, "new_ids": new_ids} if inputs is not None else None
        result = result_of_text(text, study, n_tokens, timings, self.provenance, sal)
        if len(study) > 1:
            result.notes.append(FRONTAL_ONLY.format(n=len(study)))
        return result

    def stream(self, image) -> Iterator[Event | StudyResult]:
        """Yield token events and section events as generation proceeds, then the StudyResult. `image`: one image
        or a list of them (one study, frontal first)."""
        import torch
        from transformers import TextIteratorStreamer

        if self.look_mode != "off":
            yield from self._stream_with_looks(image)
            return
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        study = as_study(image)
        loaded = study[0]
        inputs = self.study_inputs([study])
        timings["preprocess_s"] = time.perf_counter() - t0
        t_gate = time.perf_counter()
        input_check = self.check_study(study, inputs if len(study) == 1 else None)
        timings["input_check_s"] = time.perf_counter() - t_gate
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=False)
        result: dict = {}

        def _generate():
            try:
                self._seed()
                with torch.no_grad():
                    result["ids"] = self.model.generate(**inputs, **self._gen_kwargs(), streamer=streamer)
            except BaseException as exc:  # surfaced to the caller below, after the streamer is closed
                result["error"] = exc
                streamer.end()

        t1 = time.perf_counter()
        worker = threading.Thread(target=_generate, daemon=True)
        worker.start()
        text, seen_sections, first_token = "", 0, None
        for piece in streamer:
            if first_token is None:
                first_token = time.perf_counter() - t1
            text += piece
            seen_sections = yield from text_events(clean_text(text, self._strip), seen_sections)
        worker.join()
        if "error" in result:
            raise result["error"]
        timings["first_token_s"] = first_token or 0.0
        timings["generate_s"] = time.perf_counter() - t1
        new_ids = result["ids"][:, inputs["input_ids"].shape[1]:]
        # saliency and confidence read one image's tokens: a study of several re-reads its answer on the frontal
        own_inputs = inputs if len(study) == 1 else self._inputs([loaded.to_pil()])
        final = self._finish(clean_text(text, self._strip), study, int(new_ids.shape[1]), timings, own_inputs, new_ids)
        final.input_check = input_check
        t_conf = time.perf_counter()
        self.add_confidence(final)
        timings["confidence_s"] = time.perf_counter() - t_conf
        yield Event("done", final.raw_text, parsed=final.parsed)
        yield final

    def _look_results(self, loaded_images: list, keep_saliency_inputs: bool = True) -> list[StudyResult]:
        """Results of the look loop (medr2.reflection.loop) for a batch of loaded films."""
        import torch

        from medr2.reflection.loop import LookRunner

        t0 = time.perf_counter()
        runs = LookRunner(self, self.look_heads if self.look_mode != "off" else None).run(loaded_images, self.look_mode,
                                                                                          self.config.max_looks)
        per_study = (time.perf_counter() - t0) / max(len(loaded_images), 1)
        tok = self.processor.tokenizer
        results = []
        for loaded, (text, looks) in zip(loaded_images, runs):
            ids = tok.encode(text + tok.eos_token, add_special_tokens=False)
            # Saliency and confidence re-read the answer teacher-forced on the film alone (the crops are not in
            # that pass): an approximation of what the model saw, stated in docs/reflection.md.
            result = self._finish(text, loaded, len(ids), {"generate_s": per_study},
                                  *((self._inputs([loaded.to_pil()]), torch.tensor([ids])) if keep_saliency_inputs else ()))
            result.looks = looks
            results.append(result)
        return results

    def _stream_with_looks(self, image) -> Iterator[Event | StudyResult]:
        """The look loop runs in rounds, not token by token: events come per finished study (sections at once)."""
        t0 = time.perf_counter()
        study = as_study(image)
        input_check = self.check_study(study)
        timings = {"input_check_s": time.perf_counter() - t0}
        final = self._look_results([study[0]])[0]
        note_frontal_only_looks(final, study)
        final.timings.update(timings)
        final.input_check = input_check
        yield Event("token", final.raw_text)
        for name in final.parsed.complete_sections:
            yield Event("section", final.raw_text, section=name, parsed=final.parsed)
        t_conf = time.perf_counter()
        self.add_confidence(final)
        final.timings["confidence_s"] = time.perf_counter() - t_conf
        yield Event("done", final.raw_text, parsed=final.parsed)
        yield final

    def run(self, image) -> StudyResult:
        """Generate for one study (an image or a list of them, frontal first) without streaming events."""
        *_, result = self.stream(image)
        return result

    def run_batch(self, images: list, batch_size: int = 16, prefixes: list[str] | None = None,
                  keep_saliency_inputs: bool = False, confidence: bool = False) -> list[StudyResult]:
        """Batched generation for evaluation (left padding); results in input order. Each item of `images` is one
        study: an image, or a list of images (several views, frontal first; `as_study`).

        `prefixes` (one per image) are forced as the start of each answer and generation continues from them;
        each result's text is prefix + continuation (how `benchmarks/reflection_probe.py` hands the model a
        draft with a known error and reads what its reflection does). `keep_saliency_inputs`: each result also
        keeps its own single-image inputs and unpadded generated ids, so `saliency` can explain it (batched
        generation, per-study attribution: what the saliency benchmarks need). `confidence`: each result gets its
        calibrated per-finding confidence (models with a calibration file; one teacher-forced pass per study)."""
        import torch

        if prefixes is not None and len(prefixes) != len(images):
            raise ValueError(f"{len(images)} images but {len(prefixes)} prefixes: pass one per image")
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # decoder-only batch generation needs the prompt flush right
        results = []
        for i in range(0, len(images), batch_size):
            chunk = [as_study(im) for im in images[i:i + batch_size]]
            chunk_prefixes = prefixes[i:i + batch_size] if prefixes is not None else None
            checks = [self.check_study(c) for c in chunk]  # one tower forward each: evaluation counts flagged films
            if self.look_mode != "off" and chunk_prefixes is None:
                keep = keep_saliency_inputs or (confidence and self.calibration is not None)
                for result, check, study in zip(self._look_results([c[0] for c in chunk], keep), checks, chunk):
                    note_frontal_only_looks(result, study)
                    result.input_check = check
                    if confidence:
                        self.add_confidence(result)
                    if not keep_saliency_inputs:
                        result.saliency_inputs = None
                    results.append(result)
                continue
            t0 = time.perf_counter()
            inputs = self.study_inputs(chunk, chunk_prefixes)
            self._seed()
            with torch.no_grad():
                ids = self.model.generate(**inputs, **self._gen_kwargs())
            per_study = (time.perf_counter() - t0) / len(chunk)
            new = ids[:, inputs["input_ids"].shape[1]:]
            for j, (study, row) in enumerate(zip(chunk, new)):
                text = clean_text(tok.decode(row, skip_special_tokens=False), self._strip)
                if chunk_prefixes is not None:
                    text = chunk_prefixes[j] + text
                n = int((row != tok.pad_token_id).sum())
                if not (keep_saliency_inputs or (confidence and self.calibration is not None)):
                    results.append(self._finish(text, study, n, {"generate_s": per_study}))
                else:
                    own = row.tolist()
                    if tok.eos_token_id in own:
                        own = own[:own.index(tok.eos_token_id) + 1]
                    own = [t for t in own if t != tok.pad_token_id]
                    results.append(self._finish(text, study, len(own), {"generate_s": per_study},
                                                self._inputs([study[0].to_pil()]), torch.tensor([own])))
                    if confidence:
                        self.add_confidence(results[-1])
                    if not keep_saliency_inputs:  # an evaluation holds hundreds of results: drop the tensors
                        results[-1].saliency_inputs = None
                results[-1].input_check = checks[j]
        return results

    def forced_result(self, image, text: str) -> StudyResult:
        """The result of this model 'answering' `text` (e.g. a reference trace), teacher-forced, with the inputs
        saliency needs: where would the model look if it wrote exactly this? (A study of several images: its frontal.)"""
        import torch

        loaded = as_study(image)[0]
        tok = self.processor.tokenizer
        new_ids = torch.tensor([tok.encode(text + tok.eos_token, add_special_tokens=False)])
        return self._finish(text, loaded, new_ids.shape[1], {}, self._inputs([loaded.to_pil()]), new_ids)

    def saliency(self, result: StudyResult, **kwargs):
        """Per-finding saliency maps for a streamed/run result (computed on request; see medr2.saliency.maps), with
        the model folder's per-finding block weights (`saliency.json`) unless `depth_weights` is given."""
        from medr2 import saliency

        if result.saliency_inputs is None:
            raise ValueError("saliency needs a result from Pipeline.run/stream (batched results keep no inputs)")
        kwargs.setdefault("depth_weights", self.saliency_config.get("depth_weights"))
        explained = saliency.explain(self.model, self.processor, result, **kwargs)
        if self.look_heads is None or kwargs.get("method", saliency.DEFAULT_METHOD) != saliency.DEFAULT_METHOD:
            return explained
        return self._with_heads_maps(result, explained)

    def _with_heads_maps(self, result: StudyResult, explained):
        """Each finding's look-heads map (the per-patch probability of its observation, read on the film) placed
        before its gradient x activation map: on held-out phantoms the heads' maps point at the finding more often
        (docs/saliency.md), and they do not pass through the language model."""
        import numpy as np

        from medr2 import saliency
        from medr2.reflection.heads import OBSERVATIONS, tower_of

        pixels = np.asarray(result.image.pixels)
        film = pixels if pixels.ndim == 2 else pixels[..., :3].mean(-1)
        probs = self.look_heads.read(tower_of(self.model), [film.astype(np.uint8)])[0]
        grid = int(round(np.sqrt(probs.shape[0])))
        maps = []
        for m in explained.maps:
            if m.kind == "finding" and m.target in OBSERVATIONS:
                raw = probs[:, OBSERVATIONS.index(m.target)].reshape(grid, grid)
                maps.append(saliency.grid_map(m.target, m.kind, m.text, m.value, raw, pixels.shape[:2], HEADS_MAP_METHOD))
            maps.append(m)
        explained.maps = maps
        return explained


def make_pipeline(config: PipelineConfig | None = None):
    """The pipeline for `config`: a `RemotePipeline` when it names a server (`base_url`, or a `model` that is an
    http(s) URL), else a local `Pipeline`. Both offer the same surface and produce the same `StudyResult`s."""
    config = config or PipelineConfig()
    if config.base_url:
        from medr2.inference.remote import RemotePipeline

        return RemotePipeline(config)
    return Pipeline(config)


# The generate / evaluate / app flags that reach a served model or a multi-GPU load (dataclass fields of each config).
SERVED_HELP = {
    "base_url": "OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, transformers serve), e.g. http://127.0.0.1:8000/v1; "
                "`--model URL` does the same",
    "served_model": "the model's name on the server (default: the first of its /v1/models)",
    "api_key": "server API key (default: $MEDR2_API_KEY, else $OPENAI_API_KEY; prefer the variable: flags show in `ps`)",
    "device_map": "'auto' spreads a model larger than one GPU over all GPUs (needs accelerate)",
}
