"""The `medr2` command line: one sub-command per entry point, dispatched lazily.

Why lazy: `medr2 label` must start in milliseconds, so heavy stacks (torch, transformers, gradio) are
imported only by the sub-commands that need them. Each sub-command lives next to its stage as a
function `cli_<name>(argv: list[str]) -> int` that parses its own arguments (one config dataclass per
entry point) and returns a process exit code. Errors meant for users exit with code 2 and one line on
stderr, never a traceback.
"""
from __future__ import annotations

import importlib
import sys

# name -> ("module", "function", one-line help). Keep in sync with README's CLI table.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "label": ("medr2.labeler.cli", "cli_label", "CheXpert-style labels for reports (drop-in for chexpert-labeler CSV)"),
    "score": ("medr2.evaluation.metrics", "cli_score", "clinical-efficacy and NLG metrics of predictions vs references"),
    "inspect": ("medr2.imaging.loader", "cli_inspect", "load a DICOM/PNG/JPEG, print safe metadata + warnings, optionally write PNG"),
    "phantom": ("medr2.phantom.generator", "cli_phantom", "generate synthetic chest radiographs with ground truth (R2Gen layout)"),
    "build-tiny": ("medr2.modeling.model", "cli_build_tiny", "build an untrained tiny VLM (LLaVA / Qwen2-VL / Qwen2.5-VL) from config"),
    "train-perception": ("medr2.training.perception", "cli_train_perception", "stage 0: pretrain the vision tower on phantom masks"),
    "train-sft": ("medr2.training.sft", "cli_train_sft", "supervised fine-tuning on Med-R2 traces or direct reports (TRL SFTTrainer)"),
    "train-grpo": ("medr2.training.grpo", "cli_train_grpo", "GRPO with MCCS + format rewards (TRL GRPOTrainer)"),
    "generate": ("medr2.inference.pipeline", "cli_generate", "perceive, reason, reflect and report on one image"),
    "evaluate": ("medr2.evaluation.evaluate", "cli_evaluate", "CE + NLG evaluation of a model on a dataset split"),
    "feedback": ("medr2.feedback.store", "cli_feedback", "export reviewer feedback (jsonl/csv, or as SFT/DPO data)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: medr2 <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `medr2 <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from medr2 import __version__

        print(f"medr2 {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"medr2: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        print(f"medr2 {name}: not available in this installation ({exc})", file=sys.stderr)
        return 2
    return int(func(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
