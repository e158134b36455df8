"""Readers of a study: sign-in, their own randomised case order, resume, revise until locked, timing.

- `readers.json` in the study folder maps a reader name (a handle) to how that reader signs in: a salted
  PBKDF2-SHA256 password hash (`check_password` is what gradio's `auth=` calls; plain passwords are never stored)
  and / or a Hugging Face username allowed in through "Sign in with Hugging Face" on a Space (`hf_user_reader`) — and
  an admin flag. Either way the reviews are stored under the handle.
- `reader_order`: every reader gets the whole case list, shuffled by `random.Random(f"{seed}/{reader}")` with the
  seed recorded in `study.json`, so the order is reproducible from the study folder; `ab_sides` likewise puts the
  two sources of an A/B study left / right, and shuffles the N sources of a multi study, per reader and case.
- `ReviewStore` keeps one review per reader x case x source in the study's SQLite feedback store
  (`responses/feedback.sqlite3`: WAL, one transaction per save, durable once `save` returns): saving again
  revises it until the reader locks the case. Each review carries the seconds from opening the case to saving
  (summed over visits) and the word edit distance of the correction; its verdicts are computed from the
  correction on the server, and so are its edits (one per changed, deleted or added sentence), each stored with
  the reader's reason (content or style). A reader only ever reads back their own reviews.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import secrets
from datetime import datetime, timezone
from pathlib import Path

from medr2.feedback.record import EDIT_REASONS
from medr2.feedback.store import FeedbackError, FeedbackRecord, FeedbackStore
from medr2.study.manifest import StudyError, StudyFolder

PBKDF2_ITERATIONS = 200_000
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# ---------------------------------------------------------------- readers file
def _hash(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations).hex()


def load_readers(study_dir: str | Path) -> dict:
    path = Path(study_dir) / "readers.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_handle(name: str, what: str) -> None:
    if not name or len(name) > 64 or set(name) - _NAME_OK:
        raise StudyError(f"{what} is 1-64 letters, digits, '.', '_' or '-', got {name!r}")


def _write_readers(study_dir: str | Path, readers: dict) -> None:
    path = Path(study_dir) / "readers.json"
    tmp = path.with_name(f".readers.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(readers, indent=1), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def add_reader(study_dir: str | Path, name: str, password: str | None = None, admin: bool = False,
               hf_user: str | None = None) -> None:
    """Add a reader (a handle, not a person's name) who signs in with a password (hashed here) and / or the
    Hugging Face account `hf_user` (a Space served with `--sign_in hf`). For a reader already in the file, the
    sign-in given is set or replaced, the other one kept, and the admin flag set as given."""
    _check_handle(name, "a reader name (a handle, not a person's name)")
    if password is None and hf_user is None:
        raise StudyError("give the reader a password or a Hugging Face username (--hf_users)")
    if password is not None and len(password) < 8:
        raise StudyError("a password needs at least 8 characters")
    readers = load_readers(study_dir)
    entry: dict = {**readers.get(name, {}), "admin": bool(admin)}
    if password is not None:
        salt = secrets.token_bytes(16)
        entry.update(salt=salt.hex(), iterations=PBKDF2_ITERATIONS, hash=_hash(password, salt))
    if hf_user is not None:
        _check_handle(hf_user, "a Hugging Face username")
        taken = hf_user_reader(study_dir, hf_user)
        if taken not in (None, name):  # one account, one reader: else whose reviews would it write?
            raise StudyError(f"Hugging Face user {hf_user} already signs in as reader {taken}")
        entry["hf_user"] = hf_user
    readers[name] = entry
    _write_readers(study_dir, readers)


def check_password(study_dir: str | Path, name: str, password: str) -> bool:
    entry = load_readers(study_dir).get(name)
    if entry is None or "hash" not in entry:  # unknown, or a reader who signs in with Hugging Face only
        _hash(password or "", b"0" * 16)  # same work for unknown names: no timing hint of who is a reader
        return False
    good = _hash(password or "", bytes.fromhex(entry["salt"]), int(entry["iterations"]))
    return hmac.compare_digest(good, entry["hash"])


def hf_user_reader(study_dir: str | Path, username: str | None) -> str | None:
    """The reader handle allow-listed for this Hugging Face username (usernames compare case-insensitively, as
    the Hub treats them), or None."""
    if not username:
        return None
    want = username.casefold()
    for name, entry in load_readers(study_dir).items():
        if (entry.get("hf_user") or "").casefold() == want:
            return name
    return None


def is_admin(study_dir: str | Path, name: str | None) -> bool:
    return bool(name) and bool(load_readers(study_dir).get(name, {}).get("admin"))


# ---------------------------------------------------------------- order and sides
def reader_order(study: StudyFolder, reader: str) -> list[str]:
    order = list(study.case_ids)
    random.Random(f"{study.seed}/{reader}").shuffle(order)
    return order


def ab_sides(study: StudyFolder, reader: str, case_id: str) -> list[str]:
    """The source ids in the order the page shows them (A, B, C …): A/B designs put the two sources left / right
    by a coin drawn per reader and case; multi designs shuffle every source per reader and case; single designs
    keep the study order. Reproducible from the study's seed."""
    sources = study.sources
    rng = random.Random(f"{study.seed}/{reader}/{case_id}")
    if study.design == "ab":
        return sources[::-1] if rng.random() < 0.5 else sources
    if study.design == "multi":
        rng.shuffle(sources)
    return sources


# ---------------------------------------------------------------- reviews
def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of two texts (insert / delete / substitute a word)."""
    x, y = a.split(), b.split()
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i]
        for j, wy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy)))
        prev = cur
    return prev[-1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ReviewStore:
    """One study's reviews (see the module doc)."""

    def __init__(self, study: StudyFolder) -> None:
        self.study = study
        self.store = FeedbackStore(study.root / "responses")

    def key(self, reader: str, case_id: str, source: str) -> str:
        return f"{self.study.study_id}/{reader}/{case_id}/{source}"

    def get(self, reader: str, case_id: str, source: str) -> FeedbackRecord | None:
        found = self.store.find(self.key(reader, case_id, source))
        return None if found is None else found[1]

    def case_state(self, reader: str, case_id: str) -> str:
        """'new', 'saved' (every source reviewed, still revisable) or 'locked'; partial saves count as 'new'."""
        recs = [self.get(reader, case_id, s) for s in self.study.sources]
        if any(r is None for r in recs):
            return "new"
        return "locked" if all((r.study or {}).get("locked") for r in recs) else "saved"

    def progress(self, reader: str) -> tuple[int, int, int]:
        """(cases saved or locked, cases locked, cases in the study) for this reader."""
        states = [self.case_state(reader, c) for c in self.study.case_ids]
        return sum(s != "new" for s in states), states.count("locked"), len(states)

    def save(self, reader: str, case_id: str, source: str, *, side: str | None, correction: str,
             items: dict, errors: list[str], significant: list[str], edit_reasons: dict[str, str] | str | None,
             preference: str | None, comment: str, opened_at: datetime, order_index: int, lock: bool = False) -> int:
        """Store or revise one review (FeedbackError / StudyError with a one-line reason); returns its id.

        The edits are computed here from the correction (`medr2.app.views.sentence_edits`), whatever way it was
        entered; `edit_reasons` gives each one's reason ('content' | 'style') keyed by `edit_key`, or one reason
        for all of them. A missing reason is refused, naming the edit."""
        from medr2.app.views import edit_key, edit_label, reviewed_report, sentence_edits
        from medr2.labeler.findings import label_report

        report = self.study.reports[(case_id, source)]
        correction, verdicts = reviewed_report(report, correction, [])
        unknown = set(significant) - set(errors)
        if unknown:
            raise StudyError(f"tick {', '.join(sorted(t.replace('_', ' ') for t in unknown))} as an error before "
                             "marking it clinically significant")
        reasons = []
        for n, edit in enumerate(sentence_edits(report, correction), 1):
            reason = edit_reasons if isinstance(edit_reasons, str) else (edit_reasons or {}).get(edit_key(edit))
            if reason not in EDIT_REASONS:
                raise StudyError(f"{edit_label(n, edit, cap=40)} — say whether it is about content or style")
            reasons.append({**edit, "reason": reason})
        old = self.get(reader, case_id, source)
        before = float((old.study or {}).get("seconds", 0.0)) if old else 0.0
        revision = int((old.study or {}).get("revision", 0)) + 1 if old else 1
        overall = items.get("overall")
        case = self.study.case(case_id)
        record = FeedbackRecord(
            image_sha256=case["image_sha256"], final_report=report, model_id=source, demo=False,
            corrected_report=correction, rating=overall if isinstance(overall, int) else None,
            sentence_verdicts=verdicts,
            error_tags=[{"tag": t, "clinically_significant": t in significant} for t in errors],
            comment=comment or "", labels={"final": label_report(report), "reviewer": label_report(correction)},
            reviewer=reader, submission_key=self.key(reader, case_id, source),
            study={"study_id": self.study.study_id, "case_id": case_id, "source": source, "design": self.study.design,
                   "side": side, "opened_at": opened_at.isoformat(timespec="seconds"),
                   "seconds": round(before + max(0.0, (_now() - opened_at).total_seconds()), 2),
                   "edit_distance": word_edit_distance(report, correction), "locked": bool(lock),
                   "revision": revision, "preference": preference, "items": items, "order_index": order_index,
                   "edit_reasons": reasons})
        rid, _ = self.store.put(record, revise=True)
        return rid

    def reviews(self, reader: str | None = None) -> list[tuple[int, FeedbackRecord]]:
        """This study's reviews (one reader's when `reader` is given), in id order."""
        prefix = f"{self.study.study_id}/"
        return [(i, r) for i, r in self.store.iter_records()
                if (r.submission_key or "").startswith(prefix) and (reader is None or r.reviewer == reader)]

    def close(self) -> None:
        self.store.close()


__all__ = ["FeedbackError", "ReviewStore", "ab_sides", "add_reader", "check_password", "hf_user_reader", "is_admin",
           "load_readers", "reader_order", "word_edit_distance"]
