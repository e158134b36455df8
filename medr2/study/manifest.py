"""What a reader study is made of: the case list, the report sources and the frozen study folder.

A case list is a folder of images (PNG, JPEG, DICOM; a same-named JSON beside an image may give `report` (the
reference report), `indication` and the ground truth, as the phantom examples do) or a CSV / JSON manifest with
the columns `image` (relative to the manifest), `reference`, `indication`, `truth`. A source is a model folder or
hub id, the word `reference` (each case's reference report), or a JSONL of precomputed reports
(`{"image": file name or "case_id": id, "report": text}` per line).

The frozen study folder (`StudyFolder`) is portable (plain files, images copied):
- `study.json`: id, design (`single`: each report reviewed on its own terms, `ab`: two sources blinded side by side
  with sides randomised and "which is better", `multi`: 2-6 sources blinded in a per-reader random order with
  "which is best"), seed, questions, neutral case ids (`case-001`…) with image file,
  SHA-256 and indication, blinded source ids (`S1`, `S2`…) — everything a reader's page may draw from;
- `reports.jsonl`: the frozen report text per case and source id;
- `images/`: the images under neutral names (a file name like `phantom_pneumothorax.png` names the diagnosis);
- `key.json`: what the source ids and cases really are (model paths, weights hashes, original file names, ground
  truth, and each source's label, unique within the study: `source_labels`) — for the coordinator and the
  analysis only, never read by the reader page;
- `readers.json` (hashed passwords, `medr2.study.session`) and `responses/feedback.sqlite3` (the reviews).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DESIGNS = ("single", "ab", "multi")
MAX_SOURCES = 6  # reports shown side by side on one page (A … F)
# Likert items every report gets (1 poor .. 5 excellent, or not applicable), in page order.
ITEMS = (("overall", "Overall quality"), ("accuracy", "Clinical accuracy"), ("completeness", "Completeness"),
         ("clarity", "Clarity and style"))


class StudyError(ValueError):
    """A study cannot be created, opened or analysed as asked; the message says what to fix (one line)."""


@dataclass
class Case:
    image: Path
    reference: str | None = None
    indication: str | None = None
    truth: Any = None


@dataclass
class Source:
    spec: str  # model folder / hub id, "reference", or a .jsonl file
    kind: str  # "model" | "reference" | "jsonl"


def _sidecar(image: Path) -> dict:
    meta = image.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() and meta != image else {}


def _truth(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        return json.loads(value)
    return value or None


def load_cases(path: str | Path) -> list[Case]:
    """The case list of a folder or a CSV / JSON manifest (see the module doc); StudyError if unusable."""
    path = Path(path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        cases = []
        for image in images:
            meta = _sidecar(image)
            truth = {k: meta[k] for k in ("labels", "findings") if k in meta} or meta.get("truth")
            cases.append(Case(image, meta.get("report"), meta.get("indication"), truth or None))
    elif path.suffix.lower() in (".csv", ".json"):
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("image") for r in rows):
            raise StudyError(f"{path.name}: every row needs an 'image' column (path relative to the manifest)")
        cases = [Case(path.parent / r["image"], r.get("reference") or None, r.get("indication") or None,
                      _truth(r.get("truth"))) for r in rows]
        missing = [c.image.name for c in cases if not c.image.is_file()]
        if missing:
            raise StudyError(f"{path.name}: {len(missing)} image(s) not found, first {missing[0]!r}")
    else:
        raise StudyError(f"--cases must be a folder of images or a .csv / .json manifest, got {path}")
    if not cases:
        raise StudyError(f"no images (PNG, JPEG, DICOM) found in {path}")
    return cases


def parse_sources(specs: list[str]) -> list[Source]:
    out = []
    for spec in specs:
        if spec == "reference":
            out.append(Source(spec, "reference"))
        elif spec.endswith(".jsonl"):
            if not Path(spec).is_file():
                raise StudyError(f"report file {spec} not found")
            out.append(Source(spec, "jsonl"))
        else:
            out.append(Source(spec, "model"))
    if not out:
        raise StudyError("give at least one --sources entry (a model, 'reference' or a .jsonl of reports)")
    return out


# Keys that the report's preference / best tables hold beside the source labels: no source may be labelled so.
RESERVED_LABELS = ("equal", "sign_test_p", "equal_shares_p", "source_ids")


def distinct_labels(paths: list[tuple[str, ...]], reserved: tuple[str, ...] = RESERVED_LABELS) -> list[str]:
    """One label per source, unique within the study, from each source's path parts (outermost first).

    A source is labelled by its last part (the model folder or report file name); where two differ only further
    up, each grows to the shortest path suffix that tells it from the others (`a/model`, `b/model`). Sources that
    still clash (the same path given twice) or whose label is a key of the report's tables get `name (2)`, `(3)` …
    in study order. The report keys its tables by these labels, so it never merges two sources."""
    paths = [tuple(p) or ("source",) for p in paths]
    depth = [1] * len(paths)

    def label(i: int) -> str:
        return "/".join(paths[i][-depth[i]:])

    grew = True
    while grew:  # depths only grow and are bounded by the path lengths: this ends
        grew = False
        labels = [label(i) for i in range(len(paths))]
        for i, lab in enumerate(labels):
            clash = lab in reserved or any(labels[j] == lab and paths[j] != paths[i] for j in range(len(paths)) if j != i)
            if clash and depth[i] < len(paths[i]):
                depth[i] += 1
                grew = True
    labels = [label(i) for i in range(len(paths))]
    out: list[str] = []
    for lab in labels:
        if lab in out or lab in reserved:
            n = 2
            while f"{lab} ({n})" in out or f"{lab} ({n})" in labels:
                n += 1
            lab = f"{lab} ({n})"
        out.append(lab)
    return out


def source_labels(sources: list[Source]) -> list[str]:
    """The labels `medr2 study create` records in key.json: 'reference', a model folder / hub id's last part, a
    report file's name; grown to a path suffix or numbered where two would be the same (`distinct_labels`)."""
    paths = []
    for source in sources:
        if source.kind == "reference":
            paths.append(("reference",))
            continue
        path = Path(source.spec)
        # a local folder or file by its absolute path (two relative specs may name the same file); a hub id as given
        parts = path.resolve().parts[1:] if path.exists() else path.parts
        paths.append(tuple(parts) or (source.spec,))
    return distinct_labels(paths)


