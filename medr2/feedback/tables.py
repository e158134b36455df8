"""The analysis-ready CSV export of the feedback store: flat tables, one row per record, and a data dictionary.

`medr2 feedback export --format csv --out reviews.csv` writes (every file written whole, then renamed into place):
- `reviews.csv`: one row per review, one value per cell: ratings, counts of sentence verdicts, one 0/1 column per
  error tag (`tag_<error>`, `significant_<error>`, `note_<error>`), one column per CheXpert observation and label set
  (`label_<final|draft|reviewer>_<observation>`: 1 / 0 / -1 / empty), one column per allow-listed image metadata key
  (`meta_<key>`; list values such as pixel spacing as `meta_<key>_1`, `meta_<key>_2`), the reader-study context
  (`study_*`, `item_<likert item>`, `n_edits_content`, `n_edits_style`) and the report texts;
- `reviews.configs.csv`: the prompt and model configuration (model id, weights hash, demo flag, medr2 version,
  prompt), one row per distinct configuration; `reviews.csv` carries only its `config_id`;
- `reviews.sentences.csv`: one row per model sentence and its verdict (long format, joined on `id`);
- `reviews.edits.csv`: one row per changed sentence of a study review with its content / style reason;
- `reviews.dictionary.csv`: every column of these files with its meaning.
No cell holds JSON. The JSONL export (`FeedbackStore.export(..., "jsonl")`) stays the lossless, re-readable copy.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from medr2.feedback.record import ERROR_TAGS, LABEL_SETS, VERDICTS, FeedbackRecord

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): a reviewer comment
# "=HYPERLINK(...)" must stay text. Such cells get a leading apostrophe (OWASP's advice); a cell that already
# starts with one gets another, so stripping exactly one restores every value.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
CONFIG_FIELDS = ("model_id", "weights_sha256", "demo", "medr2_version", "schema_version", "prompt")
STUDY_FIELDS = ("study_id", "case_id", "source", "design", "side", "opened_at", "seconds", "edit_distance", "locked",
                "revision", "preference", "order_index")
COMPANIONS = ("configs", "sentences", "edits", "dictionary")


def cell(value: Any) -> str | int | float:
    """A CSV cell: text guarded against spreadsheet formulas, booleans as 0/1, None as empty; never JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def uncell(text: str) -> str:
    """The value `cell` wrote (one guarding apostrophe removed)."""
    return text[1:] if text.startswith("'") else text


def slug(name: str) -> str:
    """A column-name part: 'Pleural Effusion' -> 'pleural_effusion', 'PixelSpacing' -> 'pixelspacing'."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "x"


def companion(path: Path, name: str) -> Path:
    """`reviews.csv` -> `reviews.<name>.csv`."""
    return path.with_name(f"{path.stem}.{name}{path.suffix or '.csv'}")


def config_id(record: FeedbackRecord) -> str:
    """A short stable id of the record's prompt and model configuration (equal configurations, equal ids)."""
    data = json.dumps([getattr(record, f) for f in CONFIG_FIELDS], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:12]


def _metadata_cells(metadata: dict) -> dict:
    out = {}
    for key, value in metadata.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value, 1):
                out[f"meta_{slug(key)}_{i}"] = v
        else:
            out[f"meta_{slug(key)}"] = value
    return out


