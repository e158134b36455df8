"""`medr2 study create`: generate every report of a study once and freeze it in a portable folder.

Reads the case list and sources (`medr2.study.manifest`), copies the images under neutral names, runs each model
source over all cases with `Pipeline.run_batch` (batched, one progress bar per model), takes reference and JSONL
reports as given, and writes `study.json`, `reports.jsonl` and `key.json` (with each source's label, unique within
the study: `medr2.study.manifest.source_labels`). Readers then never wait for a model, and every reader sees the
same text. Hands on the study folder to `medr2.study.session` and the app.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

from medr2 import __version__
from medr2.study.manifest import DESIGNS, ITEMS, MAX_SOURCES, Case, Source, StudyError, load_cases, parse_sources, source_labels


def _model_reports(source: Source, label: str, cases: list[Case], batch_size: int,
                   max_new_tokens: int) -> tuple[list[str], dict]:
    from tqdm.auto import tqdm

    from medr2.inference.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline(PipelineConfig(model=source.spec, max_new_tokens=max_new_tokens))
    texts: list[str] = []
    with tqdm(total=len(cases), desc=f"reports of {label}", unit="case") as bar:
        for i in range(0, len(cases), batch_size):
            chunk = [c.image for c in cases[i:i + batch_size]]
            for result in pipeline.run_batch(chunk, batch_size=batch_size):
                out = result.output
                texts.append(out.report.text if out.report else "")
            bar.update(len(chunk))
    prov = vars(pipeline.provenance).copy()
    return texts, prov


def _jsonl_reports(source: Source, cases: list[Case], case_ids: list[str]) -> list[str]:
    by_key = {}
    with open(source.spec, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("report"), str):
                    raise StudyError(f"{source.spec} line {n}: needs a 'report' text")
                by_key[str(row.get("case_id") or Path(str(row.get("image", ""))).name)] = row["report"]
    out = []
    for case, cid in zip(cases, case_ids):
        text = by_key.get(case.image.name, by_key.get(cid))
        if text is None:
            raise StudyError(f"{source.spec} has no report for {case.image.name}")
        out.append(text)
    return out


def create_study(cases_path: str | Path, source_specs: list[str], design: str, output_dir: str | Path,
                 seed: int | None = None, batch_size: int = 8, max_new_tokens: int = 640,
                 study_id: str | None = None) -> Path:
    """Freeze a study in `output_dir` (which must not exist or be empty); returns its path."""
    if design not in DESIGNS:
        raise StudyError(f"--design must be one of {', '.join(DESIGNS)}, got {design!r}")
    sources = parse_sources(source_specs)
    if design == "ab" and len(sources) != 2:
        raise StudyError(f"an A/B study compares exactly two sources, got {len(sources)}; use --design multi for more")
    if design == "multi" and len(sources) < 2:
        raise StudyError("a multi study compares at least two sources; use --design single for one")
    if len(sources) > MAX_SOURCES:
        raise StudyError(f"a study page shows at most {MAX_SOURCES} reports; got {len(sources)} sources")
    cases = load_cases(cases_path)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise StudyError(f"{out} is not empty; choose a new --output_dir")
    if any(s.kind == "reference" for s in sources):
        lacking = [c.image.name for c in cases if not (c.reference or "").strip()]
        if lacking:
            raise StudyError(f"source 'reference' needs a reference report for every case; {lacking[0]} has none")
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    case_ids = [f"case-{i:03d}" for i in range(1, len(cases) + 1)]
    source_ids = [f"S{i}" for i in range(1, len(sources) + 1)]

    # unique per study (two folders both named `model`, two report files with the same name): the report keys by it
    labels = source_labels(sources)

    texts: dict[str, list[str]] = {}
    key_sources = {}
    for sid, source, label in zip(source_ids, sources, labels):
        if source.kind == "model":
            texts[sid], prov = _model_reports(source, label, cases, batch_size, max_new_tokens)
            key_sources[sid] = {"kind": "model", "model": source.spec, "provenance": prov}
        elif source.kind == "reference":
            texts[sid] = [c.reference or "" for c in cases]
            key_sources[sid] = {"kind": "reference"}
        else:
            texts[sid] = _jsonl_reports(source, cases, case_ids)
            key_sources[sid] = {"kind": "jsonl", "file": Path(source.spec).name}
        key_sources[sid]["label"] = label

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # written whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    meta_cases, key_cases = [], {}
    for case, cid in zip(cases, case_ids):
        suffix = case.image.suffix.lower() if case.image.suffix.lower() in (".png", ".jpg", ".jpeg") else ".dcm"
        dest = tmp / "images" / f"{cid}{suffix}"
        shutil.copyfile(case.image, dest)  # a copy, not a link: the folder travels
        meta_cases.append({"case_id": cid, "image": dest.name,
                           "image_sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
                           "indication": case.indication})
        key_cases[cid] = {"original_name": case.image.name, "truth": case.truth, "reference": case.reference}
    meta = {"study_id": study_id or f"study-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}", "design": design,
            "seed": seed, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "medr2_version": __version__, "items": [list(i) for i in ITEMS], "sources": source_ids,
            "cases": meta_cases}
    (tmp / "study.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    with open(tmp / "reports.jsonl", "w", encoding="utf-8") as fh:
        for sid in source_ids:
            for cid, text in zip(case_ids, texts[sid]):
                fh.write(json.dumps({"case_id": cid, "source": sid, "report": text}, ensure_ascii=False) + "\n")
    (tmp / "key.json").write_text(json.dumps({"sources": key_sources, "cases": key_cases}, indent=1,
                                             ensure_ascii=False), encoding="utf-8")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
