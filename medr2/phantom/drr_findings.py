"""Findings built in 3-D inside the real CT's anatomy, as density changes at points, for `medr2.phantom.drr`.

Each builder returns a `Lesion3D`: points (mm, CT frame), the water-equivalent (`dw`) and bone-equivalent (`db`)
density change at each, the volume each point stands for, and which points make up the finding's sign (`sign`),
from which its film mask is projected. Densities are per mm relative to water: lung parenchyma is ~0.15, soft
tissue and fluid ~1.0, so replacing lung by fluid adds (1 - lung) at that point, and air bronchograms survive
because airway voxels (HU < -950) are left as they are. Anatomy comes from the TotalSegmentator labels: lobes,
heart, trachea, oesophagus, stomach, great veins, sternum and every rib by number.

Hands on to `medr2.phantom.drr`, which projects the points with the film's geometry and measures side, zone and
severity on the film.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from medr2.phantom.ct_volume import ChestCT

FLUID = 1.02  # water-equivalent density of pleural fluid, exudate and soft tissue
AIRWAY_HU = -950.0  # voxels darker than this are bronchi: kept as air inside a consolidation (air bronchograms)
LOBES = {"right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
         "left": ("lung_upper_lobe_left", "lung_lower_lobe_left")}


@dataclass
class Lesion3D:
    xyz: np.ndarray  # [N, 3] mm
    dw: np.ndarray  # [N] water-equivalent density change
    db: np.ndarray  # [N] bone-equivalent density change (radiopaque devices, callus, a rib's break)
    voxel_mm3: float
    sign: np.ndarray  # [N] bool: points of the radiological sign (the film mask)
    details: dict = field(default_factory=dict)
    heart: np.ndarray | None = None  # [N] bool: points that become heart (cardiomegaly), for the heart silhouette


class Scene:
    """The CT's anatomy in the form the builders need (computed once per process)."""

    def __init__(self, ct: ChestCT):
        self.ct = ct
        self.sp = np.asarray(ct.spacing)
        self.rho = np.clip(1.0 + np.minimum(ct.hu.astype(np.float32), 100.0) / 1000.0, 0.0, None)
        self.lung = {s: np.isin(ct.labels, [ct.structures[n] for n in LOBES[s]]) for s in ("right", "left")}
        self.wall_dist = {s: ndimage.distance_transform_edt(self.lung[s], sampling=ct.spacing).astype(np.float32) for s in self.lung}
        self.heart = ct.labels == ct.structures["heart"]
        self._lung_idx: dict = {}
        self._centrelines: dict = {}
        self._heart_growth: tuple[np.ndarray, np.ndarray] | None = None
        self._points: dict = {}
        self._label_idx: dict = {}
        self._tops: dict = {}
        self._medial: dict = {}

    def xyz(self, idx: np.ndarray) -> np.ndarray:
        return (idx + 0.5) * self.sp

    def index(self, xyz: np.ndarray) -> np.ndarray:
        i = (xyz / self.sp).astype(np.int64)  # points are never far outside the volume: truncation = floor there
        return np.minimum(np.maximum(i, 0), np.asarray(self.ct.hu.shape) - 1)

    def label_at(self, xyz: np.ndarray) -> np.ndarray:
        i = self.index(xyz)
        return self.ct.labels[i[:, 0], i[:, 1], i[:, 2]]

    def lobe_ids(self, side: str) -> list[int]:
        return [self.ct.structures[n] for n in LOBES[side]]

    def lung_idx(self, side: str, stride: int) -> np.ndarray:
        key = (side, stride)
        if key not in self._lung_idx:
            self._lung_idx[key] = np.argwhere(self.lung[side][::stride, ::stride]) * np.array([stride, stride, 1])
        return self._lung_idx[key]

    def points(self, side: str, stride: int, sub_z: bool) -> LungPoints:
        """`_lung_points` with the voxel index and wall distance of every point, computed once per process (the
        builders used to recompute them for every finding: most of their time)."""
        key = (side, stride, sub_z)
        if key not in self._points:
            self._points[key] = LungPoints(self, side, sub_z, *_lung_points(self, side, stride, sub_z))
        return self._points[key]

    def label_idx(self, label: int) -> np.ndarray:
        """Voxel indices of one label (cached: a full-volume scan each time otherwise)."""
        if label not in self._label_idx:
            self._label_idx[label] = np.argwhere(self.ct.labels == label)
        return self._label_idx[label]

    def top_z(self, what: str) -> float:
        """Height (mm) of the highest voxel centre of the heart or of either lung."""
        if what not in self._tops:
            m = self.heart if what == "heart" else self.lung["right"] | self.lung["left"]
            self._tops[what] = float((np.nonzero(m.any(axis=(0, 1)))[0].max() + 0.5) * self.sp[2])
        return self._tops[what]

    def lungs_mid_x(self) -> float:
        """Mean x (mm) of all lung voxel centres: the midline the rib builder measures lateral reach from."""
        if "mid_x" not in self._medial:
            self._medial["mid_x"] = self.xyz(np.argwhere(self.lung["right"] | self.lung["left"]))[:, 0].mean()
        return self._medial["mid_x"]

    def mediastinal_rows(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """Per (y, z) row the right lung's most medial x index and the left lung's, and each lung's voxel indices."""
        if "rows" not in self._medial:
            r, left = self.lung["right"], self.lung["left"]
            X = r.shape[0]
            xs = np.arange(X)[:, None, None]
            r_edge = np.where(r.any(axis=0), np.max(np.where(r, xs, -1), axis=0), -1)
            l_edge = np.where(left.any(axis=0), np.min(np.where(left, xs, X), axis=0), X)
            self._medial["rows"] = (r_edge, l_edge, {"right": np.argwhere(r), "left": np.argwhere(left)})
        return self._medial["rows"]

    def centreline(self, name: str) -> dict[int, tuple[float, float]]:
        """Slice k -> (x, y) centroid of a tubular structure's label."""
        if name in self._centrelines:
            return self._centrelines[name]
        m = self.ct.labels == self.ct.structures[name]
        out = {}
        for k in np.nonzero(m.any(axis=(0, 1)))[0]:
            ij = np.argwhere(m[:, :, k])
            out[int(k)] = tuple(float(v) for v in (ij.mean(axis=0) + 0.5) * self.sp[:2])
        self._centrelines[name] = out
        return out


class LungPoints:
    """One lung's sample points (`_lung_points`) with what the builders look up at each: the voxel under each point
    (`Scene.index`), the distance to the lung surface, and lookups by x range and by wall distance that return the
    same points in the same order as filtering the whole set would (so films are unchanged, only faster)."""

    def __init__(self, sc: Scene, side: str, sub_z: bool, xyz: np.ndarray, idx: np.ndarray, vol: float):
        self.xyz, self.vol = xyz, vol  # (the voxel indices themselves are not kept: ~24 bytes a point)
        self.i = sc.index(xyz)
        self.wall = sc.wall_dist[side][idx[:, 0], idx[:, 1], idx[:, 2]]
        # argwhere order is x-major, so x is non-decreasing within each z half (two halves when sub-sampled in z)
        n = len(xyz)
        self.halves = [(0, n // 2), (n // 2, n)] if sub_z else [(0, n)]
        if not all(np.all(np.diff(xyz[a:b, 0]) >= 0) for a, b in self.halves):
            raise RuntimeError("lung points are not in x-major order")
        self.z_min, self.z_max = (float(xyz[:, 2].min()), float(xyz[:, 2].max())) if n else (0.0, 0.0)
        self.x_median = float(np.median(xyz[:, 0])) if n else 0.0
        self.x_min, self.x_max = (float(xyz[:, 0].min()), float(xyz[:, 0].max())) if n else (0.0, 0.0)

    def x_between(self, lo: float, hi: float) -> np.ndarray:
        """Indices (ascending) of the points with lo <= x <= hi."""
        parts = []
        for a, b in self.halves:
            x = self.xyz[a:b, 0]
            parts.append(np.arange(a + np.searchsorted(x, lo, "left"), a + np.searchsorted(x, hi, "right")))
        return np.concatenate(parts)

    def wall_below(self, limit: float) -> np.ndarray:
        """Indices (ascending) of the points less than `limit` mm from the lung surface."""
        return np.flatnonzero(self.wall < limit)


@lru_cache(maxsize=1)
def scene() -> Scene:
    from medr2.phantom.ct_volume import load_chest_ct

    return Scene(load_chest_ct())


def _box_points(sc: Scene, lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
    """Points of an isotropic grid of `step` mm filling the box [lo, hi] (mm), clipped to the volume."""
    lo = np.maximum(lo, 0.0)
    hi = np.minimum(hi, np.asarray(sc.ct.hu.shape) * sc.sp - 1e-3)
    axes = [np.arange(a + step / 2, b, step) for a, b in zip(lo, hi)]
    if any(len(a) == 0 for a in axes):
        return np.zeros((0, 3))
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


def _lung_points(sc: Scene, side: str, stride: int = 1, sub_z: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Voxel centres of one lung (every `stride` in x and y; two points per slice when `sub_z`), and their indices."""
    idx = sc.lung_idx(side, stride)
    xyz = (idx + np.array([stride / 2, stride / 2, 0.5])) * sc.sp
    vol = float(np.prod(sc.sp)) * stride * stride
    if sub_z:
        off = np.array([0.0, 0.0, sc.sp[2] / 4])
        xyz = np.concatenate([xyz - off, xyz + off])
        idx = np.concatenate([idx, idx])
        vol /= 2
    return xyz, idx, vol


def _fill_lung(sc: Scene, xyz: np.ndarray, amount: np.ndarray, keep_airways: bool, i: np.ndarray | None = None) -> np.ndarray:
    """Density change turning lung at `xyz` (voxels `i`, looked up when not given) toward fluid by `amount` (0..1)."""
    i = sc.index(xyz) if i is None else i
    rho = sc.rho[i[:, 0], i[:, 1], i[:, 2]]
    dw = amount * np.clip(FLUID - rho, 0, None)
    if keep_airways:
        dw = np.where(sc.ct.hu[i[:, 0], i[:, 1], i[:, 2]] < AIRWAY_HU, 0.0, dw)
    return dw


def _smooth_noise(rng: np.random.Generator, xyz: np.ndarray, scale_mm: float, n: int = 6) -> np.ndarray:
    """Smooth random field in [-1, 1] at points: a sum of random plane waves of wavelength ~ `scale_mm`."""
    out = np.zeros(len(xyz))
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        out += np.sin(xyz @ d * (2 * np.pi / (scale_mm * rng.uniform(0.7, 1.4))) + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(n / 2) / 1.5


def lesion(sc: Scene, rng: np.random.Generator, centre: np.ndarray, diameter: float, kind: str, strength: float) -> Lesion3D:
    """Nodule (round, smooth or finely spiculated) or mass (lobulated): soft tissue replacing lung."""
    r = diameter / 2
    step = 1.0 if diameter < 30 else 1.5
    pts = _box_points(sc, centre - 1.6 * r, centre + 1.6 * r, step)
    d = pts - centre
    dist = np.linalg.norm(d, axis=1) + 1e-6
    unit = d / dist[:, None]
    radius = np.full(len(pts), r)
    if kind == "mass":  # lobulated: low-order bumps
        radius *= 1 + 0.15 * _smooth_noise(rng, unit * 40.0, 40.0, 4)
    elif rng.random() < 0.4:  # spiculated nodule: thin radial strands
        for v in rng.normal(size=(int(rng.integers(6, 12)), 3)):
            v /= np.linalg.norm(v)
            along = unit @ v
            radius = np.maximum(radius, np.where(along > 0.985, r * (1.5 - 8 * (1 - along) * 20 / 3), 0))
    inside = np.clip((radius - dist) / 1.2 + 0.5, 0, 1)
    in_lung = np.isin(sc.label_at(pts), sc.lobe_ids("right") + sc.lobe_ids("left"))
    keep = (inside > 0) & in_lung
    dw = _fill_lung(sc, pts[keep], inside[keep] * strength, keep_airways=False)
    return Lesion3D(pts[keep], dw, np.zeros_like(dw), step**3, inside[keep] > 0.5)


def airspace(sc: Scene, rng: np.random.Generator, side: str, centre: np.ndarray, radius: float, density: float,
             patchy: float, keep_airways: bool = True) -> Lesion3D:
    """Lung within an irregular sphere around `centre`, restricted to its lobe, filled toward fluid by `density`."""
    pts = sc.points(side, 1, False)
    xyz, vol = pts.xyz[pts.x_between(centre[0] - radius * 1.4, centre[0] + radius * 1.4)], pts.vol
    near = np.linalg.norm(xyz - centre, axis=1) < radius * 1.4
    xyz = xyz[near]
    lobe = sc.label_at(centre[None])[0]
    xyz = xyz[sc.label_at(xyz) == lobe] if lobe in sc.lobe_ids(side) else xyz
    dist = np.linalg.norm(xyz - centre, axis=1)
    edge = radius * (1 + 0.3 * _smooth_noise(rng, xyz, 35.0))
    amount = np.clip((edge - dist) / 8.0, 0, 1)
    if patchy:
        amount *= np.clip(1 - patchy + patchy * (0.5 + _smooth_noise(rng, xyz, 14.0)), 0, 1)
    keep = amount > 0.02
    dw = _fill_lung(sc, xyz[keep], amount[keep] * density, keep_airways)
    return Lesion3D(xyz[keep], dw, np.zeros_like(dw), vol, amount[keep] > 0.35)


def plate(sc: Scene, rng: np.random.Generator, side: str, centre: np.ndarray, strength: float) -> Lesion3D:
    """Plate-like atelectasis: a 3-6 mm thick, roughly horizontal disc of collapsed lung, 3-5 cm across."""
    pts = sc.points(side, 1, True)
    normal = np.array([rng.normal(0, 0.12), rng.normal(0, 0.25), 1.0])
    normal /= np.linalg.norm(normal)
    half_t, reach = rng.uniform(2.5, 4.0), rng.uniform(30, 50)
    # only points within hypot(half_t + 0.75, reach) of the centre can be inside the plate: look at that x range only
    near = pts.x_between(centre[0] - 52.0, centre[0] + 52.0)
    xyz, vol = pts.xyz[near], pts.vol
    d = xyz - centre
    h = d @ normal
    radial = np.linalg.norm(d - h[:, None] * normal, axis=1)
    amount = np.clip((half_t - np.abs(h)) / 1.5 + 0.5, 0, 1) * np.clip((reach - radial) / 10, 0, 1)
    keep = amount > 0.02
    dw = _fill_lung(sc, xyz[keep], amount[keep] * strength, keep_airways=False, i=pts.i[near][keep])
    return Lesion3D(xyz[keep], dw, np.zeros_like(dw), vol, amount[keep] > 0.4)


def effusion(sc: Scene, rng: np.random.Generator, side: str, level_mm: float) -> Lesion3D:
    """Free pleural fluid of an erect patient: it fills the dependent hemithorax up to `level_mm` above the lowest
    point of the lung (the posterior costophrenic recess) and climbs the chest wall in a thin layer above that, so
    rays tangent to the lateral wall cross more fluid: the meniscus comes from the geometry."""
    pts = sc.points(side, 2, False)
    xyz, vol, wall = pts.xyz, pts.vol, pts.wall
    z0 = pts.z_min + level_mm
    rise = rng.uniform(25, 45) * np.clip(1 - wall / rng.uniform(8, 12), 0, 1)
    amount = np.clip((z0 + rise - xyz[:, 2]) / 4.0, 0, 1)
    keep = amount > 0.02
    dw = _fill_lung(sc, xyz[keep], amount[keep], keep_airways=False, i=pts.i[keep])
    return Lesion3D(xyz[keep], dw, np.zeros_like(dw), vol, amount[keep] > 0.5)


def pneumothorax(sc: Scene, side: str, rim_mm: float, apical_only: bool) -> Lesion3D:
    """Air between the chest wall and the retracted lung: lung within `rim_mm` of the wall (widest at the apex, where
    air rises in an erect patient) loses all its density, vessels included; the visceral pleura at the new lung
    surface is a 1.5 mm denser shell (the pleural line)."""
    pts = sc.points(side, 1, True)
    near = pts.wall_below(rim_mm + 1.5)  # the rim is at most `rim_mm`: deeper points are neither air nor line
    xyz, vol, wall, i = pts.xyz[near], pts.vol, pts.wall[near], pts.i[near]
    z = xyz[:, 2]
    zt, zb = pts.z_max, pts.z_min
    rim = rim_mm * (0.45 + 0.55 * np.clip((z - zb) / (zt - zb), 0, 1) ** 1.5)
    if apical_only:
        rim = np.where(z > zt - 70, rim, 0.0)
    air = wall < rim
    line = (wall >= rim) & (wall < rim + 1.5) & (rim > 0)
    rho = sc.rho[i[:, 0], i[:, 1], i[:, 2]]
    dw = np.where(air, -rho, np.where(line, 0.6, 0.0))
    keep = air | line
    return Lesion3D(xyz[keep], dw[keep], np.zeros(int(keep.sum())), vol, air[keep])


def edema(sc: Scene, rng: np.random.Generator, hila: dict[str, np.ndarray], amount: float) -> Lesion3D:
    """Perihilar airspace haze fading to the periphery, plus interstitial (Kerley B) septal lines at the lateral bases."""
    parts = []
    for side in ("right", "left"):
        pts = sc.points(side, 2, False)
        xyz, vol, wall = pts.xyz, pts.vol, pts.wall
        d = np.linalg.norm((xyz - hila[side]) / np.array([1.0, 1.3, 0.8]), axis=1)
        haze = amount * np.exp(-((d / 75.0) ** 2)) * (0.75 + 0.25 * _smooth_noise(rng, xyz, 20.0))
        dw = _fill_lung(sc, xyz, np.clip(haze, 0, 1), keep_airways=True, i=pts.i)
        parts.append((xyz, dw, vol, haze > 0.28))
        z = xyz[:, 2]
        base = z.min() + np.percentile(z - z.min(), 8)
        reach = np.abs(xyz[:, 0] - np.median(xyz[:, 0]))
        lateral = reach > 0.55 * reach.max()
        for zl in base + rng.uniform(5, 45, int(4 + 6 * amount)):
            sept = (np.abs(z - zl) < 1.2) & (wall < 18) & lateral
            parts.append((xyz[sept], np.full(int(sept.sum()), 0.5 * amount), vol, np.ones(int(sept.sum()), bool)))
    xyz = np.concatenate([p[0] for p in parts])
    dw = np.concatenate([p[1] for p in parts])
    sign = np.concatenate([p[3] for p in parts])
    return Lesion3D(xyz, dw, np.zeros_like(dw), parts[0][2], sign)


def rib_fracture(sc: Scene, rng: np.random.Generator, side: str, rib: int, s: float, healing: bool) -> Lesion3D:
    """A break of the labelled rib `rib` at fraction `s` of its lateral reach (posterolateral arc): a 2-3 mm cortical
    gap across the rib and, when healing, a fusiform callus of new bone around it."""
    ct = sc.ct
    lab = ct.structures[f"rib_{side}_{rib}"]
    xyz = sc.xyz(sc.label_idx(lab))
    mid_x = sc.lungs_mid_x()
    lateral = np.abs(xyz[:, 0] - mid_x)
    posterior = xyz[:, 1] < np.median(xyz[:, 1]) + 10
    target = s * lateral.max()
    cand = np.nonzero(posterior)[0] if posterior.any() else np.arange(len(xyz))
    p = xyz[cand[np.argmin(np.abs(lateral[cand] - target) + 0.01 * rng.random(len(cand)))]]
    near = xyz[np.linalg.norm(xyz - p, axis=1) < 15]
    axis = np.linalg.svd(near - near.mean(axis=0), full_matrices=False)[2][0]
    pts = _box_points(sc, p - 14, p + 14, 0.8)
    i = sc.index(pts)
    bone = ct.labels[i[:, 0], i[:, 1], i[:, 2]] == lab
    along = (pts - p) @ axis
    across = np.linalg.norm((pts - p) - along[:, None] * axis, axis=1)
    gap = bone & (np.abs(along) < rng.uniform(1.0, 1.6))
    hu = ct.hu[i[:, 0], i[:, 1], i[:, 2]].astype(np.float32)
    db = np.where(gap, -np.maximum(hu - 100, 0) / 1000, 0.0)
    dw = np.where(gap, -(np.clip(1 + np.minimum(hu, 100) / 1000, 0, None) - 1.0), 0.0)
    sign = gap.copy()
    if healing:
        half_len, rad = rng.uniform(7, 10), rng.uniform(5.5, 7.5)
        shell = np.clip(1 - np.hypot(along / half_len, across / rad), 0, 1)
        callus = shell > 0
        db = db + np.where(callus, 0.45 * np.sqrt(shell), 0.0)
        sign |= shell > 0.1
    keep = (db != 0) | (dw != 0) | sign
    return Lesion3D(pts[keep], dw[keep], db[keep], 0.8**3, sign[keep], {"point": p})


def pleural_thickening(sc: Scene, side: str, z_lo: float, z_hi: float, apical: bool, rng: np.random.Generator) -> Lesion3D:
    """Smooth soft tissue 3-6 mm thick lining the lateral chest wall between heights z_lo..z_hi (or an apical cap)."""
    pts = sc.points(side, 1, True)
    thick = rng.uniform(3.5, 6.0)
    near = pts.wall_below(thick + 0.75)  # deeper points get no thickening
    xyz, vol, wall = pts.xyz[near], pts.vol, pts.wall[near]
    z = xyz[:, 2]
    mid = pts.x_median
    sign = -1.0 if side == "right" else 1.0
    out = (xyz[:, 0] - mid) * sign  # > 0 toward the lateral chest wall
    out_max = max((pts.x_min - mid) * sign, (pts.x_max - mid) * sign)  # over the whole lung
    lateral = out > 0.45 * out_max if not apical else z > pts.z_max - 25
    band = (z >= z_lo) & (z <= z_hi) if not apical else np.ones(len(z), bool)
    amount = np.clip((thick - wall) / 1.5, 0, 1) * lateral * band
    keep = amount > 0.02
    dw = _fill_lung(sc, xyz[keep], amount[keep], keep_airways=False, i=pts.i[near][keep])
    return Lesion3D(xyz[keep], dw, np.zeros_like(dw), vol, amount[keep] > 0.5)


HEART_SCALES = np.linspace(1.0, 1.7, 29)  # dilation steps precomputed once (`Scene.heart_growth`)
HEART_SHAPE = np.array([1.0, 0.5, 0.4])  # a dilated heart grows mostly sideways: scale = 1 + (s - 1) * HEART_SHAPE


def heart_scale(s: float) -> np.ndarray:
    return 1 + (s - 1) * HEART_SHAPE


def _heart_growth(sc: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Lung points around the heart and the smallest dilation (of HEART_SCALES) at which each becomes heart."""
    idx = np.argwhere(sc.heart)
    c = sc.xyz(idx).mean(axis=0)
    lo, hi = sc.xyz(idx.min(axis=0)), sc.xyz(idx.max(axis=0))
    big = heart_scale(HEART_SCALES[-1])
    pts = _box_points(sc, c + (lo - c) * big - 3, c + (hi - c) * big + 3, 1.4)
    pts = pts[np.isin(sc.label_at(pts), sc.lobe_ids("right") + sc.lobe_ids("left"))]
    first = np.full(len(pts), np.inf)
    heart_id = sc.ct.structures["heart"]
    for s in HEART_SCALES[::-1]:  # largest first: a smaller dilation overwrites
        pre = c + (pts - c) / heart_scale(s)
        inside = (sc.label_at(pre) == heart_id) & (pre[:, 2] >= lo[2])
        first[inside] = s
    keep = np.isfinite(first)
    return pts[keep], first[keep]


def dilated_heart(sc: Scene, s: float) -> Lesion3D:
    """The heart dilated by `s` sideways (less front-to-back and upward, `HEART_SHAPE`) about its centroid: lung it
    now occupies becomes heart."""
    if sc._heart_growth is None:
        sc._heart_growth = _heart_growth(sc)
    pts, first = sc._heart_growth
    keep = first <= s + 1e-9
    dw = _fill_lung(sc, pts[keep], np.ones(int(keep.sum())), keep_airways=False)
    return Lesion3D(pts[keep], dw, np.zeros_like(dw), 1.4**3, np.ones(int(keep.sum()), bool), heart=np.ones(int(keep.sum()), bool))


def widened_mediastinum(sc: Scene, scale: float, z_lo: float, z_hi: float) -> Lesion3D:
    """Upper mediastinum widened by `scale` about its own centre line (each row between the two lungs' medial
    edges): the lung it now occupies becomes soft tissue."""
    r_edge, l_edge, lung_idx = sc.mediastinal_rows()  # [Y, Z] most medial voxel of each lung; each lung's voxels
    X = sc.lung["right"].shape[0]
    parts = []
    for side in ("right", "left"):
        idx = lung_idx[side]
        z = (idx[:, 2] + 0.5) * sc.sp[2]
        idx = idx[(z >= z_lo) & (z <= z_hi)]
        re, le = r_edge[idx[:, 1], idx[:, 2]], l_edge[idx[:, 1], idx[:, 2]]
        mid, half = (re + le) / 2, (le - re) / 2
        ok = (re >= 0) & (le < X) & (half * sc.sp[0] < 35)  # rows where both lungs meet the mediastinum
        taper = np.sqrt(np.clip(np.sin(np.pi * (z[(z >= z_lo) & (z <= z_hi)] - z_lo) / (z_hi - z_lo)), 0, 1))
        grow = np.minimum((scale - 1) * np.maximum(half, 8 / sc.sp[0]), 18 / sc.sp[0]) * taper
        new = ok & (np.abs(idx[:, 0] - mid) < half + grow)
        parts.append(idx[new])
    idx = np.concatenate(parts)
    xyz = sc.xyz(idx)
    dw = _fill_lung(sc, xyz, np.ones(len(xyz)), keep_airways=False)
    return Lesion3D(xyz, dw, np.zeros_like(dw), float(np.prod(sc.sp)), np.ones(len(xyz), bool))


def tube(path: np.ndarray, density: float, radius: float = 0.0, step: float = 0.5, stripe: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points along a 3-D polyline (smoothed), each standing for `step` mm of a radiopaque line; `radius` > 0 adds a
    tube wall (a ring of points), `stripe` a denser radiopaque stripe on it."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    s = np.arange(0, t[-1], step)
    line = np.stack([np.interp(s, t, path[:, k]) for k in range(3)], axis=1)
    line = ndimage.gaussian_filter1d(line, 6, axis=0, mode="nearest")
    if radius <= 0:
        return line, np.full(len(line), density)
    ring = []
    for a in np.linspace(0, 2 * np.pi, 10, endpoint=False):
        ring.append(line + radius * np.array([np.cos(a), np.sin(a), 0.0]))
    pts = np.concatenate(ring + ([line + np.array([radius * 0.7, 0, 0])] if stripe else []))
    dens = np.concatenate([np.full(len(line) * 10, density / 10)] + ([np.full(len(line), stripe)] if stripe else []))
    return pts, dens
