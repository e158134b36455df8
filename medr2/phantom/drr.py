"""Rendered films: PA chest radiographs projected from a real chest CT, with findings placed in its 3-D anatomy.

`render_study(seed, config)` returns the same `Study` as the procedural generator (image uint8, findings with side,
zone, severity, size and a film-size mask each, report by the same writer, labels, `Anatomy`), so everything
downstream (datasets, traces, training, evaluation) takes either. `medr2 phantom --renderer drr` selects it.

One seed -> one film:
    findings decided as for the procedural films (`medr2.phantom.specs`: same prevalence, co-occurrence, subtlety)
    -> patient variation: rotation about the vertical axis (precomputed projections, `drr_geometry`), field of view,
       in-plane rotation and anisotropic scale, a smooth elastic warp, inspiration depth, soft-tissue thickness
    -> each finding built in 3-D from the CT's label map (`drr_findings`) and splatted through the same cone beam
    -> exposure: attenuation at a random effective energy (bone contrast rises as kVp falls), scatter, detector
       blur, quantum noise, log, unsharp masking and a tone curve, as a clinical film is processed
    -> anatomy measured on the film (lung fields, zones, heart, CTR); side, zone and severity measured from each
       finding's projected mask; report written from those records.

The in-plane warps are displacement fields applied after projection; they equal 3-D deformations that move
every point of a ray alike, which is why they can be applied to the projected maps (and the masks) exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from medr2.phantom import drr_findings as f3
from medr2.phantom.anatomy import Anatomy
from medr2.phantom.drr_geometry import (
    DET_N,
    DET_PITCH_MM,
    ROTATIONS_DEG,
    Splatter,
    anatomy_maps,
    det_index,
    geometry,
    project_points,
)
from medr2.phantom.reports import write_report
from medr2.phantom.specs import OBSERVATION_OF, PhantomConfig, Spec, make_spec, resolve_conflicts, sample_kinds

MU_WATER = 0.0205  # /mm, water at a ~60 keV effective energy (120 kVp PA chest beam)
ZONES = ("upper", "mid", "lower")


@dataclass
class FilmWarp:
    """Film pixel -> detector mm: an affine map plus a smooth displacement field (elastic + inspiration)."""

    size: int
    A: np.ndarray  # 2x2, film (a, b) in [-0.5, 0.5] -> detector (u, w) mm
    t: np.ndarray  # (u, w) mm of the film centre
    disp: np.ndarray  # [2, S, S] displacement (u, w) mm at each film pixel

    def det_coords(self) -> tuple[np.ndarray, np.ndarray]:
        g = (np.arange(self.size) + 0.5) / self.size - 0.5
        a, b = np.meshgrid(g, g)
        u = self.A[0, 0] * a + self.A[0, 1] * b + self.t[0] + self.disp[0]
        w = self.A[1, 0] * a + self.A[1, 1] * b + self.t[1] + self.disp[1]
        return u, w

    def to_film(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector mm -> film (x, y) pixels (fixed-point inversion of the displacement)."""
        inv = np.linalg.inv(self.A)
        du = np.zeros_like(u)
        dw = np.zeros_like(w)
        for _ in range(4):
            a = inv[0, 0] * (u - self.t[0] - du) + inv[0, 1] * (w - self.t[1] - dw)
            b = inv[1, 0] * (u - self.t[0] - du) + inv[1, 1] * (w - self.t[1] - dw)
            x, y = (a + 0.5) * self.size - 0.5, (b + 0.5) * self.size - 0.5
            du = ndimage.map_coordinates(self.disp[0], [y, x], order=1, mode="nearest")
            dw = ndimage.map_coordinates(self.disp[1], [y, x], order=1, mode="nearest")
        return x, y


