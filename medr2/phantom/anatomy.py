"""Normal chest anatomy for the phantom generator: sample a patient, render density layers, expose a film.

A PA chest radiograph in radiological orientation: the patient's RIGHT is on the IMAGE LEFT. Geometry is
in normalised coordinates (u = x / W, v = y / H) so one sampled patient renders at any size; pixel
quantities (blur, line widths) are derived from the size at render time. Densities are additive
"attenuation" layers (bright = dense): soft tissue minus lung air, plus bone, vessels, findings and
devices; `expose` turns their sum into an 8-bit film with acquisition variation.

Hands on: `AnatomyParams` (the sampled patient; findings such as cardiomegaly edit it before rendering),
`Layers` (density maps that findings edit before exposure) and `Anatomy` (what a report or trace writer
may describe about the normal anatomy: CTR, mediastinal ratio, lung masks, zone boundaries).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from medr2.phantom.bones import RibBreak, bones, rib_center_v  # noqa: F401  (re-exported)

FIELD_MM = 380.0  # field of view across the film: 256 px -> ~1.5 mm/px, so "nodule <= 30 mm" ~ 20 px


@dataclass
class AnatomyParams:
    """One patient, in normalised image coordinates (u across, v down)."""

    cx: float  # midline
    body_hw: float  # soft-tissue half-width
    thorax_hw: float  # inner rib-cage half-width: thoracic width = 2 * thorax_hw (the CTR denominator)
    apex_v: float  # lung apices
    dome_r: float  # right hemidiaphragm dome (higher = smaller v)
    dome_l: float
    cp_drop: float  # how far the costophrenic recess lies below the dome
    ctr: float  # cardiothoracic ratio
    heart_right_frac: float  # share of the heart width right of the midline
    heart_top_v: float
    mediastinum_ratio: float  # upper mediastinal width / thoracic width
    knob_v: float  # aortic knob level
    knob_r: float
    carina_v: float
    spine_shift: float  # patient rotation: spinous processes off the midline between the clavicle heads
    tilt: float  # in-plane rotation of the whole film (radians)
    soft: float  # habitus: soft-tissue density scale
    female: bool
    rib_offset: float  # small vertical shift of the rib cage relative to the apices

    @property
    def heart_width(self) -> float:
        return self.ctr * 2 * self.thorax_hw

    @property
    def mediastinum_width(self) -> float:
        return self.mediastinum_ratio * 2 * self.thorax_hw

    def dome(self, side: str) -> float:
        return self.dome_r if side == "right" else self.dome_l


def sample_params(rng: np.random.Generator, variation: float = 1.0) -> AnatomyParams:
    """A plausible adult patient. `variation` scales every random spread (0 = the average patient)."""

    def jit(mean: float, spread: float) -> float:
        return mean + variation * spread * float(rng.uniform(-1.0, 1.0))

    apex = jit(0.135, 0.02)
    dome_r = jit(0.69, 0.045)  # inspiration depth
    thorax_hw = jit(0.36, 0.025)
    return AnatomyParams(
        cx=jit(0.5, 0.012), body_hw=thorax_hw + jit(0.075, 0.025), thorax_hw=thorax_hw, apex_v=apex,
        dome_r=dome_r, dome_l=dome_r + jit(0.028, 0.012), cp_drop=jit(0.12, 0.02),
        ctr=jit(0.445, 0.035), heart_right_frac=jit(0.37, 0.03), heart_top_v=jit(0.43, 0.02),
        mediastinum_ratio=jit(0.235, 0.025), knob_v=apex + jit(0.175, 0.015), knob_r=jit(0.03, 0.006),
        carina_v=apex + jit(0.225, 0.015), spine_shift=jit(0.0, 0.012), tilt=jit(0.0, 0.035),
        soft=jit(1.0, 0.15), female=bool(rng.random() < 0.5), rib_offset=jit(0.0, 0.008),
    )


@dataclass
class Anatomy:
    """Normal anatomy of one rendered study (pixel coordinates; masks are bool [H, W])."""

    ctr: float
    mediastinum_ratio: float
    heart_box: tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive-exclusive
    lung_right: np.ndarray  # patient right = image left
    lung_left: np.ndarray
    zone_bounds: dict[str, tuple[float, float]]  # side -> (upper/mid boundary y, mid/lower boundary y)
    apex_y: float
    dome_y: dict[str, float]  # side -> dome height y
    carina: tuple[float, float]  # (x, y)
    hila: dict[str, tuple[float, float]]  # side -> (x, y)
    midline_x: float
    thoracic_width_px: float
    female: bool

    def lung(self, side: str) -> np.ndarray:
        return self.lung_right if side == "right" else self.lung_left

    def zone_of(self, side: str, y: float) -> str:
        """Lung zone (thirds of the lung height; the apex counts as upper) at image row y."""
        b1, b2 = self.zone_bounds[side]
        return "upper" if y < b1 else "mid" if y < b2 else "lower"


@dataclass
class Layers:
    """Additive density maps [H, W] float32; findings edit them before `expose`."""

    soft: np.ndarray  # soft tissue (body, heart, mediastinum, abdomen)
    air: np.ndarray  # lung air (subtracted)
    bone: np.ndarray
    vessels: np.ndarray  # lung markings (multiplied by `markings`)
    markings: np.ndarray  # 1 where lung markings are visible; pneumothorax zeroes its rim
    extra: np.ndarray = field(default=None)  # findings (fluid, opacity) and devices

    def density(self) -> np.ndarray:
        return self.soft - self.air + self.bone + self.vessels * self.markings + self.extra


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur truncated at 3 sigma (visually identical to 4, a third cheaper)."""
    return ndimage.gaussian_filter(x, sigma, truncate=3.0)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # U [H, W] (x / W), V [H, W] (y / H)


