"""`medr2 generate`: one study (an image, or several views frontal first) through the pipeline, printed as shown
work (perception, reasoning, draft, reflection with its looks, report, findings, provenance) or as JSON.

Hands on: the printed result; `format_result` is also what tests and scripts read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from medr2.inference.pipeline import SERVED_HELP, PipelineConfig, default_model, make_pipeline
from medr2.inference.results import StudyResult


@dataclass
class GenerateConfig:
    """`medr2 generate` options (flags or a `--config` YAML file)."""

    image: list[str] | None = field(default=None, metadata={"help": "DICOM (any extension), PNG or JPEG; several files are "
                                                                  "several views of one study, frontal first"})
    model: str = field(default="", metadata={"help": "local path or hub id (default: $MEDR2_MODEL or the embedded demo model); "
                                                     "with --base_url: the same weights locally, if at all (model card, saliency)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder"})
    base_url: str | None = field(default=None, metadata={"help": SERVED_HELP["base_url"]})
    served_model: str | None = field(default=None, metadata={"help": SERVED_HELP["served_model"]})
    api_key: str | None = field(default=None, metadata={"help": SERVED_HELP["api_key"]})
    device_map: str | None = field(default=None, metadata={"help": SERVED_HELP["device_map"]})
    json: bool = field(default=False, metadata={"help": "print the whole result as JSON"})
    max_new_tokens: int = field(default=640, metadata={"help": "generation limit"})
    sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    seed: int = field(default=0, metadata={"help": "sampling seed (with --sample): the same seed gives the same report"})
    looks: str = field(default="auto", metadata={"help": "reflection looks: auto (on for models trained with looks) | proposed | model | off"})
    max_looks: int = field(default=3, metadata={"help": "most looks per study"})


def cli_generate(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config

    prog = "medr2 generate"
    argv = list(argv)
    lead = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    if lead > 1:  # `medr2 generate frontal.png lateral.png ...`: the leading files are one study's views
        argv = ["--image", *argv[:lead], *argv[lead:]]
    try:
        args = parse_config(prog, GenerateConfig, argv,
                            description="Perceive, reason, reflect and report on one chest radiograph study "
                                        "(one image, or several views of the study, frontal first).",
                            positionals=(("image", "DICOM (any extension), PNG or JPEG; several files (before any "
                                                   "option, or after --image) are one study's views, frontal first"),))
        images = [args.image] if isinstance(args.image, str) else list(args.image or [])
        if not images:
            raise UsageError(f"the following arguments are required: IMAGE (see `{prog} --help`)")
    except UsageError as exc:
        return fail(prog, exc)
    from medr2.imaging.loader import ImageLoadError
    from medr2.modeling.model import ModelLoadError

    try:
        served = args.base_url or str(args.model).startswith(("http://", "https://"))
        pipe = make_pipeline(PipelineConfig(model=args.model or ("" if served else default_model()), adapter=args.adapter,
                                            max_new_tokens=args.max_new_tokens, greedy=not args.sample, seed=args.seed,
                                            looks=args.looks, max_looks=args.max_looks, device_map=args.device_map,
                                            base_url=args.base_url, served_model=args.served_model, api_key=args.api_key))
        if len(images) > 1 and not getattr(pipe, "multi_image", False):
            raise ValueError(f"{type(pipe).__name__} takes one image a study: pass the frontal image only")
        result = pipe.run(images[0] if len(images) == 1 else images)
    except (ImageLoadError, ModelLoadError, ValueError) as exc:
        return fail(prog, exc)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(format_result(result))
    return 0


def format_result(result: StudyResult) -> str:
    """Human-readable shown work: perception, reasoning, draft, reflection, report, labels, provenance."""
    out, lines = result.output, []
    for w in result.warnings:
        lines.append(f"WARNING: {w}")
    lines.append("PERCEPTION")
    lines += [f"  {p.region}: {p.text}" for p in out.perception]
    lines.append("REASONING")
    lines += [f"  {r.sign} -> {r.conclusion}" + (f"  [rule: {r.rule_id}]" if r.rule_id else "") for r in out.reasoning]
    lines.append("DRAFT")
    lines.append(f"  {out.draft.text if out.draft else '(none)'}")
    lines.append("REFLECTION")
    evidence = {look.region: look.evidence for look in result.looks}
    for r in out.reflection:
        if r.look:
            lines.append(f"  look at the {r.look}: {evidence.get(r.look, 'no crop was shown')}")
        lines.append(f"  {r.action}: {r.target} - {r.text}" if r.action else f"  {r.text}")
    lines.append("REPORT")
    lines.append(f"  {out.report.text if out.report else '(none: the model did not finish a report)'}")
    if result.final_labels:
        pos = [k for k, v in result.final_labels.items() if v in (1, -1)]
        conf = result.confidence or {}

        def finding(k: str) -> str:
            p = f" {conf[k]:.2f}" + (" LOW" if k in result.low_confidence else "") if k in conf else ""
            return f"{k}{'?' if result.final_labels[k] == -1 else ''}{p}"

        lines.append("FINDINGS" + (" (calibrated confidence)" if conf else "") + ": "
                     + (", ".join(finding(k) for k in pos) or "none"))
    if result.parsed.problems:
        lines.append("PARSE PROBLEMS: " + "; ".join(result.parsed.problems))
    lines.append(f"MODEL: {result.provenance.line()}")
    lines.append(f"REPRODUCE: {result.provenance.stamp()}")
    lines.append(f"TIME: {sum(v for k, v in result.timings.items()):.2f} s, {result.n_tokens} tokens")
    return "\n".join(lines)
