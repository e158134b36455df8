"""`medr2 traces`: the Med-R2 training targets of a real dataset, written out for inspection or for another trainer.

Reads an R2Gen-layout folder (IU X-Ray after `medr2 convert-iu`, MIMIC-CXR) and writes one JSON object per study
of a split: `id`, `target` (the tagged Med-R2 trace `medr2 train-sft --dataset_dir DIR --target medr2` trains on,
read from the reference report by `medr2.report.report_traces.build_report_trace`), `labels` (the reference's CheXpert
labels by the project's labeler), `source` (who wrote perception and reasoning: "labeler", or "teacher") and
`draft_error` (the taught error the draft carries, `{"kind", "observation"}`, or null). Studies without report text
are skipped and counted.

Options: `--draft_error_rate` / `--seed` draw taught draft errors exactly as `train-sft` does; `--teacher MODEL`
(or `--base_url` for a served model) has a teacher LVLM write perception and reasoning from the image(s) and the
report (`medr2.data.teacher_traces`), falling back to the labeler's sections where its answer does not parse or
its labels disagree with the report's.

Hands on: `write_traces(dataset_dir, split, out, ...) -> TraceCounts`, `cli_traces`.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medr2.inference.pipeline import SERVED_HELP


@dataclass
class TracesConfig:
    """`medr2 traces` options."""

    dataset_dir: str = field(default="", metadata={"help": "R2Gen-layout dataset folder", "aliases": ["--data_dir", "--data"]})
    split: str = field(default="train", metadata={"help": "split to write"})
    output_file: str = field(default="", metadata={"help": "JSONL file to write", "aliases": ["--out"]})
    n: int = field(default=0, metadata={"help": "write the split's first N studies only; 0 = all"})
    draft_error_rate: float = field(default=0.0, metadata={"help": "fraction of traces whose draft carries one taught error made from the reference's findings, fixed by the reflection (as `train-sft --draft_error_rate`); 0 = every draft is the reference"})
    seed: int = field(default=42, metadata={"help": "seed of the taught errors, with the study id (the same study always draws the same draft); train-sft draws with its --seed (default 42 too), so the same seed shows the drafts it trains on"})
    teacher: str = field(default="", metadata={"help": "teacher LVLM (local path or hub id, prompted mode) that writes perception and reasoning from the image(s) and the report; empty = the labeler's sections"})
    base_url: str | None = field(default=None, metadata={"help": "a teacher served by an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, transformers serve), e.g. http://127.0.0.1:8000/v1; `--teacher URL` does the same"})
    served_model: str | None = field(default=None, metadata={"help": SERVED_HELP["served_model"]})
    api_key: str | None = field(default=None, metadata={"help": SERVED_HELP["api_key"]})
    device_map: str | None = field(default=None, metadata={"help": SERVED_HELP["device_map"]})
    max_images: int = field(default=1, metadata={"help": "with a teacher: images per study it is shown, frontal first (IU X-Ray: 2 = frontal + lateral)"})
    max_new_tokens: int = field(default=640, metadata={"help": "with a teacher: its generation limit"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.draft_error_rate <= 1.0:
            raise ValueError(f"draft_error_rate must be in [0, 1], got {self.draft_error_rate}")
        if self.n < 0 or self.max_images < 1:
            raise ValueError(f"n must be >= 0 and max_images >= 1, got {self.n} and {self.max_images}")
        if self.served_model and not (self.base_url or str(self.teacher).startswith(("http://", "https://"))):
            raise ValueError("--served_model names a model on a server: give the server as --base_url")


@dataclass
class TraceCounts:
    """What `write_traces` wrote: studies written and skipped (empty report), who wrote perception and reasoning,
    why a teacher's answer fell back to the labeler's, and the taught errors drawn."""

    written: int = 0
    skipped: int = 0
    sources: Counter = field(default_factory=Counter)  # "teacher" / "labeler" -> rows
    fallbacks: Counter = field(default_factory=Counter)  # "unparsed" / "disagrees" -> rows (with a teacher)
    errors: Counter = field(default_factory=Counter)  # error kind -> rows


def write_traces(dataset_dir: str | Path, split: str, out: str | Path, *, draft_error_rate: float = 0.0, seed: int = 0,
                 teacher=None, max_images: int = 1, n: int = 0) -> TraceCounts:
    """Write the split's Med-R2 targets as JSONL. `teacher`: a callable (images, report text) -> answer
    (`medr2.data.teacher_traces.Teacher`), asked per study for perception and reasoning; None = the labeler's."""
    from PIL import Image
    from tqdm import tqdm

    from medr2.data.datasets import DatasetError, image_files, read_r2gen, record_report
    from medr2.data.teacher_traces import teacher_sections
    from medr2.labeler.findings import label_report
    from medr2.report.report_traces import report_trace
    from medr2.report.schema import render

    records = read_r2gen(dataset_dir, splits=(split,), check_images=teacher is not None)
    records = records[:n] if n else records
    counts = TraceCounts()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for record in tqdm(records, desc=f"{split} traces" + (" (teacher)" if teacher is not None else ""), unit="study"):
            report = record_report(record)
            if not report.text.strip():
                counts.skipped += 1
                continue
            trace, error = report_trace(report, draft_error_rate, seed, record["id"])
            source = "labeler"
            if teacher is not None:
                paths = image_files(dataset_dir, record)[:max_images]
                if not paths:
                    raise DatasetError(f"study {record['id']!r} has no image for the teacher (a reports-only dataset?)")
                # the teacher writes what leads to the trace's draft (the reference, or the taught error in it), as the
                # labeler's sections do
                sections, why = teacher_sections(teacher([Image.open(p).convert("L") for p in paths], trace.draft.text),
                                                 trace.draft)
                if sections is None:
                    counts.fallbacks[why] += 1
                else:
                    trace = dataclasses.replace(trace, perception=sections[0], reasoning=sections[1])
                    source = "teacher"
            counts.sources[source] += 1
            counts.errors[error.kind if error else "none"] += 1
            fh.write(json.dumps({"id": record["id"], "target": render(trace), "labels": label_report(report.text),
                                 "source": source, "draft_error": error._asdict() if error else None}) + "\n")
            counts.written += 1
    return counts


