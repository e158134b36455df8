"""Draw findings into a phantom's density layers, each with the radiological sign a reader looks for.

Every `draw_*` function edits `Layers` in place (removing lung air where fluid or exudate replaces it,
adding density for lesions and devices, hiding lung markings under a pneumothorax) and returns the bool
mask [H, W] where its sign is drawn. Locations are in the rotated normalised grid (`u`, `v`) of
`medr2.phantom.anatomy`, so masks follow any film tilt exactly. Patient RIGHT = image LEFT.

Hands on: masks and a few measured details (rib number, tube-tip distance) to `medr2.phantom.generator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medr2.phantom.anatomy import (
    Anatomy,
    AnatomyParams,
    Layers,
    blur,
    heart_field,
    hilum_point,
    lung_mask,
    mediastinum_field,
    rib_center_v,
)
from medr2.phantom.bones import CALLUS_HALF_HEIGHT, CALLUS_HALF_LENGTH


@dataclass
class Canvas:
    """What a draw function needs: the patient, its grid, layers, anatomy and a random generator."""

    p: AnatomyParams
    u: np.ndarray
    v: np.ndarray
    layers: Layers
    anatomy: Anatomy
    rng: np.random.Generator
    size: int
    strength: float = 1.0  # < 1 for subtle findings: less contrast

    @property
    def scale(self) -> float:
        return self.size / 256.0

    def side_sign(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return blur(mask.astype(np.float32), sigma)


def _fill(c: Canvas, region: np.ndarray, opacity: float, keep_markings: bool = False) -> None:
    """Replace lung air by fluid/exudate over `region` (float 0..1): the lung turns white there."""
    c.layers.air *= 1 - np.clip(region * opacity * c.strength, 0, 1)
    c.layers.extra += region * 0.02 * c.strength
    if not keep_markings:
        c.layers.markings *= 1 - 0.7 * np.clip(region * c.strength, 0, 1)


def draw_effusion(c: Canvas, side: str, severity: str) -> np.ndarray:
    """Basal opacity with a meniscus rising laterally; small = blunted costophrenic angle only."""
    mask = np.zeros_like(c.u, dtype=bool)
    for s in (("right", "left") if side == "bilateral" else (side,)):
        p, sign = c.p, c.side_sign(s)
        height = p.dome(s) - p.apex_v
        level = {"small": c.rng.uniform(0.03, 0.08), "moderate": c.rng.uniform(0.17, 0.27), "large": c.rng.uniform(0.36, 0.52)}[severity]
        t = np.clip((c.u - p.cx) * sign / p.thorax_hw, 0, 1.1)  # 0 medial -> 1 lateral
        surface = p.dome(s) + p.cp_drop * 0.5 - level * height - (0.04 + 0.6 * level * height) * t**2.5
        lung = c.anatomy.lung(s)
        fluid = lung & (c.v > surface)
        region = _soft(fluid, 1.2 * c.scale) * np.clip((c.v - surface) / 0.02 + 0.5, 0, 1)
        _fill(c, region, 0.95)
        mask |= fluid
    return mask


def _scaled_lung(c: Canvas, side: str, su: float, sv: float, anchor: tuple[float, float]) -> np.ndarray:
    """The lung of `side` shrunk toward `anchor` by (su, sv): a collapsed or peeled-off lung."""
    au, av = anchor
    return lung_mask(c.p, au + (c.u - au) / su, av + (c.v - av) / sv, side)


def draw_pneumothorax(c: Canvas, side: str, severity: str) -> np.ndarray:
    """Lucent rim without lung markings, bounded by a thin visceral pleural line; small = apical."""
    p, sign = c.p, c.side_sign(side)
    anchor = (p.cx + sign * p.mediastinum_width * 0.5, p.dome(side))
    su, sv = {"small": (1.0, 0.9), "moderate": (0.82, 0.8), "large": (0.62, 0.64)}[severity]
    collapsed = _scaled_lung(c, side, su * c.rng.uniform(0.98, 1.0), sv * c.rng.uniform(0.97, 1.0), anchor)
    lung = c.anatomy.lung(side)
    rim = lung & ~collapsed
    c.layers.markings *= 1 - _soft(rim, 0.7 * c.scale)
    c.layers.air += _soft(rim, 0.7 * c.scale) * 0.1 * c.strength
    c.layers.air *= np.where(collapsed & lung, 1 - 0.12 * c.strength, 1.0)  # the collapsed lung holds less air
    line = ndimage.binary_dilation(collapsed) & rim
    c.layers.extra += _soft(line, 0.4 * c.scale) * 0.22 * c.strength
    return rim


def _pick_point(c: Canvas, side: str, zone: str, margin: float = 0.0) -> tuple[float, float]:
    """(u, v) of a random lung point of side/zone, at least `margin` (normalised) inside the lung."""
    lung = c.anatomy.lung(side)
    if margin > 0:
        lung = ndimage.binary_erosion(lung, iterations=max(1, int(margin * c.size)))
    b1, b2 = c.anatomy.zone_bounds[side]
    rows = np.arange(c.size)[:, None]
    band = {"upper": rows < b1, "mid": (rows >= b1) & (rows < b2), "lower": rows >= b2}[zone]
    ys, xs = np.nonzero(lung & band)
    if len(ys) == 0:
        ys, xs = np.nonzero(c.anatomy.lung(side) & band)
    if len(ys) == 0:
        ys, xs = np.nonzero(c.anatomy.lung(side))
    i = int(c.rng.integers(len(ys)))
    return float(c.u[ys[i], xs[i]]), float(c.v[ys[i], xs[i]])


def _blob(c: Canvas, center: tuple[float, float], radius: float, lobes: int = 4) -> np.ndarray:
    """Irregular smooth blob (0..1 field) from a few Gaussians around `center`."""
    field = np.zeros_like(c.u)
    for _ in range(lobes):
        du, dv = c.rng.normal(0, radius * 0.45, 2)
        r = radius * c.rng.uniform(0.55, 0.85)
        field = field + np.exp(-(((c.u - center[0] - du) ** 2 + (c.v - center[1] - dv) ** 2) / r**2))
    return field


def _points_to_image(c: Canvas, us: np.ndarray, vs: np.ndarray, sigma: float) -> np.ndarray:
    """Rasterise patient-space points (a sampled polyline) into a blurred [H, W] line image, peak ~1."""
    ct, st = math.cos(c.p.tilt), math.sin(c.p.tilt)
    du, dv = us - 0.5, vs - 0.5
    x = ((ct * du + st * dv + 0.5) * c.size).astype(np.int64)
    y = ((-st * du + ct * dv + 0.5) * c.size).astype(np.int64)
    ok = (x >= 0) & (x < c.size) & (y >= 0) & (y < c.size)
    img = np.zeros(c.size * c.size, np.float32)
    img[y[ok] * c.size + x[ok]] = 1.0
    img = blur(img.reshape(c.size, c.size), sigma * c.scale)
    return img / max(float(img.max()), 1e-6)


def _polyline(points: list[tuple[float, float]], step: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
    us, vs = [], []
    for (u0, v0), (u1, v1) in zip(points[:-1], points[1:]):
        n = max(2, int(math.hypot(u1 - u0, v1 - v0) / step))
        t = np.linspace(0, 1, n, endpoint=False)
        us.append(u0 + (u1 - u0) * t)
        vs.append(v0 + (v1 - v0) * t)
    return np.concatenate(us), np.concatenate(vs)


def _spline(points: list[tuple[float, float]], n: int = 12) -> list[tuple[float, float]]:
    """Chaikin-smoothed polyline through control points (tubes and leads curve smoothly)."""
    pts = np.asarray(points, dtype=float)
    for _ in range(3):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.vstack([pts[:1], np.column_stack([q, r]).reshape(-1, 2), pts[-1:]])
    return [tuple(x) for x in pts]


def draw_airspace(c: Canvas, side: str, zone: str, kind: str) -> tuple[np.ndarray, list[str]]:
    """Consolidation (segmental, pleura-based, ill-defined, air bronchograms), multifocal pneumonia, or
    patchy/ground-glass opacity (faint, markings kept). Returns the mask and the lung zones drawn in
    (upper -> lower; several for a multifocal pneumonia)."""
    if kind == "consolidation":
        return draw_consolidation(c, side, zone), [zone]
    center = _pick_point(c, side, zone)
    lung = c.anatomy.lung(side)
    dense = kind == "pneumonia"
    radius = c.rng.uniform(0.04, 0.07)
    drawn = [zone]
    if dense:
        # Bronchopneumonia pattern: patchy consolidation in two or three foci of the same lung, so the phantom's
        # pneumonia is visibly different from a single segmental consolidation (otherwise the label could
        # not be read from the film at all). The first focus sits in the reported zone.
        radius = c.rng.uniform(0.04, 0.055)  # ill-defined patches, larger than a nodule
        field = _blob(c, center, radius, lobes=3)
        others = [z for z in ("upper", "mid", "lower") if z != zone]
        for z in c.rng.permutation(others)[: int(c.rng.integers(1, 3))]:
            field = np.maximum(field, _blob(c, _pick_point(c, side, str(z)), radius * c.rng.uniform(0.7, 0.9), lobes=3))
            drawn.append(str(z))
    else:
        field = _blob(c, center, radius, lobes=5)
    region = np.clip((field - 0.5) / 0.5, 0, 1) * lung
    if dense:
        _fill(c, _soft(region, 1.8 * c.scale), 0.92)
        _air_bronchograms(c, side, center, radius, region, count=3, width=0.6, lucency=0.14)
    else:
        tex = blur(c.rng.random(c.u.shape).astype(np.float32), 2.0 * c.scale)
        tex = np.clip((tex - tex.mean()) / (tex.std() + 1e-6) * 0.15 + 0.85, 0.55, 1)
        _fill(c, _soft(region, 3.0 * c.scale) * tex, 0.6, keep_markings=True)
    zones = [z for z in ("upper", "mid", "lower") if z in drawn]
    return region > 0.3, zones


def draw_consolidation(c: Canvas, side: str, zone: str) -> np.ndarray:
    """Segmental airspace consolidation: a horizontally elongated opacity that reaches the lateral pleura
    (the lung edge clips it flat), with a ragged, ill-defined margin and several branching air bronchograms.

    v6 of the generator: v5 drew a round blob of a mass's size, and the stage-0 tower confused the two (a
    consolidation fired on 9 of 13 masses). These are the signs a reader separates them by: a mass is round
    and sharply marginated with no air bronchograms; consolidation follows lung anatomy, fades into the
    surrounding lung and shows the air-filled bronchi inside it.
    """
    lung = c.anatomy.lung(side)
    sign = c.side_sign(side)
    cu, cv = _pick_point(c, side, zone, margin=0.02)
    half_u, half_v = c.rng.uniform(0.11, 0.15), c.rng.uniform(0.05, 0.07)
    # Shift the centre laterally so the opacity is pleura-based; the lung mask then cuts it along the wall.
    cu = cu + sign * half_u * c.rng.uniform(0.2, 0.5)
    ellipse = np.exp(-(((c.u - cu) / half_u) ** 2 + ((c.v - cv) / half_v) ** 2))
    ragged = blur(c.rng.random(c.u.shape).astype(np.float32), 3.0 * c.scale)
    ragged = (ragged - ragged.mean()) / (ragged.std() + 1e-6)
    field = ellipse * (1 + 0.35 * ragged)  # low-frequency noise, only near the opacity: a ragged, fluffy margin
    region = np.clip((field - 0.25) / 0.3, 0, 1) * lung
    if zone == "upper" and side == "right" and c.rng.random() < 0.5:
        region = region * (c.v < cv + half_v * 0.6)  # the one sharp border: the horizontal fissure
    _fill(c, _soft(region, 3.5 * c.scale), 0.9)  # wide blur: no sharp margin except at fissure and pleura
    _air_bronchograms(c, side, (cu - sign * half_u * 0.3, cv), half_u, region, count=int(c.rng.integers(4, 7)),
                      width=0.8, lucency=0.25)
    return region > 0.3


def _air_bronchograms(c: Canvas, side: str, center: tuple[float, float], radius: float, region: np.ndarray,
                      count: int, width: float, lucency: float) -> None:
    """Branching lucencies running away from the hilum, kept inside the dense part of `region`."""
    hu, hv = hilum_point(c.p, side)
    lines = []
    for _ in range(count):
        a = math.atan2(center[1] - hv, center[0] - hu) + c.rng.uniform(-0.4, 0.4)
        start = (center[0] - math.cos(a) * radius * 0.8, center[1] - math.sin(a) * radius * 0.8)
        end = (center[0] + math.cos(a) * radius * 0.6, center[1] + math.sin(a) * radius * 0.6)
        lines.append(_polyline([start, end]))
    us, vs = np.concatenate([l[0] for l in lines]), np.concatenate([l[1] for l in lines])
    eroded = ndimage.binary_erosion(region > 0.6, iterations=max(1, int(2 * c.scale)))
    c.layers.air += _points_to_image(c, us, vs, width) * eroded * lucency * c.strength


def draw_atelectasis(c: Canvas, side: str, zone: str) -> np.ndarray:
    """Plate-like (discoid) atelectasis: a thin, roughly horizontal band of opacity."""
    mask = np.zeros_like(c.u, dtype=bool)
    for s in (("right", "left") if side == "bilateral" else (side,)):
        cu, cv = _pick_point(c, s, zone, margin=0.03)
        length = c.rng.uniform(0.07, 0.12)
        # >= 4 px thick at the 224 px model input: thinner bands were indistinguishable from rib cortex lines
        half_t = c.rng.uniform(0.009, 0.013)
        ang = c.rng.uniform(-0.25, 0.25)
        du, dv = c.u - cu, c.v - cv
        along = du * math.cos(ang) + dv * math.sin(ang)
        across = -du * math.sin(ang) + dv * math.cos(ang)
        band = np.clip(1 - (across / half_t) ** 2, 0, 1) * np.clip(1 - (along / length) ** 4, 0, 1) * c.anatomy.lung(s)
        _fill(c, _soft(band, 0.6 * c.scale), 0.9)
        mask |= band > 0.3
    return mask


def draw_edema(c: Canvas, severity: str) -> np.ndarray:
    """Bilateral perihilar haze and septal (Kerley B) lines at the lung bases."""
    amount = {"mild": 0.35, "moderate": 0.55, "severe": 0.8}[severity]
    haze = np.zeros_like(c.u)
    lungs = c.anatomy.lung_right | c.anatomy.lung_left
    lines_u, lines_v = [], []
    for side in ("right", "left"):
        hu, hv = hilum_point(c.p, side)
        sign = c.side_sign(side)
        haze = np.maximum(haze, np.exp(-(((c.u - hu - sign * 0.04) / 0.11) ** 2 + ((c.v - hv - 0.02) / 0.15) ** 2)))
        p = c.p
        for _ in range(int(3 + 4 * amount)):
            vv = p.dome(side) - c.rng.uniform(0.02, 0.14)
            uu = p.cx + sign * p.thorax_hw * c.rng.uniform(0.93, 1.0)
            pu, pv = _polyline([(uu, vv), (uu - sign * c.rng.uniform(0.02, 0.035), vv)])
            lines_u.append(pu)
            lines_v.append(pv)
    region = haze * lungs
    _fill(c, _soft(region, 2.0 * c.scale), amount * 0.7, keep_markings=True)
    septal = _points_to_image(c, np.concatenate(lines_u), np.concatenate(lines_v), 0.5) * lungs
    c.layers.extra += septal * 0.05 * c.strength
    return (region > 0.35) | (septal > 0.3)


def draw_lesion(c: Canvas, side: str, zone: str, diameter: float, kind: str) -> np.ndarray:
    """Nodule (round, well defined) or mass (larger, lobulated margin); `diameter` normalised."""
    r = diameter / 2
    cu, cv = _pick_point(c, side, zone, margin=r * 0.8)
    du, dv = c.u - cu, c.v - cv
    rr = np.sqrt(du**2 + dv**2)
    if kind == "mass":
        th = np.arctan2(dv, du)
        ph = c.rng.uniform(0, 2 * np.pi, 2)
        r = r * (1 + 0.12 * np.sin(3 * th + ph[0]) + 0.07 * np.sin(5 * th + ph[1]))
    disk = np.clip((r - rr) / (0.006 if kind == "nodule" else 0.01) + 0.5, 0, 1)
    thick = np.sqrt(np.clip(1 - (rr / np.maximum(r, 1e-6)) ** 2, 0, 1))
    c.layers.air *= 1 - np.clip(disk * (0.55 + 0.35 * thick) * c.strength, 0, 1)
    c.layers.extra += disk * thick * 0.05 * c.strength
    return disk > 0.5


def fracture_mask(c: Canvas, side: str, index: int, s: float, callus_step: float | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Mask around a rib break (the break itself is drawn by the rib cage renderer via `RibBreak`); a healing
    break's mask (`callus_step` = the break's step-off) covers its callus, centred between the fragments."""
    p = c.p
    cu = p.cx + c.side_sign(side) * s * p.thorax_hw
    cv = rib_center_v(p, index, s)
    if callus_step is not None:
        cv += callus_step / 2
        return np.hypot((c.u - cu) / CALLUS_HALF_LENGTH, (c.v - cv) / CALLUS_HALF_HEIGHT) < 1.0, (cu, cv)
    return ((c.u - cu) ** 2 + (c.v - cv) ** 2) < 0.022**2, (cu, cv)


