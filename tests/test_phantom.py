"""Phantom generator: determinism, anatomy conventions, masks on the right side, report/label consistency."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medr2.labeler.findings import OBSERVATIONS, label_report, split_sentences
from medr2.phantom.generator import (
    DEVICE_KINDS,
    OBSERVATION_OF,
    PhantomConfig,
    cli_phantom,
    generate_studies,
    generate_study,
    pneumonia_code,
    study_seeds,
)
from medr2.phantom.reports import parse_location

ROOT = Path(__file__).resolve().parents[1]
# word that names each kind in its report sentence
KIND_WORD = {"effusion": "effusion", "pneumothorax": "pneumothorax", "consolidation": "consolidation", "opacity": "opacity",
             "atelectasis": "atelectasis", "nodule": "nodule", "mass": "mass", "fracture": "rib", "edema": "edema",
             "pleural_thickening": "pleural thickening", "central_line": "central", "pacemaker": "pacemaker"}


@pytest.fixture(scope="module")
def studies():
    return list(generate_studies(300, seed=5))


def test_deterministic_by_seed():
    a, b = generate_study(123), generate_study(123)
    assert np.array_equal(a.image, b.image)
    assert a.report == b.report and a.labels == b.labels
    assert [f.kind for f in a.findings] == [f.kind for f in b.findings]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.findings, b.findings))
    assert not np.array_equal(a.image, generate_study(124).image)
    assert study_seeds(3, 2) == [s.seed for s in generate_studies(3, 2)]


def test_image_shape_dtype_and_sizes():
    for size in (64, 256, 512):
        st = generate_study(9, PhantomConfig(size=size))
        assert st.image.shape == (size, size) and st.image.dtype == np.uint8
        assert all(f.mask.shape == (size, size) and f.mask.dtype == bool for f in st.findings)
        assert st.anatomy.lung_right.shape == (size, size)


@pytest.mark.parametrize("bad", [{"size": 32}, {"size": 2048}, {"subtle_fraction": 1.5}, {"prevalence": {"tumour": 0.1}}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "prevalence" not in bad else "unknown finding"):
        PhantomConfig(**bad)


def test_radiological_orientation_and_anatomy(studies):
    """Patient right = image left; right hemidiaphragm higher; lungs dark, heart bright; CTR drawn as stated."""
    for st in studies:
        a = st.anatomy
        half = st.image.shape[1] / 2
        assert np.nonzero(a.lung_right)[1].mean() < half < np.nonzero(a.lung_left)[1].mean()
        assert a.dome_y["right"] <= a.dome_y["left"] + 1e-6
        x0, y0, x1, y1 = a.heart_box
        assert abs((x1 - x0) / a.thoracic_width_px - a.ctr) < 0.03, (st.study_id, (x1 - x0) / a.thoracic_width_px, a.ctr)
        lungs = a.lung_right | a.lung_left
        heart = np.zeros_like(lungs)
        heart[y0:y1, x0:x1] = True
        assert st.image[lungs].mean() + 30 < st.image[heart & ~lungs].mean()


def test_masks_inside_image_and_on_the_stated_side(studies):
    n_checked = 0
    for st in studies:
        mid = st.anatomy.midline_x
        for f in st.findings:
            assert f.mask.any(), (st.study_id, f.kind)
            xs = np.nonzero(f.mask)[1]
            if f.side == "right" and f.kind not in DEVICE_KINDS:
                assert xs.mean() < mid, (st.study_id, f.kind, xs.mean(), mid)
                n_checked += 1
            elif f.side == "left" and f.kind not in DEVICE_KINDS:
                assert xs.mean() > mid, (st.study_id, f.kind, xs.mean(), mid)
                n_checked += 1
            elif f.side == "bilateral":
                assert xs.min() < mid < xs.max()
            if f.kind == "pacemaker":  # the generator box sits on the stated side
                assert (xs.mean() < mid) == (f.side == "right")
    assert n_checked > 100


def test_zone_matches_mask_position(studies):
    for st in studies:
        for f in st.findings:
            if f.zone and f.side in ("right", "left") and f.kind in ("nodule", "mass", "consolidation", "opacity", "fracture"):
                y = np.nonzero(f.mask)[0].mean()
                zone = st.anatomy.zone_of(f.side, y)
                order = ["upper", "mid", "lower"]
                assert abs(order.index(zone) - order.index(f.zone)) <= 1, (st.study_id, f.kind, f.zone, zone)


@pytest.mark.slow
def test_labels_match_the_labeler_on_500_studies():
    studies = list(generate_studies(500, seed=77))
    agree = sum(label_report(s.report) == s.labels for s in studies)
    assert agree >= 495, f"labeler agreed on {agree}/500 generated reports"
    assert all(set(s.labels) == set(OBSERVATIONS) for s in studies)


def test_side_and_zone_are_named_in_the_finding_sentence(studies):
    checked = 0
    for st in studies:
        sentences = [st.findings_text[a:b] for a, b in split_sentences(st.findings_text)]
        for f in st.findings:
            if f.kind not in KIND_WORD or f.details.get("paired") or f.side is None:
                continue
            hits = [s for s in sentences if KIND_WORD[f.kind] in s.lower()]
            assert hits, (st.study_id, f.kind, st.findings_text)
            located = [parse_location(s) for s in hits]
            zones = f.details.get("zones") or [f.zone]  # a multifocal pneumonia's consolidation names every zone
            assert any(side == f.side and (f.zone is None or zone in zones) for side, zone in located), (f, hits)
            if len(zones) > 1:
                assert any(all(z in h for z in zones) for h in hits), (f, hits)
            checked += 1
    assert checked > 150


@pytest.mark.slow
def test_multifocal_pneumonia_names_every_zone_with_a_focus():
    """v4: the report and trace of a multifocal pneumonia name each zone drawn, so its location is readable."""
    from medr2.evaluation.evaluate import stated_location
    from medr2.report.traces import medr2_target

    checked = 0
    for st in generate_studies(300, seed=5):
        for f in st.findings:
            zones = f.details.get("zones")
            if f.kind != "pneumonia" or not zones:
                continue
            assert len(zones) > 1 and f.zone in zones and zones == sorted(zones, key=["upper", "mid", "lower"].index)
            rows = np.nonzero(f.mask)[0]
            drawn = {st.anatomy.zone_of(f.side, float(y)) for y in rows}
            assert len(drawn) > 1, (st.study_id, zones, drawn)  # the mask really spans several zones
            # a paired consolidation sentence carries the location; else the pneumonia sentence, when it names one
            sides, named = stated_location(st.report, "Consolidation" if f.details.get("paired") else "Pneumonia")
            assert (sides == {f.side} and named == set(zones)) or not (f.details.get("paired") or sides), st.report
            assert f"{f.side} lung, {', '.join(zones[:-1])} and {zones[-1]} zones:" in medr2_target(st)
            checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_overt_fracture_heals_with_callus_inside_its_mask(monkeypatch):
    """v4: an overt rib fracture carries callus (a density inside its mask), reported as healing; a subtle
    one is a bare step-off. The callus draws no random numbers, so removing it changes nothing else."""
    import medr2.phantom.specs as P  # make_spec reads the callus density there

    seeds = [s.seed for s in generate_studies(400, seed=9)
             if any(f.kind == "fracture" and not f.subtle for f in s.findings)][:3]
    assert seeds
    for seed in seeds:
        healed = generate_study(seed)
        with monkeypatch.context() as m:
            m.setattr(P, "FRACTURE_CALLUS", 0.0)
            bare = generate_study(seed)
        fx = next(f for f in healed.findings if f.kind == "fracture")
        assert fx.details.get("healing") and re.search(r"healing|callus", healed.report, re.I)
        assert not next(f for f in bare.findings if f.kind == "fracture").details.get("healing")
        brighter = healed.image.astype(float) - bare.image.astype(float)
        assert brighter[fx.mask].mean() > 4 and brighter.max() >= 10  # visibly denser where the callus is
        assert (np.abs(brighter) > 1)[~fx.mask].mean() < 0.002  # ... and nowhere else
        assert [f.kind for f in healed.findings] == [f.kind for f in bare.findings]


def test_uncertain_findings_are_hedged_and_pertinent_negatives_stated(studies):
    hedged = [(s, f) for s in studies for f in s.findings if f.code == -1]
    assert hedged, "no uncertain finding in 300 studies"
    for st, f in hedged:
        assert st.labels[f.observation] in (-1, 1)
        assert re.search(r"possible|questionable|may represent|concerning|suspected", st.report, re.I)
    normal = [s for s in studies if not s.findings]
    assert all(s.labels["No Finding"] == 1 for s in normal)
    assert sum(s.labels["Pneumothorax"] == 0 for s in normal) > 0.7 * len(normal)


def test_prevalence_normal_and_subtle_fractions(studies):
    normal = sum(not s.findings for s in studies) / len(studies)
    assert 0.2 < normal < 0.36, normal
    findings = [f for s in studies for f in s.findings if f.kind not in DEVICE_KINDS]
    subtle = sum(f.subtle for f in findings) / len(findings)
    assert 0.08 < subtle < 0.25, subtle


@pytest.mark.parametrize("kind", sorted(OBSERVATION_OF))
def test_every_kind_is_drawable(kind):
    config = PhantomConfig(normal_fraction=0.0, prevalence={kind: 1.0}, subtle_fraction=0.0)
    st = generate_study(3, config)
    rec = [f for f in st.findings if f.kind == kind]
    assert rec and rec[0].mask.sum() > 10, kind
    # nothing subtle: every finding is stated, not hedged (a pneumonia is stated when it involves all 3 zones)
    expected = 1 if kind != "pneumonia" else pneumonia_code(rec[0].details["zones"])
    assert rec[0].code == st.labels[OBSERVATION_OF[kind]] == expected, (rec[0].code, st.labels[OBSERVATION_OF[kind]])
    assert label_report(st.report) == st.labels


def test_lesions_are_visible_and_sized():
    """A non-subtle nodule is >= 8 px at 256 and brighter than the lung around it."""
    config = PhantomConfig(normal_fraction=0.0, prevalence={"nodule": 1.0}, subtle_fraction=0.0, distractors=False)
    from scipy import ndimage

    for st in generate_studies(20, 8, config):
        f = next(f for f in st.findings if f.kind == "nodule")
        assert f.size_mm >= 8 * 380 / 256 - 1e-6
        ring = ndimage.binary_dilation(f.mask, iterations=4) & ~ndimage.binary_dilation(f.mask, iterations=1)
        ring &= st.anatomy.lung(f.side)
        assert st.image[f.mask].mean() > st.image[ring].mean() + 12, st.study_id


def test_effusion_whitens_the_base():
    config = PhantomConfig(normal_fraction=0.0, prevalence={"effusion": 1.0}, subtle_fraction=0.0)
    for st in generate_studies(10, 4, config):
        f = next(f for f in st.findings if f.kind == "effusion")
        if f.side in ("right", "left"):
            other = st.anatomy.lung("left" if f.side == "right" else "right")
            assert st.image[f.mask].mean() > st.image[other].mean() + 15, st.study_id


def test_cli_writes_a_dataset(tmp_path, capsys):
    from medr2.data.datasets import read_ground_truth, read_r2gen

    assert cli_phantom(["--n", "5", "--out", str(tmp_path), "--seed", "1", "--size", "128"]) == 0
    recs = read_r2gen(tmp_path)
    assert [r["id"] for r in recs] == [f"phantom-{s}" for s in study_seeds(5, 1)][: len(recs)]
    gt = read_ground_truth(tmp_path)
    st = generate_study(study_seeds(5, 1)[0], PhantomConfig(size=128))
    assert gt[st.study_id]["report"] == st.report and gt[st.study_id]["labels"] == st.labels


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert cli_phantom(["--n", "2", "--out", str(tmp_path), "--size", "5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medr2 phantom:") and "5000" in err and "\n" not in err


def test_bundled_examples_are_reproducible():
    files = sorted((ROOT / "assets" / "examples").glob("phantom_*.json"))
    assert len(files) >= 4, "run: python -m medr2.phantom.sheet"
    kinds = set()
    for path in files:
        gt = json.loads(path.read_text())
        st = generate_study(gt["seed"])
        assert gt["labels"] == st.labels and gt["report"] == st.report, f"{path.name} is stale: run python -m medr2.phantom.sheet"
        from PIL import Image

        film = np.asarray(Image.open(path.with_suffix(".png")))
        assert np.array_equal(film, st.image), f"{path.name}: the film is stale: run python -m medr2.phantom.sheet"
        kinds |= {f["kind"] for f in gt["findings"]} or {"normal"}
    assert len(kinds) >= 4


def _margin_and_shape(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per study of `kind`: mean image gradient on the lesion's margin, and its width / height."""
    from scipy import ndimage

    config = PhantomConfig(normal_fraction=0.0, prevalence={kind: 1.0}, subtle_fraction=0.0, max_findings=1,
                           distractors=False)
    gradients, aspects = [], []
    for st in generate_studies(12, 8, config):
        f = next(f for f in st.findings if f.kind == kind)
        grad = np.hypot(*np.gradient(ndimage.gaussian_filter(st.image.astype(float), 0.7)))
        margin = ndimage.binary_dilation(f.mask) & ~ndimage.binary_erosion(f.mask) & st.anatomy.lung(f.side)
        ys, xs = np.nonzero(f.mask)
        gradients.append(grad[margin].mean())
        aspects.append((np.ptp(xs) + 1) / (np.ptp(ys) + 1))
    return np.array(gradients), np.array(aspects)


