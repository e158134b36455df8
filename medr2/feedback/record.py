"""The feedback record model: what one radiologist review may contain, validated before it is stored.

`FeedbackRecord` holds one review of one model report (Likert ratings, per-sentence verdicts, ReXVal/GREEN
error tags, CheXpert-style labels, the corrected report) and validates and normalises itself on
construction: bad values raise `FeedbackError` naming the field and the fix; text is length-capped; image
metadata is filtered through the `METADATA_ALLOWED` allow-list (`sanitize_metadata`) so nothing that can
identify a patient is kept; `image_ref` must be a bare example file name (see `medr2.feedback.store`).
Schema 2 adds `submission_key` (the store keeps one record per key: a resent review is stored once, a study
review is revised in place until locked) and `study` (reader-study context: case, blinded source, side, timing,
Likert items with N/A, one content / style reason per edited sentence; see `medr2.study`). Schema-1 records read
as schema 2 with both empty.

Hands on validated records (`to_dict` / `from_dict`), the taxonomies (`VERDICTS`, `ERROR_TAGS`,
`LABEL_SETS`) and `SCHEMA_VERSION` to `medr2.feedback.store`, whose store persists them and re-exports these names.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from medr2 import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MAX_TEXT_CHARS = 20_000  # a long report with reasoning is ~3k chars; 20k stops abuse, not reviewers
MAX_SHORT_CHARS = 200  # reviewer handle, model id, metadata strings
MAX_ITEMS = 200  # sentences / tags per record
VERDICTS = ("accept", "edit", "reject")
# ReXVal (Yu et al. 2023) / GREEN (Ostmeier et al. 2024) clinical error categories.
ERROR_TAGS = ("false_finding", "omission", "wrong_location", "wrong_severity", "false_comparison",
              "missed_comparison")
LABEL_SETS = ("draft", "final", "reviewer")
# Technical image metadata only, compared case- and punctuation-insensitively so both DICOM keywords
# ("ViewPosition") and snake_case ("view_position") pass. Nothing here can identify a patient.
METADATA_ALLOWED = frozenset({
    "modality", "viewposition", "photometricinterpretation", "rows", "columns", "width", "height",
    "originalsize", "bitsstored", "bitsallocated", "highbit", "pixelrepresentation", "samplesperpixel",
    "transfersyntax", "transfersyntaxname", "transfersyntaxuid", "bodypartexamined", "numberofframes",
    "burnedinannotation", "bodypart", "format", "sourceformat", "pixelspacing", "imagerpixelspacing",
    "windowcenter", "windowwidth", "rescaleslope", "rescaleintercept", "presentationlutshape",
})
_OPTIONAL_STR = ("reviewer", "image_ref", "weights_sha256", "submission_key")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class FeedbackError(ValueError):
    """A feedback record or request is invalid; the message names the field and the fix."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _text(name: str, value: Any, cap: int = MAX_TEXT_CHARS, optional: bool = False) -> str | None:
    if value is None or (optional and value == ""):
        return None if optional else ""
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > cap:  # never echo the text itself: it may be clinical
        raise FeedbackError(f"{name} is {len(value)} characters; the limit is {cap}, shorten it")
    return value