def grids(size: int, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates, rotated by `tilt` about the centre so every structure (and mask) tilts alike."""
    u, v = _grid(size)
    if abs(tilt) < 1e-6:
        return u, v
    c, s = math.cos(tilt), math.sin(tilt)
    du, dv = u - 0.5, v - 0.5
    return (c * du - s * dv + 0.5).astype(np.float32), (s * du + c * dv + 0.5).astype(np.float32)


def heart_field(p: AnatomyParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """> 0 inside the cardiac silhouette (an asymmetric ellipse resting on the diaphragm)."""
    w = p.heart_width
    hx = p.cx + w * (0.5 - p.heart_right_frac) * 0.35
    a = np.where(u < hx, hx - (p.cx - w * p.heart_right_frac), p.cx + w * (1 - p.heart_right_frac) - hx)
    vc = 0.5 * (p.dome_r + p.dome_l) - 0.035
    b = vc - p.heart_top_v
    a = a * np.sqrt(0.55 + 0.45 * np.clip((v - p.heart_top_v) / b, 0, 1))  # pear-shaped: narrow base at the top
    return 1.0 - ((u - hx) / a) ** 2 - ((v - vc) / b) ** 2


def mediastinum_field(p: AnatomyParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """> 0 inside the upper mediastinum (SVC border right, aortic knob left), above the heart."""
    half_r = p.mediastinum_width * 0.4
    half_l = p.mediastinum_width * 0.6
    inlet = 0.8 + 0.2 * np.clip((v - p.apex_v) / 0.12, 0, 1)
    knob = p.knob_r * 1.3 * np.exp(-(((v - p.knob_v) / (p.knob_r * 1.1)) ** 2))
    band = np.minimum(u - (p.cx - half_r * inlet), (p.cx + half_l * inlet + knob) - u) / 0.01
    vc = 0.5 * (p.dome_r + p.dome_l) - 0.015
    return np.where(v < vc, band, -1.0)


def diaphragm_v(p: AnatomyParams, u: np.ndarray, side: str) -> np.ndarray:
    """Height of the hemidiaphragm under column u: a dome, deep laterally (the costophrenic recess)."""
    sign = -1.0 if side == "right" else 1.0
    x_dome = p.cx + sign * p.thorax_hw * 0.45
    t = (u - x_dome) * sign / (p.thorax_hw * 0.55)  # > 0 laterally
    lateral = p.cp_drop * np.clip(t, 0, None) ** 1.6
    medial = 0.5 * p.cp_drop * np.clip(-t, 0, None) ** 1.6
    return p.dome(side) + lateral + medial


def hemithorax_field(p: AnatomyParams, u: np.ndarray, v: np.ndarray, side: str) -> np.ndarray:
    """> 0 inside one hemithorax (rounded apex, lateral rib-cage wall, above its hemidiaphragm)."""
    sign = -1.0 if side == "right" else 1.0
    xs = p.cx + sign * p.thorax_hw * 0.47
    dx = (u - xs) * sign  # > 0 laterally
    ax = np.where(dx > 0, p.thorax_hw * 0.53, p.thorax_hw * 0.47)
    v_e = p.apex_v + 0.62 * (p.dome(side) - p.apex_v)
    ay = v_e - p.apex_v
    dv = np.clip(v - v_e, None, 0.0) / ay
    taper = 1.0 + 0.03 * np.clip((v - v_e) / (p.dome(side) - v_e), 0, 1)
    outline = 1.0 - (dx / (ax * taper)) ** 2 - dv**2
    below = diaphragm_v(p, u, side) - v
    return np.minimum(outline * 0.1, below)


def lung_mask(p: AnatomyParams, u: np.ndarray, v: np.ndarray, side: str, central: np.ndarray | None = None) -> np.ndarray:
    """Bool lung field of one side: hemithorax minus heart and mediastinum (`central`, if precomputed)."""
    half = (u < p.cx) if side == "right" else (u >= p.cx)
    cols = np.nonzero(half.any(axis=0))[0]
    out = np.zeros(u.shape, dtype=bool)
    if len(cols) == 0:
        return out
    sl = slice(int(cols[0]), int(cols[-1]) + 1)  # only this side's columns: half the work
    uu, vv = u[:, sl], v[:, sl]
    inside = (hemithorax_field(p, uu, vv, side) > 0) & half[:, sl]
    if central is None:
        central_sl = (heart_field(p, uu, vv) > 0) | (mediastinum_field(p, uu, vv) > 0)
    else:
        central_sl = central[:, sl]
    out[:, sl] = inside & ~central_sl
    return out


def hilum_point(p: AnatomyParams, side: str) -> tuple[float, float]:
    """(u, v) of the hilum; the left hilum sits higher than the right."""
    if side == "right":
        return p.cx - p.mediastinum_width * 0.4 - 0.025, p.carina_v + 0.075
    return p.cx + p.mediastinum_width * 0.6 + 0.015, p.carina_v + 0.055


def _vessel_points(rng: np.random.Generator, p: AnatomyParams, side: str, upper_gain: float, scale: float = 1.0) -> tuple[np.ndarray, ...]:
    """Branching vessel tree from one hilum, vectorised per generation: (u, v, weight, generation) points."""
    sign = -1.0 if side == "right" else 1.0
    hu, hv = hilum_point(p, side)
    n0 = 9
    # directions: from up-and-out to down-and-out, a few down-and-in toward the cardiophrenic angle
    ang = np.linspace(-1.25, 1.55, n0) + rng.uniform(-0.12, 0.12, n0)
    x0, y0 = hu + rng.uniform(-0.015, 0.015, n0), hv + rng.uniform(-0.03, 0.03, n0)
    length = np.full(n0, 0.085) * rng.uniform(0.8, 1.2, n0)
    weight = np.ones(n0)
    weight = np.where(ang < -0.3, weight * upper_gain, weight)  # edema: upper-lobe redistribution
    us, vs, ws, gs = [], [], [], []
    for gen in range(5):
        t = np.linspace(0.0, 1.0, max(4, int((10 if gen < 2 else 7) * scale)))  # ~constant px spacing
        bend = rng.uniform(-0.25, 0.25, len(ang))
        a = ang[:, None] + bend[:, None] * t[None, :]
        dx = np.cos(a) * sign
        dy = np.sin(a)
        step = length[:, None] / len(t)
        px = x0[:, None] + np.cumsum(dx * step, axis=1)
        py = y0[:, None] + np.cumsum(dy * step, axis=1)
        us.append(px.ravel())
        vs.append(py.ravel())
        ws.append(np.repeat(weight, len(t)))
        gs.append(np.full(px.size, gen))
        # two children per branch
        x0 = np.repeat(px[:, -1], 2)
        y0 = np.repeat(py[:, -1], 2)
        spread = rng.uniform(0.25, 0.5, len(ang) * 2) * np.tile([-1.0, 1.0], len(ang))
        ang = np.repeat(a[:, -1], 2) + spread
        length = np.repeat(length, 2) * rng.uniform(0.7, 0.95, len(ang))
        weight = np.repeat(weight, 2) * 0.6
    return np.concatenate(us), np.concatenate(vs), np.concatenate(ws), np.concatenate(gs)


def _rasterise(size: int, p: AnatomyParams, pts: tuple[np.ndarray, ...], scale: float) -> np.ndarray:
    u, v, w, g = pts
    # undo the film tilt: points are in patient coordinates, the grid is rotated by p.tilt
    c, s = math.cos(p.tilt), math.sin(p.tilt)
    du, dv = u - 0.5, v - 0.5
    x = ((c * du + s * dv + 0.5) * size).astype(np.int64)
    y = ((-s * du + c * dv + 0.5) * size).astype(np.int64)
    ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    big = ok & (g < 2)
    small = ok & (g >= 2)
    a = np.bincount(y[big] * size + x[big], weights=w[big], minlength=size * size).reshape(size, size)
    b = np.bincount(y[small] * size + x[small], weights=w[small], minlength=size * size).reshape(size, size)
    img = blur((a * 1.6 + b).astype(np.float32), sigma=0.9 * scale)
    return img * (0.2 * scale)  # constant px spacing, blur grows with size: keep the line peak constant


def _smooth_noise(rng: np.random.Generator, size: int, knots: int = 12) -> np.ndarray:
    """1-D smooth random profile in [-1, 1] (linear interpolation of random knots)."""
    return np.interp(np.linspace(0, knots - 1, size), np.arange(knots), rng.uniform(-1, 1, knots)).astype(np.float32)


def render_anatomy(p: AnatomyParams, size: int, rng: np.random.Generator, *, breaks: list[RibBreak] = (),
                   upper_gain: float = 1.0, distractors: bool = True,
                   grid: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Layers, Anatomy]:
    """Density layers of the normal chest of patient `p` at `size` px, and its `Anatomy` description."""
    u, v = grid if grid is not None else grids(size, p.tilt)
    scale = size / 256.0
    # body: soft tissue thickness, narrowing to the neck above the shoulders
    hw = p.body_hw * (1.1 - 0.16 * np.clip(v, 0, 1))  # shoulders wider than the waist
    soft = np.sqrt(np.clip(1 - ((u - p.cx) / hw) ** 2, 0, 1)) * (0.55 * p.soft)
    heart = heart_field(p, u, v)
    medi = mediastinum_field(p, u, v)
    soft += np.clip(heart * 3, 0, 1) * 0.05 + np.clip(medi, 0, 1) * 0.02
    central = (heart > 0) | (medi > 0)
    lungs = {side: lung_mask(p, u, v, side, central) for side in ("right", "left")}
    lung_any = lungs["right"] | lungs["left"]
    # lung air: thicker centrally and at the bases than at the apex and periphery
    depth = np.zeros_like(u)
    for side, mask in lungs.items():
        sign = -1.0 if side == "right" else 1.0
        dx = (u - (p.cx + sign * p.thorax_hw * 0.5)) / (p.thorax_hw * 0.55)
        t = np.clip((v - p.apex_v) / (p.dome(side) - p.apex_v), 0, 1)
        depth += mask * (0.3 + 0.7 * np.sqrt(np.clip(1 - dx**2, 0, 1))) * (0.65 + 0.35 * np.sqrt(t))
    # trachea and main bronchi: air columns over the mediastinum
    dv = v - p.carina_v
    airway = (np.abs(u - p.cx) < 0.02) & (v < p.carina_v)
    for slope in (-0.6, 1.1):  # right main bronchus steeper than the left
        airway |= (dv > 0) & (dv < 0.05) & (np.abs((u - p.cx) - slope * dv) < 0.011)
    # parenchymal texture: faint low-frequency mottling (separable, so it costs two small outer products)
    tex = sum(np.outer(_smooth_noise(rng, size), _smooth_noise(rng, size)) for _ in range(2))
    air = blur(depth * (0.38 * p.soft) * (1 + 0.25 * tex) + airway * 0.12, sigma=1.3 * scale)
    # gastric bubble under the left hemidiaphragm
    if rng.random() < 0.75:
        gu, gv = p.cx + p.thorax_hw * 0.5, p.dome_l + 0.045
        air += (((u - gu) / 0.05) ** 2 + ((v - gv) / 0.025) ** 2 < 1) * 0.12
    bone = bones(p, u, v, list(breaks))
    lung_soft = blur(lung_any.astype(np.float32), sigma=1.5 * scale)
    bone *= 0.35 + 0.65 * lung_soft  # ribs over the abdomen and mediastinum show less contrast
    # lung markings: hilar vessels + branching tree, seen only inside the lungs
    pts = [_vessel_points(rng, p, side, upper_gain, scale) for side in ("right", "left")]
    merged = tuple(np.concatenate(x) for x in zip(*pts))
    vessels = _rasterise(size, p, merged, scale)
    hila = np.zeros_like(u)
    for side in ("right", "left"):
        hu, hv = hilum_point(p, side)
        hila += np.exp(-(((u - hu) / 0.03) ** 2 + ((v - hv) / 0.05) ** 2)) * 0.06
    vessels = vessels * lung_soft + hila
    extra = np.zeros_like(u)
    if distractors and p.female:  # breast shadows: soft tissue over the lower zones with a sharp lower margin
        for side in ("right", "left"):
            sign = -1.0 if side == "right" else 1.0
            bu, bv = p.cx + sign * p.thorax_hw * 0.62, p.dome(side) - 0.02
            r2 = ((u - bu) / 0.21) ** 2 + ((v - bv) / 0.12) ** 2
            extra += np.sqrt(np.clip(1 - r2, 0, 1)) * np.clip((v - bv + 0.1) / 0.1, 0, 1) * 0.09
    if distractors and rng.random() < 0.2:  # nipple shadows: paired small round densities (a nodule mimic)
        for side in ("right", "left"):
            sign = -1.0 if side == "right" else 1.0
            nu, nv = p.cx + sign * p.thorax_hw * 0.58, p.dome(side) - 0.07
            extra += np.exp(-(((u - nu) ** 2 + (v - nv) ** 2) / 0.008**2)) * 0.05
    layers = Layers(soft=soft.astype(np.float32), air=air.astype(np.float32), bone=bone.astype(np.float32),
                    vessels=vessels.astype(np.float32), markings=np.ones_like(u), extra=extra.astype(np.float32))
    return layers, describe(p, size, lungs, heart > 0)


def to_pixels(p: AnatomyParams, size: int, uu: float, vv: float) -> tuple[float, float]:
    """Patient (u, v) -> image (x, y) in pixels, undoing the film tilt."""
    c, s = math.cos(p.tilt), math.sin(p.tilt)
    du, dv = uu - 0.5, vv - 0.5
    return (c * du + s * dv + 0.5) * size, (-s * du + c * dv + 0.5) * size


def describe(p: AnatomyParams, size: int, lungs: dict[str, np.ndarray], heart: np.ndarray) -> Anatomy:
    ys, xs = np.nonzero(heart)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    zones, domes = {}, {}
    for side, mask in lungs.items():
        rows = np.nonzero(mask.any(axis=1))[0]
        top, bottom = (float(rows.min()), float(rows.max())) if len(rows) else (0.0, float(size))
        zones[side] = (top + (bottom - top) / 3, top + 2 * (bottom - top) / 3)
        domes[side] = to_pixels(p, size, p.cx, p.dome(side))[1]
    return Anatomy(
        ctr=p.ctr, mediastinum_ratio=p.mediastinum_ratio, heart_box=box, lung_right=lungs["right"], lung_left=lungs["left"],
        zone_bounds=zones, apex_y=to_pixels(p, size, p.cx, p.apex_v)[1], dome_y=domes,
        carina=to_pixels(p, size, p.cx, p.carina_v), hila={s: to_pixels(p, size, *hilum_point(p, s)) for s in ("right", "left")},
        midline_x=to_pixels(p, size, p.cx, 0.5)[0], thoracic_width_px=2 * p.thorax_hw * size, female=p.female,
    )


@dataclass
class Acquisition:
    """Exposure settings of one film."""

    gain: float = 1.6  # attenuation -> film response (exposure)
    gamma: float = 1.0  # contrast curve
    noise: float = 0.018  # quantum noise (std, in [0, 1] intensity)
    blur: float = 0.8  # focal spot / detector blur, px at 256
    collimation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # unexposed margins: left, right, top (fraction)
    heel: float = 0.0  # linear brightness gradient top -> bottom


def sample_acquisition(rng: np.random.Generator, variation: float = 1.0) -> Acquisition:
    def jit(mean: float, spread: float) -> float:
        return mean + variation * spread * float(rng.uniform(-1.0, 1.0))

    coll = tuple(float(rng.uniform(0, 0.05)) if rng.random() < 0.25 * variation else 0.0 for _ in range(3))
    return Acquisition(gain=jit(1.6, 0.3), gamma=jit(1.0, 0.2), noise=max(0.0, jit(0.018, 0.01)),
                       blur=max(0.3, jit(0.8, 0.35)), collimation=coll, heel=jit(0.0, 0.05))


def expose(density: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Density -> uint8 film: exponential film response, contrast, blur, noise, collimation."""
    size = density.shape[0]
    scale = size / 256.0
    d = blur(density, sigma=acq.blur * scale)
    # film response as one lookup table: exponential attenuation response, then the contrast curve
    levels = np.linspace(0.0, 1.6, 2049, dtype=np.float32)
    lut = np.clip((1 - np.exp(-acq.gain * levels)) / (1 - math.exp(-acq.gain * 1.0)), 0, 1) ** acq.gamma
    img = lut[np.clip(d * (2048 / 1.6), 0, 2048).astype(np.int32)]
    img *= 1 + acq.heel * (_grid(size)[1] - 0.5)
    img += rng.standard_normal(img.shape, dtype=np.float32) * acq.noise
    left, right, top = (int(round(f * size)) for f in acq.collimation)
    if left:
        img[:, :left] = 0.92
    if right:
        img[:, size - right:] = 0.92
    if top:
        img[:top, :] = 0.92
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
