"""`medr2 traces`: the Med-R2 training targets of a real dataset, written out for inspection or for another trainer.

Reads an R2Gen-layout folder (IU X-Ray after `medr2 convert-iu`, MIMIC-CXR) and writes one JSON object per study
of a split: `id`, `target` (the tagged Med-R2 trace `medr2 train-sft --dataset_dir DIR --target medr2` trains on,
read from the reference report by `medr2.report.traces.build_report_trace`) and `labels` (the reference's CheXpert
labels by the project's labeler). Studies without report text are skipped and counted.

Hands on: `write_traces(dataset_dir, split, out) -> (written, skipped)`, `cli_traces`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TracesConfig:
    """`medr2 traces` options."""

    dataset_dir: str = field(default="", metadata={"help": "R2Gen-layout dataset folder", "aliases": ["--data_dir", "--data"]})
    split: str = field(default="train", metadata={"help": "split to write"})
    output_file: str = field(default="", metadata={"help": "JSONL file to write", "aliases": ["--out"]})


def write_traces(dataset_dir: str | Path, split: str, out: str | Path) -> tuple[int, int]:
    """Write the split's Med-R2 targets as JSONL; (studies written, studies skipped for an empty report)."""
    from medr2.data.datasets import read_r2gen, record_report
    from medr2.labeler.findings import label_report
    from medr2.report.traces import report_target

    records = read_r2gen(dataset_dir, splits=(split,), check_images=False)
    written = skipped = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for record in records:
            report = record_report(record)
            if not report.text.strip():
                skipped += 1
                continue
            fh.write(json.dumps({"id": record["id"], "target": report_target(report), "labels": label_report(report.text)}) + "\n")
            written += 1
    return written, skipped


def cli_traces(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail, parse_config
    from medr2.data.datasets import DatasetError

    try:
        config = parse_config("medr2 traces", TracesConfig, argv)
        if not config.dataset_dir or not config.output_file:
            raise UsageError("give --dataset_dir DIR and --out FILE.jsonl")
    except UsageError as exc:
        return fail("medr2 traces", exc)
    try:
        written, skipped = write_traces(config.dataset_dir, config.split, config.output_file)
    except (DatasetError, OSError) as exc:
        return fail("medr2 traces", exc)
    if not written:
        return fail("medr2 traces", f"no {config.split!r} study with report text in {config.dataset_dir}")
    print(f"{written} traces written to {config.output_file}" + (f" ({skipped} studies without report text skipped)" if skipped else ""))
    return 0
