"""DICOM decoding for `medr2.imaging.loader`: Part 10 bytes → uint8 [H, W] pixels, allow-listed metadata, warnings.

What it does, in order, with every check on the parsed header before a pixel is decoded: bound a Deflated
data set's inflation, parse with pydicom (never `force=True`), refuse non-image objects by SOP class name
(DICOMDIR, SR, …), refuse encodings with no decoder and oversized JPEG / JPEG 2000 codestreams, then decode
frame 1 only and go modality LUT → VOI LUT or window (the first of several) → MONOCHROME1 inversion → 8 bit,
as torchxrayvision's `read_xray_dcm` does; with no VOI, a robust percentile stretch.

Privacy: only image-description tags (modality, view, body part, pixel module, LUTs) are ever read;
pydicom converts values lazily, so patient name, IDs, dates, accession, institution and every PN element
stay undecoded bytes. Metadata values are allow-listed as well as keys; error messages never contain file
paths or tag values; nothing here logs image content or metadata. See docs/imaging.md.

Hands on: `decode_dicom(data, max_pixels, max_bytes)` → `(pixels, metadata, warnings)` to
`medr2.imaging.loader.load_image`, which imports this module lazily (PNG/JPEG-only callers never load pydicom);
every failure is the one `medr2.imaging.loader.ImageLoadError`. This module imports `medr2.imaging.loader` at the top,
never the other way round, so there is no import cycle.
"""
from __future__ import annotations

import io
import logging
import re
import warnings
import zlib

import numpy as np

from medr2.imaging.loader import ImageLoadError, check_size, robust_unit, to_gray_unit, to_uint8

logger = logging.getLogger(__name__)

__all__ = ["decode_dicom"]

_CHEST = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_ABDOMEN", "CHESTABDOMEN", "RIBS", "RIB"}
_FRONTAL = {"PA", "AP", "APS", "PAS"}
_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"}
_RADIOGRAPH = {"CR", "DX", "DR"}  # DR: not a DICOM modality code, but some vendors write it for DX
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"

# Values are allow-listed as well as keys: a free-text value in a CS tag (a name typed into Body Part
# Examined, say) can then never reach the metadata or a warning.
_MODALITIES = set("CR DX DR MG CT MR US NM PT XA RF RG OT SR DOC ECG RTIMAGE RTDOSE RTPLAN RTSTRUCT SM IO PX "
                  "ES XC GM OP OPT SEG KO PR".split())
_VIEWS = set("AP PA LL RL LLD RLD LAO RAO LPO RPO RLO LLO LAT LATERAL LLAT RLAT APS PAS".split())
_BODY_PARTS = set("ABDOMEN PELVIS HEAD SKULL BRAIN NECK CSPINE TSPINE LSPINE SPINE SHOULDER ARM ELBOW "
                  "FOREARM WRIST HAND FINGER HIP LEG KNEE ANKLE FOOT BREAST EXTREMITY HEART".split())
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


def decode_dicom(data: bytes, max_pixels: int, max_bytes: int) -> tuple[np.ndarray, dict, list[str]]:
    """Part 10 bytes → uint8 [H, W]. Every check runs on the parsed header before a pixel is decoded."""
    import pydicom  # deferred: PNG/JPEG-only callers never pay for it

    _guard_deflate(data, max_bytes)
    with warnings.catch_warnings(record=True) as caught:  # pydicom's notes stay out of the user's view
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))  # never force=True; nothing decoded yet (lazy values)
        except Exception as exc:
            logger.debug("pydicom could not parse a DICOM file: %s", type(exc).__name__)
            truncated = isinstance(exc, EOFError) or "end of file" in str(exc).lower()
            raise ImageLoadError("the DICOM file is truncated (it ends in the middle of its header)" if truncated
                                 else "the DICOM file is damaged: its header cannot be parsed") from exc
        try:
            pixels, meta, notes = _dicom_pixels(ds, max_pixels)
        except ImageLoadError:
            raise
        except Exception as exc:  # values are parsed lazily: a damaged element surfaces on first access
            logger.debug("a DICOM header value could not be read: %s", type(exc).__name__)
            raise ImageLoadError("the DICOM file is damaged: a header value cannot be read") from exc
    if caught:
        logger.debug("suppressed %d pydicom warning(s) while decoding", len(caught))
    return pixels, meta, notes


