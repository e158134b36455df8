"""Durable reviewer feedback: what radiologists say about a report, kept safely and turned into training data.

The app hands this module one `FeedbackRecord` per review (ratings, per-sentence verdicts, ReXVal/GREEN
error tags, the corrected report). `FeedbackStore` writes it to SQLite in `<data_dir>/feedback.sqlite3`:
WAL journal + `synchronous=FULL` + one `BEGIN IMMEDIATE` transaction per submit, so a record whose
`submit()` returned survives a SIGKILL or power cut, and many browser users (threads) and processes can
submit at once (they queue on SQLite's lock for up to `busy_timeout_s`).

Privacy: the image is never stored, only its SHA-256 and metadata filtered through `METADATA_ALLOWED`
(unknown keys such as PatientName are dropped). Training on feedback therefore needs the original image,
found again by hash; `image_ref` may name a *bundled example* file (a phantom) so those rows are usable
on their own. It must stay None for user uploads, whose file names can carry identifiers: the store
accepts only bare file names and, when given `allowed_image_refs`, only those names.

Hands on: JSONL/CSV exports, SFT rows `{image_sha256, prompt, completion}` and DPO rows
`{image_sha256, prompt, chosen, rejected}` (`export_training`), and an optional periodic push of the
JSONL export to a private Hub dataset (`maybe_start_hub_sync`). CLI: `medr2 feedback export|stats`.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sqlite3
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from medr2 import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "feedback.sqlite3"
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
_NESTED = ("image_metadata", "sentence_verdicts", "error_tags", "labels")
_INT_FIELDS = ("schema_version", "rating", "reasoning_rating", "saliency_rating")
_OPTIONAL_STR = ("reviewer", "image_ref", "weights_sha256")
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


def _verdict(item: dict) -> dict:
    extra = set(item) - {"sentence", "verdict", "edited_text"}
    if extra:
        raise FeedbackError(f"sentence verdict has unknown keys {sorted(extra)}; allowed: sentence, verdict, edited_text")
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
    extra = set(item) - {"tag", "clinically_significant", "note"}
    if extra:
        raise FeedbackError(f"error tag has unknown keys {sorted(extra)}; allowed: tag, clinically_significant, note")
    if item.get("tag") not in ERROR_TAGS:
        raise FeedbackError(f"unknown error tag {item.get('tag')!r}; use one of {', '.join(ERROR_TAGS)}")
    if not isinstance(item.get("clinically_significant"), bool):
        raise FeedbackError(f"error tag {item['tag']!r} needs clinically_significant: true or false")
    out = {"tag": item["tag"], "clinically_significant": item["clinically_significant"]}
    if item.get("note"):
        out["note"] = _text("note", item["note"])
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
        self.image_metadata = sanitize_metadata(self.image_metadata)
        try:
            stamp = datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError):
            raise FeedbackError(f"created_at must be an ISO-8601 time, got {self.created_at!r}") from None
        if stamp.tzinfo is None:
            raise FeedbackError(f"created_at needs a time zone (UTC), got {self.created_at!r}")
        self.created_at = stamp.astimezone(timezone.utc).isoformat(timespec="seconds")
        if self.schema_version != SCHEMA_VERSION:
            raise FeedbackError(f"schema_version {self.schema_version!r} is not {SCHEMA_VERSION}; migrate the record first")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeedbackRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def apply_verdicts(report: str, verdicts: list[dict]) -> str:
    """The report with 'edit' sentences replaced by their edited_text and 'reject' sentences removed."""
    for v in verdicts:
        if v["verdict"] != "accept":
            report = report.replace(v["sentence"], v.get("edited_text", ""), 1)
    return re.sub(r"[ \t]{2,}", " ", report).strip()


def reviewer_target(record: FeedbackRecord) -> str | None:
    """The reviewer's version of the report when it differs from the model's final report, else None."""
    norm = lambda s: " ".join(s.split())  # noqa: E731 - whitespace-only edits are not corrections
    if record.corrected_report.strip() and norm(record.corrected_report) != norm(record.final_report):
        return record.corrected_report
    if any(v["verdict"] != "accept" for v in record.sentence_verdicts):
        fixed = apply_verdicts(record.final_report, record.sentence_verdicts)
        return fixed if norm(fixed) != norm(record.final_report) else None
    return None


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction; BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout),
    so two writers never deadlock upgrading a read lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# from-version -> function upgrading the open database by one version, run inside the opening transaction;
# it must also bring stored rows (and their schema_version column) up to the new record format.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}
_COLUMNS = [f.name for f in fields(FeedbackRecord)]


class FeedbackStore:
    """SQLite feedback store in `data_dir`; safe to share between threads (one connection per thread)."""

    def __init__(self, data_dir: str | os.PathLike, *, create: bool = True, busy_timeout_s: float = 60.0,
                 allowed_image_refs: Collection[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        if not self.path.exists() and not create:
            raise FeedbackError(f"no feedback store at {self.path}; check --data-dir / MEDR2_DATA_DIR")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.busy_timeout_s = busy_timeout_s
        self.allowed_image_refs = None if allowed_image_refs is None else frozenset(allowed_image_refs)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._init_schema()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never reuse a connection across fork
            # autocommit mode (isolation_level=None): we issue BEGIN IMMEDIATE / COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every commit: durable, not just atomic
            conn.row_factory = sqlite3.Row
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    def _init_schema(self) -> None:
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # persistent in the file
        if mode.lower() != "wal":
            log.warning("SQLite refused WAL (journal_mode=%s, e.g. a network filesystem); still durable, less concurrent", mode)
        cols = ", ".join(f"{c} {'INTEGER' if c in _INT_FIELDS or c == 'demo' else 'TEXT'}" for c in _COLUMNS)
        with _immediate(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = SCHEMA_VERSION if row is None else row[0]
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            if version > SCHEMA_VERSION:
                raise FeedbackError(f"{self.path} has schema {version}, newer than this medr2 ({SCHEMA_VERSION}); upgrade medr2")
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))

    def submit(self, record: FeedbackRecord) -> int:
        """Store one record durably; returns its id once committed to disk."""
        if not isinstance(record, FeedbackRecord):
            raise FeedbackError(f"submit() takes a FeedbackRecord, got {type(record).__name__}")
        if self.allowed_image_refs is not None and record.image_ref not in (None, *self.allowed_image_refs):
            raise FeedbackError("image_ref is not one of the bundled examples; leave it empty for uploads")
        data = record.to_dict()
        values = [json.dumps(data[c], ensure_ascii=False) if c in _NESTED else data[c] for c in _COLUMNS]
        conn = self._conn()
        with _immediate(conn):
            cur = conn.execute(f"INSERT INTO feedback ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                               values)
        log.info("stored feedback record %d", cur.lastrowid)
        return int(cur.lastrowid)

    @staticmethod
    def _record(row: sqlite3.Row) -> FeedbackRecord:
        data = {c: row[c] for c in _COLUMNS}
        data.update({c: json.loads(row[c]) for c in _NESTED})
        data["demo"] = bool(data["demo"])
        return FeedbackRecord.from_dict(data)

    def get(self, record_id: int) -> FeedbackRecord:
        row = self._conn().execute("SELECT * FROM feedback WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise KeyError(f"no feedback record with id {record_id}")
        return self._record(row)

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def iter_records(self) -> Iterator[tuple[int, FeedbackRecord]]:
        """(id, record) in id order, streamed (one consistent snapshot in WAL mode)."""
        for row in self._conn().execute("SELECT * FROM feedback ORDER BY id"):
            yield int(row["id"]), self._record(row)

    def export(self, path: str | os.PathLike, format: str = "jsonl") -> int:  # noqa: A002 - CLI word
        """Write every record (plus its id) as JSONL or CSV (nested fields as JSON text); returns rows."""
        rows = ({"id": i, **r.to_dict()} for i, r in self.iter_records())
        return _write_rows(Path(path), rows, format, ["id", *_COLUMNS])

    def export_training(self, path: str | os.PathLike, as_: str = "sft", format: str = "jsonl") -> int:  # noqa: A002
        """Reviewer-corrected reports as training rows (see `training_rows`); returns rows written."""
        tail = ["completion"] if as_ == "sft" else ["chosen", "rejected"]
        columns = ["id", "image_sha256", "image_ref", "prompt", *tail]
        return _write_rows(Path(path), training_rows(self.iter_records(), as_), format, columns)

    def stats(self) -> dict:
        ratings, tags, significant, verdicts = Counter(), Counter(), Counter(), Counter()
        n = corrected = 0
        first = last = None
        for _, r in self.iter_records():
            n += 1
            corrected += reviewer_target(r) is not None
            ratings.update([r.rating] if r.rating else [])
            tags.update(t["tag"] for t in r.error_tags)
            significant.update(t["tag"] for t in r.error_tags if t["clinically_significant"])
            verdicts.update(v["verdict"] for v in r.sentence_verdicts)
            first, last = first or r.created_at, r.created_at
        mean = sum(k * v for k, v in ratings.items()) / sum(ratings.values()) if ratings else None
        return {"records": n, "corrected": corrected, "mean_rating": mean,
                "ratings": {str(k): ratings[k] for k in range(1, 6)}, "error_tags": dict(tags),
                "clinically_significant": dict(significant), "verdicts": dict(verdicts),
                "first": first, "last": last, "db": str(self.path)}

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def training_rows(records: Iterator[tuple[int, FeedbackRecord]], as_: str = "sft") -> Iterator[dict]:
    """SFT `{prompt, completion=reviewer report}` or DPO `{prompt, chosen=reviewer, rejected=model final}`.

    Only records the reviewer corrected (edited report, or edit/reject verdicts) qualify. Rows carry
    `image_sha256` (+ `image_ref` for bundled examples): images are not stored, join them back by hash.
    """
    if as_ not in ("sft", "dpo"):
        raise FeedbackError(f"unknown training format {as_!r}; use 'sft' or 'dpo'")
    for rid, rec in records:
        target = reviewer_target(rec)
        if target is None:
            continue
        row = {"id": rid, "image_sha256": rec.image_sha256, "image_ref": rec.image_ref, "prompt": rec.prompt}
        yield {**row, "completion": target} if as_ == "sft" else {**row, "chosen": target, "rejected": rec.final_report}


def _cell(value: Any) -> Any:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


def _write_rows(path: Path, rows: Iterator[dict], format: str, columns: list[str]) -> int:  # noqa: A002
    if format not in ("jsonl", "csv"):
        raise FeedbackError(f"unknown export format {format!r}; use 'jsonl' or 'csv'")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write then rename: readers never see half a file
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns) if format == "csv" else None
            if writer:
                writer.writeheader()
            for row in rows:
                if writer:
                    writer.writerow({k: _cell(v) for k, v in row.items()})
                else:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_export(path: str | os.PathLike) -> list[tuple[int, FeedbackRecord]]:
    """Read back an `export()` file (.jsonl or .csv) as (id, record) pairs."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            rows = []
            for raw in csv.DictReader(fh):
                row = {k: (json.loads(v) if v else None) if k in (*_NESTED, *_INT_FIELDS, "id", "demo")
                       else (v or None) if k in _OPTIONAL_STR else v for k, v in raw.items()}
                rows.append(row)
        else:
            rows = [json.loads(line) for line in fh if line.strip()]
    return [(int(r.pop("id")), FeedbackRecord.from_dict(r)) for r in rows]


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDR2_DATA_DIR") or "medr2_data")