def test_consolidation_and_mass_differ_by_the_signs_a_reader_uses():
    """Generator v6: consolidation is segmental (wider than tall) with an ill-defined margin; a mass is round and
    sharply marginated. v5 drew both as round blobs, which no reader could tell apart."""
    cons_margin, cons_aspect = _margin_and_shape("consolidation")
    mass_margin, mass_aspect = _margin_and_shape("mass")
    assert np.median(cons_margin) < 0.5 * np.median(mass_margin), (cons_margin, mass_margin)
    assert np.median(cons_aspect) > 1.25 and 0.8 < np.median(mass_aspect) < 1.2, (cons_aspect, mass_aspect)


@pytest.mark.slow
def test_pneumonia_certainty_is_readable_from_the_extent_of_its_foci():
    """v7: a pneumonia is stated when its patches involve all three zones of the lung and hedged when two, so
    its label can be read from the film (v6 hedged 70 % at random); the report's label follows the rule."""

    assert pneumonia_code(["upper", "mid", "lower"]) == 1 and pneumonia_code(["mid", "lower"]) == -1
    seen = {1: 0, -1: 0}
    for st in generate_studies(400, seed=5):
        for f in st.findings:
            if f.kind != "pneumonia":
                continue
            foci = f.details["zones"]  # the zones its patches were placed in, which the report names
            expected = 1 if len(foci) == 3 else -1
            assert f.code == expected and st.labels["Pneumonia"] == expected, (st.study_id, foci, st.report)
            said = [st.report[a:b].lower() for a, b in split_sentences(st.report) if "pneumonia" in st.report[a:b].lower()]
            hedges = ("possible", "concerning", "suspected", "questionable")
            assert said and all(any(w in x for w in hedges) == (expected == -1) for x in said), said
            seen[f.code] += 1
    assert min(seen.values()) >= 3, seen  # both wordings occur


