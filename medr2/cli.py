"""The `medr2` command line: one sub-command per entry point, dispatched lazily.

Why lazy: `medr2 label` must start in milliseconds, so heavy stacks (torch, transformers, gradio) are
imported only by the sub-commands that need them. Each sub-command lives next to its stage as a
function `cli_<name>(argv: list[str]) -> int` that parses its own arguments and returns a process exit code.

Two parsers, one spelling. Flags are spelled with underscores (`--max_new_tokens`, `--data_dir`), as TRL and
transformers spell them; the hyphen spelling (`--max-new-tokens`) is accepted everywhere as an alias.
- Entry points whose options are a configuration (`evaluate`, `generate`, `build-tiny`, `phantom`, `compare`,
  `saliency-depth`, the training stages and `app.py`) parse with `trl.TrlParser` over one config dataclass
  (`parse_config` below): `--config recipe.yaml` (or `--recipe`) sets any field and flags override it.
- The light commands (`label`, `score`, `inspect`, `feedback`) keep stdlib argparse (`FlagParser` below): importing
  TrlParser costs about 0.15 s (trl checks its optional packages at import), which would take `medr2 label`
  from about 0.05 s to 0.2 s; they have a handful of flags and no recipe to read.

Errors meant for users exit with code 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module", "function", one-line help). Keep in sync with README's CLI table.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "label": ("medr2.labeler.cli", "cli_label", "CheXpert-style labels for reports (drop-in for chexpert-labeler CSV)"),
    "score": ("medr2.evaluation.metrics", "cli_score", "clinical-efficacy and NLG metrics of predictions vs references"),
    "inspect": ("medr2.imaging.loader", "cli_inspect", "load a DICOM/PNG/JPEG, print safe metadata + warnings, optionally write PNG"),
    "phantom": ("medr2.phantom.generator", "cli_phantom", "generate synthetic chest radiographs with ground truth (R2Gen layout)"),
    "traces": ("medr2.data.traces_export", "cli_traces", "write a real dataset's Med-R2 training traces (read from its reference reports) as JSONL"),
    "data": ("medr2.cli", "cli_data", "convert a dataset release to the R2Gen layout: `medr2 data iu-xray` (docs/datasets.md)"),
    "convert-iu": ("medr2.data.iu_xray", "cli_convert_iu", "the older name of `medr2 data iu-xray` (same options)"),
    "build-tiny": ("medr2.modeling.model", "cli_build_tiny", "build an untrained tiny VLM (LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, LLaVA-OneVision, Idefics3 / SmolVLM) from config"),
    "train-perception": ("medr2.training.perception", "cli_train_perception", "stage 0: pretrain the vision tower on phantom masks"),
    "train-sft": ("medr2.training.sft", "cli_train_sft", "supervised fine-tuning on Med-R2 traces or direct reports (TRL SFTTrainer)"),
    "train-grpo": ("medr2.training.grpo", "cli_train_grpo", "GRPO with MCCS + format rewards (TRL GRPOTrainer)"),
    "export": ("medr2.training.export", "cli_export", "export a training run as a model folder with its model card"),
    "generate": ("medr2.inference.generate", "cli_generate", "perceive, reason, reflect and report on one image"),
    "evaluate": ("medr2.evaluation.evaluate", "cli_evaluate", "CE + NLG evaluation of a model on a dataset split"),
    "compare": ("medr2.evaluation.compare", "cli_compare", "paired bootstrap: is model B's CE-F1 really above model A's?"),
    "saliency-depth": ("medr2.saliency.depth", "cli_saliency_depth", "choose per-finding vision-block weights for a model's saliency maps"),
    "fit-gate": ("medr2.trust.gate", "cli_fit_gate", "fit a model's input gate (training-film statistics + threshold) and store them in its folder"),
    "fit-look-heads": ("medr2.reflection.fit_heads", "cli_fit_look_heads", "fit the reflection's look heads (per-patch finding heads) on a model's frozen vision tower"),
    "feedback": ("medr2.feedback.store", "cli_feedback", "export reviewer feedback (jsonl/csv, or as SFT/DPO data)"),
    "study": ("medr2.study.cli", "cli_study", "reader studies: freeze cases and reports, readers, statistics and exports"),
}

# `medr2 data <dataset>`: dataset name -> ("module", "function", one-line help) of its converter.
DATA_COMMANDS: dict[str, tuple[str, str, str]] = {
    "iu-xray": ("medr2.data.iu_xray", "cli_convert_iu",
                "IU X-Ray (Open-i ecgen XML reports + PNGs) -> R2Gen layout, seeded 7:1:2 splits, a folder per study"),
}

BOOL_STRINGS = {"true", "false", "yes", "no", "y", "n", "t", "f", "1", "0"}


class UsageError(Exception):
    """A mistake in a command line or config file: reported as one line on stderr, exit code 2."""


def fail(prog: str, exc: BaseException | str) -> int:
    """Print `prog: message` as one line on stderr and return exit code 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: {message}", file=sys.stderr)
    return 2


