"""IU X-Ray converter: the OpenI release (ecgen-radiology XML reports + images) to the R2Gen layout.

    medr2 convert-iu --dataset_dir IU_DIR --output_dir data/iu_xray [--seed 9223] [--report both|findings]

`IU_DIR` holds the release as downloaded from OpenI: the reports as an `ecgen-radiology/` folder of XML files or
`NLMCXR_reports.tgz`, and the images (`NLMCXR_png/` or any folder below it, file names = the XML's
`parentImage` ids, `.png` or `.jpg`). `--reports` / `--images` name them when they live elsewhere.

Hands on an R2Gen-layout folder (read by `medr2.data.datasets.read_r2gen`):
- `images/<study id>/<k>.png`: every image of a study, one folder per study, frontal first where a projections
  CSV says which view is which (`--projections`, the `uid,filename,projection` table of the Kaggle copy), else
  in the report's figure order (F1, F2, ...: frontal first in nearly all IU studies);
- `annotation.json`: {"train"|"val"|"test": [{id, report, findings, impression, image_path, split[, views]}]};
  `report` is "Findings: ... Impression: ..." (the headers medr2's report schema reads) or the findings alone
  (`--report findings`, the R2Gen convention, for numbers comparable with the literature);
- `dataset.json`: what the folder is (name, licence, source, seed, split sizes) for model cards and evaluations.

Splits: R2Gen's 7:1:2 train/val/test ratio over the studies kept (those with FINDINGS text and at least one image),
shuffled by a fixed seed: reproducible on any machine, though not R2Gen's own study list (use their
annotation.json, read as is, for that). The reports are CC BY-NC-ND 4.0: the converted folder may not be
redistributed with changes; see docs/datasets.md.
"""
from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import sys
from pathlib import Path
from typing import Iterable

from medr2.data.datasets import SPLITS, DatasetError, IUReport, iter_iu_reports, write_r2gen

log = logging.getLogger(__name__)

IU_NAME = "IU X-Ray"
IU_SOURCE = "Indiana University Chest X-ray Collection (Open-i, U.S. National Library of Medicine)"
IU_LICENCE = "CC BY-NC-ND 4.0"
DEFAULT_SEED = 9223  # the seed of R2Gen's IU X-Ray runs
RATIOS = (0.7, 0.1, 0.2)  # train / val / test, as R2Gen
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
REPORT_MODES = ("both", "findings")


def joined_report(findings: str, impression: str) -> str:
    """"Findings: ... Impression: ..." (a section only when it has text): the form `medr2.report.schema.Report` parses."""
    parts = [f"Findings: {findings}" if findings else "", f"Impression: {impression}" if impression else ""]
    return " ".join(p for p in parts if p)


def split_assignment(ids: Iterable[str], seed: int = DEFAULT_SEED, ratios: tuple[float, float, float] = RATIOS) -> dict[str, str]:
    """Study id -> split: ids sorted (so the input order does not matter), shuffled by `seed`, then cut by `ratios`."""
    ordered = sorted(set(ids), key=_natural_key)
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    n_train, n_val = int(round(n * ratios[0])), int(round(n * ratios[1]))
    return {sid: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, sid in enumerate(ordered)}


def _natural_key(text: str) -> tuple:
    """'CXR2' before 'CXR10'."""
    digits = "".join(c if c.isdigit() else " " for c in text).split()
    return (int(digits[0]) if digits else -1, text)


def find_reports(dataset_dir: Path) -> Path:
    """The ecgen-radiology XML folder or the NLMCXR_reports.tgz inside `dataset_dir` (or `dataset_dir` itself)."""
    for name in ("ecgen-radiology", "NLMCXR_reports.tgz"):
        hits = sorted(dataset_dir.rglob(name))
        if hits:
            return hits[0]
    if any(dataset_dir.glob("*.xml")):
        return dataset_dir
    archives = sorted(p for p in dataset_dir.rglob("*.tgz")) + sorted(dataset_dir.rglob("*.tar.gz"))
    if archives:
        return archives[0]
    raise DatasetError(f"no IU X-Ray reports under {dataset_dir}: expected an ecgen-radiology/ folder of XML files or "
                       "NLMCXR_reports.tgz (pass --reports PATH; see docs/datasets.md)")


