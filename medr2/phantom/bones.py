"""The phantom's skeleton: posterior and anterior ribs (with optional fractures), clavicles, scapulae, spine.

Same conventions as `medr2.phantom.anatomy` (normalised, tilted grid; patient RIGHT = image LEFT). Ribs are
one phase field over the chest (ribs are the bands where the fractional phase is small), so the whole rib
cage costs a handful of array operations; a `RibBreak` shifts one rib's lateral fragment (step-off) and
cuts a lucent gap across its cortex; a healing break also carries callus (a fusiform density around the
break, wider than the rib). Hands on a bone density map [H, W] to `render_anatomy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medr2.phantom.anatomy import AnatomyParams


@dataclass
class RibBreak:
    """A rib fracture drawn into the rib cage: rib `index` (0 = first posterior rib) of `side`, broken at
    lateral position `s` (fraction of the hemithorax width) with a `step` (normalised v) step-off."""

    side: str
    index: int
    s: float
    step: float
    gap: float = 0.036  # lucent cortical break, ~8 px at the 224 px model input (v2's ~5 px was not learned)
    callus: float = 0.0  # peak density of healing callus around the break (0 = an acute break, no callus)


CALLUS_HALF_LENGTH = 0.045  # normalised: ~20 px long at the 224 px model input
CALLUS_HALF_HEIGHT = 0.028  # ~1.7 x the rib's height, so the callus bulges past both cortices


def rib_geometry(p: AnatomyParams) -> tuple[float, float]:
    """(v of the first posterior rib at the spine, spacing between posterior ribs)."""
    spacing = (p.dome_r - p.apex_v) / 9.4
    return p.apex_v - 0.012 + p.rib_offset, spacing


def rib_center_v(p: AnatomyParams, index: int, s: float) -> float:
    """Centre line (v) of posterior rib `index` at lateral fraction s (0 = spine, 1 = lateral wall)."""
    first, spacing = rib_geometry(p)
    return first + (index + 0.22) * spacing * (1 + 0.02 * index) + _rib_curve(s)


def _bump(x):
    """Cheap smooth bump: 1 at 0, 0 beyond |x| = 1 (an exp-free Gaussian stand-in)."""
    return np.square(np.clip(1 - x * x, 0, 1))


def _rib_curve(s):
    # posterior ribs run almost level from the spine, rise a little, then sweep down at the lateral wall
    return -0.03 * s + 0.1 * s**2.5


def bones(p: AnatomyParams, u: np.ndarray, v: np.ndarray, breaks: list[RibBreak]) -> np.ndarray:
    first, spacing = rib_geometry(p)
    su = u - p.cx
    s = np.abs(su) / p.thorax_hw
    # Posterior ribs: one phase field, ribs are the bands where the fractional phase is small.
    stretch = 1 + 0.02 * np.clip((v - first) / spacing, 0, 12)
    phase = (v - first - _rib_curve(s)) / (spacing * stretch)
    for br in breaks:  # step-off: shift the lateral fragment of the broken rib
        on_side = (su < 0) if br.side == "right" else (su >= 0)
        near = on_side & (np.abs(phase - (br.index + 0.22)) < 0.8) & (s > br.s)
        phase = np.where(near, phase + br.step / spacing, phase)
    idx = np.floor(phase)
    frac = phase - idx
    thick = 0.40 + 0.12 * np.clip(s, 0, 1)  # ribs widen laterally
    q = frac / thick
    in_rib = (q < 1) & (idx >= 0) & (idx < 12) & (s > 0.1) & (s < 1.06)
    cortex = _bump((q - 0.92) / 0.2) + 0.6 * _bump((q - 0.06) / 0.2)
    ribs = np.where(in_rib, 0.045 + 0.06 * cortex, 0.0) * np.clip((1.07 - s) / 0.06, 0, 1)
    for br in breaks:  # cortical break: a lucent gap across the rib
        on_side = (su < 0) if br.side == "right" else (su >= 0)
        gap = on_side & (np.abs(s - br.s) < br.gap / p.thorax_hw) & (idx == br.index)
        ribs = np.where(gap, ribs * 0.05, ribs)
    for br in breaks:  # healing callus: a fusiform density centred on the break, across both fragments
        if br.callus > 0:
            cu = p.cx + (-1 if br.side == "right" else 1) * br.s * p.thorax_hw
            cv = rib_center_v(p, br.index, br.s) + br.step / 2
            ribs = ribs + br.callus * _bump(np.hypot((u - cu) / CALLUS_HALF_LENGTH, (v - cv) / CALLUS_HALF_HEIGHT))
    # Anterior ribs: faint, running down and medially from the lateral wall (cartilage medially is invisible).
    aphase = (v - first - 0.06 - 0.15 * (1 - s)) / (spacing * 1.25)
    afrac = aphase - np.floor(aphase)
    ant = ((afrac < 0.32) & (aphase > 0) & (aphase < 7) & (s > 0.4) & (s < 1.04)).astype(np.float32) * 0.03
    out = ribs + ant
    # Clavicles and scapulae live in the upper rows only: compute them on that band.
    rows = band(v.min(axis=1), p.apex_v - 0.16, p.apex_v + 0.36)
    vv, ss = v[rows], s[rows]
    # Clavicles: S-shaped, from the sternal heads up and out to the acromion.
    c_center = p.apex_v + 0.075 - 0.09 * ss + 0.012 * np.sin(2 * np.pi * ss)
    cq = np.abs(vv - c_center) / (0.02 - 0.006 * ss)
    out[rows] += np.where((cq < 1) & (ss > 0.06) & (ss < 1.05), 0.10 + 0.07 * _bump((cq - 0.85) / 0.33), 0.0)
    # Scapulae: the medial border projects over the lateral upper lung.
    t = (vv - p.apex_v) / 0.32
    border = 0.80 + 0.12 * t
    out[rows] += np.where((ss > border) & (t > -0.1) & (t < 1.0) & (ss < 1.15), 0.035 + 0.035 * _bump((ss - border) / 0.05), 0.0)
    # Spine: vertebral bodies with disc spaces and pedicles, off-midline by the patient's rotation.
    cols = band(u.min(axis=0), p.cx + p.spine_shift - 0.1, p.cx + p.spine_shift + 0.1)
    sx = u[:, cols] - (p.cx + p.spine_shift)
    vert_phase = (v[:, cols] - first) / (spacing * 0.82)
    vf = vert_phase - np.floor(vert_phase)
    body = (np.abs(sx) < 0.042) * (0.05 + 0.03 * (vf > 0.14))
    out[:, cols] += body + _bump(np.hypot((np.abs(sx) - 0.03) / 0.013, (vf - 0.45) / 0.3)) * 0.04
    return out


def band(coord: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the rows/columns whose coordinate range may reach [lo, hi] (tilt-safe margin)."""
    idx = np.nonzero((coord > lo - 0.05) & (coord < hi + 0.05))[0]
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)
