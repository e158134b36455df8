"""`medr2 label`: the findings labeler over CSV files, a drop-in for the Stanford chexpert-labeler interface.

    medr2 label --reports_path reports.csv --output_path labeled_reports.csv

Reads a headerless one-column CSV of reports, labels each with `medr2.labeler.findings.label_reports` (the labeler
of the CE metric and the MCCS reward) and writes `Reports` + the 14 observations (1.0 / 0.0 / -1.0 / empty).
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

from medr2.labeler.findings import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, Labels, label_reports

logger = logging.getLogger(__name__)


def _format(value: int | None) -> str:
    return "" if value is None else f"{float(value):.1f}"


def read_reports_csv(path: str | Path) -> list[str]:
    """Reports of a headerless one-column CSV (the chexpert-labeler input); blank rows are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if any(len(row) > 1 for row in rows):
        logger.warning("%s has more than one column: labelling the first column only (quote reports "
                       "that contain commas)", path)
    return [row[0] for row in rows]


def write_labels_csv(path: str | Path, reports: list[str], labels: list[Labels]) -> None:
    """chexpert-labeler output: header `Reports,<14 observations>`, values 1.0 / 0.0 / -1.0 / empty."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Reports", *OBSERVATIONS])
        for report, lab in zip(reports, labels):
            writer.writerow([report, *(_format(lab[o]) for o in OBSERVATIONS)])


def cli_label(argv: list[str]) -> int:
    """`medr2 label`: label a CSV of reports, drop-in for the Stanford chexpert-labeler."""
    from medr2.cli import FlagParser, UsageError

    parser = FlagParser(prog="medr2 label", description="CheXpert-style labels for a headerless one-column CSV of "
                     "reports; writes Reports + the 14 observations (1.0 positive, 0.0 negative, -1.0 uncertain, "
                     "empty = not mentioned).")
    parser.add_argument("--reports_path", required=True, help="input CSV: one report per row, no header")
    parser.add_argument("--output_path", default="labeled_reports.csv",
                        help="output CSV (default: labeled_reports.csv)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print a summary of the labels")
    try:
        args = parser.parse_args(argv)
        reports = read_reports_csv(args.reports_path)
        labels = label_reports(reports)
        write_labels_csv(args.output_path, reports, labels)
    except UsageError as exc:
        print(f"medr2 label: {exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"medr2 label: cannot read/write CSV: {exc}; --reports_path must be a UTF-8 CSV file and "
              "--output_path a writable path", file=sys.stderr)
        return 2
    if args.verbose:
        for obs in OBSERVATIONS:
            counts = {v: sum(1 for lab in labels if lab[obs] == v) for v in (POSITIVE, UNCERTAIN, NEGATIVE)}
            print(f"{obs:28s} pos {counts[1]:6d}  unc {counts[-1]:6d}  neg {counts[0]:6d}")
    print(f"labelled {len(reports)} reports -> {args.output_path}")
    return 0
