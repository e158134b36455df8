"""Where the reflection can look: named film regions and the magnified crop of each.

A region is a square window in fractions of the film (so it applies to a 256-px phantom, a 512-px one or a 3,000-px
DICOM alike), centred on where that anatomy sits on a PA film. The centres are the mean lung-zone centroids and
heart / mediastinum positions of 120 phantoms (`medr2.phantom`, seed 31; spread under 0.03 of the film); a real
film's anatomy sits near them. A window spans 0.45 of the film side, so the crop, resized to the model's input,
is magnified 1 / 0.45 = 2.2x against the whole film at the same input size — a 10 mm nodule or a rib break covers
about five times as many patches.

Hands on: `LOOK_REGIONS`, `region_box`, `crop_region` (uint8 crop of the full-resolution image), `regions_for`
(observation + stated side / zone -> regions), `region_patches` (which patches of the whole-film grid a region
covers), `normalise_region` (a look request's free text -> a region name or None).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

WINDOW = 0.45  # window side as a fraction of the film side: 2.2x magnification at the same input size

# name -> (centre row, centre column) in fractions of the film; the patient's right is the image's left.
LOOK_REGIONS: dict[str, tuple[float, float]] = {
    "right upper zone": (0.26, 0.31),
    "right mid zone": (0.47, 0.28),
    "right lower zone": (0.66, 0.25),
    "left upper zone": (0.26, 0.71),
    "left mid zone": (0.48, 0.74),
    "left lower zone": (0.68, 0.77),
    "heart": (0.64, 0.54),
    "mediastinum": (0.30, 0.50),
}

# Observation -> where its sign is checked when the report gives no zone (pleural disease at the base, except a
# pneumothorax, which collects at the apex on an erect film).
_DEFAULT_ZONE = {"Pleural Effusion": "lower", "Pleural Other": "lower", "Pneumothorax": "upper", "Fracture": "mid"}
_CENTRAL = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum": "mediastinum"}
_NO_LOOK = {"No Finding", "Support Devices", "Edema"}  # diffuse or not a lung finding: a window adds nothing


def region_box(name: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of region `name` on an image of `shape`, kept inside the image."""
    cy, cx = LOOK_REGIONS[name]
    h, w = shape[:2]
    side = int(round(WINDOW * min(h, w)))
    top = int(np.clip(round(cy * h - side / 2), 0, h - side))
    left = int(np.clip(round(cx * w - side / 2), 0, w - side))
    return top, left, top + side, left + side


def crop_region(image: np.ndarray, name: str) -> np.ndarray:
    """The region's window cut from the full-resolution image (same dtype; resizing is the processor's job, so the
    crop keeps every pixel the film has)."""
    top, left, bottom, right = region_box(name, image.shape)
    return np.ascontiguousarray(image[top:bottom, left:right])


def region_patches(name: str, grid: int) -> np.ndarray:
    """Boolean [grid * grid] mask of the whole-film patches whose centre lies in the region's window."""
    top, left, bottom, right = region_box(name, (grid * 100, grid * 100))
    centres = (np.arange(grid) + 0.5) * 100
    rows = (centres >= top) & (centres < bottom)
    cols = (centres >= left) & (centres < right)
    return (rows[:, None] & cols[None, :]).reshape(-1)


def regions_for(observation: str, sides: Iterable[str] = (), zones: Iterable[str] = ()) -> list[str]:
    """The regions where a reader re-checks `observation` stated on `sides` in `zones` (empty = not stated)."""
    if observation in _NO_LOOK:
        return []
    if observation in _CENTRAL:
        return [_CENTRAL[observation]]
    sides = [s for s in sides if s in ("right", "left")] or ["right", "left"]
    zones = [z for z in zones if z in ("upper", "mid", "lower")] or [_DEFAULT_ZONE.get(observation, "mid")]
    return [f"{side} {zone} zone" for side in sides for zone in zones]


_WORDS = re.compile(r"[a-z]+")


def normalise_region(text: str) -> str | None:
    """A look request's text ('right lung, mid zone', 'Left lower zone', 'heart') -> a region name, or None when
    it names no known region (the look is then skipped and said so)."""
    words = set(_WORDS.findall(text.lower()))
    for central in ("heart", "mediastinum"):
        if central in words:
            return central
    side = next((s for s in ("right", "left") if s in words), None)
    zone = next((z for z, keys in (("upper", {"upper", "apex", "apical"}), ("mid", {"mid", "middle"}),
                                   ("lower", {"lower", "base", "basal", "costophrenic"})) if words & keys), None)
    if side is None:
        return None
    return f"{side} {zone or 'mid'} zone"
