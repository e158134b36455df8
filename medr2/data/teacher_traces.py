"""A teacher LVLM writes the perception and reasoning of a real study's Med-R2 trace.

The labeler path (`medr2.report.report_traces.build_report_trace`) restates the reference report region by region. A
teacher — any image-text-to-text model loaded like every other model (`medr2.inference.pipeline.make_pipeline`: a
local path or hub id, or a model served by an OpenAI-compatible server) — is shown the study's image(s) and the
report the trace's draft holds, and asked in prompted mode for the two sections a reader writes before that report:
`<perception>` (region: what is seen) and `<reasoning>` (sign -> finding [rule: id]), in the Med-R2 schema
(`medr2.report.schema`). Its sections are taken only when they parse completely (every line in its section's line
format) and the labels of its reasoning's conclusions equal the report's own, observation by observation (present,
hedged, absent); otherwise the labeler's sections stand, and the reason is counted.

Hands on: `Teacher(config)(images, report_text) -> text`, `teacher_sections(text, report) -> (sections, reason)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

from medr2.report.schema import PerceptionItem, ReasoningStep, Report

# Why a teacher's answer was not taken (its trace keeps the labeler's sections).
UNPARSED = "unparsed"  # no closed <perception> and <reasoning>, an empty one, or lines off the line format
DISAGREES = "disagrees"  # its reasoning's labels differ from the report's

# A teacher: (the study's images, frontal first; the report text) -> the teacher's answer.
TeacherFn = Callable[[Sequence, str], str]


def teacher_system_prompt() -> str:
    """The teacher's instructions: the two sections, their line formats, and the knowledge base's rules."""
    from medr2.report.knowledge import prompt_knowledge_text

    return f"""You are an expert radiologist writing teaching material. You are shown a chest radiograph study and the
report written for it. Write the reading that leads to that report: what each region shows, then the reasoning from
signs to findings. Answer with exactly these two sections, nothing before or after them:
<perception>
one line per region, "region: what you see", pertinent normal findings included, e.g.
heart: cardiothoracic ratio about 0.46, normal heart size.
</perception>
<reasoning>
one line per finding of the report, "sign -> finding [rule: id]", with "possible" where the report hedges, e.g.
blunted right costophrenic angle with meniscus -> small right pleural effusion [rule: effusion_meniscus]
a report with no finding gets one line:
no abnormal sign in any region -> no acute cardiopulmonary abnormality [rule: normal_study]
</reasoning>
State every finding of the report and no other; keep its sides, zones and severities.

Radiology knowledge to use:
{prompt_knowledge_text()}"""


def teacher_chat(report_text: str, n_images: int = 1) -> list[dict]:
    """The teacher's chat: the system prompt, then one user turn with the study's images and its report."""
    content = [{"type": "image"}] * n_images + [
        {"type": "text", "text": f"The report of this study:\n{report_text}\n\nWrite <perception> and <reasoning> for it."}]
    return [{"role": "system", "content": [{"type": "text", "text": teacher_system_prompt()}]},
            {"role": "user", "content": content}]


def _abnormal(text: str) -> dict[str, int]:
    from medr2.labeler.findings import label_report

    return {o: v for o, v in label_report(text).items() if o != "No Finding" and v in (1, -1)}


def teacher_sections(text: str, report: Report) -> tuple[tuple[list[PerceptionItem], list[ReasoningStep]] | None, str]:
    """The teacher's (perception, reasoning) and "" when they are taken; (None, why) when not (`UNPARSED` /
    `DISAGREES`)."""
    from medr2.report.schema import parse

    parsed = parse(text).output
    perception, reasoning = parsed.perception, parsed.reasoning
    if not perception or not reasoning or any(p.region is None for p in perception) or any(
            s.conclusion is None for s in reasoning):
        return None, UNPARSED
    conclusions = ". ".join(s.conclusion for s in reasoning if s.rule_id != "normal_study")
    if _abnormal(conclusions + "." if conclusions else "") != _abnormal(report.text):
        return None, DISAGREES
    return (perception, reasoning), ""


class TeacherError(ValueError):
    """The teacher cannot be asked (its context is too short for the prompt): one line naming the fix."""


class Teacher:
    """A teacher LVLM in prompted mode: `teacher(images, report_text)` -> its answer (greedy unless the config samples).

    `config` is the pipeline's own (`PipelineConfig`: `model` and `adapter` / `device_map`, or `base_url` and
    `served_model` for a served model), so a teacher loads exactly as `medr2 generate` loads a model."""

    def __init__(self, config):
        from medr2.inference.pipeline import make_pipeline
        from medr2.inference.remote import RemotePipeline

        self.config = config
        self.pipe = make_pipeline(config)
        self.remote = isinstance(self.pipe, RemotePipeline)
        self.name = self.pipe.provenance.model

    def __call__(self, images: Sequence, report_text: str) -> str:
        from medr2.modeling.model import to_pil_rgb

        messages = teacher_chat(report_text, len(images))
        pil = [to_pil_rgb(im) for im in images]
        return self._served(messages, pil) if self.remote else self._local(messages, pil)

    def _served(self, messages: list[dict], images: list) -> str:
        from medr2.inference.remote import CHAT_MARKERS, image_data_url, openai_messages
        from medr2.inference.results import clean_text

        cfg = self.config
        body = {"model": self.pipe.served_model, "messages": openai_messages(messages, [image_data_url(im) for im in images]),
                "max_tokens": cfg.max_new_tokens}
        if cfg.greedy:
            body.update(temperature=0.0, top_p=1.0)
        else:
            body.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        return clean_text("".join(delta for delta, _ in self.pipe.client.stream_chat(body)), CHAT_MARKERS)

    def _local(self, messages: list[dict], images: list) -> str:
        import torch

        from medr2.inference.results import clean_text
        from medr2.modeling.model import generation_kwargs, per_study_images

        cfg, model, processor = self.config, self.pipe.model, self.pipe.processor
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=per_study_images(processor, images, [messages]), text=[text], return_tensors="pt").to(model.device)
        n_prompt = inputs["input_ids"].shape[1]
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if context and n_prompt + cfg.max_new_tokens > context:
            raise TeacherError(f"the teacher prompt is {n_prompt} tokens and the answer may take {cfg.max_new_tokens} "
                               f"more, beyond {self.name}'s context of {context}: use a teacher with a longer context "
                               "(or a lower --max_new_tokens)")
        if not cfg.greedy:
            torch.manual_seed(cfg.seed)
        with torch.no_grad():
            ids = model.generate(**inputs, **generation_kwargs(greedy=cfg.greedy, max_new_tokens=cfg.max_new_tokens,
                                                                temperature=cfg.temperature, top_p=cfg.top_p))
        tok = processor.tokenizer
        # chat and padding markers only: the schema tags may be special tokens and must stay in the text
        markers = [t for t in {tok.eos_token, tok.pad_token, getattr(tok, "bos_token", None), "<|im_end|>", "<|im_start|>",
                               "<|endoftext|>", "<end_of_turn>"} if t]
        return clean_text(tok.decode(ids[0, n_prompt:], skip_special_tokens=False), markers)