class _Sampler:
    """Bilinear sampling of detector maps at fixed film coordinates, the weights computed once per film: the same
    values as `ndimage.map_coordinates(order=1, prefilter=False)` with mode "nearest" (`edge`) or "constant" (0 outside
    the grid), to float32 rounding; a film samples ~10 maps at the same coordinates."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, n: int = DET_N):
        self.shape, self.n = rows.shape, n
        self.outside = ((rows < 0) | (rows > n - 1) | (cols < 0) | (cols > n - 1)).ravel()
        r, c = np.clip(rows, 0, n - 1).ravel(), np.clip(cols, 0, n - 1).ravel()
        r0, c0 = np.minimum(np.floor(r).astype(np.int64), n - 2), np.minimum(np.floor(c).astype(np.int64), n - 2)
        fr, fc = r - r0, c - c0
        self.index = r0 * n + c0
        self.weights = ((1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc)

    def __call__(self, det_map: np.ndarray, edge: bool = False) -> np.ndarray:
        flat, i, n = det_map.ravel(), self.index, self.n
        w00, w01, w10, w11 = self.weights
        out = flat[i] * w00 + flat[i + 1] * w01 + flat[i + n] * w10 + flat[i + n + 1] * w11
        if not edge:
            out[self.outside] = 0.0
        return out.reshape(self.shape).astype(det_map.dtype)


@lru_cache(maxsize=4)
def _knot_spline(size: int) -> np.ndarray:
    """[size, 5]: the cubic-spline zoom of 5 knots to `size` samples (`ndimage.zoom(order=3, mode="nearest")`), which is
    separable, so a 5 x 5 knot grid zooms as L @ k @ L.T (the same field, ~10x faster than zooming each grid)."""
    eye = np.eye(5)
    return np.stack([ndimage.zoom(np.tile(eye[i][:, None], (1, 5)), size / 5, order=3, mode="nearest")[:size, 0]
                     for i in range(5)], axis=1)


def _landmarks(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Apex and dome heights (detector w, mm) from the projected lungs, for the inspiration warp."""
    lung = (maps["lung_right"] + maps["lung_left"]) > 8
    rows = np.nonzero(lung.any(axis=1))[0]
    half = DET_N * DET_PITCH_MM / 2
    apex_w = half - (rows.min() + 0.5) * DET_PITCH_MM
    cols = np.nonzero(lung.any(axis=0))[0]
    mid = cols[len(cols) // 4: 3 * len(cols) // 4]
    bottoms = [np.nonzero(lung[:, c])[0].max() for c in mid if lung[:, c].any()]
    dome_w = half - (np.percentile(bottoms, 20) + 0.5) * DET_PITCH_MM
    return {"apex_w": float(apex_w), "dome_w": float(dome_w)}


def sample_warp(rng: np.random.Generator, size: int, lm: dict[str, float], variation: float) -> FilmWarp:
    def jit(mean: float, spread: float) -> float:
        return mean + variation * spread * float(rng.uniform(-1, 1))

    fov = jit(385.0, 20.0)  # mm of detector across the film
    phi = math.radians(jit(0.0, 2.5))
    sx, sz = jit(1.0, 0.04), jit(1.0, 0.04)
    rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    A = rot @ np.diag([sx * fov, -sz * fov])  # film rows run down, w runs up
    top = lm["apex_w"] + jit(38.0, 8.0)  # the apices sit 3-5 cm below the film's top edge
    t = np.array([jit(0.0, 8.0), top - sz * fov / 2])
    g = (np.arange(size) + 0.5) / size - 0.5
    a, b = np.meshgrid(g, g)
    w_aff = A[1, 0] * a + A[1, 1] * b + t[1]
    # inspiration: the diaphragm moves by `depth` mm, the lungs stretch between the apex and the dome
    depth = jit(0.0, 16.0)
    frac = np.clip((lm["apex_w"] - w_aff) / (lm["apex_w"] - lm["dome_w"]), 0, 1)
    disp = np.zeros((2, size, size), dtype=np.float32)
    disp[1] = depth * frac
    knots = rng.normal(0.0, 3.5 * variation, (2, 5, 5))  # elastic: smooth, a few mm
    spline = _knot_spline(size)
    disp += np.stack([spline @ k @ spline.T for k in knots])
    return FilmWarp(size, A, t, disp)


def _zone_bounds(mask: np.ndarray, size: int) -> tuple[float, float]:
    rows = np.nonzero(mask.any(axis=1))[0]
    top, bottom = (float(rows.min()), float(rows.max())) if len(rows) else (0.0, float(size))
    return top + (bottom - top) / 3, top + 2 * (bottom - top) / 3


def _row_edges(right: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the right lung's last column, the left lung's first column, and whether both lungs are in the row."""
    w = right.shape[1]
    r_last = w - 1 - np.argmax(right[:, ::-1], axis=1)
    l_first = np.argmax(left, axis=1)
    return r_last, l_first, right.any(axis=1) & left.any(axis=1)


def describe_film(lungs: dict[str, np.ndarray], heart: np.ndarray, trachea: np.ndarray) -> Anatomy:
    """Anatomy measured on the film: lung fields, zones (thirds of each lung's height), heart, CTR, mediastinum."""
    size = heart.shape[0]
    union = lungs["right"] | lungs["left"]
    cols_any = np.nonzero(union.any(axis=0))[0]
    thoracic = float(cols_any.max() - cols_any.min() + 1) if len(cols_any) else float(size)
    hy, hx = np.nonzero(heart)
    box = (int(hx.min()), int(hy.min()), int(hx.max()) + 1, int(hy.max()) + 1) if len(hx) else (0, 0, 0, 0)
    ty, tx = np.nonzero(trachea)
    midline = float(tx.mean()) if len(tx) else size / 2
    carina = (float(tx[ty == ty.max()].mean()), float(ty.max())) if len(ty) else (midline, size * 0.4)
    rows = np.nonzero(union.any(axis=1))[0]
    apex = float(rows.min()) if len(rows) else 0.0
    domes, hila = {}, {}
    for side, m in lungs.items():
        cols = np.nonzero(m.any(axis=0))[0]
        if len(cols) == 0:
            domes[side] = size * 0.7
            hila[side] = (midline, carina[1])
            continue
        lo, hi = cols.min(), cols.max()
        sub = m[:, int(lo + 0.25 * (hi - lo)): int(lo + 0.75 * (hi - lo)) + 1]
        sub = sub[:, sub.any(axis=0)]
        domes[side] = float((size - 1 - np.argmax(sub[::-1], axis=0)).min())  # highest of the columns' lowest rows
        hy_ = int(min(size - 1, carina[1] + 0.06 * size))
        row = np.nonzero(m[hy_])[0]
        hx_ = float(row.max() if side == "right" else row.min()) if len(row) else midline
        hila[side] = (hx_, float(hy_))
    heart_w = float(box[2] - box[0])
    # upper mediastinum: the gap between the lung fields from the apex to the top of the heart
    ys = slice(int(apex + 0.15 * (box[1] - apex)), max(int(box[1]), int(apex) + 1))
    r_last, l_first, both = _row_edges(lungs["right"][ys], lungs["left"][ys])
    gaps = (l_first - r_last)[both]
    med = float(np.percentile(gaps, 75)) if len(gaps) else 0.25 * thoracic
    return Anatomy(ctr=heart_w / thoracic, mediastinum_ratio=med / thoracic, heart_box=box, lung_right=lungs["right"],
                   lung_left=lungs["left"], zone_bounds={s: _zone_bounds(m, size) for s, m in lungs.items()}, apex_y=apex,
                   dome_y=domes, carina=carina, hila=hila, midline_x=midline, thoracic_width_px=thoracic, female=False)


class _Film:
    """One film under construction: the warp, the projected anatomy and the accumulated finding densities."""

    def __init__(self, rng: np.random.Generator, config: PhantomConfig):
        self.rng, self.size = rng, config.size
        self.rotation = float(rng.choice(ROTATIONS_DEG)) * min(1.0, config.anatomy_variation)
        self.rotation = min(ROTATIONS_DEG, key=lambda r: abs(r - self.rotation))
        self.theta = math.radians(self.rotation)
        self.maps = anatomy_maps(self.rotation)
        self.geo = geometry()
        self.warp = sample_warp(rng, self.size, _landmarks(self.maps), config.anatomy_variation)
        u, w = self.warp.det_coords()
        self.rows, self.cols = det_index(u, w)
        self.sampler = _Sampler(self.rows, self.cols)
        self.dw = np.zeros((DET_N, DET_N), np.float32)
        self.db = np.zeros((DET_N, DET_N), np.float32)
        self.heart_extra = np.zeros((DET_N, DET_N), np.float32)
        self.lungs = {s: self.film(self.maps[f"lung_{s}"]) for s in ("right", "left")}
        self.heart_path = self.film(self.maps["heart"])
        self.trachea = self.film(self.maps["trachea"]) > 3
        self.body = self.film(self.maps["W"], edge=True)
        self.update_anatomy()

    def film(self, det_map: np.ndarray, edge: bool = False) -> np.ndarray:
        return self.sampler(det_map, edge)

    def update_anatomy(self) -> None:
        heart = self.heart_path > 25
        heart &= ndimage.binary_opening(heart, iterations=1)
        # the lung field: rays mostly through lung; lung behind the liver or the heart (posterior recesses,
        # retrocardiac lower lobe) is overlapped by far more soft tissue and is not part of the visible field
        lungs = {s: (m > 10) & (m > 0.6 * self.body) & ~heart for s, m in self.lungs.items()}
        self.heart = heart
        self.anatomy = describe_film(lungs, heart, self.trachea)

    def to_film(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, w, _ = project_points(self.geo, xyz, self.theta)
        return self.warp.to_film(u, w)

    def add(self, les: f3.Lesion3D, blur_px: float = 0.0, min_path_mm: float = 1.5) -> np.ndarray:
        """Splat a finding's densities; returns its film mask (projected path through its sign >= `min_path_mm`)."""
        if len(les.xyz) == 0:
            return np.zeros((self.size, self.size), bool)
        proj = Splatter(self.geo, les.xyz, les.voxel_mm3, self.theta)  # the points projected once for every map
        if np.any(les.dw):
            self.dw += _smooth(proj(les.dw), blur_px)
        if np.any(les.db):
            self.db += _smooth(proj(les.db), blur_px)
        if les.heart is not None:
            self.heart_extra += proj(np.ones(int(les.heart.sum())), les.heart)
        self.last_splat = proj
        self.last_sign_path = proj(np.ones(int(les.sign.sum())), les.sign)  # unblurred: the pneumothorax mask uses it
        return self.film(_smooth(self.last_sign_path, blur_px)) >= min_path_mm

    def pick(self, side: str, zone: str | None, margin_mm: float = 0.0, lobe_ok=None) -> np.ndarray:
        """A random lung point of `side` (>= `margin_mm` from the lung surface) whose projection lies in `zone`."""
        sc = f3.scene()
        idx = sc.lung_idx(side, 3)[::2]
        idx = idx[sc.wall_dist[side][idx[:, 0], idx[:, 1], idx[:, 2]] >= margin_mm] if margin_mm else idx
        if lobe_ok is not None:
            idx = idx[lobe_ok(sc.ct.labels[idx[:, 0], idx[:, 1], idx[:, 2]])] if len(idx) else idx
        if len(idx) == 0:
            idx = sc.lung_idx(side, 3)[::2]
        xyz = sc.xyz(idx)
        x, y = self.to_film(xyz)
        xi, yi = np.clip(np.round(x).astype(int), 0, self.size - 1), np.clip(np.round(y).astype(int), 0, self.size - 1)
        inside = self.anatomy.lung(side)[yi, xi]  # projects onto the visible lung field, not behind heart or liver
        if zone is not None:
            b1, b2 = self.anatomy.zone_bounds[side]
            lo, hi = {"upper": (-1e9, b1), "mid": (b1, b2), "lower": (b2, 1e9)}[zone]
            inside &= (y >= lo + 2) & (y < hi - 2)
        if inside.any():
            xyz = xyz[inside]
        return xyz[int(self.rng.integers(len(xyz)))]

    def zone_of_mask(self, side: str, mask: np.ndarray) -> str | None:
        if side not in ("right", "left") or not mask.any():
            return None
        return self.anatomy.zone_of(side, float(np.nonzero(mask)[0].mean()))


def _smooth(m: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(m, sigma, truncate=2.5) if sigma > 0 else m


def _record(spec: Spec, mask: np.ndarray, details: dict, kind: str | None = None, code: int | None = None, size_mm: float | None = None):
    from medr2.phantom.generator import FindingRecord

    kind = kind or spec.kind
    return FindingRecord(OBSERVATION_OF[kind], kind, spec.code if code is None else code, spec.side, spec.zone, spec.severity,
                         size_mm, spec.subtle, mask, details)


@lru_cache(maxsize=1)
def _hila_3d(sc: f3.Scene) -> dict[str, np.ndarray]:
    """Both hila in 3-D (mm): beside the lungs' medial edges 25 mm below the carina (fixed anatomy: computed once)."""
    line = sc.centreline("trachea")
    k_carina = min(line)
    x_c, y_c = line[k_carina]
    z = (k_carina + 0.5) * sc.sp[2] - 25
    out = {}
    for side, sign in (("right", -1), ("left", 1)):
        idx = np.argwhere(sc.lung[side])
        xyz = sc.xyz(idx)
        near = np.abs(xyz[:, 2] - z) < 20
        medial = xyz[near][np.argsort(sign * xyz[near][:, 0])][: max(1, near.sum() // 5)]
        out[side] = np.array([medial[:, 0].mean() + sign * 15, y_c, z])
    return out


def _device(film: _Film, spec: Spec) -> tuple[np.ndarray, dict]:
    sc, rng = f3.scene(), film.rng
    top_z = sc.ct.hu.shape[2] * sc.sp[2] + 30
    trachea = sc.centreline("trachea")
    k_car = min(trachea)
    carina_z = (k_car + 0.5) * sc.sp[2]
    details: dict = {}
    parts = []
    if spec.kind == "ett":
        tip_cm = int(rng.integers(3, 7))
        ks = sorted(trachea)
        path = [(trachea[ks[-1]][0], trachea[ks[-1]][1], top_z)] + [(*trachea[k], (k + 0.5) * sc.sp[2]) for k in ks[::-1]]
        path = np.array([p for p in path if p[2] >= carina_z + tip_cm * 10])
        parts.append(f3.tube(path, 2.0, radius=4.5, stripe=2.5))
        details = {"tip_cm": tip_cm}
    elif spec.kind == "ng_tube":
        eso = sc.centreline("esophagus")
        ks = sorted(eso)[::-1]
        stomach = sc.label_idx(sc.ct.structures["stomach"])
        st = sc.xyz(stomach)
        tip = st[st[:, 2] > np.percentile(st[:, 2], 60)].mean(axis=0)
        path = [(eso[ks[0]][0], eso[ks[0]][1], top_z)] + [(*eso[k], (k + 0.5) * sc.sp[2]) for k in ks] + [tuple(tip)]
        parts.append(f3.tube(np.array(path), 3.0))
    elif spec.kind == "central_line":
        vein = "brachiocephalic_vein_right" if spec.side == "right" else "brachiocephalic_vein_left"
        bv, svc = sc.centreline(vein), sc.centreline("superior_vena_cava")
        kb, ks = sorted(bv)[::-1], sorted(svc)[::-1]
        tip_k = ks[int(len(ks) * 0.75)]
        start = np.array([*bv[kb[0]], top_z])
        start[0] += (-12 if spec.side == "right" else 12)
        path = [tuple(start)] + [(*bv[k], (k + 0.5) * sc.sp[2]) for k in kb] + [(*svc[k], (k + 0.5) * sc.sp[2]) for k in ks if k >= tip_k]
        parts.append(f3.tube(np.array(path), 3.0))
    elif spec.kind == "pacemaker":
        sign = -1 if spec.side == "right" else 1
        clav = sc.xyz(sc.label_idx(sc.ct.structures[f"clavicula_{spec.side}"]))
        gx = np.percentile(clav[:, 0], 30 if sign > 0 else 70) + sign * 10
        gz = clav[:, 2].mean() - 35
        front = np.nonzero((sc.ct.hu[int(gx / sc.sp[0])] > -300).any(axis=1))[0].max() * sc.sp[1] - 12
        gen = f3._box_points(sc, np.array([gx - 22, front - 4, gz - 18]), np.array([gx + 22, front + 4, gz + 18]), 1.2)
        corner = np.maximum(np.abs(gen[:, 0] - gx) / 22, np.abs(gen[:, 2] - gz) / 18)
        gen = gen[corner < 0.97]
        parts.append((gen, np.full(len(gen), 5.0 * 1.2**3)))  # titanium can, ~5x bone per mm
        heart = sc.xyz(sc.label_idx(sc.ct.structures["heart"]))
        ra = heart[heart[:, 0] < np.percentile(heart[:, 0], 12)].mean(axis=0)
        rv = heart[(heart[:, 2] < np.percentile(heart[:, 2], 15)) & (heart[:, 1] > np.percentile(heart[:, 1], 60))].mean(axis=0)
        svc = sc.centreline("superior_vena_cava")
        ks = sorted(svc)[::-1]
        entry = [(gx - sign * 25, front - 20, gz + 15)] + [(*svc[k], (k + 0.5) * sc.sp[2]) for k in ks]
        for tip in (ra, rv):
            parts.append(f3.tube(np.array(entry + [tuple(tip)]), 4.0))
        details = {"generator": (float(gx), float(gz))}
    else:  # sternotomy: 5-7 wire loops around the sternum
        stern = sc.centreline("sternum")
        ks = sorted(stern)
        for k in np.linspace(ks[int(len(ks) * 0.1)], ks[int(len(ks) * 0.9)], int(rng.integers(5, 8))).astype(int):
            x, y = stern[int(k)] if int(k) in stern else stern[min(stern, key=lambda q: abs(q - k))]
            z = (k + 0.5) * sc.sp[2]
            a = np.linspace(0, 2 * np.pi, 60)
            loop = np.stack([x + 9 * np.cos(a), y + 6 * np.sin(a), z + 2.5 * np.sin(2 * a) + rng.normal(0, 0.5)], axis=1)
            parts.append(f3.tube(loop, 8.0))
    xyz = np.concatenate([p[0] for p in parts])
    dens = np.concatenate([p[1] for p in parts])
    les = f3.Lesion3D(xyz, np.zeros(len(xyz)), dens, 1.0, np.ones(len(xyz), bool))
    mask = film.add(les, blur_px=0.6, min_path_mm=0.4)
    return ndimage.binary_dilation(mask, iterations=1), details


def _build(film: _Film, s: Spec, strength: float) -> tuple[np.ndarray, dict]:
    """Build, splat and measure one finding; edits `s` (side, zone, severity) from the film where they follow."""
    sc, rng = f3.scene(), film.rng
    k = s.kind
    if k in ("nodule", "mass"):
        d = (s.size_px or 12.0) * 380.0 / 256.0
        centre = film.pick(s.side, s.zone, margin_mm=d * 0.5)
        mask = film.add(f3.lesion(sc, rng, centre, d, k, strength))
        return mask, {"size_mm": round(d, 1)}
    if k in ("consolidation", "opacity"):
        centre = film.pick(s.side, s.zone, margin_mm=8)
        radius = rng.uniform(28, 42) if k == "consolidation" else rng.uniform(30, 45)
        density = (0.95 if k == "consolidation" else 0.45) * strength
        mask = film.add(f3.airspace(sc, rng, s.side, centre, radius, density, patchy=0.15 if k == "consolidation" else 0.5), 0.5)
        return mask, {}
    if k == "pneumonia":
        zones = [z for z in ZONES if z == s.zone or rng.random() < 0.55]
        mask = np.zeros((film.size, film.size), bool)
        for z in zones:
            centre = film.pick(s.side, z, margin_mm=8)
            mask |= film.add(f3.airspace(sc, rng, s.side, centre, rng.uniform(22, 32), 0.75 * strength, patchy=0.6), 0.5)
        measured = sorted({film.zone_of_mask(s.side, m) for m in [mask] if m.any()} | set(zones), key=ZONES.index)
        return mask, ({"zones": measured} if len(measured) > 1 else {})
    if k == "atelectasis":
        mask = np.zeros((film.size, film.size), bool)
        for side in (("right", "left") if s.side == "bilateral" else (s.side,)):
            lower = {"right": "lung_lower_lobe_right", "left": "lung_lower_lobe_left"}[side]
            ok = (lambda lab, i=sc.ct.structures[lower]: lab == i) if s.zone == "lower" else None
            centre = film.pick(side, s.zone, margin_mm=10, lobe_ok=ok)
            mask |= film.add(f3.plate(sc, rng, side, centre, 0.95 * strength), 0.4)
        return mask, {}
    if k == "effusion":
        mask = np.zeros((film.size, film.size), bool)
        level = {"small": rng.uniform(28, 40), "moderate": rng.uniform(65, 90), "large": rng.uniform(115, 150)}[s.severity]
        for side in (("right", "left") if s.side == "bilateral" else (s.side,)):
            mask |= film.add(f3.effusion(sc, rng, side, level), 1.0, min_path_mm=12.0)
        return mask, {}
    if k == "pneumothorax":
        rim = {"small": rng.uniform(10, 16), "moderate": rng.uniform(20, 30), "large": rng.uniform(35, 50)}[s.severity]
        les = f3.pneumothorax(sc, s.side, rim, apical_only=s.zone == "upper")
        film.add(les, 0.4)
        before = film.lungs[s.side]
        removed = film.film(film.last_sign_path) if len(les.xyz) else 0.0
        mask = (before > 8) & (before - removed < 4) & film.anatomy.lung(s.side)  # rays through pleural air only
        return mask, {}
    if k == "edema":
        amount = {"mild": 0.35, "moderate": 0.55, "severe": 0.8}[s.severity]
        return film.add(f3.edema(sc, rng, _hila_3d(sc), amount), 0.8), {}
    if k == "fracture":
        rib = s.extra["index"] + 1
        healing = s.extra.get("callus", 0.0) > 0
        mask = film.add(f3.rib_fracture(sc, rng, s.side, rib, s.extra["s"], healing), 0.3)
        return ndimage.binary_dilation(mask, iterations=1), {"rib": rib, **({"healing": True} if healing else {})}
    if k == "pleural_thickening":
        lung = sc.xyz(np.argwhere(sc.lung[s.side][::4, ::4, :]) * np.array([4, 4, 1]))
        x, y = film.to_film(lung)
        b1, b2 = film.anatomy.zone_bounds[s.side]
        lo, hi = {"upper": (-1e9, b1), "mid": (b1, b2), "lower": (b2, 1e9)}[s.zone]
        zsel = lung[(y >= lo) & (y < hi), 2]
        z_lo, z_hi = (zsel.min(), zsel.max()) if len(zsel) else (lung[:, 2].min(), lung[:, 2].max())
        return film.add(f3.pleural_thickening(sc, s.side, z_lo, z_hi, s.zone == "upper", rng), 0.5), {}
    raise ValueError(k)


def _ctr_severity(ctr: float) -> str:
    return "mild" if ctr < 0.56 else "moderate" if ctr < 0.62 else "severe"


def render_study(seed: int, config: PhantomConfig | None = None):
    """One rendered study, fully determined by `seed` and `config` (as `generate_study`, with `renderer="drr"`)."""
    from medr2.phantom.generator import Study, pneumonia_code

    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    specs = [make_spec(k, rng, config) for k in sample_kinds(rng, config)]
    resolve_conflicts(specs, config)
    film = _Film(rng, config)
    sc = f3.scene()
    base = film.anatomy
    records = []
    # heart size: normal variation (CTR kept below 0.5) or a dilated heart measured on the film
    cardio = next((s for s in specs if s.kind == "cardiomegaly"), None)
    target = cardio.extra["ctr"] if cardio else min(0.49, base.ctr * float(rng.uniform(1.0, 1.08)))
    if target > base.ctr + 0.005:
        scale = target / base.ctr
        film.add(f3.dilated_heart(sc, scale))
        film.heart_path = film.film(film.maps["heart"] + film.heart_extra)
        film.update_anatomy()
    wide = next((s for s in specs if s.kind == "widened_mediastinum"), None)
    if wide:
        z_hi = sc.top_z("lung") - 20
        scale = max(1.05, wide.extra["ratio"] / max(base.mediastinum_ratio, 0.05))
        les = f3.widened_mediastinum(sc, scale, sc.top_z("heart") - 5, z_hi)
        film.add(les)
        lost = film.film(film.last_splat(np.ones(len(les.xyz)))) if len(les.xyz) else 0.0
        film.lungs = {side: m - lost for side, m in film.lungs.items()}
        film.update_anatomy()
    anatomy = film.anatomy
    for s in specs:
        strength = 0.6 if s.subtle else 1.0
        if s.kind in ("ett", "ng_tube", "central_line", "pacemaker", "sternotomy"):
            mask, details = _device(film, s)
            records.append(_record(s, mask, details))
            continue
        if s.kind == "cardiomegaly":
            s.severity = _ctr_severity(anatomy.ctr) if not s.subtle else "mild"
            records.append(_record(s, anatomy_heart(film), {"ctr": round(anatomy.ctr, 2)}))
            continue
        if s.kind == "widened_mediastinum":
            records.append(_record(s, mediastinum_film_mask(anatomy), {"ratio": round(anatomy.mediastinum_ratio, 2)}))
            continue
        mask, details = _build(film, s, strength)
        size_mm = details.pop("size_mm", None)
        if s.kind in ("nodule", "mass", "consolidation", "opacity", "fracture", "pleural_thickening") and s.side in ("right", "left"):
            measured = film.zone_of_mask(s.side, mask)
            if measured and (s.kind == "fracture" or s.zone is not None):
                s.zone = measured if s.kind != "pleural_thickening" else s.zone
        if s.kind == "pneumonia":
            s.code = pneumonia_code(details.get("zones", [s.zone]))
            if not any(r.kind == "consolidation" for r in records) and not any(x.kind == "consolidation" for x in specs):
                records.append(_record(s, mask, dict(details), kind="consolidation", code=1))
                details = {**details, "paired": "consolidation"}
        records.append(_record(s, mask, details, size_mm=size_mm))
    image = expose_film(film, rng, config.acquisition_variation)
    text = write_report(records, random.Random(seed))
    return Study(study_id=f"drr-{seed}", seed=seed, image=image, findings=records, anatomy=anatomy, labels=text.labels,
                 report=text.text, findings_text=text.findings, impression_text=text.impression)


def anatomy_heart(film: _Film) -> np.ndarray:
    return film.heart.copy()


def mediastinum_film_mask(a: Anatomy) -> np.ndarray:
    """The upper mediastinum on the film: between the lung fields, from the apices to the top of the heart."""
    size = a.lung_right.shape[0]
    out = np.zeros((size, size), bool)
    y0, y1 = int(a.apex_y), min(int(a.heart_box[1]) + 1, size)
    if y1 <= y0:
        return out
    r_last, l_first, both = _row_edges(a.lung_right[y0:y1], a.lung_left[y0:y1])
    cols = np.arange(size)
    out[y0:y1] = both[:, None] & (cols > r_last[:, None]) & (cols < l_first[:, None])
    return out


def expose_film(film: _Film, rng: np.random.Generator, variation: float = 1.0) -> np.ndarray:
    """Line integrals -> processed 8-bit film (bright = dense)."""

    def jit(mean: float, spread: float) -> float:
        return mean + variation * spread * float(rng.uniform(-1, 1))

    size = film.size
    scale = size / 256.0
    soft = jit(1.0, 0.12)  # soft-tissue thickness (habitus)
    bone_gain = jit(2.8, 0.6)  # bone/water attenuation ratio at the effective energy (higher at lower kVp)
    mu = MU_WATER * jit(1.0, 0.08)
    W = film.body * soft + film.film(film.dw)
    B = film.film(film.maps["B"]) + film.film(film.db)
    primary = np.exp(-mu * (W + bone_gain * B))
    small = ndimage.zoom(primary, 0.125, order=1)
    scatter = ndimage.zoom(ndimage.gaussian_filter(small, 3.0 * scale * 0 + 3.0), size / small.shape[0], order=1)[:size, :size]
    signal = primary + jit(0.25, 0.12) * scatter
    signal = ndimage.gaussian_filter(signal, jit(0.7, 0.25) * scale, truncate=2.5)  # focal spot and detector blur
    photons = jit(8000.0, 4000.0) / scale**2  # per pixel through air
    signal = signal + rng.standard_normal(signal.shape).astype(np.float32) * np.sqrt(np.maximum(signal, 1e-6) / photons)
    p = -np.log(np.clip(signal, 1e-4, None))
    # clinical processing: unsharp masking (edge and rib enhancement) and a tone curve over the body's range
    p = p + jit(1.4, 0.4) * (p - ndimage.gaussian_filter(p, 8.0 * scale, truncate=2.0))
    lo, hi = np.percentile(p[::4, ::4], [jit(1.0, 0.8), 99.7])
    y = np.clip((p - lo) / max(hi - lo, 1e-6), 0, 1)
    y = y ** jit(1.0, 0.2)
    y = 1 / (1 + np.exp(-jit(4.0, 1.0) * (y - 0.5)))
    y = (y - y.min()) / max(float(y.max() - y.min()), 1e-6)
    return (y * 255 + 0.5).astype(np.uint8)