def _likert(name: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # gradio radios may hand over "4"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise FeedbackError(f"{name} must be an integer from 1 to 5 (Likert) or empty, got {value!r:.40}")
    return value


def _items(name: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
        raise FeedbackError(f"{name} must be a list of at most {MAX_ITEMS} dicts")
    if not all(isinstance(v, dict) for v in value):
        raise FeedbackError(f"every entry of {name} must be a dict")
    return list(value)


def sanitize_metadata(metadata: dict | None) -> dict:
    """Keep only allow-listed technical keys with small scalar (or short list) values; drop the rest."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise FeedbackError(f"image_metadata must be a dict, got {type(metadata).__name__}")

    def ok(v: Any) -> bool:
        if isinstance(v, str):
            return len(v) <= MAX_SHORT_CHARS
        if isinstance(v, float):
            return math.isfinite(v)
        return v is None or isinstance(v, (bool, int))

    kept = {}
    for key, value in metadata.items():
        if isinstance(value, tuple):
            value = list(value)
        if (isinstance(key, str) and re.sub(r"[^a-z0-9]", "", key.lower()) in METADATA_ALLOWED
                and (ok(value) or (isinstance(value, list) and len(value) <= 16 and all(map(ok, value))))):
            kept[key] = value
    if len(kept) < len(metadata):  # log the count only: a rogue key could itself be an identifier
        log.info("dropped %d non-allow-listed image metadata entries", len(metadata) - len(kept))
    return kept


def _check_keys(item: dict, allowed: tuple[str, ...], what: str) -> None:
    extra = set(item) - set(allowed)
    if extra:
        raise FeedbackError(f"{what} has unknown keys {sorted(extra)}; allowed: {', '.join(allowed)}")


def _verdict(item: dict) -> dict:
    _check_keys(item, ("sentence", "verdict", "edited_text"), "sentence verdict")
    if item.get("verdict") not in VERDICTS:
        raise FeedbackError(f"unknown verdict {item.get('verdict')!r}; use one of {', '.join(VERDICTS)}")
    sentence = _text("sentence", item.get("sentence"))
    if not sentence.strip():
        raise FeedbackError("a sentence verdict needs the non-empty sentence it judges")
    out = {"sentence": sentence, "verdict": item["verdict"]}
    if item["verdict"] == "edit":
        edited = _text("edited_text", item.get("edited_text"))
        if not edited.strip():
            raise FeedbackError("verdict 'edit' needs edited_text (use 'reject' to delete the sentence)")
        out["edited_text"] = edited
    elif item.get("edited_text"):
        raise FeedbackError(f"edited_text is only allowed with verdict 'edit', not {item['verdict']!r}")
    return out


def _error_tag(item: dict) -> dict:
    _check_keys(item, ("tag", "clinically_significant", "note"), "error tag")
    if item.get("tag") not in ERROR_TAGS:
        raise FeedbackError(f"unknown error tag {item.get('tag')!r}; use one of {', '.join(ERROR_TAGS)}")
    if not isinstance(item.get("clinically_significant"), bool):
        raise FeedbackError(f"error tag {item['tag']!r} needs clinically_significant: true or false")
    out = {"tag": item["tag"], "clinically_significant": item["clinically_significant"]}
    if item.get("note"):
        out["note"] = _text("note", item["note"])
    return out


# The reader-study context a study review carries (`FeedbackRecord.study`); values are small JSON scalars or lists.
STUDY_KEYS = {
    "study_id": str, "case_id": str, "source": str, "design": str, "side": str, "opened_at": str,
    "seconds": (int, float), "edit_distance": int, "locked": bool, "revision": int, "preference": str,
    "items": dict, "edit_reasons": list, "order_index": int,
}
PREFERENCES = ("this", "other", "equal")
EDIT_REASONS = ("content", "style")  # why a reader changed one sentence (one reason per edit)
EDIT_CHANGES = ("edit", "reject", "add")
ITEM_NA = "na"


def _study(value: Any) -> dict | None:
    if not value:
        return None
    if not isinstance(value, dict):
        raise FeedbackError(f"study must be a dict, got {type(value).__name__}")
    _check_keys(value, tuple(STUDY_KEYS), "study")
    out = {}
    for key, val in value.items():
        if val is None:
            continue
        kind = STUDY_KEYS[key]
        if isinstance(val, bool) and kind is not bool or not isinstance(val, kind):
            raise FeedbackError(f"study[{key!r}] has the wrong type {type(val).__name__}")
        if isinstance(val, str) and len(val) > MAX_SHORT_CHARS:
            raise FeedbackError(f"study[{key!r}] is longer than {MAX_SHORT_CHARS} characters")
        out[key] = val
    if out.get("preference") not in (None, *PREFERENCES):
        raise FeedbackError(f"study preference must be one of {', '.join(PREFERENCES)}")
    for name, v in (out.get("items") or {}).items():
        if not isinstance(name, str) or len(name) > 64 or not (v == ITEM_NA or _likert(name, v) is not None):
            raise FeedbackError(f"study item {str(name)[:64]!r} must be 1 to 5 or {ITEM_NA!r}")
    reasons = out.get("edit_reasons") or []
    if len(reasons) > MAX_ITEMS or not all(
            isinstance(r, dict) and not set(r) - {"change", "sentence", "edited_text", "reason"}
            and r.get("reason") in EDIT_REASONS and r.get("change", "edit") in EDIT_CHANGES
            and isinstance(r.get("sentence"), str) and isinstance(r.get("edited_text", ""), str) for r in reasons):
        raise FeedbackError("study edit_reasons must be {change: edit | reject | add, sentence, edited_text, "
                            "reason: content | style} entries, one per edit")
    return out


def _labels(value: Any) -> dict | None:
    """{draft|final|reviewer: {observation: 1 | 0 | -1 | None}} (CheXpert convention; None = blank)."""
    if not value:
        return None
    if not isinstance(value, dict) or set(value) - set(LABEL_SETS):
        raise FeedbackError(f"labels must be a dict with keys among {', '.join(LABEL_SETS)}")
    out = {}
    for which, obs in value.items():
        if not isinstance(obs, dict) or len(obs) > 32:
            raise FeedbackError(f"labels[{which!r}] must be a dict of at most 32 observations")
        clean = {}
        for name, v in obs.items():
            if isinstance(v, float) and math.isnan(v):
                v = None
            if not isinstance(name, str) or len(name) > 64 or (v is not None and v not in (1, 0, -1)):
                raise FeedbackError(f"labels[{which!r}][{name!r}] must be 1, 0, -1 or null, got {v!r}")
            clean[name] = None if v is None else int(v)
        out[which] = clean
    return out


@dataclass
class FeedbackRecord:
    """One review of one model report. Validated and normalised on construction (FeedbackError if bad)."""

    image_sha256: str
    final_report: str
    model_id: str = ""  # local path or hub id
    weights_sha256: str | None = None
    demo: bool = True  # the embedded demo model / synthetic data
    model_output: str = ""  # raw tagged text (<think>...<report>)
    draft_report: str = ""
    prompt: str = ""  # the text prompt the model got (no image), reused for training rows
    corrected_report: str = ""  # the reviewer's edit of final_report
    rating: int | None = None  # overall Likert 1-5
    sentence_verdicts: list[dict] = field(default_factory=list)
    error_tags: list[dict] = field(default_factory=list)
    comment: str = ""
    reasoning_rating: int | None = None
    saliency_rating: int | None = None
    labels: dict | None = None
    image_metadata: dict = field(default_factory=dict)
    image_ref: str | None = None  # bundled example file name only; None for uploads (see module doc)
    reviewer: str | None = None
    submission_key: str | None = None  # one stored record per key (see the store's `put`)
    study: dict | None = None  # reader-study context (STUDY_KEYS); None outside studies
    created_at: str = field(default_factory=_utc_now)
    medr2_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        sha = self.image_sha256.lower() if isinstance(self.image_sha256, str) else self.image_sha256
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise FeedbackError(f"image_sha256 must be 64 hex digits (hashlib.sha256(file_bytes).hexdigest()), got {self.image_sha256!r:.80}")
        self.image_sha256 = sha
        for name in ("final_report", "model_output", "draft_report", "prompt", "corrected_report", "comment"):
            setattr(self, name, _text(name, getattr(self, name)))
        self.model_id = _text("model_id", self.model_id, cap=MAX_TEXT_CHARS // 10)
        self.medr2_version = _text("medr2_version", self.medr2_version, cap=MAX_SHORT_CHARS)
        for name in _OPTIONAL_STR:
            setattr(self, name, _text(name, getattr(self, name), cap=MAX_SHORT_CHARS, optional=True))
        if self.image_ref is not None and not _BARE_NAME.fullmatch(self.image_ref):
            raise FeedbackError("image_ref must be a bare example file name like 'phantom_01.png' (no folders); leave it empty for uploads")
        if not isinstance(self.demo, bool):
            raise FeedbackError(f"demo must be true or false, got {self.demo!r}")
        for name in ("rating", "reasoning_rating", "saliency_rating"):
            setattr(self, name, _likert(name, getattr(self, name)))
        self.sentence_verdicts = [_verdict(v) for v in _items("sentence_verdicts", self.sentence_verdicts)]
        self.error_tags = [_error_tag(t) for t in _items("error_tags", self.error_tags)]
        self.labels = _labels(self.labels)
        self.study = _study(self.study)
        self.image_metadata = sanitize_metadata(self.image_metadata)
        try:
            stamp = datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError):
            raise FeedbackError(f"created_at must be an ISO-8601 time, got {self.created_at!r}") from None
        if stamp.tzinfo is None:
            raise FeedbackError(f"created_at needs a time zone (UTC), got {self.created_at!r}")
        self.created_at = stamp.astimezone(timezone.utc).isoformat(timespec="seconds")
        if self.schema_version == 1:  # schema 1 lacked submission_key and study, which default to empty
            self.schema_version = SCHEMA_VERSION
        if self.schema_version != SCHEMA_VERSION:
            raise FeedbackError(f"schema_version {self.schema_version!r} is not {SCHEMA_VERSION}; migrate the record first")

    def to_dict(self) -> dict:
        return asdict(self)

    def content_key(self) -> str:
        """A hash of what the reviewer said about which report (not when): equal for a review sent twice."""
        import hashlib
        import json

        data = {k: v for k, v in self.to_dict().items() if k not in ("created_at", "submission_key")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> FeedbackRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
