"""Projection geometry of the rendered films: a PA cone beam through the real chest CT, precomputed per patient rotation.

A PA chest film is taken with the patient's anterior chest against the detector and the source behind, 180 cm away
(the clinical source-image distance, chosen so that the heart, which lies anteriorly, is barely magnified). The
renderer uses that geometry exactly: a point source at `SID_MM` behind the detector plane, its central ray through
the centre of the lungs. Points nearer the source are magnified more (posterior ribs ~12 % more than the anterior
chest wall), as on a real film.

Two projectors share it, so anatomy, findings and masks line up exactly:
- `project_volume` casts every detector ray through the (rotated) CT slab by slab (bilinear in each coronal slab,
  path length along the oblique ray) and returns line integrals (mm) of several channels at once; it runs once per
  patient rotation and is cached (`anatomy_maps`, ~2 s each, then ~1 MB on disk).
- `project_points` maps 3-D points (mm, CT frame) to the detector with their magnification, used to splat findings
  and devices (`splat`) built in 3-D from the label map.

Detector frame: `DET_N` x `DET_N` pixels of `DET_PITCH_MM`, centred on the central ray; column = +u (patient LEFT,
so the patient's right is on the image left, radiological orientation), row = -w (downward). Channels: `W` water-
equivalent path (mm), `B` bone excess (HU above 100, /1000, x mm: scaled by the energy-dependent bone contrast at
exposure), and path lengths (mm) through the right lung, left lung, heart and trachea.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medr2.phantom.ct_volume import ChestCT, cache_dir, load_chest_ct

SID_MM = 1800.0  # source-image distance of a PA chest film
DET_PITCH_MM = 1.4  # detector-frame sampling (close to the prepared CT's 1.41 mm in-plane voxels)
DET_N = 300  # 420 mm square: a 43 cm detector
ROTATIONS_DEG = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)  # patient rotation about the vertical axis (precomputed maps)
NECK_MM = 40.0  # soft tissue added above the CT's top slice (the scan stops 2 cm above the lung apices)
CHANNELS = ("W", "B", "lung_right", "lung_left", "heart", "trachea")
MAPS_VERSION = 4


@dataclass(frozen=True)
class Geometry:
    """Where the CT sits in the beam (mm in the CT frame) and the detector plane."""

    centre: tuple[float, float, float]  # rotation centre and central ray: (x, y) lung centre, z lung mid-height
    y_det: float  # detector plane (anterior chest wall + 1 cm)
    sid: float = SID_MM

    @property
    def y_src(self) -> float:
        return self.y_det - self.sid


def _rotate_xy(x: np.ndarray, y: np.ndarray, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = x - cx, y - cy
    return cx + c * dx - s * dy, cy + s * dx + c * dy


def project_points(geo: Geometry, xyz: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-D points [N, 3] (mm, CT frame) -> detector (u, w) in mm from the central ray, and magnification M."""
    cx, cy, cz = geo.centre
    x, y = _rotate_xy(xyz[:, 0], xyz[:, 1], cx, cy, theta)
    m = geo.sid / (y - geo.y_src)
    return (x - cx) * m, (xyz[:, 2] - cz) * m, m


