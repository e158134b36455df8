"""Supervised fine-tuning (TRL SFTTrainer) on Med-R2 traces or on direct reports.

Load -> build -> train -> save:
1. phantom studies (same seeds as stage 0) -> prompt/completion rows with the image
   (`target=medr2`: perceive -> reason -> draft -> reflect -> report; `target=direct`: report only); or an R2Gen-layout
   dataset's train split (`dataset_dir`), whose Med-R2 traces are read from each reference report
   (`medr2.report.report_traces.build_report_trace`; `draft_error_rate`: a share of drafts carry a taught error, in a
   context-only turn), with up to `max_images` views a study;
2. the embedded tiny LLaVA (own tokenizer trained on the targets, stage-0 tower loaded and frozen) or any
   image-text-to-text model by path/hub id, with LoRA for large ones;
3. TRL SFTTrainer with completion-only loss; focal studies oversampled;
4. model + processor saved with `save_pretrained` (loadable by `medr2.modeling.model.load_model`), loss curve PNG.

The budget is `max_steps` (never wall-clock: the same recipe gives the same model on any machine). Checkpoints
every `save_steps` go to `output_dir/checkpoint-N`; `--resume_from_checkpoint PATH` (or `last`) continues one (the Trainer restores
weights, optimizer, scheduler and data position).

Run: `medr2 train-sft --config recipes/demo/sft.yaml` (any SFTConfig field may follow as a flag and wins over the YAML).
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig

from medr2.phantom.specs import FilmSourceArguments

logger = logging.getLogger(__name__)


@dataclass
class MedR2SFTConfig(SFTConfig, FilmSourceArguments):
    """SFT entry point: TRL's SFTConfig plus what medr2 needs to build data and model."""

    target: str = field(default="medr2", metadata={"help": "training target: 'medr2' (structured trace) or 'direct' (report only)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "fine-tune this VLM (path or hub id) or continue one of our checkpoints; empty = build the tiny embedded LLaVA"})
    perception_dir: str | None = field(default=None, metadata={"help": "stage-0 output folder whose vision_tower.safetensors initialises the tiny model's tower"})
    freeze_vision: bool = field(default=True, metadata={"help": "keep the vision tower frozen (train projector + language model)"})
    vision_learning_rate: float = field(default=0.0, metadata={"help": "with freeze_vision false: the tower's own (lower) learning rate, so the stage-0 features adapt to the language model without being overwritten; 0 = learning_rate"})
    dataset_dir: str | None = field(default=None, metadata={"help": "R2Gen-layout dataset (IU X-Ray / MIMIC-CXR) whose train split is trained on instead of phantoms; target=medr2 there writes each trace from the reference report (no image ground truth: the model card says so)",
                                                            "aliases": ["--data_dir"]})
    max_images: int = field(default=1, metadata={"help": "with dataset_dir: images per study in each row, frontal first (IU X-Ray: 2 = frontal + lateral); the inference pipeline sends one image, so keep 1 for models it serves"})
    n_train: int = field(default=6000, metadata={"help": "phantom training studies"})
    train_seed: int = field(default=1, metadata={"help": "phantom seed (same as stage 0 so the tower saw these images)"})
    focal_oversample: int = field(default=2, metadata={"help": "studies with focal findings appear this many times"})
    correction_oversample: int = field(default=1, metadata={"help": "with looks: a trace whose reflection corrects its draft appears at least this many times (the corrections are few among the confirmations)"})
    kind_oversample: str = field(default="", metadata={"help": "per-kind repeats that override focal_oversample, e.g. 'opacity:3,pneumonia:3' (the findings still below the bar)"})
    error_rate: float = field(default=0.2, metadata={"help": "fraction of Med-R2 traces whose draft carries an error that reflection fixes"})
    draft_error_rate: float = field(default=0.0, metadata={"help": "with dataset_dir and target=medr2: fraction of report traces whose draft carries one error made from the reference's own findings (dropped, wrong side, wrong severity, or an added finding the report does not mention) that the reflection fixes; such a draft is a context-only turn (no loss); 0 = every draft is the reference"})
    traces_file: str | None = field(default=None, metadata={"help": "with dataset_dir and target=medr2: a JSONL written by `medr2 traces` (e.g. with --teacher): each listed study's trace (`target`, with its `draft_error`) is trained on as written; studies not listed get the trace built here"})
    looks: bool = field(default=False, metadata={"help": "Med-R2 traces whose reflection looks again (magnified crops as extra images, the look heads' reading beside them; medr2.reflection); loss on every assistant turn"})
    look_heads: str | None = field(default=None, metadata={"help": "folder with look_heads.npz fitted on this model's tower (default: model_name_or_path); none found = looks without the heads' words"})
    film_size: int = field(default=256, metadata={"help": "phantom film side in px (the processor resizes each film to the model's input); looks need the detail of 512"})
    look_error_weights: str = field(default="", metadata={"help": "with looks: the draft error kinds in these proportions, e.g. 'missed:0.52,hallucinated:0.30,wrong_zone:0.13,wrong_side:0.04' (as the model's own drafts err on validation); empty = uniform over the kinds a study allows"})
    normal_look_rate: float = field(default=0.5, metadata={"help": "with looks: share of traces with one extra look at a region the draft calls normal"})
    max_looks: int = field(default=4, metadata={"help": "with looks: most looks per trace"})
    evidence_names_draft: bool = field(default=False, metadata={"help": "with looks: each look's evidence line also names the draft's findings in that region that the heads do not see ('not seen here: lung lesion'); the model card records it so the pipeline words its evidence the same way"})
    corrections_need_evidence: bool = field(default=False, metadata={"help": "with look_drafts: a look corrects the draft only where its evidence line shows the error (adds a miss it calls likely, removes or moves a finding it names as not seen here); elsewhere the draft stands, as a reader of the words would leave it"})
    look_drafts: str | None = field(default=None, metadata={"help": "with looks: a `medr2 evaluate` folder (or its predictions.jsonl) of the parent model on the training films (--seed train_seed, --n n_train, same renderer and film_size): each trace is built on the parent's own draft, its looks where the pipeline proposes them, instead of an injected error (error_rate, look_error_weights and normal_look_rate are then unused)"})
    vocab_size: int = field(default=2000, metadata={"help": "tokenizer vocabulary of the tiny model"})
    arch: str = field(default="llava", metadata={"help": "tiny architecture: llava | qwen2_vl | qwen2_5_vl"})
    text_hidden: int = field(default=256, metadata={"help": "tiny model: language model width"})
    text_layers: int = field(default=4, metadata={"help": "tiny model: language model depth"})
    micro: bool = field(default=False, metadata={"help": "build a ~0.2M-parameter micro model (tests and smoke runs only)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of full weights: for real LVLMs"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x lora_r (medr2.training.lora_alpha_for)"})

    def __post_init__(self) -> None:
        from medr2.training import apply_device_defaults

        if self.target not in ("medr2", "direct"):
            raise ValueError(f"target must be 'medr2' or 'direct', got {self.target!r}")
        if self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        parse_kind_oversample(self.kind_oversample)  # fail on a bad spec before any data is built
        self.check_film_source()
        if not 0.0 <= self.draft_error_rate <= 1.0:
            raise ValueError(f"draft_error_rate must be in [0, 1], got {self.draft_error_rate}")
        if self.traces_file and (not self.dataset_dir or self.target != "medr2" or self.looks):
            raise ValueError("traces_file holds Med-R2 traces of a real dataset: use target=medr2 with dataset_dir")
        if self.draft_error_rate > 0 or self.traces_file:
            if not self.dataset_dir or self.target != "medr2" or self.looks:
                raise ValueError("draft_error_rate is for Med-R2 traces read from real reports: use target=medr2 with "
                                 "dataset_dir (phantom traces use error_rate)")
            # a row whose draft holds a taught error is a chat with the draft in a context-only turn: the loss covers
            # the assistant turns that carry it (every row, so the dataset has one format)
            self.assistant_only_loss, self.completion_only_loss = True, False
        if self.correction_oversample < 1:
            raise ValueError(f"correction_oversample must be >= 1, got {self.correction_oversample}")
        if (self.look_drafts or self.evidence_names_draft or self.correction_oversample > 1) and not self.looks:
            raise ValueError("look_drafts, evidence_names_draft and correction_oversample are options of look traces: set looks true")
        if self.corrections_need_evidence and not self.look_drafts:
            raise ValueError("corrections_need_evidence gates the corrections of traces built on a model's own drafts: set look_drafts")
        if self.looks:
            if self.target != "medr2" or self.dataset_dir:
                raise ValueError("looks are part of the Med-R2 trace on phantoms: use target=medr2 without dataset_dir")
            if not self.freeze_vision:
                raise ValueError("looks need freeze_vision: the look heads read the tower and are only valid on the tower they were fitted on")
            # a trace with looks is a multi-turn chat (each look is a user turn): the loss covers every assistant turn
            self.assistant_only_loss, self.completion_only_loss = True, False
        apply_device_defaults(self)
        super().__post_init__()


def _phantom_rows(config: MedR2SFTConfig) -> list[dict]:
    """Prompt/completion rows from phantom studies; focal ones repeated `focal_oversample` times."""
    from PIL import Image
    from tqdm import tqdm

    from medr2.phantom import generator as phantom
    from medr2.report.traces import DIRECT_PROMPT, MEDR2_PROMPT, TraceConfig, direct_target, medr2_target

    trace_config = TraceConfig(error_rate=config.error_rate, seed=config.seed)
    kind_repeats = parse_kind_oversample(config.kind_oversample)
    prompt = MEDR2_PROMPT if config.target == "medr2" else DIRECT_PROMPT
    rows = []
    films = config.films(size=config.film_size)
    for study in tqdm(phantom.generate_studies(config.n_train, config.train_seed, films), total=config.n_train, desc="phantom traces"):
        if config.target == "medr2":
            text = medr2_target(study, trace_config)
        else:
            text = direct_target(study)
        row = sft_row(prompt, text, Image.fromarray(study.image))
        repeats = study_repeats(study, config.focal_oversample, kind_repeats)
        rows += [row] * repeats
    random.Random(config.seed).shuffle(rows)
    return rows


def _look_rows(config: MedR2SFTConfig, model) -> list[dict]:
    """Multi-turn rows whose reflection looks again (`medr2.reflection.traces`), oversampled like `_phantom_rows`."""
    from medr2.reflection.heads import LookHeads, tower_of
    from medr2.reflection.traces import look_rows, read_drafts
    from medr2.report.traces import TraceConfig

    tower = tower_of(model).eval()
    folder = config.look_heads or config.model_name_or_path
    heads = LookHeads.load(folder, tower) if folder else None
    logger.info("look traces %s the look heads' reading", "with" if heads is not None else "WITHOUT")
    kind_repeats = parse_kind_oversample(config.kind_oversample)
    rows = []
    trace_config = TraceConfig(error_rate=config.error_rate, seed=config.seed, look_error_weights=config.look_error_weights)
    films = config.films(size=config.film_size)  # the renderer's films at the look scale's detail
    drafts = read_drafts(config.look_drafts, config.n_train, config.train_seed) if config.look_drafts else None
    for row, study, corrections in look_rows(config.n_train, config.train_seed, heads, tower, trace_config, films=films,
                                normal_look_rate=config.normal_look_rate, max_looks=config.max_looks, drafts=drafts,
                                evidence_names_draft=config.evidence_names_draft,
                                corrections_need_evidence=config.corrections_need_evidence):
        repeats = study_repeats(study, config.focal_oversample, kind_repeats)
        rows += [row] * (max(repeats, config.correction_oversample) if corrections else repeats)
    random.Random(config.seed).shuffle(rows)
    return rows


def parse_kind_oversample(spec: str) -> dict[str, int]:
    """'opacity:3,pneumonia:3' -> {'opacity': 3, 'pneumonia': 3}; unknown kinds and bad counts are errors."""
    from medr2.phantom.generator import OBSERVATION_OF

    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, count = item.partition(":")
        if kind not in OBSERVATION_OF or not count.isdigit() or int(count) < 1:
            raise ValueError(f"kind_oversample: expected 'kind:count' with a phantom kind and a count >= 1, got {item!r}")
        out[kind] = int(count)
    return out


def study_repeats(study, focal_oversample: int, kind_repeats: dict[str, int]) -> int:
    """How many times a study appears: the largest of its kinds' own repeats, else `focal_oversample` when it has
    a focal finding, else once."""
    from medr2.phantom.specs import FOCAL_KINDS

    kinds = {f.kind for f in study.findings}
    own = [kind_repeats[k] for k in kinds if k in kind_repeats]
    if own:
        return max(own)
    return focal_oversample if kinds & FOCAL_KINDS else 1


def _dataset_rows(config: MedR2SFTConfig) -> list[dict]:
    """Prompt/completion rows from an R2Gen-layout dataset's train split: the reference report alone (direct), or the
    Med-R2 trace read from it (`medr2.report.report_traces.build_report_trace`: no image ground truth exists, so perception,
    reasoning and reflection restate the reference). Each row carries the study's first `max_images` images, frontal
    first. With `draft_error_rate` the rows are chats (`report_trace_row`) and a share of drafts carry a taught error."""
    from PIL import Image

    from medr2.data.datasets import DatasetError, image_files, read_r2gen, record_report
    from medr2.report.report_traces import report_target, report_trace
    from medr2.report.schema import render_direct
    from medr2.report.traces import DIRECT_PROMPT, MEDR2_PROMPT

    medr2 = config.target == "medr2"
    written = read_traces_file(config.traces_file) if config.traces_file else {}
    rows, skipped, errors = [], 0, Counter()
    for record in read_r2gen(config.dataset_dir, splits=("train",)):
        report = record_report(record)
        if not (report.findings or report.impression):
            skipped += 1  # nothing to learn from, and no trace to write
            continue
        paths = image_files(config.dataset_dir, record)[: config.max_images]
        if not paths:
            raise DatasetError(f"study {record['id']!r} has no image (a reports-only dataset?)")
        images = [Image.open(p).convert("L") for p in paths]
        if record["id"] in written:  # a trace written elsewhere (a teacher LVLM), trained on as written
            output, error_kind = written[record["id"]]
            errors[error_kind or "none"] += 1
            rows.append(report_trace_row(MEDR2_PROMPT, output, error_kind is not None, images))
            continue
        if config.draft_error_rate > 0 or config.traces_file:
            output, error = report_trace(report, config.draft_error_rate, config.seed, record["id"])
            errors[error.kind if error else "none"] += 1
            rows.append(report_trace_row(MEDR2_PROMPT, output, error is not None, images))
            continue
        rows.append(sft_row(MEDR2_PROMPT if medr2 else DIRECT_PROMPT, report_target(report) if medr2 else render_direct(report),
                            images))
    if skipped:
        logger.info("skipped %d train studies with an empty report", skipped)
    if errors:
        logger.info("report traces: %d of %d drafts carry a taught error (%s)", len(rows) - errors["none"], len(rows),
                    ", ".join(f"{k} {v}" for k, v in sorted(errors.items()) if k != "none") or "none")
    if not rows:
        raise DatasetError(f"no train studies with a report in {config.dataset_dir} (see docs/datasets.md)")
    return rows


def read_traces_file(path: str | Path) -> dict:
    """study id -> (parsed Med-R2 output, taught draft-error kind or None) of a `medr2 traces` JSONL; a trace that does
    not parse completely is a one-line DatasetError naming its study."""
    from medr2.data.datasets import DatasetError
    from medr2.report.schema import parse

    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read traces_file {path}: {exc}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            study, target = row["id"], row["target"]
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{path} line {n}: not a `medr2 traces` row (JSON with id and target)") from None
        parsed = parse(target)
        if parsed.missing or parsed.problems or parsed.output.report is None:
            raise DatasetError(f"{path}: the trace of study {study!r} does not parse as a Med-R2 trace")
        out[study] = (parsed.output, (row.get("draft_error") or {}).get("kind"))
    return out


def sft_row(prompt_text: str, target_text: str, image) -> dict:
    """One prompt/completion row as TRL's SFTTrainer reads it: the user turn is the one the pipeline sends at
    inference (`build_chat`), so the model is trained on exactly the prompt it will see; the loss covers the
    assistant turn only (`completion_only_loss`). `image` may be a list (several views of one study): the user turn
    then holds one image placeholder per image, in order, before the text."""
    from medr2.data.datasets import study_chat

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    return {"prompt": study_chat(prompt_text, len(images)),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": target_text}]}],
            "images": images}


def report_trace_row(prompt_text: str, output, context_draft: bool, image) -> dict:
    """One chat row ("messages") of a report trace: the user turn the pipeline sends, then the trace. When the draft
    holds a taught error (`context_draft`) the trace is two assistant turns, the one up to `</draft>` context-only
    (no loss: the model must not learn to write the error, only to revise it), as look traces mark theirs; the
    assistant turns joined by a newline are the rendered trace."""
    from medr2.data.datasets import study_chat
    from medr2.report.report_traces import split_at_draft
    from medr2.report.schema import render

    images = list(image) if isinstance(image, (list, tuple)) else [image]
    text = render(output)
    turns = [(part, i == 0) for i, part in enumerate(split_at_draft(text))] if context_draft else [(text, False)]
    messages = [{**m, "context_only": False} for m in study_chat(prompt_text, len(images))]
    messages += [{"role": "assistant", "content": [{"type": "text", "text": part}], "context_only": context}
                 for part, context in turns]
    return {"messages": messages, "images": images}


def _corpus(rows: list[dict]) -> list[str]:
    turns = lambda r: r["messages"] if "messages" in r else (*r["prompt"], *r["completion"])  # noqa: E731
    return [m["content"][-1]["text"] for r in rows for m in turns(r)]


def build_model(config: MedR2SFTConfig, rows: list[dict]):
    """The model and processor to fine-tune."""
    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm, load_model, train_tokenizer

    if config.model_name_or_path:
        # a hub LVLM, or one of our own checkpoints to continue training (then `perception_dir` may swap in a
        # newer stage-0 tower: the projector and language model re-adapt to it)
        model, processor = load_model(config.model_name_or_path)
        if config.use_lora:
            from medr2.training import with_lora

            return with_lora(model, config.lora_r, config.lora_alpha), processor
    else:
        tokenizer = train_tokenizer(_corpus(rows), vocab_size=config.vocab_size)
        tiny = TinyVLMConfig.micro(config.arch) if config.micro else TinyVLMConfig(arch=config.arch, text_hidden=config.text_hidden, text_layers=config.text_layers)
        model, processor = build_tiny_vlm(tokenizer, tiny)
    if config.perception_dir:
        load_pretrained_tower(model, Path(config.perception_dir) / "vision_tower.safetensors")
    if config.freeze_vision:
        for p in model.get_submodule(vision_tower_path(model)).parameters():
            p.requires_grad_(False)
    return model, processor


def vision_tower_path(model) -> str:
    """Dotted path of the vision tower inside a transformers 5 LLaVA/Qwen-VL model (or a peft LoRA model of one)."""
    if hasattr(model, "get_base_model"):  # a LoRA run's folder loads as a peft wrapper: the tower sits under it
        return "base_model.model." + vision_tower_path(model.get_base_model())
    for name in ("model.vision_tower", "vision_tower", "model.visual", "visual", "model.vision_model"):
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            continue
    raise ValueError(f"no vision tower found in {type(model).__name__}")


def load_pretrained_tower(model, path: Path) -> None:
    """Load stage-0 SiglipVisionModel weights into the VLM's tower; every key must match."""
    from safetensors.torch import load_file

    from medr2.modeling.model import grow_siglip_depth, siglip_depth, state_depth

    tower = model.get_submodule(vision_tower_path(model))
    state = load_file(str(path))
    saved_depth = state_depth(state)  # 0 for a non-SigLIP (Qwen-VL) tower: nothing to deepen
    if saved_depth and saved_depth > siglip_depth(tower):
        # a stage-0 run deepened the tower (`medr2 train-perception --vision_layers N`): deepen the VLM's to match;
        # the config change is saved with the model, so it reloads with the new depth
        grow_siglip_depth(tower, saved_depth)
        model.config.vision_config.num_hidden_layers = saved_depth
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"stage-0 tower at {path} does not fit the model's tower: missing {missing[:3]}, unexpected {unexpected[:3]}")
    logger.info("loaded stage-0 vision tower from %s", path)


def tower_optimizer(trainer, config: MedR2SFTConfig):
    """The Trainer's own optimizer (class, kwargs, weight-decay split) with the vision tower in groups of its own
    at `vision_learning_rate`. Why: unfreezing a stage-0 tower at the language model's rate would overwrite what the
    dense mask supervision taught it; a low rate lets it adapt to what the language model needs to read."""
    from transformers import Trainer

    model = trainer.model
    tower = {id(p) for p in model.get_submodule(vision_tower_path(model)).parameters()}
    decay = set(trainer.get_decay_parameter_names(model))
    groups = []
    for in_tower, lr in ((False, config.learning_rate), (True, config.vision_learning_rate)):
        for with_decay in (True, False):
            params = [p for n, p in model.named_parameters()
                      if p.requires_grad and (id(p) in tower) == in_tower and (n in decay) == with_decay]
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": config.weight_decay if with_decay else 0.0})
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(config, model)
    optimizer_kwargs.pop("lr", None)
    return optimizer_cls(groups, lr=config.learning_rate, **optimizer_kwargs)


def plot_loss(log_history: list[dict], path: Path, title: str) -> None:
    """The Trainer's logged training loss over steps."""
    from medr2.training.plots import Panel, plot_panels

    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    steps, losses = (list(x) for x in zip(*points)) if points else ([], [])
    plot_panels(path, [Panel(title, {"loss": (steps, losses)}, ylabel="training loss", log_y=True)])


def train(config: MedR2SFTConfig) -> Path:
    from datasets import Dataset
    from trl import SFTTrainer

    from medr2.training import resume_arg

    tower = Path(config.perception_dir) / "vision_tower.safetensors" if config.perception_dir else None
    if tower is not None and not tower.is_file():  # checked before minutes of data building, not after
        raise FileNotFoundError(f"no stage-0 tower at {tower}: run the stage that writes it first (perception_dir)")
    if config.looks:
        if not config.model_name_or_path:
            raise ValueError("looks continue a trained Med-R2 model (model_name_or_path): the look heads need its tower")
        model, processor = build_model(config, [])
        from medr2.modeling.tokenizer import add_look_tokens

        if add_look_tokens(model, processor.tokenizer):
            logger.info("added the look tags to the tokenizer (%d tokens)", len(processor.tokenizer))
        from medr2.modeling.tokenizer import with_context_turns

        # a draft that holds an injected error is context for the reflection, never a draft to imitate
        processor.chat_template = processor.tokenizer.chat_template = with_context_turns(processor.chat_template)
        rows = _look_rows(config, model)
    else:
        rows = _dataset_rows(config) if config.dataset_dir else _phantom_rows(config)
        model, processor = build_model(config, rows)
        if config.draft_error_rate > 0:
            from medr2.cli import UsageError
            from medr2.modeling.tokenizer import with_context_turns

            template = with_context_turns(processor.chat_template or "")
            if "context_only" not in template:  # a foreign model's template would train on the erroneous drafts
                raise UsageError(f"draft_error_rate needs medr2's chat template (context-only assistant turns); "
                                 f"{config.model_name_or_path} has its own: train with draft_error_rate 0")
            processor.chat_template = processor.tokenizer.chat_template = template
    dataset = Dataset.from_list(rows)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("SFT %s: %d rows, %.2fM trainable parameters", config.target, len(rows), n_trainable / 1e6)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    if not config.freeze_vision and config.vision_learning_rate > 0:
        trainer.optimizer = tower_optimizer(trainer, config)  # the Trainer then builds its scheduler on it
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_arg(config.resume_from_checkpoint))
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    if config.looks:  # the heads travel with the model whose (frozen) tower they read
        import shutil

        from medr2.reflection.heads import HEADS_FILE

        heads_file = Path(config.look_heads or config.model_name_or_path) / HEADS_FILE
        if heads_file.is_file():
            shutil.copy(heads_file, out / HEADS_FILE)
    from medr2.training.export import REPORT_TRACES, dataset_source, phantom_source, training_card

    if config.dataset_dir:
        traces = REPORT_TRACES if config.target == "medr2" else None
        if traces and config.draft_error_rate > 0:
            traces += f"; {config.draft_error_rate:.0%} of drafts drawn to carry a taught error that the reflection fixes"
        if traces and config.traces_file:
            sources = Counter(json.loads(line).get("source", "labeler") for line in Path(config.traces_file).read_text().splitlines() if line.strip())
            traces += (f"; traces of {sum(sources.values())} studies read from {Path(config.traces_file).name} "
                       f"({sources['teacher']} with a teacher LVLM's perception and reasoning)")
        source = dataset_source(config.dataset_dir, traces=traces)
    else:
        source = phantom_source(config.train_seed, config.n_train, config.renderer, config.drr_fraction)
    card = training_card(config.target, source, init=config.model_name_or_path)
    if config.looks:
        card["reflection"] = "looks"  # the pipeline runs the look loop for this model (medr2.reflection)
        if config.evidence_names_draft:  # the pipeline words its evidence lines as this model was taught them
            card["look_evidence_names_draft"] = True
    if config.dataset_dir and config.max_images > 1:  # trained on several views a study; the pipeline sends one
        card["images_per_study"] = config.max_images
    (out / "medr2_model.json").write_text(json.dumps(card, indent=2))
    (out / "training_summary.json").write_text(json.dumps({
        "target": config.target, "rows": len(rows), "steps": trainer.state.global_step,
        "minutes": round((time.time() - start) / 60, 2), "trainable_params": n_trainable,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }, indent=2))
    plot_loss(trainer.state.log_history, out / "sft_loss.png", f"SFT ({config.target})")
    return out


def parse_config(argv: list[str]) -> MedR2SFTConfig:
    """Fields from a YAML recipe (`--config`, alias `--recipe`) and/or flags, flags winning (the one CLI parser)."""
    from medr2.cli import parse_config as parse

    return parse("medr2 train-sft", MedR2SFTConfig, argv)


def cli_train_sft(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_config(argv)
    except UsageError as exc:
        return fail("medr2 train-sft", exc)
    from medr2.data.datasets import DatasetError
    from medr2.phantom.ct_volume import CTUnavailable

    try:
        print(train(config))
    except (FileNotFoundError, DatasetError, UsageError, CTUnavailable) as exc:  # a missing input, a bad dataset folder, a model that cannot take the rows, no CT for rendered films
        return fail("medr2 train-sft", exc)
    return 0