def draw_pleural_thickening(c: Canvas, side: str, zone: str) -> np.ndarray:
    """Smooth pleural-based soft tissue along the lateral wall (or an apical cap)."""
    p, sign = c.p, c.side_sign(side)
    anchor = (p.cx + sign * p.mediastinum_width * 0.5, p.dome(side) if zone == "upper" else c.rng.uniform(0.4, 0.6))
    inner = _scaled_lung(c, side, 0.95, 0.95 if zone == "upper" else 1.0, anchor)
    b1, b2 = c.anatomy.zone_bounds[side]
    rows = np.arange(c.size)[:, None]
    band = {"upper": rows < b1, "mid": (rows >= b1) & (rows < b2), "lower": (rows >= b2) & (rows < b2 + (b2 - b1) * 0.6)}[zone]
    region = c.anatomy.lung(side) & ~inner & band
    _fill(c, _soft(region, 0.8 * c.scale), 0.85)
    return region


def heart_mask(c: Canvas) -> np.ndarray:
    """The visible cardiac silhouette (its lower part hides behind the diaphragm and is not drawn as a sign)."""
    return (heart_field(c.p, c.u, c.v) > 0) & (c.v < 0.5 * (c.p.dome_r + c.p.dome_l) + 0.02)


def mediastinum_mask(c: Canvas) -> np.ndarray:
    return (mediastinum_field(c.p, c.u, c.v) > 0) & (c.v > c.p.apex_v - 0.05) & (c.v < c.p.heart_top_v)


