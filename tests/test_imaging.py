"""medr2.imaging.loader: every real test file either decodes or fails with a specific one-line message.

Real data only, read from registry packages at test time: pydicom's own test files and pydicom-data's
chest radiograph RG1 (MIT). Synthetic DICOMs are built in memory for the cases no real file covers
(PHI, bombs, windows). `python tests/test_imaging.py --write-assets` rebuilds assets/examples/rg1_chest.*.
"""
from __future__ import annotations

import io
import json
import logging
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    MPEG4HP41,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from medr2.imaging.loader import MAX_PIXELS, ImageLoadError, LoadedImage, cli_inspect, load_image

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "examples"


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: install pydicom and pydicom-data (pip install medr2[test])"
    return path


def make_dicom(pixels: np.ndarray, ts: str = ExplicitVRLittleEndian, sop: str = CTImageStorage,
               **tags) -> bytes:
    """A minimal Part 10 file around a 2-D uint16 array; `tags` are set on the data set as given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # [64, 64], columns 0 … 4032


# ---------------------------------------------------------------- pydicom's own files
DECODES = {  # name -> (shape, transfer syntax, a warning that must be there or None)
    "CT_small.dcm": ((128, 128), "Explicit VR Little Endian", "modality is CT"),
    "MR_small.dcm": ((64, 64), "Explicit VR Little Endian", "modality is MR"),
    "MR_small_implicit.dcm": ((64, 64), "Implicit VR Little Endian", None),
    "MR_small_bigendian.dcm": ((64, 64), "Explicit VR Big Endian", None),
    "MR_small_RLE.dcm": ((64, 64), "RLE Lossless", None),
    "MR_small_jp2klossless.dcm": ((64, 64), "JPEG 2000 Image Compression (Lossless Only)", None),
    "MR_small_jpeg_ls_lossless.dcm": ((64, 64), "JPEG-LS Lossless Image Compression", None),
    "JPEG-LL.dcm": ((1024, 256), "JPEG Lossless, Non-Hierarchical, First-Order Prediction", None),
    "JPGExtended.dcm": ((1024, 256), "JPEG Extended (Process 2 and 4)", None),
    "JPEGLSNearLossless_16.dcm": ((50, 10), "JPEG-LS Lossy (Near-Lossless)", None),
    "US1_J2KR.dcm": ((480, 640), "JPEG 2000 Image Compression (Lossless Only)", "colour image converted"),
    "image_dfl.dcm": ((512, 512), "Deflated Explicit VR Little Endian", None),
    "emri_small.dcm": ((64, 64), "Explicit VR Little Endian", "multi-frame file (10 frames)"),
    "emri_small_RLE.dcm": ((64, 64), "RLE Lossless", "body part HEAD is not chest"),
    "SC_rgb.dcm": ((100, 100), "Explicit VR Little Endian", "colour image converted to grayscale"),
    "SC_ybr_full_422_uncompressed.dcm": ((100, 100), "Explicit VR Little Endian", "colour image"),
    "SC_rgb_jpeg_dcmtk.dcm": ((100, 100), "JPEG Baseline (Process 1)", "colour image"),
    "OBXXXX1A.dcm": ((600, 800), "Explicit VR Little Endian", "colour image"),  # PALETTE COLOR
    "vlut_04.dcm": ((512, 512), "Explicit VR Little Endian", None),  # VOI LUT sequence
    "mlut_18.dcm": ((512, 512), "Explicit VR Little Endian", None),  # modality LUT sequence
    "RG3_J2KI.dcm": ((1760, 1760), "JPEG 2000 Image Compression", "body part EXTREMITY is not chest"),
}
ERRORS = {  # name -> the specific message part
    "MR_truncated.dcm": "truncated (shorter than its header says)",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "header but no content",
    "reportsi.dcm": "is a Basic Text SR (structured report) and holds no image",
    "test-SR.dcm": "is a Comprehensive SR (structured report) and holds no image",
    "rtplan.dcm": "is an RT Plan and holds no image",
    "waveform_ecg.dcm": "12-lead ECG Waveform and holds no image",
    "priv_SQ.dcm": "image header (MR Image) without pixel data",
    "no_meta_group_length.dcm": "image header (RT Image) without pixel data",
    "ExplVR_LitEndNoMeta.dcm": "without the standard file header ('DICM' marker)",
    "ExplVR_BigEndNoMeta.dcm": "without the standard file header ('DICM' marker)",
    "rtstruct.dcm": "without the standard file header ('DICM' marker)",
    "badVR.dcm": "invalid number of frames value",
    "SC_rgb_small_odd.dcm": "3×3 pixels: too small to read",
    "JPEG-lossy.dcm": "damaged and cannot be decoded (JPEG Extended",
    # the codestream's own SIZ header claims 3.7e9 columns: refused before openjpeg allocates anything
    "JPEG2000-embedded-sequence-delimiter.dcm": "above the 40-megapixel limit",
}


@pytest.mark.parametrize("name", sorted(DECODES))
def test_pydicom_file_decodes(name):
    shape, ts, warning = DECODES[name]
    img = load_image(data_file(name))
    assert img.source_format == "dicom" and img.pixels.dtype == np.uint8 and img.pixels.shape == shape
    assert img.original_size == shape and img.metadata["transfer_syntax"].startswith(ts)
    assert img.pixels.max() > img.pixels.min(), f"{name} decoded to a blank image"
    if warning:
        assert any(warning in w for w in img.warnings), img.warnings


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_pydicom_file_fails_with_specific_message(name):
    with pytest.raises(ImageLoadError, match=None) as info:
        load_image(data_file(name))
    message = str(info.value)
    assert ERRORS[name] in message and "\n" not in message and data_file(name) not in message


def test_dicomdir_is_named():
    with pytest.raises(ImageLoadError, match="DICOMDIR"):
        load_image(data_file("DICOMDIR"))


# ---------------------------------------------------------------- the real chest radiograph
@pytest.fixture(scope="module")
def rg1() -> dict[str, LoadedImage]:
    return {name: load_image(data_file(f"RG1_{name}.dcm")) for name in ("UNCR", "UNCI", "J2KR", "J2KI")}


def test_rg1_every_encoding_gives_the_same_picture(rg1):
    """UNCR = J2KR (lossless pair); UNCI = J2KI (the decompressed lossy pair); lossy vs lossless is close:
    measured max 3 grey levels, mean 0.43, so the tolerance is max ≤ 4, mean ≤ 1 of 255."""
    ref = rg1["UNCR"].pixels
    assert np.array_equal(rg1["J2KR"].pixels, ref)
    assert np.array_equal(rg1["J2KI"].pixels, rg1["UNCI"].pixels)
    diff = np.abs(rg1["J2KI"].pixels.astype(int) - ref)
    assert diff.max() <= 4 and diff.mean() <= 1.0, (diff.max(), diff.mean())


def test_rg1_is_monochrome1_inverted_chest(rg1):
    img = rg1["UNCR"]
    assert img.metadata == {"rows": 1955, "columns": 1841, "bits_stored": 15, "number_of_frames": 1,
                            "transfer_syntax": "Explicit VR Little Endian", "modality": "CR",
                            "view_position": "PA", "photometric_interpretation": "MONOCHROME1",
                            "body_part": "CHEST"}
    assert img.warnings == []
    h, w = img.pixels.shape
    lungs = img.pixels[h // 3:h // 2, w // 5:w // 3].mean()  # right lung field: air, dark
    spine = img.pixels[h // 3:h // 2, w // 2 - 40:w // 2 + 40].mean()  # mediastinum/spine: bright
    assert lungs + 40 < spine, (lungs, spine)


# ---------------------------------------------------------------- pixel pipeline on synthetic files
def test_monochrome1_is_the_inverse_of_monochrome2():
    m2 = load_image(make_dicom(RAMP)).pixels
    m1 = load_image(make_dicom(RAMP, PhotometricInterpretation="MONOCHROME1")).pixels
    assert np.array_equal(m1.astype(int), 255 - m2.astype(int))
    assert m2[0, 0] == 0 and m2[0, -1] == 255  # no window: percentile stretch over the ramp


def test_first_window_linear_formula():
    img = load_image(make_dicom(RAMP, WindowCenter=[2048, 100], WindowWidth=[1024, 50]))
    row = img.pixels[0].astype(int)
    values = RAMP[0].astype(float)
    expected = np.clip(((values - 2047.5) / 1023 + 0.5), 0, 1) * 255
    assert np.abs(row - expected).max() <= 1
    assert row[values <= 1536].max() == 0 and row[values >= 2560].min() == 255


def test_rescale_is_applied_before_the_window():
    img = load_image(make_dicom(RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000,
                                WindowWidth=2, VOILUTFunction="LINEAR_EXACT"))
    row, values = img.pixels[0], RAMP[0] * 2.0 - 1000
    assert (row[values < 999] == 0).all() and (row[values > 1001] == 255).all()


def test_voi_lut_sequence_wins_over_window():
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    # an inverting LUT: proves the LUT, not the window, ran
    lut.add_new("LUTData", "US", [4095 - v for v in range(4096)])
    img = load_image(make_dicom(RAMP, VOILUTSequence=[lut], WindowCenter=2048, WindowWidth=4096))
    assert img.pixels[0, 0] == 255 and img.pixels[0, -1] <= 4


def test_warnings_for_lateral_non_chest_non_radiograph_burned_in():
    img = load_image(make_dicom(RAMP, Modality="MR", ViewPosition="LL", BodyPartExamined="KNEE",
                                BurnedInAnnotation="YES"))
    text = " | ".join(img.warnings)
    for part in ("modality is MR", "lateral view", "body part KNEE is not chest", "burned-in annotation"):
        assert part in text, text
    assert "view_position" in img.metadata and "body_part" not in img.metadata  # body part: chest only


# ---------------------------------------------------------------- guards
def test_dicom_size_bomb_refused_before_decoding():
    data = make_dicom(RAMP)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows = ds.Columns = 60000  # 3.6 GP claimed; the file still holds 8 KB of pixels
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageLoadError, match=r"60000×60000 pixels, above the 40-megapixel limit"):
        load_image(buf.getvalue())


def test_j2k_codestream_bomb_refused():
    ds = pydicom.dcmread(data_file("MR_small_jp2klossless.dcm"))
    frame = bytearray(ds.PixelData)
    siz = frame.find(b"\xff\x4f\xff\x51")
    frame[siz + 8:siz + 16] = struct.pack(">II", 50000, 50000)  # Xsiz, Ysiz
    ds.PixelData = bytes(frame)
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageLoadError, match="compressed image inside this DICOM file is 50000×50000"):
        load_image(buf.getvalue())


def test_deflate_bomb_refused():
    data = make_dicom(np.zeros((1024, 1024), np.uint16), ts=DeflatedExplicitVRLittleEndian)
    assert len(data) < 10_000  # 2 MB of zeros deflates to a few KB
    with pytest.raises(ImageLoadError, match="unpacks to more than 1 MB"):
        load_image(data, max_bytes=2**20)
    assert load_image(data).pixels.shape == (1024, 1024)


def png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,message", [
    (100_000, 100_000, "absurd size, above the 40-megapixel limit"),  # PIL's own bomb check fires first
    (8000, 6000, "6000×8000 pixels, above the 40-megapixel limit"),
    (1, 1, "1×1 pixels: too small to read"),
])
def test_png_size_guard(width, height, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(png_with_size(width, height))


def test_jpeg_size_guard():
    data = bytearray(png_bytes(Image.new("L", (64, 48), 90), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    with pytest.raises(ImageLoadError, match="above the 40-megapixel limit"):
        load_image(bytes(data))
    with pytest.raises(ImageLoadError, match=r"4×3 pixels"):
        load_image(png_bytes(Image.new("L", (3, 4)), "JPEG"))


def test_dicom_empty_image():
    data = make_dicom(np.zeros((0, 0), np.uint16))
    with pytest.raises(ImageLoadError, match="0×0 pixels: empty"):
        load_image(data)


@pytest.mark.parametrize("ts,name", [(MPEG4HP41, "MPEG-4 AVC/H.264 High Profile"),
                                     ("1.2.3.4.5.6", "unknown encoding (transfer syntax 1.2.3.4.5.6)")])
def test_unsupported_compression_is_named(ts, name):
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(make_dicom(RAMP)))
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageLoadError, match=name.replace("(", r"\(").replace(")", r"\)")):
        load_image(buf.getvalue())


# ---------------------------------------------------------------- format detection by bytes
@pytest.mark.parametrize("data,message", [
    (b"", "empty (0 bytes)"),
    (b"II*\0" + bytes(100), "a TIFF image"),
    (b"%PDF-1.7\n" + bytes(100), "a PDF document"),
    (b"PK\x03\x04" + bytes(100), "a ZIP archive"),
    (b"hello world, not an image", "not a DICOM, PNG or JPEG image"),
])
def test_format_named(data, message):
    with pytest.raises(ImageLoadError, match=re.escape(message)):
        load_image(data)


def test_extension_is_ignored(tmp_path):
    dicom = tmp_path / "chest.png"  # a DICOM file named .png (PACS exports often have no extension)
    dicom.write_bytes(Path(data_file("MR_small.dcm")).read_bytes())
    assert load_image(dicom).source_format == "dicom"
    noext = tmp_path / "IM0001"
    noext.write_bytes(png_bytes(Image.new("L", (32, 32), 7)))
    assert load_image(noext).source_format == "png"


def test_path_bytes_and_file_object_agree():
    path = data_file("MR_small_RLE.dcm")
    raw = Path(path).read_bytes()
    a, b, c = load_image(path), load_image(raw), load_image(io.BytesIO(raw))
    assert a.sha256 == b.sha256 == c.sha256 and np.array_equal(a.pixels, c.pixels)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.dcm")
    with pytest.raises(ImageLoadError, match="a folder, not a file"):
        load_image(tmp_path)


# ---------------------------------------------------------------- PNG / JPEG
def test_png_jpeg_modes_to_grayscale():
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # [64, 64]
    assert np.array_equal(load_image(png_bytes(Image.fromarray(gray))).pixels, gray)
    rgb = np.stack([gray] * 3, axis=-1)
    img = load_image(png_bytes(Image.fromarray(rgb)))
    assert np.array_equal(img.pixels, gray) and img.warnings == []  # grey RGB: no colour warning
    colour = load_image(png_bytes(Image.new("RGB", (32, 32), (255, 0, 0))))
    assert colour.pixels[0, 0] == 76 and "colour image converted to grayscale" in colour.warnings
    pal = load_image(png_bytes(Image.fromarray(gray).convert("P")))
    assert np.abs(pal.pixels.astype(int) - gray).max() <= 1
    one = load_image(png_bytes(Image.fromarray(gray >= 128)))
    assert set(np.unique(one.pixels)) == {0, 255}
    jpeg = load_image(png_bytes(Image.fromarray(gray), "JPEG", quality=95))
    assert jpeg.source_format == "jpeg" and np.abs(jpeg.pixels.astype(int) - gray).mean() < 2
    cmyk = load_image(png_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG"))
    assert cmyk.pixels.shape == (64, 64)


def test_png_16bit_is_stretched():
    values = np.tile(np.arange(1000, 1000 + 64 * 40, 40, dtype=np.uint16), (64, 1))
    img = load_image(png_bytes(Image.fromarray(values)))
    assert img.metadata["bits_stored"] == 16
    assert img.pixels[0, 0] == 0 and img.pixels[0, -1] == 255
    assert (np.diff(img.pixels[0].astype(int)) >= 0).all()


def test_alpha_composited_on_black():
    rgba = Image.new("RGBA", (16, 16), (200, 200, 200, 128))
    img = load_image(png_bytes(rgba))
    assert img.pixels[0, 0] == round(200 * 128 / 255)
    assert "transparent areas were filled with black" in img.warnings
    la = Image.new("LA", (16, 16), (200, 255))
    la.putpixel((0, 0), (10, 255))
    la = load_image(png_bytes(la))
    assert la.pixels[1, 1] == 200 and la.pixels[0, 0] == 10 and la.warnings == []


def test_exif_orientation_applied():
    arr = np.zeros((40, 80), np.uint8)
    arr[:, :10] = 255  # bright band on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img = load_image(png_bytes(Image.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert img.pixels.shape == (80, 40)  # portrait after transpose
    assert img.pixels[:10].mean() > 200 and img.pixels[-10:].mean() < 50  # band now at the top


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_jpeg(fmt):
    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8)), fmt)
    with pytest.raises(ImageLoadError, match=f"the {fmt} file is damaged or truncated"):
        load_image(data[: len(data) // 2])


# ---------------------------------------------------------------- fuzz
SMALL_VALID = {
    "png": png_bytes(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1)))),
    "jpeg": png_bytes(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))), "JPEG"),
    **{name: Path(data_file(name)).read_bytes() for name in
       ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
        "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm")},
}
FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_loaded_or_refused(data: bytes) -> None:
    try:
        img = load_image(data)
    except ImageLoadError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 2 and min(img.pixels.shape) >= 8


@FUZZ
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", bytes(128) + b"DICM"]),
       body=st.binary(max_size=600))
def test_fuzz_random_bytes(prefix, body):
    assert_loaded_or_refused(prefix + body)


@FUZZ
@given(name=st.sampled_from(sorted(SMALL_VALID)), data=st.data())
def test_fuzz_flipped_and_truncated(name, data):
    raw = bytearray(SMALL_VALID[name])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(raw), len(raw) // 2, len(raw) - 1, 200, 140]))
    assert_loaded_or_refused(bytes(raw[:cut]))


# ---------------------------------------------------------------- privacy
PHI = {"PatientName": "Doe^Jane^Phiname", "PatientID": "PHIID12345", "PatientBirthDate": "19410203",
       "StudyDate": "20240506", "AccessionNumber": "ACCPHI999", "InstitutionName": "Phi General Hospital",
       "ReferringPhysicianName": "Who^Phidoctor", "OperatorsName": "Op^Phioperator",
       "StudyDescription": "Phistudy chest", "BodyPartExamined": "JANE DOE",  # free text in a CS tag
       "ViewPosition": "PHIVIEW"}


def test_phi_never_decoded_returned_or_logged(tmp_path, caplog, capsys, monkeypatch):
    seen: list[tuple[int, str]] = []
    real = pydicom.dataset.convert_raw_data_element

    def spy(raw, *args, **kwargs):  # every DICOM value the loader (or pydicom for it) decodes
        seen.append((int(raw.tag), str(raw.VR)))
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset, "convert_raw_data_element", spy)
    path = tmp_path / "Doe_Jane_PHIID12345.dcm"
    path.write_bytes(make_dicom(RAMP, sop=ComputedRadiographyImageStorage, **PHI))
    out_png = tmp_path / "out.png"
    with caplog.at_level(logging.DEBUG):
        img = load_image(path)
        assert cli_inspect([str(path), "--png", str(out_png)]) == 0
    phi_tags = {int(pydicom.datadict.tag_for_keyword(k)) for k in PHI} - {0x00185101, 0x00180015}
    assert not [t for t, vr in seen if t in phi_tags or vr in ("PN", "DA", "DT", "TM") or t >> 16 == 0x0010]
    printed = capsys.readouterr()
    texts = [repr(img), str(img), json.dumps(img.metadata), " ".join(img.warnings), caplog.text,
             printed.out, printed.err, json.dumps(Image.open(out_png).info, default=str)]
    for value in list(PHI.values()) + ["Doe_Jane"]:
        needle = value.split("^")[-1].lower()
        assert all(needle not in t.lower() for t in texts), f"{value!r} leaked"
    assert "body part recorded in the file is not chest" in " ".join(img.warnings)


def test_error_messages_carry_no_path(tmp_path):
    bad = tmp_path / "Doe_Jane_broken.dcm"
    bad.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"9" * 10)
    with pytest.raises(ImageLoadError) as info:
        load_image(bad)
    assert "Doe_Jane" not in str(info.value) and str(tmp_path) not in str(info.value)


# ---------------------------------------------------------------- CLI
def test_cli_inspect_json_and_png(tmp_path, capsys):
    out = tmp_path / "rg.png"
    assert cli_inspect([data_file("MR_small_RLE.dcm"), "--png", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source_format"] == "dicom" and report["metadata"]["transfer_syntax"] == "RLE Lossless"
    assert report["size"] == [64, 64] and report["warnings"][0].startswith("modality is MR")
    written = Image.open(out)
    assert written.mode == "L"
    assert np.array_equal(np.asarray(written), load_image(data_file("MR_small_RLE.dcm")).pixels)


def test_cli_inspect_bad_file_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not an image at all")
    assert cli_inspect([str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "not a DICOM, PNG or JPEG" in captured.err
    assert cli_inspect([str(tmp_path / "missing.dcm")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_max_pixels_is_the_documented_default():
    assert MAX_PIXELS == 40_000_000


# ---------------------------------------------------------------- shipped example assets
def rg1_example_dataset(long_side: int = 1024) -> Dataset:
    """RG1_UNCR downscaled (box filter on the raw 15-bit values) with only non-identifying tags."""
    src = pydicom.dcmread(data_file("RG1_UNCR.dcm"))
    raw = src.pixel_array.astype(np.float32)
    scale = long_side / max(raw.shape)
    size = (round(raw.shape[1] * scale), round(raw.shape[0] * scale))  # PIL: (width, height)
    small = np.asarray(Image.fromarray(raw).resize(size, Image.Resampling.BOX))
    pixels = np.clip(np.rint(small), 0, 2**15 - 1).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComputedRadiographyImageStorage
    uid_root = "1.2.826.0.1.3680043.8.498."  # pydicom's root; fixed UIDs keep the file reproducible
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid_root + "20240101.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid_root + "20240101.2", uid_root + "20240101.3"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, "")  # Type 2 in the CR IOD: present, deliberately empty
    ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "medr2: allow-listed tags only"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "pydicom-data RG1_UNCR.dcm (MIT), box-downscaled to a 1024-pixel long side"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = 1, 1, ["L", "F"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 14, 0
    ds.WindowCenter, ds.WindowWidth = src.WindowCenter, src.WindowWidth
    ds.PixelData = pixels.tobytes()
    return ds


def write_example_assets() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    rg1_example_dataset().save_as(ASSETS / "rg1_chest.dcm", enforce_file_format=True)
    load_image(ASSETS / "rg1_chest.dcm").to_pil().save(ASSETS / "rg1_chest.png", optimize=True)


def test_example_assets_are_the_documented_derivative():
    dcm, png = load_image(ASSETS / "rg1_chest.dcm"), load_image(ASSETS / "rg1_chest.png")
    assert dcm.metadata["photometric_interpretation"] == "MONOCHROME1" and dcm.metadata["modality"] == "CR"
    assert max(dcm.pixels.shape) == 1024 and dcm.warnings == [] and np.array_equal(dcm.pixels, png.pixels)
    rebuilt = rg1_example_dataset()
    assert np.array_equal(pydicom.dcmread(ASSETS / "rg1_chest.dcm").pixel_array, rebuilt.pixel_array)
    kept = {e.keyword for e in pydicom.dcmread(ASSETS / "rg1_chest.dcm")}
    assert kept == {e.keyword for e in rebuilt}  # nothing beyond the allow-listed, non-identifying tags


if __name__ == "__main__" and "--write-assets" in sys.argv:
    write_example_assets()
    print(f"wrote {ASSETS}/rg1_chest.dcm and rg1_chest.png")