def summary_line(counts: TraceCounts, out: str | Path, teacher_name: str | None = None) -> str:
    """What was written, in one line: studies, skips, taught errors, and the teacher's share with its fallbacks."""
    parts = [f"{counts.written} traces written to {out}"]
    if counts.skipped:
        parts.append(f"{counts.skipped} studies without report text skipped")
    taught = counts.written - counts.errors["none"]
    if taught:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.errors.items()) if k != "none")
        parts.append(f"{taught} drafts with a taught error ({kinds})")
    if teacher_name is not None:
        from medr2.data.teacher_traces import DISAGREES, UNPARSED

        fallback = sum(counts.fallbacks.values())
        parts.append(f"perception and reasoning by {teacher_name} in {counts.sources['teacher']}, by the labeler in "
                     f"{fallback} (teacher fallbacks: {counts.fallbacks[UNPARSED]} did not parse, "
                     f"{counts.fallbacks[DISAGREES]} disagreed with the report's labels)")
    return "; ".join(parts)


def cli_traces(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config
    from medr2.data.datasets import DatasetError

    try:
        config = parse_config("medr2 traces", TracesConfig, argv)
        if not config.dataset_dir or not config.output_file:
            raise UsageError("give --dataset_dir DIR and --out FILE.jsonl")
    except UsageError as exc:
        return fail("medr2 traces", exc)
    from medr2.data.teacher_traces import TeacherError
    from medr2.modeling.model import ModelLoadError

    teacher = None
    try:
        if config.teacher or config.base_url:
            from medr2.data.teacher_traces import Teacher
            from medr2.inference.pipeline import PipelineConfig

            teacher = Teacher(PipelineConfig(model=config.teacher, base_url=config.base_url, served_model=config.served_model,
                                             api_key=config.api_key, device_map=config.device_map,
                                             max_new_tokens=config.max_new_tokens, looks="off"))
        counts = write_traces(config.dataset_dir, config.split, config.output_file, draft_error_rate=config.draft_error_rate,
                              seed=config.seed, teacher=teacher, max_images=config.max_images, n=config.n)
    except (DatasetError, ModelLoadError, TeacherError, OSError) as exc:
        return fail("medr2 traces", exc)
    if not counts.written:
        return fail("medr2 traces", f"no {config.split!r} study with report text in {config.dataset_dir}")
    print(summary_line(counts, config.output_file, teacher.name if teacher is not None else None))
    return 0