@dataclass
class StudyFolder:
    """A frozen study as the reader page and the analysis read it (never the key, unless asked)."""

    root: Path
    meta: dict
    reports: dict[tuple[str, str], str] = field(default_factory=dict)  # (case_id, source id) -> text

    @classmethod
    def open(cls, root: str | Path) -> StudyFolder:
        root = Path(root)
        if not (root / "study.json").is_file():
            raise StudyError(f"{root} is not a study folder (no study.json); create one with `medr2 study create`")
        meta = json.loads((root / "study.json").read_text(encoding="utf-8"))
        reports = {}
        with open(root / "reports.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    reports[(row["case_id"], row["source"])] = row["report"]
        return cls(root, meta, reports)

    @property
    def study_id(self) -> str:
        return self.meta["study_id"]

    @property
    def design(self) -> str:
        return self.meta["design"]

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def case_ids(self) -> list[str]:
        return [c["case_id"] for c in self.meta["cases"]]

    @property
    def sources(self) -> list[str]:
        return list(self.meta["sources"])

    @property
    def items(self) -> list[tuple[str, str]]:
        return [tuple(i) for i in self.meta.get("items", ITEMS)]

    def case(self, case_id: str) -> dict:
        for c in self.meta["cases"]:
            if c["case_id"] == case_id:
                return c
        raise StudyError(f"no case {case_id!r} in this study")

    def image_path(self, case_id: str) -> Path:
        return self.root / "images" / self.case(case_id)["image"]

    def key(self) -> dict:
        """The unblinding key (coordinator and analysis only)."""
        path = self.root / "key.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"sources": {}, "cases": {}}
