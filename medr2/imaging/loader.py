"""Image input: a DICOM, PNG or JPEG file → one model-ready 8-bit grayscale chest radiograph.

What it does: sniff the format from the bytes (never the extension), refuse anything unsafe or unreadable
with one `ImageLoadError` whose one-line message a radiologist understands, decode, and hand on a
`LoadedImage`: uint8 pixels (0 = black = air), the source size, an *allow-listed* metadata dict and
user-facing warnings. PNG/JPEG are decoded here; DICOM (modality LUT → VOI LUT or window → MONOCHROME1
inversion → 8 bit, size guards, SOP-class messages, allow-listed tags) in `medr2.imaging.dicom`, which
this module imports lazily and which raises this module's `ImageLoadError` and uses its pixel helpers.

Privacy: only image-description tags (modality, view, body part, pixel module, LUTs) are ever read from
a DICOM file; pydicom converts values lazily, so patient name, IDs, dates, accession, institution and
every PN element stay undecoded bytes. Metadata values are allow-listed too; PNG text chunks and EXIF
never leave PIL; error messages never contain file paths or tag values; nothing here logs image content
or metadata. See docs/imaging.md.

Run: `medr2 inspect FILE [--png OUT.png]`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import warnings
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
        from medr2.imaging.dicom import decode_dicom  # lazy: it imports this module (and pydicom)

        pixels, meta, notes = decode_dicom(data, max_pixels, max_bytes)
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
    from medr2.cli import FlagParser, UsageError, fail

    parser = FlagParser(prog="medr2 inspect", description=cli_inspect.__doc__)
    parser.add_argument("file", help="DICOM (any or no extension), PNG or JPEG file")
    parser.add_argument("--png", metavar="OUT.png", help="also write the normalised 8-bit image here")
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS, help="decompression-bomb limit")
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return fail("medr2 inspect", exc)
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