def _device_line(c: Canvas, points: list[tuple[float, float]], density: float, sigma: float = 0.5) -> np.ndarray:
    us, vs = _polyline(_spline(points))
    line = _points_to_image(c, us, vs, sigma)
    c.layers.extra += line * density
    return line > 0.25


def draw_device(c: Canvas, kind: str, side: str | None) -> tuple[np.ndarray, dict]:
    """Support devices: radiopaque tubes, lines, leads and wires. Returns (mask, details for the report)."""
    p, rng = c.p, c.rng
    if kind == "ett":
        tip_cm = int(rng.integers(3, 7))
        tip_v = p.carina_v - tip_cm * 10 / 380  # FIELD_MM: 380 mm across the film
        walls = _device_line(c, [(p.cx - 0.008, -0.02), (p.cx - 0.008, tip_v)], 0.12)
        walls |= _device_line(c, [(p.cx + 0.008, -0.02), (p.cx + 0.008, tip_v)], 0.12)
        stripe = _device_line(c, [(p.cx + 0.004, -0.02), (p.cx + 0.004, tip_v)], 0.25)
        return ndimage.binary_dilation(walls | stripe, iterations=1), {"tip_cm": tip_cm}
    if kind == "ng_tube":
        sx = p.cx + 0.012
        pts = [(sx, -0.02), (sx, p.carina_v), (sx + 0.01, p.dome_l - 0.05), (p.cx + 0.07, p.dome_l + 0.03),
               (p.cx + p.thorax_hw * 0.45, p.dome_l + 0.06)]
        return ndimage.binary_dilation(_device_line(c, pts, 0.35), iterations=1), {}
    if kind == "central_line":
        sign = -1.0 if side == "right" else 1.0
        svc = (p.cx - p.mediastinum_width * 0.3, p.carina_v + 0.04)
        if rng.random() < 0.5:  # internal jugular
            pts = [(p.cx + sign * 0.06, -0.02), (p.cx + sign * 0.05, p.apex_v), (p.cx - 0.035, p.knob_v), svc]
        else:  # subclavian
            pts = [(p.cx + sign * p.thorax_hw * 0.8, p.apex_v + 0.01), (p.cx + sign * 0.1, p.apex_v + 0.05),
                   (p.cx - 0.035, p.knob_v), svc]
        return ndimage.binary_dilation(_device_line(c, pts, 0.3), iterations=1), {}
    if kind == "pacemaker":
        sign = -1.0 if side == "right" else 1.0
        gu, gv = p.cx + sign * p.thorax_hw * 0.62, p.apex_v + 0.07
        du, dv = np.abs(c.u - gu), np.abs(c.v - gv)
        box = np.clip(1 - np.maximum(du / 0.05, dv / 0.035) ** 6, 0, 1)
        c.layers.extra += _soft(box > 0.5, 0.5 * c.scale) * 0.6
        ra = (p.cx - p.heart_width * 0.2, p.dome_r - 0.12)
        rv = (p.cx + p.heart_width * 0.15, p.dome_l - 0.04)
        path = [(gu - sign * 0.03, gv), (p.cx + sign * 0.08, p.apex_v + 0.06), (p.cx - 0.03, p.knob_v + 0.02)]
        leads = _device_line(c, path + [ra], 0.3) | _device_line(c, path + [(p.cx - 0.02, p.dome_r - 0.1), rv], 0.3)
        return ndimage.binary_dilation((box > 0.5) | leads, iterations=1), {"generator": (gu, gv)}
    # sternotomy: 5-7 figure-of-eight wire loops along the midline
    n = int(rng.integers(5, 8))
    mask = np.zeros_like(c.u, dtype=bool)
    top, bottom = p.apex_v + 0.08, p.heart_top_v + 0.12
    for vv in np.linspace(top, bottom, n):
        uu = p.cx + rng.normal(0, 0.003)
        r2 = ((c.u - uu) / 0.012) ** 2 + ((c.v - vv) / 0.007) ** 2
        ring = np.clip(1 - np.abs(r2 - 1) / 0.5, 0, 1)
        c.layers.extra += ring * 0.4
        mask |= r2 < 1.4
    return mask, {}