def record_row(rid: int, rec: FeedbackRecord, observations: Iterable[str], items: Iterable[str]) -> dict:
    """The flat `reviews.csv` row of one record (see the module doc)."""
    from medr2.feedback.store import reviewer_target

    verdicts = [v["verdict"] for v in rec.sentence_verdicts]
    tags = {t["tag"]: t for t in rec.error_tags}
    st = rec.study or {}
    reasons = [r.get("reason") for r in st.get("edit_reasons") or []]
    row = {"id": rid, "created_at": rec.created_at, "reviewer": rec.reviewer, "submission_key": rec.submission_key,
           "config_id": config_id(rec), "image_sha256": rec.image_sha256, "image_ref": rec.image_ref,
           "rating": rec.rating, "reasoning_rating": rec.reasoning_rating, "saliency_rating": rec.saliency_rating,
           "corrected": reviewer_target(rec) is not None, "n_sentences": len(verdicts),
           **{f"n_{v}": verdicts.count(v) for v in VERDICTS}}
    for t in ERROR_TAGS:
        row[f"tag_{t}"] = t in tags
        row[f"significant_{t}"] = bool(tags[t]["clinically_significant"]) if t in tags else False
        row[f"note_{t}"] = tags.get(t, {}).get("note")
    for which in LABEL_SETS:
        labels = (rec.labels or {}).get(which) or {}
        for obs in observations:
            row[f"label_{which}_{slug(obs)}"] = labels.get(obs)
    row.update(_metadata_cells(rec.image_metadata))
    for f in STUDY_FIELDS:
        row[f"study_{f}"] = st.get(f)
    for k in items:
        row[f"item_{slug(k)}"] = (st.get("items") or {}).get(k)
    row["n_edits_content"] = reasons.count("content") if st else None
    row["n_edits_style"] = reasons.count("style") if st else None
    row.update(comment=rec.comment, final_report=rec.final_report, corrected_report=rec.corrected_report,
               draft_report=rec.draft_report, model_output=rec.model_output)
    return row


def _meaning(column: str) -> str:
    """The data-dictionary line of a `reviews.csv` column (patterned names explained by their pattern)."""
    fixed = {
        "id": "record id in the feedback store (joins every companion file)",
        "created_at": "UTC time the review was stored (ISO 8601)",
        "reviewer": "reviewer handle (never a person's name); empty if none was given",
        "submission_key": "the store's de-duplication key (study reviews: study/reader/case/source)",
        "config_id": "prompt and model configuration of the report; details in the .configs.csv companion",
        "image_sha256": "SHA-256 of the image file (images are never stored; join them back by hash)",
        "image_ref": "file name of a bundled example image; empty for uploads",
        "rating": "overall report quality, 1 (poor) to 5 (excellent); empty if not rated",
        "reasoning_rating": "quality of the shown reasoning, 1-5; empty if not rated",
        "saliency_rating": "usefulness of the saliency maps, 1-5; empty if not rated",
        "corrected": "1 if the reviewer's version of the report differs from the model's final report",
        "n_sentences": "model sentences with a verdict (one row each in the .sentences.csv companion)",
        "n_edits_content": "study reviews: changed sentences whose edit is about content; empty outside studies",
        "n_edits_style": "study reviews: changed sentences whose edit is about style; empty outside studies",
        "comment": "the reviewer's free-text comment",
        "final_report": "the model's final report as reviewed",
        "corrected_report": "the reviewer's corrected report (equal to final_report when unchanged)",
        "draft_report": "the model's draft report before reflection",
        "model_output": "the model's raw tagged output (<think>…<report>)",
        "study_seconds": "study reviews: seconds from opening the case to saving, summed over visits",
        "study_edit_distance": "study reviews: words inserted, deleted or substituted by the correction",
        "study_side": "study reviews: where the report was shown (A, B, …); empty for single-report studies",
        "study_preference": "A/B: this report is better (this), the other one (other) or equal; multi: this is the "
                            "best (this), another is (other), no clear best (equal)",
        "study_order_index": "study reviews: position of the case in this reader's randomised order (0-based)",
        "study_locked": "study reviews: 1 once the reader locked the case",
        "study_revision": "study reviews: how many times the reader saved this review",
    }
    if column in fixed:
        return fixed[column]
    patterns = [
        (r"n_(accept|edit|reject)", lambda m: f"sentences the reviewer marked '{m[1]}'"),
        (r"tag_(\w+)", lambda m: f"1 if the reviewer ticked the error '{m[1]}'"),
        (r"significant_(\w+)", lambda m: f"1 if the error '{m[1]}' was marked clinically significant"),
        (r"note_(\w+)", lambda m: f"the reviewer's note on the error '{m[1]}'"),
        (r"label_(draft|final|reviewer)_(\w+)",
         lambda m: f"CheXpert label of '{m[2]}' in the {m[1]} report: 1 present, 0 absent, -1 uncertain, empty not "
                   "mentioned"),
        (r"meta_(\w+?)_(\d+)", lambda m: f"image metadata '{m[1]}', value {m[2]} of a list"),
        (r"meta_(\w+)", lambda m: f"image metadata '{m[1]}' (allow-listed technical key)"),
        (r"item_(\w+)", lambda m: f"study reviews: Likert item '{m[1]}', 1-5 or 'na' (not applicable)"),
        (r"study_(\w+)", lambda m: f"study reviews: {m[1].replace('_', ' ')} (from the study folder)"),
    ]
    for pattern, say in patterns:
        m = re.fullmatch(pattern, column)
        if m:
            return say(m)
    return column.replace("_", " ")