def test_certainty_follows_visibility_and_films_match_random_hedging(studies):
    """v8: a subtle finding is reported hedged and an overt one stated (v7 hedged at random, which no reader could
    see); `hedging="random"` keeps v7's labels, and both policies draw the same film for a seed."""
    def graded(st):  # a pneumonia's certainty follows its extent (v7), and its paired consolidation is stated
        paired = any(f.details.get("paired") == "consolidation" for f in st.findings)
        return [f for f in st.findings
                if f.kind not in DEVICE_KINDS + ("pneumonia",) and not (paired and f.kind == "consolidation")]

    findings = [f for st in studies for f in graded(st)]
    assert sum(f.subtle for f in findings) >= 20 and sum(not f.subtle for f in findings) >= 100
    for f in findings:
        assert f.code == (-1 if f.subtle else 1), (f.kind, f.subtle, f.code)
    random_policy = PhantomConfig(hedging="random")
    overt_hedged = 0
    for st in studies[:120]:
        old = generate_study(st.seed, random_policy)
        assert np.array_equal(old.image, st.image)
        assert [f.kind for f in old.findings] == [f.kind for f in st.findings]
        overt_hedged += sum(f.code == -1 and not f.subtle and f.kind != "pneumonia" for f in old.findings)
    assert overt_hedged >= 1  # v7's random hedging of overt findings is still what "random" draws
    with pytest.raises(ValueError, match="hedging"):
        PhantomConfig(hedging="sometimes")


