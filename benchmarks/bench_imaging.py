"""Decode time of the real chest radiograph RG1 (pydicom-data, 1955×1841, 15-bit CR) in each encoding.

Times `medr2.imaging.loader.load_image` end to end (sniff → parse → checks → decode → LUTs → uint8) from
bytes in memory, median of N runs, next to pydicom's bare `pixel_array` for the same bytes so the
loader's own overhead is visible. Encodings pydicom-data does not ship (RLE, Deflate, PNG, JPEG) are
made here, in memory, from RG1_UNCR.

Run: `python benchmarks/bench_imaging.py [--runs 5]`
→ table on stdout, JSON in benchmarks/results/imaging.json.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from medr2.imaging.loader import load_image

logger = logging.getLogger("bench_imaging")
RESULTS = Path(__file__).resolve().parent / "results" / "imaging.json"


def encodings() -> dict[str, bytes]:
    """name -> file bytes, all the same radiograph."""
    files = {f"DICOM {tag}": Path(get_testdata_file(f"RG1_{tag}.dcm")).read_bytes()
             for tag in ("UNCR", "UNCI", "J2KR", "J2KI")}
    ds = pydicom.dcmread(io.BytesIO(files["DICOM UNCR"]))
    made = (("DICOM RLE (made here)", RLELossless), ("DICOM Deflate (made here)", DeflatedExplicitVRLittleEndian))
    for name, ts in made:
        copy = pydicom.dcmread(io.BytesIO(files["DICOM UNCR"]))
        if ts == RLELossless:
            copy.compress(RLELossless, encoding_plugin="pydicom")
        else:
            copy.file_meta.TransferSyntaxUID = ts
        buf = io.BytesIO()
        copy.save_as(buf)
        files[name] = buf.getvalue()
    eight = load_image(files["DICOM UNCR"]).to_pil()
    for name, img, fmt, kw in (("PNG 8-bit", eight, "PNG", {}),
                               ("PNG 16-bit", Image.fromarray(ds.pixel_array.astype(np.uint16)), "PNG", {}),
                               ("JPEG q95", eight, "JPEG", {"quality": 95})):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        files[name] = buf.getvalue()
    return files


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up: imports, plugin discovery
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_pydicom(data: bytes) -> None:
    pydicom.dcmread(io.BytesIO(data)).pixel_array  # noqa: B018  (the decode is the point)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per encoding (median reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for name, data in encodings().items():
        loader = median_seconds(lambda d=data: load_image(d), args.runs)
        bare = median_seconds(lambda d=data: bare_pydicom(d), args.runs) if name.startswith("DICOM") else None
        rows.append({"encoding": name, "file_mb": round(len(data) / 2**20, 2),
                     "load_image_ms": round(loader * 1000, 1),
                     "pydicom_pixel_array_ms": None if bare is None else round(bare * 1000, 1)})
    header = f"{'encoding':28s} {'file MB':>8s} {'load_image ms':>14s} {'pydicom ms':>11s}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        bare = "" if r["pydicom_pixel_array_ms"] is None else f"{r['pydicom_pixel_array_ms']:.1f}"
        print(f"{r['encoding']:28s} {r['file_mb']:8.2f} {r['load_image_ms']:14.1f} {bare:>11s}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"image": "pydicom-data RG1 (CR PA chest, 1955x1841, 15-bit, MONOCHROME1)", "runs": args.runs,
            "statistic": "median",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpu",
            "python": platform.python_version(), "pydicom": pydicom.__version__}
    RESULTS.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    logger.info("wrote %s", RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