def maybe_start_hub_sync(store: FeedbackStore, every_minutes: float = 10.0) -> Any:
    """Push a JSONL export to a private Hub dataset every few minutes, if configured; else None.

    Configured by env `MEDR2_FEEDBACK_REPO` (e.g. `my-lab/medr2-feedback`) plus a token (`HF_TOKEN`
    or a `huggingface-cli login`). Off by default: uploading feedback is the deployer's decision.
    """
    repo = os.environ.get("MEDR2_FEEDBACK_REPO", "").strip()
    if not repo:
        return None
    from huggingface_hub import CommitScheduler, get_token  # lazy: only deployments that sync pay for it

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        log.warning("MEDR2_FEEDBACK_REPO is set but no Hugging Face token was found; Hub sync is off")
        return None
    folder = store.data_dir / "hub_sync"
    folder.mkdir(parents=True, exist_ok=True)

    class _ExportingScheduler(CommitScheduler):
        def push_to_hub(self):  # refresh the export under the scheduler's lock, then let it upload
            with self.lock:
                store.export(folder / "feedback.jsonl")
            return super().push_to_hub()

    log.info("syncing feedback to private dataset %s every %.0f min", repo, every_minutes)
    return _ExportingScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, every=every_minutes,
                               private=True, token=token, allow_patterns=["*.jsonl"])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (see medr2.cli)
        raise FeedbackError(f"{message} (see `{self.prog} --help`)")