def _opacity_clash(study) -> bool:
    """Does the study's opacity share a lung with a pneumonia, or a zone of its lung with another lung finding?
    (The generator's own rule, applied to the findings it recorded after drawing.)"""
    from medr2.phantom.generator import opacity_merges

    return any(opacity_merges(op, study.findings, op.side) for op in study.findings if op.kind == "opacity")


@pytest.mark.slow
def test_opacity_kept_clear_of_other_lung_findings(studies):
    """v9: an airspace opacity never falls in a lung a pneumonia involves or in the zone of another lung finding of
    its lung (a reader would see one abnormality there); `opacity_placement="free"` draws v8's films, which differ
    only where such a pair was drawn."""
    assert sum(any(f.kind == "opacity" for f in st.findings) for st in studies) >= 25
    assert not any(_opacity_clash(st) for st in studies)
    free = PhantomConfig(opacity_placement="free")
    clashed = 0
    for st in studies:
        old = generate_study(st.seed, free)
        if _opacity_clash(old):
            clashed += 1
            old_op = next(f for f in old.findings if f.kind == "opacity")
            new_op = next((f for f in st.findings if f.kind == "opacity"), None)
            assert new_op is None or new_op.side != old_op.side  # moved to the other lung, or left out
            assert (new_op is None) == (st.labels.get("Lung Opacity") is None)  # the report follows the film
        else:
            assert np.array_equal(old.image, st.image) and old.report == st.report
    assert clashed >= 2, clashed
    with pytest.raises(ValueError, match="opacity_placement"):
        PhantomConfig(opacity_placement="anywhere")