def _dicom_pixels(ds, max_pixels: int) -> tuple[np.ndarray, dict, list[str]]:
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if len(ds) == 0:  # a file meta header and nothing after it: cut off or written wrong
        raise ImageLoadError("the DICOM file is truncated or damaged: it has a header but no content")
    if not any(k in ds for k in _PIXEL_KEYWORDS) or "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError(_no_image_message(sop))
    rows, cols, frames = _int(ds, "Rows"), _int(ds, "Columns"), max(1, _int(ds, "NumberOfFrames", 1))
    check_size(rows, cols, max_pixels)
    ts = ds.file_meta.get("TransferSyntaxUID")
    _check_decoder(ts)
    _check_codestream(ds, ts, frames, max_pixels)
    meta, notes = _dicom_metadata(ds, ts, rows, cols, frames)
    try:
        # Frame 1 only: memory is one frame whatever the count. RLE uses pydicom's own decoder: the Rust
        # one (pylibjpeg-rle) is 8x faster but panics on some damaged files (found by the fuzz test).
        ds.pixel_array_options(index=0, decoding_plugin="pydicom" if ts == _RLE else "")
        arr = ds.pixel_array
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        logger.debug("pixel decoding failed: %s", type(exc).__name__)
        text = str(exc).lower()
        if "less than" in text or "expected length" in text or "too short" in text or "truncat" in text:
            raise ImageLoadError("the image data in this DICOM file is truncated "
                                 "(shorter than its header says)") from exc
        raise ImageLoadError(f"the image data in this DICOM file is damaged and cannot be decoded "
                             f"({meta['transfer_syntax']})") from exc
    return to_uint8(_dicom_unit(arr, ds, notes)), meta, notes


def _int(ds, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword).lower()
        raise ImageLoadError(f"the DICOM header has an invalid {words} value") from None


def _no_image_message(sop) -> str:
    name = str(getattr(sop, "name", "") or "")
    if not name or name == str(sop):
        return "this DICOM file holds no image (it is not an image object); open the image itself instead"
    kind = name.removesuffix(" Storage")
    if " Image" in kind:  # an image type whose pixels are missing
        return f"this DICOM file is an image header ({kind}) without pixel data; the image part is missing"
    if kind == "Media Storage Directory":
        return "this is a DICOMDIR (the index of a DICOM CD or export), not an image; choose one image file"
    if " SR" in f" {kind}":
        kind += " (structured report)"
    article = "an" if kind[0] in "AEIOU" or (kind[:2].isupper() and kind[0] in "FHLMNRSX") else "a"
    return f"this DICOM file is {article} {kind} and holds no image; open the image itself instead"


def _check_decoder(ts) -> None:
    from pydicom.pixels import get_decoder

    if ts is None:
        raise ImageLoadError("the DICOM header does not say how the image is encoded (no transfer syntax); "
                             "re-export it")
    if not ts.is_transfer_syntax:
        shown = str(ts) if ts.is_valid else "not a valid UID"  # never echo arbitrary bytes
        raise ImageLoadError(f"this DICOM file uses an unknown encoding (transfer syntax {shown}); "
                             "re-export it uncompressed or as JPEG Lossless / JPEG 2000")
    if not ts.is_encapsulated:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageLoadError(f"this DICOM file uses {ts.name} compression, which medr2 cannot decode; "
                             "re-export it uncompressed or as JPEG Lossless / JPEG 2000") from None
    if not decoder.is_available:
        raise ImageLoadError(f"decoding {ts.name} needs the pylibjpeg plugins: pip install pylibjpeg "
                             "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")


def _guard_deflate(data: bytes, max_bytes: int) -> None:
    """pydicom inflates a Deflated data set in one unbounded call: inflate it bounded first."""
    end, ts = _scan_file_meta(data)
    if ts != _DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[end:], max_length=max_bytes)
    except zlib.error as exc:
        raise ImageLoadError("the DICOM file is damaged: its deflate-compressed data cannot be unpacked") from exc
    if inflater.unconsumed_tail:
        raise ImageLoadError(f"the DICOM file unpacks to more than {max_bytes // 2**20} MB; "
                             "it will not be decoded")


def _scan_file_meta(data: bytes) -> tuple[int, str]:
    """(offset after the group-0002 file meta, transfer syntax UID) by walking explicit-VR LE elements."""
    pos, ts = 132, ""
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        elem, vr = int.from_bytes(data[pos + 2:pos + 4], "little"), data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR"):
            length, head = int.from_bytes(data[pos + 8:pos + 12], "little"), 12
        else:
            length, head = int.from_bytes(data[pos + 6:pos + 8], "little"), 8
        if elem == 0x0010:
            ts = data[pos + head:pos + head + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos += head + length
    return pos, ts


_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}


def _check_codestream(ds, ts, frames: int, max_pixels: int) -> None:
    """A JPEG / JPEG 2000 codestream carries its own size, which the decoder trusts over the header."""
    if ts is None or not ts.is_encapsulated or "PixelData" not in ds:
        return
    from pydicom.encaps import generate_frames

    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as exc:
        raise ImageLoadError("the compressed image data in this DICOM file is damaged or truncated") from exc
    size = _codestream_size(first)
    if size is not None and size[0] * size[1] > max_pixels:
        check_size(*size, max_pixels, what="the compressed image inside this DICOM file")