def cli_feedback(argv: list[str]) -> int:
    """`medr2 feedback export|stats`: export reviewer feedback or print summary statistics as JSON."""
    parser = _Parser(prog="medr2 feedback", description=cli_feedback.__doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{export,stats}")
    exp = sub.add_parser("export", help="write all feedback as JSONL/CSV, or corrected reports as SFT/DPO rows")
    stats = sub.add_parser("stats", help="print counts, ratings and error tags as JSON")
    for p in (exp, stats):
        p.add_argument("--data-dir", type=Path, default=None, help="feedback folder (default: $MEDR2_DATA_DIR or ./medr2_data)")
    exp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="file format")
    exp.add_argument("--as", dest="as_", choices=("sft", "dpo"), default=None, help="training rows instead of records")
    exp.add_argument("--out", type=Path, required=True, help="output file")
    try:
        args = parser.parse_args(argv)
        store = FeedbackStore(args.data_dir or default_data_dir(), create=False)
        try:
            if args.action == "stats":
                print(json.dumps(store.stats(), indent=2))
                return 0
            if args.as_:
                n = store.export_training(args.out, as_=args.as_, format=args.format)
            else:
                n = store.export(args.out, format=args.format)
            print(f"wrote {n} rows to {args.out}")
            return 0
        finally:
            store.close()
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (FeedbackError, OSError, sqlite3.Error) as exc:
        print(f"medr2 feedback: {exc}", file=sys.stderr)
        return 2
