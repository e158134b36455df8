"""Image input: a DICOM, PNG or JPEG file → one model-ready 8-bit grayscale chest radiograph.

What it does: sniff the format from the bytes (never the extension), refuse anything unsafe or unreadable
with one `ImageLoadError` whose one-line message a radiologist understands, decode, and hand on a
`LoadedImage`: uint8 pixels (0 = black = air), the source size, an *allow-listed* metadata dict and
user-facing warnings. DICOM goes modality LUT → VOI LUT or window (the first of several) → MONOCHROME1
inversion → 8 bit, as torchxrayvision's `read_xray_dcm` does; with no VOI, a robust percentile stretch.

Privacy: only image-description tags (modality, view, body part, pixel module, LUTs) are ever read from
a DICOM file; pydicom converts values lazily, so patient name, IDs, dates, accession, institution and
every PN element stay undecoded bytes. Metadata values are allow-listed too; error messages never contain
file paths or tag values; nothing here logs image content or metadata. See docs/imaging.md.

Run: `medr2 inspect FILE [--png OUT.png]`.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# A 43 × 43 cm detector at 100 µm is ~4300 × 4300 = 18.5 MP; 40 MP leaves room for any real chest film
# while a decoded float32 working copy stays under ~160 MB.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 512 * 1024 * 1024  # far above any single radiograph; bounds what we hold in memory
MIN_SIDE = 8  # below this nothing is readable: catches empty, 1-pixel and header-damaged images
PERCENTILES = (0.5, 99.5)  # robust stretch when no window is given: ignores markers and dead pixels

_CHEST = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_ABDOMEN", "CHESTABDOMEN", "RIBS", "RIB"}
_FRONTAL = {"PA", "AP", "APS", "PAS"}
_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"}
_RADIOGRAPH = {"CR", "DX"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFLATED = "1.2.840.10008.1.2.1.99"
_RLE = "1.2.840.10008.1.2.5"
_EXPORT_HINT = "export the image as DICOM, PNG or JPEG"
_OTHER_FORMATS = [  # (signature test, name) for a specific "this is a …" message
    (lambda b: b[:4] in (b"II*\0", b"MM\0*"), "a TIFF image"),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "a GIF image"),
    (lambda b: b[:2] == b"BM", "a BMP image"),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "a WebP image"),
    (lambda b: b[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"), "a HEIC photo"),
    (lambda b: b[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or b[:4] == b"\xff\x4f\xff\x51", "a JPEG 2000 file"),
    (lambda b: b[:5] == b"%PDF-", "a PDF document"),
    (lambda b: b[:4] == b"PK\x03\x04", "a ZIP archive (unzip it and choose one image)"),
    (lambda b: b[:2] == b"\x1f\x8b", "a gzip archive (unpack it first)"),
    # No 'DICM' marker but starts with a group-0002/0008 tag: a raw DICOM data set (ACR-NEMA style).
    (lambda b: b[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"), None),
]


class ImageLoadError(ValueError):
    """Why an input can't be used, in one line a radiologist understands (no paths, no tag values)."""