def _codestream_size(buf: bytes) -> tuple[int, int] | None:
    """(rows, cols) from a J2K SIZ or JPEG SOF segment, None when the stream has neither (e.g. RLE)."""
    i = buf.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC + SIZ, possibly after JP2 boxes
    if i >= 0 and len(buf) >= i + 24:
        x, y, x0, y0 = (int.from_bytes(buf[i + k:i + k + 4], "big") for k in (8, 12, 16, 20))
        return max(0, y - y0), max(0, x - x0)
    pos = 2 if buf[:2] == b"\xff\xd8" else len(buf)
    while pos + 9 <= len(buf) and buf[pos] == 0xFF:
        if buf[pos + 1] in _SOF:
            rows, cols = int.from_bytes(buf[pos + 5:pos + 7], "big"), int.from_bytes(buf[pos + 7:pos + 9], "big")
            return (rows, cols) if rows else None  # rows 0 = size in a later DNL marker: trust the header
        pos += 2 + int.from_bytes(buf[pos + 2:pos + 4], "big")
    return None


def _cs(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is not None and not isinstance(value, str):  # multi-valued: the first value
        value = value[0] if len(value) else ""
    return str(value or "").strip().upper()


def _dicom_metadata(ds, ts, rows: int, cols: int, frames: int) -> tuple[dict, list[str]]:
    modality, view, body = _cs(ds, "Modality"), _cs(ds, "ViewPosition"), _cs(ds, "BodyPartExamined")
    photometric = _cs(ds, "PhotometricInterpretation")
    meta: dict[str, str | int] = {"rows": rows, "columns": cols, "bits_stored": _int(ds, "BitsStored", 0),
                                  "number_of_frames": frames, "transfer_syntax": str(ts.name)}
    for key, value, allowed in (("modality", modality, _MODALITIES), ("view_position", view, _VIEWS),
                                ("photometric_interpretation", photometric, _PHOTOMETRIC),
                                ("body_part", body, _CHEST)):
        if value in allowed:
            meta[key] = value
    notes: list[str] = []
    if modality and modality not in _RADIOGRAPH:
        shown = f"modality is {modality}" if modality in _MODALITIES else "the modality"
        notes.append(f"{shown}, not a radiograph (CR/DX): medr2 reads chest radiographs only")
    if view in _LATERAL:
        notes.append("lateral view: medr2 is trained on frontal (PA/AP) chest radiographs; "
                     "findings may be unreliable")
    elif view and view not in _FRONTAL:
        shown = f"{view} view" if view in _VIEWS else "the view position"
        notes.append(f"{shown} is not a frontal (PA/AP) projection; findings may be unreliable")
    if body and body not in _CHEST:
        shown = body if body in _BODY_PARTS else "recorded in the file"
        notes.append(f"body part {shown} is not chest: medr2 reads chest radiographs only")
    if _cs(ds, "BurnedInAnnotation") == "YES":
        notes.append("burned-in annotation: the pixels contain text that may identify the patient")
    if frames > 1:
        notes.append(f"multi-frame file ({frames} frames): only the first frame is used")
    return meta, notes


def _dicom_unit(arr: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """Decoded stored values → display values in [0, 1] (0 = black) for one frame."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = _cs(ds, "PhotometricInterpretation")
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        return to_gray_unit(arr, float(np.iinfo(arr.dtype).max), notes)
    if arr.ndim == 3:  # RGB (pydicom already converted YBR to RGB)
        bits = _int(ds, "BitsStored", 8) or 8
        return to_gray_unit(arr, float(2**bits - 1), notes)
    padding = ds.get("PixelPaddingValue")
    valid = (arr != padding) if isinstance(padding, int) else None
    values = apply_modality_lut(arr, ds).astype(np.float32)
    unit = _apply_voi(values, ds)
    if unit is None:
        unit = robust_unit(values, valid if valid is not None and valid.any() else None)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def _apply_voi(values: np.ndarray, ds) -> np.ndarray | None:
    """First VOI LUT, else first window (LINEAR / LINEAR_EXACT / SIGMOID, PS3.3 C.11.2.1.2), else None."""
    from pydicom.pixels import apply_voi

    if ds.get("VOILUTSequence"):
        first, entries = int(ds.VOILUTSequence[0].LUTDescriptor[1]), int(ds.VOILUTSequence[0].LUTDescriptor[0])
        entries = entries or 65536  # PS3.3: 0 entries means 2^16
        probe = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0)
        lo, hi = float(probe.min()), float(probe.max())  # the LUT's real output range, not its declared bits
        if hi > lo:
            out = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float32)
            return (out - np.float32(lo)) / np.float32(hi - lo)
    try:
        center, width = _first_float(ds.WindowCenter), _first_float(ds.WindowWidth)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    function = _cs(ds, "VOILUTFunction") or "LINEAR"
    if function == "SIGMOID" and width > 0:
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - np.float32(center)) / np.float32(width) + 0.5, 0.0, 1.0)
    if width >= 1:
        return np.clip((values - np.float32(center - 0.5)) / np.float32(max(width - 1, 1)) + 0.5, 0.0, 1.0)
    return None


def _first_float(value) -> float:
    """DS tags may be multi-valued (several windows): the first one is the default view."""
    return float(value if isinstance(value, (int, float, str)) else value[0])