def det_index(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector mm -> fractional (row, column) of the detector grid (pixel centres at integers)."""
    half = DET_N * DET_PITCH_MM / 2
    return (half - w) / DET_PITCH_MM - 0.5, (u + half) / DET_PITCH_MM - 0.5


def splat(geo: Geometry, xyz: np.ndarray, weight: np.ndarray, voxel_mm3: float, theta: float) -> np.ndarray:
    """Line integrals (detector map) of a density given at points: each point carries `weight` x `voxel_mm3` of
    material, spread bilinearly; the ray bundle through a pixel is M^2 narrower at the point than at the detector."""
    return Splatter(geo, xyz, voxel_mm3, theta)(weight)


class Splatter:
    """`splat` with the points projected once: a finding splats its water, bone and sign maps from the same points."""

    def __init__(self, geo: Geometry, xyz: np.ndarray, voxel_mm3: float, theta: float):
        u, w, m = project_points(geo, xyz, theta)
        r, c = det_index(u, w)
        r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
        fr, fc = r - r0, c - c0
        self.voxel_mm3, self.m2 = voxel_mm3, m**2
        self.corners = []
        for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            self.corners.append(((rr >= 0) & (rr < DET_N) & (cc >= 0) & (cc < DET_N), rr * DET_N + cc, wt))

    def __call__(self, weight: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
        """The detector map of `weight` at the points (or at the points of the boolean `subset`)."""
        m2 = self.m2 if subset is None else self.m2[subset]
        amount = weight * self.voxel_mm3 * m2 / DET_PITCH_MM**2
        out = np.zeros(DET_N * DET_N, dtype=np.float64)
        for ok, flat, wt in self.corners:
            if subset is not None:
                ok, flat, wt = ok[subset], flat[subset], wt[subset]
            out += np.bincount(flat[ok], weights=(amount * wt)[ok], minlength=DET_N * DET_N)
        return out.reshape(DET_N, DET_N).astype(np.float32)


def geometry_of(ct: ChestCT) -> Geometry:
    lungs = ct.mask("lung_")
    idx = np.argwhere(lungs)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    sx, sy, sz = ct.spacing
    centre = (float((lo[0] + hi[0]) / 2 * sx), float((lo[1] + hi[1]) / 2 * sy), float((lo[2] + hi[2]) / 2 * sz))
    body_front = np.nonzero((ct.hu > -500).any(axis=(0, 2)))[0].max()
    return Geometry(centre=centre, y_det=float((body_front + 1) * sy + 10.0))


def _channels(ct: ChestCT) -> np.ndarray:
    """[C, X, Y, Z'] per-mm densities of the projected channels, with a neck added above the top slice."""
    hu = ct.hu.astype(np.float32)
    w = np.clip(1.0 + np.minimum(hu, 100.0) / 1000.0, 0.0, None)
    b = np.maximum(hu - 100.0, 0.0) / 1000.0
    labs = [np.isin(ct.labels, ct.ids(p)).astype(np.float32) for p in ("lung_upper_lobe_right", "lung_middle_lobe_right",
                                                                      "lung_lower_lobe_right")]
    lung_r = labs[0] + labs[1] + labs[2]
    lung_l = np.isin(ct.labels, ct.ids("lung_upper_lobe_left", "lung_lower_lobe_left")).astype(np.float32)
    heart = np.isin(ct.labels, ct.ids("heart")).astype(np.float32)
    trachea = np.isin(ct.labels, ct.ids("trachea")).astype(np.float32)
    vol = np.stack([w, b, lung_r, lung_l, heart, trachea])
    # neck: the top slice's soft tissue (no bone), narrowing from the shoulders to a neck ~12 cm wide
    n_extra = int(round(NECK_MM / ct.spacing[2]))
    top = w[:, :, -1]
    xs = (np.arange(top.shape[0]) + 0.5) * ct.spacing[0]
    body_cols = np.nonzero((top > 0.5).any(axis=1))[0]
    mid = float(xs[body_cols].mean()) if len(body_cols) else float(xs.mean())
    half0 = float(xs[body_cols].max() - mid) if len(body_cols) else 150.0
    extra = np.zeros((len(CHANNELS), *top.shape, n_extra), dtype=np.float32)
    for n in range(n_extra):
        t = (n + 1) / n_extra
        half = half0 + (60.0 - half0) * min(1.0, 1.6 * t) ** 0.7
        extra[0, :, :, n] = np.minimum(top, 1.05) * np.clip((half - np.abs(xs - mid)) / 25.0, 0, 1)[:, None]
    return np.concatenate([vol, extra], axis=3)


def project_volume(ct: ChestCT, geo: Geometry, theta: float, channels: np.ndarray | None = None) -> np.ndarray:
    """[C, DET_N, DET_N] line integrals (mm) of `channels` (default `_channels(ct)`) for patient rotation `theta`."""
    vol = _channels(ct) if channels is None else channels
    C, X, Y, Z = vol.shape
    sx, sy, sz = ct.spacing
    cx, cy, cz = geo.centre
    half = DET_N * DET_PITCH_MM / 2
    g = (np.arange(DET_N) + 0.5) * DET_PITCH_MM - half
    u, w = np.meshgrid(g, -g)  # row 0 = top (+w)
    # rays in the patient (rotated) frame, then into the CT frame by the inverse rotation
    sxp, syp = _rotate_xy(np.array([cx]), np.array([geo.y_src]), cx, cy, -theta)
    dxp, dyp = _rotate_xy(cx + u, np.full_like(u, geo.y_det), cx, cy, -theta)
    src = np.array([sxp[0], syp[0], cz])
    dirx, diry, dirz = dxp - src[0], dyp - src[1], (cz + w) - src[2]
    step = sy * np.sqrt(dirx**2 + diry**2 + dirz**2) / np.abs(diry)
    flat = vol.reshape(C, X, Y, Z)
    out = np.zeros((C, DET_N * DET_N), dtype=np.float64)
    dirx, dirz, diry, step = dirx.ravel(), dirz.ravel(), diry.ravel(), step.ravel()
    for j in range(Y):
        t = ((j + 0.5) * sy - src[1]) / diry
        fx = (src[0] + t * dirx) / sx - 0.5
        fz = (src[2] + t * dirz) / sz - 0.5
        i0, k0 = np.floor(fx).astype(np.int64), np.floor(fz).astype(np.int64)
        ax, az = fx - i0, fz - k0
        ok = (i0 >= 0) & (i0 < X - 1) & (k0 >= 0) & (k0 < Z - 1)
        if not ok.any():
            continue
        i0, k0, ax, az, st = i0[ok], k0[ok], ax[ok], az[ok], step[ok]
        slab = flat[:, :, j, :].reshape(C, -1)
        base = i0 * Z + k0
        val = (slab[:, base] * ((1 - ax) * (1 - az)) + slab[:, base + Z] * (ax * (1 - az))
               + slab[:, base + 1] * ((1 - ax) * az) + slab[:, base + Z + 1] * (ax * az))
        out[:, ok] += val * st
    return out.reshape(C, DET_N, DET_N).astype(np.float32)


@lru_cache(maxsize=len(ROTATIONS_DEG))
def anatomy_maps(rotation_deg: float) -> dict[str, np.ndarray]:
    """Projected channels of the CT at one precomputed patient rotation (cached on disk and in memory)."""
    if rotation_deg not in ROTATIONS_DEG:
        raise ValueError(f"rotation must be one of {ROTATIONS_DEG}, got {rotation_deg}")
    path = cache_dir() / f"drr_maps_v{MAPS_VERSION}_{rotation_deg:+.0f}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k].astype(np.float32) for k in CHANNELS}
    ct = load_chest_ct()
    maps = project_volume(ct, geometry(), math.radians(rotation_deg))
    out = dict(zip(CHANNELS, maps))
    # below the scan (it stops in the upper abdomen) the abdomen continues: repeat the last fully covered row
    # (the last rows the diverging rays still cross the whole scan: where the central path stops being ~ its plateau)
    central = out["W"][:, DET_N // 2 - 20: DET_N // 2 + 20].mean(axis=1)
    lower = np.arange(DET_N // 2, DET_N)
    plateau = central[lower].max()
    short = lower[(central[lower] < 0.93 * plateau) & (lower > lower[np.argmax(central[lower])])]
    if len(short):
        last = int(short.min()) - 1
        out["W"][last + 1:] = out["W"][last]
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: v.astype(np.float16) for k, v in out.items()})
    os.replace(tmp, path)
    return {k: v.astype(np.float16).astype(np.float32) for k, v in out.items()}  # same precision as a cache hit


@lru_cache(maxsize=1)
def geometry() -> Geometry:
    return geometry_of(load_chest_ct())