@dataclass(eq=False)  # arrays don't compare with ==; compare .sha256 or .pixels
class LoadedImage:
    """A decoded radiograph, ready for the model and the viewer.

    pixels: uint8 [H, W], 0 = black (air), after windowing and MONOCHROME1 inversion.
    metadata: allow-listed keys and values only; warnings: user-facing, one sentence each.
    sha256: hash of the input bytes: the feedback store keys on it and never stores the image.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    source_format: str
    metadata: dict[str, str | int]
    warnings: list[str]
    sha256: str

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.pixels)  # uint8 [H, W] → mode "L"

    def __repr__(self) -> str:  # never dump pixels; nothing here is PHI by construction
        return (f"LoadedImage({self.source_format}, {self.pixels.shape[0]}x{self.pixels.shape[1]}, "
                f"metadata={self.metadata}, warnings={self.warnings}, sha256={self.sha256[:12]}…)")


def load_image(source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_FILE_BYTES) -> LoadedImage:
    """Load a DICOM / PNG / JPEG (path, bytes or binary file object) as an 8-bit grayscale radiograph.

    Raises ImageLoadError (a ValueError) with a one-line message for every unusable input.
    >>> load_image(b"hello")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ImageLoadError: this file is not a DICOM, PNG or JPEG image …
    """
    data = _read_bytes(source, max_bytes)
    fmt = sniff_format(data)
    if fmt == "dicom":
        pixels, meta, notes = _decode_dicom(data, max_pixels, max_bytes)
    else:
        pixels, meta, notes = _decode_pil(data, fmt, max_pixels)
    if pixels.min() == pixels.max():
        notes.append("the image is blank: every pixel has the same value")
    original = (int(meta["rows"]), int(meta["columns"]))
    logger.debug("loaded %s image %dx%d with %d warning(s)", fmt, *pixels.shape, len(notes))
    return LoadedImage(pixels, original, fmt, meta, notes, hashlib.sha256(data).hexdigest())


def sniff_format(data: bytes) -> str:
    """'dicom' | 'png' | 'jpeg' from the leading bytes, else ImageLoadError naming what the file is."""
    if not data:
        raise ImageLoadError("the file is empty (0 bytes)")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    for test, name in _OTHER_FORMATS:
        if test(data):
            if name is None:  # decision: never force-read DICOM without its Part 10 header (see docs)
                raise ImageLoadError("this looks like DICOM data without the standard file header "
                                     "('DICM' marker); re-export it from the PACS/viewer as a DICOM file")
            raise ImageLoadError(f"this file is {name}, not an image medr2 reads; {_EXPORT_HINT}")
    raise ImageLoadError(f"this file is not a DICOM, PNG or JPEG image (its first bytes match none); "
                         f"{_EXPORT_HINT}")


def _read_bytes(source: str | os.PathLike | bytes | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) > max_bytes:
                raise ImageLoadError(_too_big_file(max_bytes))
            with open(source, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except IsADirectoryError as exc:
            raise ImageLoadError("this is a folder, not a file; choose one image file inside it") from exc
        except FileNotFoundError as exc:
            raise ImageLoadError("file not found") from exc
        except PermissionError as exc:
            raise ImageLoadError("the file cannot be opened: permission denied") from exc
        except OSError as exc:  # device errors, names too long, …
            raise ImageLoadError(f"the file cannot be read ({type(exc).__name__})") from exc
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"load_image needs a binary file object, got one returning {type(data).__name__}")
        data = bytes(data)
    else:
        raise TypeError(f"load_image takes a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageLoadError(_too_big_file(max_bytes))
    return data


def _too_big_file(max_bytes: int) -> str:
    return f"the file is larger than {max_bytes // 2**20} MB, far more than one radiograph; choose one image"


def check_size(rows: int, cols: int, max_pixels: int, what: str = "the image") -> None:
    """Refuse empty, tiny and decompression-bomb sizes before anything is decoded."""
    if rows * cols > max_pixels:
        raise ImageLoadError(f"{what} is {rows}×{cols} pixels, above the {max_pixels / 1e6:g}-megapixel "
                             f"limit (a chest radiograph is at most ~20 MP); it will not be decoded")
    if min(rows, cols) < MIN_SIDE:
        kind = "empty" if rows * cols == 0 else "too small to read"
        raise ImageLoadError(f"{what} is {rows}×{cols} pixels: {kind} (at least {MIN_SIDE}×{MIN_SIDE} needed)")


def robust_unit(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Map to [0, 1] by the 0.5/99.5th percentiles (float32); used when there is no window to apply."""
    sample = (values if valid is None else values[valid]).ravel()
    sample = sample[:: max(1, sample.size // 1_000_000)]  # percentiles of ≤ ~2M samples: same answer, faster
    if sample.size == 0:
        return np.zeros(values.shape, np.float32)
    lo, hi = np.percentile(sample, PERCENTILES)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def to_gray_unit(rgb: np.ndarray, max_value: float, notes: list[str]) -> np.ndarray:
    """[H, W, 3] colour → [H, W] luminance in [0, 1] (ITU-R 601, as PIL's "L"); warn if truly colour."""
    rgb = rgb.astype(np.float32) / np.float32(max_value)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    if np.count_nonzero(spread > 16 / 255) > 0.001 * spread.size:  # ignore JPEG chroma noise on grey images
        notes.append("colour image converted to grayscale")
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32), 0.0, 1.0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return (np.clip(unit, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _decode_pil(data: bytes, fmt: str, max_pixels: int) -> tuple[np.ndarray, dict, list[str]]:
    """PNG/JPEG → uint8 [H, W]. Alpha is composited on black (0 = air); EXIF orientation is applied.

    Only size and mode are read: PNG text chunks and EXIF (dates, GPS, …) never leave PIL.
    """
    label = fmt.upper()
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            cols, rows = img.size  # header only: nothing decoded yet
            check_size(rows, cols, max_pixels)
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"animated {label} ({img.n_frames} frames): only the first frame is used")
            img = ImageOps.exif_transpose(img)  # decodes; the size above bounds the memory it needs
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"the {label} declares an absurd size, above the {max_pixels / 1e6:g}-megapixel "
                             "limit; it will not be decoded") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error … for damaged files
        logger.debug("PIL could not decode a %s file: %s", label, type(exc).__name__)
        raise ImageLoadError(f"the {label} file is damaged or truncated and cannot be decoded") from exc
    bits = 16 if img.mode.startswith("I;16") else 8
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        unit = robust_unit(np.asarray(img, dtype=np.float32))  # 16-bit values are rarely display-ready
    else:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"):
            img = img.convert("RGBA" if img.mode in ("PA", "La", "RGBa") else "RGB")
        arr = np.asarray(img, dtype=np.float32)
        if img.mode in ("LA", "RGBA"):
            alpha, arr = arr[..., -1:] / 255.0, arr[..., :-1]
            if np.any(alpha < 1.0):
                notes.append("transparent areas were filled with black")
            arr = arr * alpha
        arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
        unit = to_gray_unit(arr, 255.0, notes) if arr.ndim == 3 else arr / 255.0
    meta: dict[str, str | int] = {"rows": rows, "columns": cols, "bits_stored": bits}
    return to_uint8(unit), meta, notes


def cli_inspect(argv: list[str]) -> int:
    """`medr2 inspect FILE [--png OUT.png]`: allow-listed metadata + warnings as JSON, or one error line."""
    parser = argparse.ArgumentParser(prog="medr2 inspect", description=cli_inspect.__doc__)
    parser.add_argument("file", help="DICOM (any or no extension), PNG or JPEG file")
    parser.add_argument("--png", metavar="OUT.png", help="also write the normalised 8-bit image here")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="decompression-bomb limit")
    args = parser.parse_args(argv)
    try:
        image = load_image(args.file, max_pixels=args.max_pixels)
    except ImageLoadError as exc:
        print(f"medr2 inspect: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.png:
        try:
            image.to_pil().save(args.png, format="PNG")
        except OSError as exc:
            print(f"medr2 inspect: cannot write {args.png}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    report = {"source_format": image.source_format, "original_size": list(image.original_size),
              "size": list(image.pixels.shape), "metadata": image.metadata, "warnings": image.warnings,
              "sha256": image.sha256}
    print(json.dumps(report, indent=2))
    return 0


# ---------------------------------------------------------------- DICOM
# Values are allow-listed as well as keys: a free-text value in a CS tag (a name typed into Body Part
# Examined, say) can then never reach the metadata or a warning.
_MODALITIES = set("CR DX MG CT MR US NM PT XA RF RG OT SR DOC ECG RTIMAGE RTDOSE RTPLAN RTSTRUCT SM IO PX "
                  "ES XC GM OP OPT SEG KO PR".split())
_VIEWS = set("AP PA LL RL LLD RLD LAO RAO LPO RPO RLO LLO LAT LATERAL LLAT RLAT APS PAS".split())
_BODY_PARTS = set("ABDOMEN PELVIS HEAD SKULL BRAIN NECK CSPINE TSPINE LSPINE SPINE SHOULDER ARM ELBOW "
                  "FOREARM WRIST HAND FINGER HIP LEG KNEE ANKLE FOOT BREAST EXTREMITY HEART".split())
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


def _decode_dicom(data: bytes, max_pixels: int, max_bytes: int) -> tuple[np.ndarray, dict, list[str]]:
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