def index_images(images_dir: Path) -> dict[str, Path]:
    """Image id (file name without suffix) -> file, for every .png/.jpg below `images_dir`; PNG wins over JPEG."""
    index: dict[str, Path] = {}
    for path in sorted(images_dir.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem not in index or path.suffix.lower() == ".png":
                index[path.stem] = path
    return index


def read_projections(path: Path) -> dict[str, str]:
    """Image id -> 'frontal' | 'lateral' from a `uid,filename,projection` CSV (the Kaggle indiana_projections.csv)."""
    views = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            name, projection = row.get("filename", ""), row.get("projection", "")
            if not name or not projection:
                raise DatasetError(f"{path}: expected columns uid,filename,projection")
            stem = Path(name).stem
            # the Kaggle file names carry a suffix after the OpenI id ('CXR1_1_IM-0001-3001.dcm.png')
            views[stem.split(".")[0]] = projection.strip().lower()
    return views


def _ordered_images(report: IUReport, index: dict[str, Path], views: dict[str, str]) -> list[tuple[str, Path, str | None]]:
    found = [(image_id, index[image_id], views.get(image_id)) for image_id in report.image_ids if image_id in index]
    # sorted() is stable: without view information the figure order of the report stays as it is
    return sorted(found, key=lambda item: 0 if item[2] == "frontal" else 1 if item[2] is None else 2) if views else found


def convert_iu_xray(dataset_dir: str | Path | None, output_dir: str | Path, *, reports: str | Path | None = None,
                    images: str | Path | None = None, projections: str | Path | None = None, seed: int = DEFAULT_SEED,
                    report_mode: str = "both", reports_only: bool = False) -> dict:
    """Convert the IU X-Ray release to the R2Gen layout in `output_dir`; returns the `dataset.json` it writes.

    Keeps studies with FINDINGS text and at least one image found (`reports_only`: all studies with FINDINGS,
    no images copied). Raises DatasetError, with the fix, when the reports or images cannot be found."""
    if report_mode not in REPORT_MODES:
        raise DatasetError(f"--report must be one of {', '.join(REPORT_MODES)}, got {report_mode!r}")
    root = Path(dataset_dir) if dataset_dir else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"--dataset_dir {root} is not a folder (see docs/datasets.md for the layout)")
    if reports is None and root is None:
        raise DatasetError("give --dataset_dir (the IU X-Ray release folder) or --reports")
    reports_path = Path(reports) if reports else find_reports(root)
    index: dict[str, Path] = {}
    if not reports_only:
        images_dir = Path(images) if images else root
        if images_dir is None or not images_dir.is_dir():
            raise DatasetError(f"images folder {images_dir} not found: pass --images (the NLMCXR_png folder) or "
                               "--reports_only")
        index = index_images(images_dir)
        if not index:
            raise DatasetError(f"no .png/.jpg images under {images_dir}: download the IU X-Ray images (NLMCXR_png) "
                               "or pass --reports_only (see docs/datasets.md)")
    views = read_projections(Path(projections)) if projections else {}
    out = Path(output_dir)
    if (out / "annotation.json").exists():
        raise DatasetError(f"{out / 'annotation.json'} exists: choose an empty --output_dir (nothing was overwritten)")

    kept: list[tuple[IUReport, list[tuple[str, Path, str | None]]]] = []
    skipped = {"no_findings": 0, "no_images": 0}
    for report in iter_iu_reports(reports_path):
        if not report.findings:
            skipped["no_findings"] += 1
            continue
        found = _ordered_images(report, index, views)
        if not found and not reports_only:
            skipped["no_images"] += 1
            continue
        kept.append((report, found))
    if not kept:
        raise DatasetError(f"no study of {reports_path} has FINDINGS text and an image in the images folder: do the "
                           "image file names match the XML's parentImage ids? (see docs/datasets.md)")

    split_of = split_assignment([r.uid for r, _ in kept], seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for report, found in sorted(kept, key=lambda item: _natural_key(item[0].uid)):
        paths = []
        for k, (_, source, _) in enumerate(found):
            rel = f"{report.uid}/{k}{source.suffix.lower()}"
            (out / "images" / report.uid).mkdir(exist_ok=True)
            shutil.copyfile(source, out / "images" / rel)
            paths.append(rel)
        text = report.findings if report_mode == "findings" else joined_report(report.findings, report.impression)
        record = {"id": report.uid, "report": text, "findings": report.findings, "impression": report.impression,
                  "image_path": paths, "split": split_of[report.uid]}
        if views:
            record["views"] = [view or "unknown" for _, _, view in found]
        records.append(record)
    counts = write_r2gen(out, records)
    card = {"name": IU_NAME, "source": IU_SOURCE, "licence": IU_LICENCE, "converter": "medr2 convert-iu",
            "report": report_mode, "seed": seed, "ratios": dict(zip(SPLITS, RATIOS)), "splits": counts,
            "images": sum(len(r["image_path"]) for r in records), "skipped": skipped}
    (out / "dataset.json").write_text(json.dumps(card, indent=2))
    return card


def cli_convert_iu(argv: list[str], prog: str = "medr2 convert-iu") -> int:
    """`medr2 data iu-xray` (or its older name `medr2 convert-iu`): IU X-Ray (OpenI ecgen XML + images) -> R2Gen
    layout with train/val/test splits."""
    from medr2.cli import FlagParser, UsageError, fail

    ap = FlagParser(prog=prog, description=cli_convert_iu.__doc__)
    ap.add_argument("--dataset_dir", help="the IU X-Ray release folder (ecgen-radiology/ or NLMCXR_reports.tgz, and "
                    "the images)")
    ap.add_argument("--output_dir", required=True, help="new R2Gen-layout folder (annotation.json, images/, dataset.json)")
    ap.add_argument("--reports", help="the reports, when not inside --dataset_dir: ecgen-radiology folder or .tgz")
    ap.add_argument("--images", help="the images folder, when not inside --dataset_dir (e.g. NLMCXR_png)")
    ap.add_argument("--projections", help="optional uid,filename,projection CSV: put the frontal view first")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED})")
    ap.add_argument("--report", default="both", choices=REPORT_MODES,
                    help="report text: both sections with headers (default) or the findings alone (R2Gen)")
    ap.add_argument("--reports_only", action="store_true", help="no images: annotation.json for label-only work")
    try:
        args = ap.parse_args(argv)
        card = convert_iu_xray(args.dataset_dir, args.output_dir, reports=args.reports, images=args.images,
                               projections=args.projections, seed=args.seed, report_mode=args.report,
                               reports_only=args.reports_only)
    except (UsageError, DatasetError) as exc:
        return fail(prog, exc)
    except OSError as exc:
        return fail(prog, f"cannot read or write: {exc}")
    splits = card["splits"]
    print(f"wrote {args.output_dir}: train {splits['train']}, val {splits['val']}, test {splits['test']} studies, "
          f"{card['images']} images (skipped: {card['skipped']['no_findings']} without findings, "
          f"{card['skipped']['no_images']} without images)", file=sys.stdout)
    return 0
