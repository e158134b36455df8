"""Durable reviewer feedback: what radiologists say about a report, kept safely and turned into training data.

The app hands this module one `FeedbackRecord` per review (ratings, per-sentence verdicts, ReXVal/GREEN
error tags, the corrected report; validated in `medr2.feedback.record`). `FeedbackStore` writes it to SQLite in `<data_dir>/feedback.sqlite3`:
WAL journal + `synchronous=FULL` + one `BEGIN IMMEDIATE` transaction per submit, so a record whose
`submit()` returned survives a SIGKILL or power cut, and many browser users (threads) and processes can
submit at once (they queue on SQLite's lock for up to `busy_timeout_s`).

Privacy: the image is never stored, only its SHA-256 and metadata filtered through `METADATA_ALLOWED`
(unknown keys such as PatientName are dropped). Training on feedback therefore needs the original image,
found again by hash; `image_ref` may name a *bundled example* file (a phantom) so those rows are usable
on their own. It must stay None for user uploads, whose file names can carry identifiers: the store
accepts only bare file names and, when given `allowed_image_refs`, only those names.

Hands on: a JSONL export (whole records, re-readable), the analysis-ready CSV tables of `medr2.feedback.tables`
(one row per record, flat columns, companions and a data dictionary), SFT rows `{image_sha256, prompt, completion}` and DPO rows
`{image_sha256, prompt, chosen, rejected}` (`export_training`), and an optional periodic push of the
JSONL export to a private Hub dataset (`maybe_start_hub_sync`). CLI: `medr2 feedback export|stats`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import sqlite3
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from medr2.feedback.record import (  # noqa: F401  (re-exported: callers import these from medr2.feedback.store)
    _OPTIONAL_STR,
    ERROR_TAGS,
    LABEL_SETS,
    MAX_ITEMS,
    MAX_SHORT_CHARS,
    MAX_TEXT_CHARS,
    METADATA_ALLOWED,
    SCHEMA_VERSION,
    VERDICTS,
    FeedbackError,
    FeedbackRecord,
    sanitize_metadata,
)
from medr2.feedback.tables import COMPANIONS, cell, companion, write_tables

log = logging.getLogger(__name__)

DB_NAME = "feedback.sqlite3"
_NESTED = ("image_metadata", "sentence_verdicts", "error_tags", "labels", "study")
_INT_FIELDS = ("schema_version", "rating", "reasoning_rating", "saliency_rating")


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
def _add_submission_key_and_study(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE feedback ADD COLUMN submission_key TEXT")
    conn.execute("ALTER TABLE feedback ADD COLUMN study TEXT")
    conn.execute("UPDATE feedback SET schema_version = 2")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_submission_key_and_study}
_COLUMNS = [f.name for f in fields(FeedbackRecord)]


class FeedbackStore:
    """SQLite feedback store in `data_dir`; safe to share between threads (one connection per thread)."""

    def __init__(self, data_dir: str | os.PathLike, *, create: bool = True, busy_timeout_s: float = 60.0,
                 allowed_image_refs: Collection[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        if not self.path.exists() and not create:
            raise FeedbackError(f"no feedback store at {self.path}; check --data_dir / MEDR2_DATA_DIR")
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
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS feedback_submission_key ON feedback (submission_key) "
                         "WHERE submission_key IS NOT NULL")

    def submit(self, record: FeedbackRecord) -> int:
        """Store one record durably; returns its id once committed to disk (see `put` for records with a key)."""
        return self.put(record)[0]

    def put(self, record: FeedbackRecord, revise: bool = False) -> tuple[int, str]:
        """Store one record durably in one transaction; returns (id, 'stored' | 'duplicate' | 'revised').

        A record whose `submission_key` is already stored is not stored again: with `revise=False` the earlier
        id comes back as 'duplicate' (a review sent twice); with `revise=True` the stored record is replaced
        ('revised', same id), unless its study review was locked (FeedbackError)."""
        if not isinstance(record, FeedbackRecord):
            raise FeedbackError(f"submit() takes a FeedbackRecord, got {type(record).__name__}")
        if self.allowed_image_refs is not None and record.image_ref not in (None, *self.allowed_image_refs):
            raise FeedbackError("image_ref is not one of the bundled examples; leave it empty for uploads")
        data = record.to_dict()
        values = [json.dumps(data[c], ensure_ascii=False) if c in _NESTED else data[c] for c in _COLUMNS]
        conn = self._conn()
        with _immediate(conn):
            old = None
            if record.submission_key is not None:
                old = conn.execute("SELECT id, study FROM feedback WHERE submission_key = ?",
                                   (record.submission_key,)).fetchone()
            if old is not None and not revise:
                return int(old["id"]), "duplicate"
            if old is not None:
                if (json.loads(old["study"]) or {}).get("locked"):
                    raise FeedbackError("this review is locked and can no longer be changed")
                conn.execute(f"UPDATE feedback SET {', '.join(f'{c} = ?' for c in _COLUMNS)} WHERE id = ?",
                             [*values, old["id"]])
                status, rid = "revised", int(old["id"])
            else:
                cur = conn.execute(f"INSERT INTO feedback ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                                   values)
                status, rid = "stored", int(cur.lastrowid)
        log.info("%s feedback record %d", status, rid)
        return rid, status

    def find(self, submission_key: str) -> tuple[int, FeedbackRecord] | None:
        """The record stored under `submission_key`, or None."""
        row = self._conn().execute("SELECT * FROM feedback WHERE submission_key = ?", (submission_key,)).fetchone()
        return None if row is None else (int(row["id"]), self._record(row))

    @staticmethod
    def _record(row: sqlite3.Row) -> FeedbackRecord:
        data = {c: row[c] for c in _COLUMNS}
        data.update({c: json.loads(row[c]) if row[c] is not None else None for c in _NESTED})
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
        """Every record as JSONL (the whole record plus its id, re-readable with `read_export`) or as the
        analysis-ready CSV tables of `medr2.feedback.tables` (one row per record, companions, data dictionary);
        returns the number of records written."""
        if format == "csv":
            return write_tables(self.iter_records(), path)
        return _write_rows(Path(path), ({"id": i, **r.to_dict()} for i, r in self.iter_records()), format,
                           ["id", *_COLUMNS])

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
                    writer.writerow({k: cell(v) for k, v in row.items()})
                else:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_export(path: str | os.PathLike) -> list[tuple[int, FeedbackRecord]]:
    """Read back a JSONL `export()` file as (id, record) pairs (the CSV export is a flat table for analysis)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise FeedbackError(f"{path.name}: only the JSONL export can be read back; the CSV export is a flat table for "
                            "analysis (export again with --format jsonl)")
    with open(path, encoding="utf-8") as fh:
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


def cli_feedback(argv: list[str]) -> int:
    """`medr2 feedback export|stats`: export reviewer feedback or print summary statistics as JSON."""
    from medr2.cli import FlagParser, UsageError

    parser = FlagParser(prog="medr2 feedback", description=cli_feedback.__doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{export,stats}")
    exp = sub.add_parser("export", help="write all feedback as JSONL or analysis-ready CSV tables (with a data "
                                       "dictionary), or corrected reports as SFT/DPO rows")
    stats = sub.add_parser("stats", help="print counts, ratings and error tags as JSON")
    for p in (exp, stats):
        p.add_argument("--data_dir", type=Path, default=None, help="feedback folder (default: $MEDR2_DATA_DIR or ./medr2_data)")
    exp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="jsonl: whole records; csv: flat tables for analysis + data dictionary")
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
            extra = ""
            if args.format == "csv" and not args.as_:
                extra = " (+ " + ", ".join(companion(args.out, c).name for c in COMPANIONS) + ")"
            print(f"wrote {n} rows to {args.out}{extra}")
            return 0
        finally:
            store.close()
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, FeedbackError, OSError, sqlite3.Error) as exc:
        print(f"medr2 feedback: {exc}", file=sys.stderr)
        return 2