COMPANION_COLUMNS = {
    "configs": [("config_id", "id used in the config_id column of the main file"),
                ("model_id", "model folder or hub id that wrote the report"),
                ("weights_sha256", "hash of the model weights (empty if unknown)"),
                ("demo", "1 for the embedded demo model / synthetic data"),
                ("medr2_version", "medr2 version that stored the review"),
                ("schema_version", "feedback record format version"),
                ("prompt", "the text prompt the model got (no image)")],
    "sentences": [("id", "record id (main file)"), ("sentence_no", "position of the model sentence (1-based)"),
                  ("sentence", "the model's sentence"), ("verdict", "accept, edit or reject"),
                  ("edited_text", "the reviewer's text for an 'edit' verdict; empty otherwise")],
    "edits": [("id", "record id (main file)"), ("edit_no", "position of the edit in the report (1-based)"),
              ("change", "edit (a model sentence rewritten), reject (deleted) or add (a sentence added)"),
              ("sentence", "the model's sentence (empty for an added sentence)"),
              ("edited_text", "what the reader wrote instead (empty for a deletion)"),
              ("reason", "the reader's reason for this edit: content or style")],
}


def _write(path: Path, columns: list[str], rows: Iterable[dict]) -> int:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write then rename: readers never see half a file
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: cell(v) for k, v in row.items()})
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def write_tables(records: Iterable[tuple[int, FeedbackRecord]], path: str | os.PathLike) -> int:
    """Write the main CSV and its companions (module doc); returns the number of records (main rows)."""
    from medr2.labeler.findings import OBSERVATIONS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    seen_obs = {o for _, r in records for labels in (r.labels or {}).values() for o in labels}
    observations = [*OBSERVATIONS, *sorted(seen_obs - set(OBSERVATIONS))]
    items: list[str] = []
    for _, r in records:
        items += [k for k in ((r.study or {}).get("items") or {}) if k not in items]
    rows = [record_row(i, r, observations, items) for i, r in records]
    columns: list[str] = list(record_row(0, _blank(), observations, items))
    meta = sorted({k for row in rows for k in row if k.startswith("meta_")})
    at = columns.index("study_study_id")
    columns = columns[:at] + meta + columns[at:]
    configs = {}
    for _, r in records:
        configs.setdefault(config_id(r), {"config_id": config_id(r), **{f: getattr(r, f) for f in CONFIG_FIELDS}})
    sentences = [{"id": i, "sentence_no": n, "sentence": v["sentence"], "verdict": v["verdict"],
                  "edited_text": v.get("edited_text")} for i, r in records for n, v in enumerate(r.sentence_verdicts, 1)]
    edits = [{"id": i, "edit_no": n, "change": e.get("change", "edit"), "sentence": e.get("sentence"),
              "edited_text": e.get("edited_text"), "reason": e.get("reason")}
             for i, r in records for n, e in enumerate((r.study or {}).get("edit_reasons") or [], 1)]
    n = _write(path, columns, rows)
    for name, data in (("configs", configs.values()), ("sentences", sentences), ("edits", edits)):
        _write(companion(path, name), [c for c, _ in COMPANION_COLUMNS[name]], data)
    dictionary = ([{"file": path.name, "column": c, "meaning": _meaning(c)} for c in columns]
                  + [{"file": companion(path, name).name, "column": c, "meaning": m}
                     for name, cols in COMPANION_COLUMNS.items() for c, m in cols])
    _write(companion(path, "dictionary"), ["file", "column", "meaning"], dictionary)
    return n


def _blank() -> FeedbackRecord:
    """A record with every optional part empty: its row gives the fixed column order."""
    return FeedbackRecord(image_sha256="0" * 64, final_report="")