class FlagParser(argparse.ArgumentParser):
    """argparse for the light commands: every `--snake_case` flag also answers to `--snake-case`, and a usage
    mistake raises `UsageError` (one line) instead of printing the usage block and exiting."""

    def add_argument(self, *names, **kwargs):
        aliases = [n.replace("_", "-") for n in names if n.startswith("--") and "_" in n]
        return super().add_argument(*names, *[a for a in aliases if a not in names], **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _normalise_argv(argv: list[str], bool_flags: set[str]) -> list[str]:
    """`--recipe X` / `--recipe=X` / `--config=X` -> `--config X` (TrlParser reads only that form), and a bare
    boolean flag gets an explicit `true` so it never swallows the positional argument after it."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--recipe", "--config"):
            out += ["--config", value] if eq else ["--config"]
            continue
        out.append(arg)
        if arg in bool_flags:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("-") and nxt.lower() not in BOOL_STRINGS:
                out.append("true")
    return out


def parse_config(prog: str, config_cls, argv: list[str], *, description: str | None = None,
                 positionals: tuple[tuple[str, str], ...] = ()):
    """One config dataclass from `--config recipe.yaml` and flags (flags win), with trl.TrlParser.

    `positionals`: (field name, help) pairs that may also be given by position (`medr2 generate IMAGE`), as
    well as by flag or config key. Raises UsageError for any mistake; `--help` prints and exits 0."""
    import dataclasses
    import typing

    import yaml
    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message: str):
            raise UsageError(f"{message} (see `{prog} --help`)")

    hints = typing.get_type_hints(config_cls)
    bool_flags = {flag for f in dataclasses.fields(config_cls) if hints.get(f.name) is bool
                  for flag in (f"--{f.name}", f"--{f.name.replace('_', '-')}")}
    parser = _Parser((config_cls,), prog=prog, description=description)
    for name, help_ in positionals:
        # Same dest as the field: given by position it fills the field; SUPPRESS keeps the flag's value otherwise.
        parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, metavar=name.upper(), help=help_)
    try:
        (config,) = parser.parse_args_and_config(_normalise_argv(list(argv), bool_flags))
    except IndexError:  # `--config` with nothing after it
        raise UsageError(f"--config needs a YAML file (see `{prog} --help`)") from None
    except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:  # bad config file or a field's own check
        unused = "Some specified arguments are not used by the HfArgumentParser: "
        message = f"unrecognized arguments: {str(exc)[len(unused):]}" if str(exc).startswith(unused) else str(exc)
        raise UsageError(message) from None
    return config


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: medr2 <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `medr2 <command> --help` for the options of one command; flags are spelled with underscores",
              "(--max_new_tokens; --max-new-tokens works too) and `--config FILE.yaml` sets options from a file."]
    return "\n".join(lines)


def cli_data(argv: list[str]) -> int:
    """`medr2 data <dataset> [options]`: one converter per dataset release (MIMIC-CXR's R2Gen annotation.json is read
    as it is and needs none). `--out DIR` is accepted for `--output_dir DIR`, the spelling `medr2 traces` uses."""
    if not argv:
        return fail("medr2 data", f"name a dataset: {', '.join(DATA_COMMANDS)} (see `medr2 data --help`)")
    if argv[0] in {"-h", "--help", "help"}:
        width = max(map(len, DATA_COMMANDS))
        print("\n".join(["usage: medr2 data <dataset> [options]", "", "datasets:",
                         *[f"  {n.ljust(width)}  {h}" for n, (_, _, h) in DATA_COMMANDS.items()], "",
                         "e.g. medr2 data iu-xray --reports NLMCXR_reports.tgz --images NLMCXR_png --output_dir data/iu_xray",
                         "Run `medr2 data <dataset> --help` for its options. MIMIC-CXR needs no conversion: R2Gen's",
                         "annotation.json with its images/ is read as it is (docs/datasets.md)."]))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in DATA_COMMANDS:
        return fail("medr2 data", f"unknown dataset {name!r}: use one of {', '.join(DATA_COMMANDS)} (MIMIC-CXR needs no "
                                  "conversion: point --dataset_dir at the folder of R2Gen's annotation.json)")
    rest = ["--output_dir" + a[len("--out"):] if a == "--out" or a.startswith("--out=") else a for a in rest]
    module_name, func_name, _ = DATA_COMMANDS[name]
    return int(getattr(importlib.import_module(module_name), func_name)(rest, prog=f"medr2 data {name}") or 0)


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
