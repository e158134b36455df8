"""Reviewer feedback store: validation, privacy, durability under SIGKILL, concurrency, exports, CLI."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from medr2.feedback import store as fb
from medr2.feedback.store import FeedbackError, FeedbackRecord, FeedbackStore, cli_feedback, read_export
from medr2.feedback.tables import uncell

ROOT = Path(__file__).resolve().parents[1]
SHA = hashlib.sha256(b"phantom").hexdigest()
FINAL = "Findings: The heart is enlarged. Small left pleural effusion. Impression: Cardiomegaly."


def make(**kw) -> FeedbackRecord:
    base = dict(image_sha256=SHA, final_report=FINAL, model_id="assets/medr2-tiny", weights_sha256="ab" * 32,
                model_output="<think><perception>heart: big</perception></think><report>" + FINAL + "</report>",
                draft_report="Findings: The heart is enlarged. Impression: Cardiomegaly.", prompt="Report this CXR.")
    return FeedbackRecord(**{**base, **kw})


def full_record() -> FeedbackRecord:
    return make(
        reviewer="dr_a", rating=2, reasoning_rating="4", saliency_rating=3, comment='Effusion is "right", not left; é, 日本',
        corrected_report="Findings: The heart is enlarged.\nSmall right pleural effusion. Impression: Cardiomegaly, effusion.",
        sentence_verdicts=[{"sentence": "The heart is enlarged.", "verdict": "accept"},
                           {"sentence": "Small left pleural effusion.", "verdict": "edit",
                            "edited_text": "Small right pleural effusion."}],
        error_tags=[{"tag": "wrong_location", "clinically_significant": True, "note": "side"},
                    {"tag": "omission", "clinically_significant": False}],
        labels={"draft": {"Cardiomegaly": 1, "Pleural Effusion": None},
                "final": {"Cardiomegaly": 1, "Pleural Effusion": 1.0}, "reviewer": {"Pleural Effusion": float("nan")}},
        image_metadata={"Modality": "CR", "view_position": "PA", "Rows": 2140, "PixelSpacing": (0.1, 0.1)},
        image_ref="phantom_cardiomegaly_01.png", demo=True)


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "data")
    yield s
    s.close()


def test_submit_get_round_trip_and_normalisation(store):
    rec = full_record()
    rid = store.submit(rec)
    got = store.get(rid)
    assert got == rec and store.count() == 1
    assert got.reasoning_rating == 4 and got.labels["reviewer"] == {"Pleural Effusion": None}
    assert got.image_metadata["PixelSpacing"] == [0.1, 0.1]
    assert got.created_at.endswith("+00:00")
    assert [i for i, _ in store.iter_records()] == [rid]
    with pytest.raises(KeyError, match="no feedback record with id 999"):
        store.get(999)


def test_sqlite_settings(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
    assert [tuple(r) for r in conn.execute("SELECT version FROM schema_version")] == [(fb.SCHEMA_VERSION,)]


@pytest.mark.parametrize("kw, match", [
    ({"rating": 6}, "rating must be an integer from 1 to 5"),
    ({"rating": 0}, "rating must be an integer from 1 to 5"),
    ({"rating": True}, "rating must be an integer"),
    ({"saliency_rating": 4.5}, "saliency_rating must be an integer"),
    ({"error_tags": [{"tag": "typo", "clinically_significant": True}]}, "unknown error tag 'typo'"),
    ({"error_tags": [{"tag": "omission"}]}, "needs clinically_significant"),
    ({"error_tags": [{"tag": "omission", "clinically_significant": 1}]}, "needs clinically_significant"),
    ({"sentence_verdicts": [{"sentence": "A.", "verdict": "maybe"}]}, "unknown verdict 'maybe'"),
    ({"sentence_verdicts": [{"sentence": "A.", "verdict": "edit"}]}, "needs edited_text"),
    ({"sentence_verdicts": [{"sentence": "A.", "verdict": "accept", "edited_text": "B."}]}, "only allowed with verdict 'edit'"),
    ({"sentence_verdicts": [{"sentence": "A.", "verdict": "accept", "score": 1}]}, "unknown keys"),
    ({"sentence_verdicts": "A."}, "must be a list"),
    ({"comment": "x" * (fb.MAX_TEXT_CHARS + 1)}, "comment is 20001 characters; the limit is 20000"),
    ({"corrected_report": 5}, "corrected_report must be text"),
    ({"image_sha256": "abc"}, "image_sha256 must be 64 hex digits"),
    ({"created_at": "2026-01-01T10:00:00"}, "needs a time zone"),
    ({"created_at": "yesterday"}, "ISO-8601"),
    ({"image_ref": "../uploads/John_Doe.dcm"}, "bare example file name"),
    ({"labels": {"draft": {"Edema": 2}}}, "must be 1, 0, -1 or null"),
    ({"labels": {"gold": {}}}, "keys among draft, final, reviewer"),
    ({"image_metadata": ["Modality"]}, "image_metadata must be a dict"),
])
def test_validation_errors_name_the_problem(kw, match):
    with pytest.raises(FeedbackError, match=match):
        make(**kw)


def test_identifiers_never_stored(tmp_path):
    phi = {"PatientName": "Doe^John", "PatientID": "123-45-6789", "PatientBirthDate": "19500101",
           "InstitutionName": "St Elsewhere", "AccessionNumber": "ACC999", "StudyDate": "20240101",
           "ReferringPhysicianName": "House^Greg", "Doe^Jane": 1}
    meta = {**phi, "Modality": "DX", "ViewPosition": "PA", "Rows": 512,
            "BodyPartExamined": "x" * 500, "WindowCenter": {"nested": "Doe^John"}}
    rec = make(image_metadata=meta)
    assert rec.image_metadata == {"Modality": "DX", "ViewPosition": "PA", "Rows": 512}
    store = FeedbackStore(tmp_path)
    store.submit(rec)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.sqlite3*"))
    for value in ("Doe^John", "123-45-6789", "St Elsewhere", "ACC999", "House^Greg", "Doe^Jane", "PatientName"):
        assert value.encode() not in raw, value


def test_imaging_metadata_passes_unchanged():
    """The allow-list must accept everything medr2.imaging.loader emits (its keys are snake_case)."""
    from pydicom.data import get_testdata_file

    from medr2.imaging.loader import load_image

    emitted = {"rows": 2140, "columns": 1760, "bits_stored": 15, "number_of_frames": 1, "transfer_syntax":
               "JPEG 2000 Image Compression", "modality": "CR", "view_position": "PA",
               "photometric_interpretation": "MONOCHROME1", "body_part": "CHEST"}
    assert fb.sanitize_metadata(emitted) == emitted
    real = load_image(get_testdata_file("CT_small.dcm")).metadata  # bundled with pydicom, read locally
    assert fb.sanitize_metadata(real) == real and "modality" in real


def test_image_ref_only_for_bundled_examples(tmp_path):
    store = FeedbackStore(tmp_path, allowed_image_refs={"phantom_01.png"})
    assert store.get(store.submit(make(image_ref="phantom_01.png"))).image_ref == "phantom_01.png"
    store.submit(make(image_ref=None))
    with pytest.raises(FeedbackError, match="not one of the bundled examples") as err:
        store.submit(make(image_ref="Doe_John_chest.dcm"))
    assert "Doe" not in str(err.value)  # an upload's name may be an identifier: never echoed
    assert store.count() == 2


CHILD_LOOP = textwrap.dedent("""
    import sys
    from medr2.feedback.store import FeedbackRecord, FeedbackStore
    store = FeedbackStore(sys.argv[1])
    i = int(sys.argv[2])
    while True:
        rid = store.submit(FeedbackRecord(image_sha256=f"{i:064x}", final_report="r" * 3000, comment=f"rec {i}"))
        print(rid, i, flush=True)  # printed only after submit() returned, i.e. after COMMIT
        i += 1
""")


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_sigkill_mid_write_loses_nothing_committed(tmp_path):
    data = tmp_path / "data"
    confirmed: list[tuple[int, int]] = []
    for round_, wait_for in enumerate((5, 17, 31)):  # kill at different points; each restart recovers the WAL
        child = subprocess.Popen([sys.executable, "-c", CHILD_LOOP, str(data), str(round_ * 1000)],
                                 stdout=subprocess.PIPE, env=_child_env(), text=True)
        lines = [child.stdout.readline() for _ in range(wait_for)]
        os.kill(child.pid, signal.SIGKILL)  # almost surely inside the next submit()
        child.wait(timeout=30)
        lines += child.stdout.readlines()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        confirmed += [tuple(map(int, ln.split())) for ln in lines if ln.endswith("\n")]
    store = FeedbackStore(data)
    assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(confirmed) >= 53
    for rid, i in confirmed:
        assert store.get(rid).comment == f"rec {i}"
    assert store.count() >= len(confirmed)
    store.close()


CHILD_BATCH = textwrap.dedent("""
    import os, sys, time
    from medr2.feedback.store import FeedbackRecord, FeedbackStore
    store = FeedbackStore(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.005)
    for j in range(25):
        store.submit(FeedbackRecord(image_sha256="b" * 64, final_report="r", comment=f"p{sys.argv[3]}-{j}"))
""")


def test_concurrent_threads_and_processes_all_stored(tmp_path):
    data, go = tmp_path / "data", tmp_path / "go"
    store = FeedbackStore(data)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_BATCH, str(data), str(go), str(k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), text=True)
             for k in range(4)]
    assert all(p.stdout.readline() == "ready\n" for p in procs)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for j in range(25):
                store.submit(make(comment=f"t{t}-{j}"))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    go.touch()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results = [p.communicate(timeout=120) for p in procs]
    assert errors == []
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
    comments = sorted(r.comment for _, r in store.iter_records())
    expected = sorted([f"t{t}-{j}" for t in range(8) for j in range(25)] + [f"p{k}-{j}" for k in range(4) for j in range(25)])
    assert comments == expected and store.count() == 300
    store.close()


def test_jsonl_export_round_trips_and_csv_is_not_read_back(store, tmp_path):
    recs = [full_record(), make(), make(reviewer="", weights_sha256=None, comment="line1\nline2, \"quoted\"")]
    ids = [store.submit(r) for r in recs]
    out = tmp_path / "all.jsonl"
    assert store.export(out) == 3
    assert read_export(out) == list(zip(ids, recs))
    assert store.export(tmp_path / "all.csv", format="csv") == 3
    with pytest.raises(FeedbackError, match="only the JSONL export can be read back"):
        read_export(tmp_path / "all.csv")
    assert not list(tmp_path.glob(".*.tmp"))


def _csv(path):
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_export_is_flat_one_row_per_record_with_companions_and_dictionary(store, tmp_path):
    study = {"study_id": "s1", "case_id": "case-002", "source": "S1", "design": "ab", "side": "B", "seconds": 41.5,
             "edit_distance": 3, "locked": True, "revision": 2, "preference": "this", "order_index": 4,
             "items": {"overall": 2, "clarity": "na"},
             "edit_reasons": [{"sentence": "Small left pleural effusion.", "edited_text": "Small right pleural effusion.",
                               "change": "edit", "reason": "content"},
                              {"sentence": "", "edited_text": "No pneumothorax.", "change": "add", "reason": "style"}]}
    first = store.submit(full_record())
    second = store.submit(make(rating=4, prompt="Another prompt.", study=study, reviewer="r2"))
    third = store.submit(make(comment="=1+1"))
    out = tmp_path / "reviews.csv"
    assert store.export(out, format="csv") == 3
    rows = _csv(out)
    assert [int(r["id"]) for r in rows] == [first, second, third]
    header = list(rows[0])
    assert not {"prompt", "model_id", "weights_sha256", "sentence_verdicts", "error_tags", "labels", "image_metadata",
                "study"} & set(header)
    assert not any(v.lstrip("'").startswith(("{", "[")) for r in rows for v in r.values())  # no JSON-packed cell
    a, b, c = rows
    assert (a["rating"], a["reasoning_rating"], a["corrected"], a["n_sentences"], a["n_accept"], a["n_edit"]) == \
        ("2", "4", "1", "2", "1", "1")
    assert (a["tag_wrong_location"], a["significant_wrong_location"], a["note_wrong_location"]) == ("1", "1", "side")
    assert (a["tag_omission"], a["significant_omission"], a["tag_false_finding"]) == ("1", "0", "0")
    assert (a["label_final_pleural_effusion"], a["label_draft_cardiomegaly"], a["label_reviewer_pleural_effusion"]) == \
        ("1", "1", "")
    assert (a["meta_modality"], a["meta_pixelspacing_1"], a["meta_pixelspacing_2"], a["meta_rows"]) == \
        ("CR", "0.1", "0.1", "2140")
    assert a["study_case_id"] == "" and a["n_edits_content"] == "" and c["meta_modality"] == ""
    assert (b["study_case_id"], b["study_side"], b["study_locked"], b["study_seconds"], b["item_overall"],
            b["item_clarity"], b["n_edits_content"], b["n_edits_style"]) == ("case-002", "B", "1", "41.5", "2", "na", "1", "1")
    assert c["comment"] == "'=1+1"  # a formula stays text in a spreadsheet
    # prompt and model configuration: once per distinct configuration, joined by config_id
    configs = {r["config_id"]: r for r in _csv(tmp_path / "reviews.configs.csv")}
    assert len(configs) == 2 and a["config_id"] == c["config_id"] != b["config_id"]
    assert configs[b["config_id"]]["prompt"] == "Another prompt." and configs[a["config_id"]]["model_id"] == "assets/medr2-tiny"
    sentences = _csv(tmp_path / "reviews.sentences.csv")
    assert [(int(r["id"]), r["sentence_no"], r["verdict"], r["edited_text"]) for r in sentences] == [
        (first, "1", "accept", ""), (first, "2", "edit", "Small right pleural effusion.")]
    edits = _csv(tmp_path / "reviews.edits.csv")
    assert [(int(r["id"]), r["edit_no"], r["change"], r["reason"]) for r in edits] == [
        (second, "1", "edit", "content"), (second, "2", "add", "style")]
    dictionary = _csv(tmp_path / "reviews.dictionary.csv")
    described = {(r["file"], r["column"]) for r in dictionary if r["meaning"].strip()}
    for name, cols in (("reviews.csv", header), ("reviews.configs.csv", list(next(iter(configs.values())))),
                       ("reviews.sentences.csv", list(sentences[0])), ("reviews.edits.csv", list(edits[0]))):
        assert {(name, col) for col in cols} <= described, name
    meaning = {r["column"]: r["meaning"] for r in dictionary if r["file"] == "reviews.csv"}
    assert "clinically significant" in meaning["significant_omission"] and "'pleural_effusion'" in meaning["label_final_pleural_effusion"]


def test_csv_export_neutralises_spreadsheet_formulas(store, tmp_path):
    hostile = ['=HYPERLINK("http://x.example","click")', "+1+1", "-2", "@SUM(A1)", "'quoted", "plain"]
    for c in hostile:
        store.submit(make(comment=c, reviewer=c if c != "-2" else "r"))
    out = tmp_path / "all.csv"
    store.export(out, format="csv")
    rows = _csv(out)
    cells = [cell for row in rows for cell in row.values()]
    assert cells and not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert [uncell(r["comment"]) for r in rows] == hostile


def test_export_training_only_reviewer_corrections(store, tmp_path):
    accepted = store.submit(make(corrected_report=FINAL, rating=5))
    store.submit(make(corrected_report="  " + FINAL.replace(" ", "  ") + "\n"))  # whitespace only
    corrected = store.submit(full_record())
    rejected = store.submit(make(sentence_verdicts=[{"sentence": "Small left pleural effusion.", "verdict": "reject"}]))
    assert store.export_training(tmp_path / "sft.jsonl", as_="sft") == 2
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sft] == [corrected, rejected] and accepted not in [r["id"] for r in sft]
    assert sft[0]["completion"] == full_record().corrected_report and sft[0]["image_ref"] == "phantom_cardiomegaly_01.png"
    assert sft[1]["completion"] == "Findings: The heart is enlarged. Impression: Cardiomegaly."
    assert set(sft[0]) == {"id", "image_sha256", "image_ref", "prompt", "completion"}
    assert store.export_training(tmp_path / "dpo.csv", as_="dpo", format="csv") == 2
    header, first = (tmp_path / "dpo.csv").read_text().splitlines()[:2]
    assert header == "id,image_sha256,image_ref,prompt,chosen,rejected"
    dpo = [json.loads(line) for line in (store.export_training(tmp_path / "d.jsonl", as_="dpo") and
                                         (tmp_path / "d.jsonl").read_text().splitlines())]
    assert all(r["rejected"] == FINAL and r["chosen"] != FINAL and r["prompt"] == "Report this CXR." for r in dpo)
    with pytest.raises(FeedbackError, match="unknown training format 'kto'"):
        store.export_training(tmp_path / "x", as_="kto")
    with pytest.raises(FeedbackError, match="unknown export format 'xml'"):
        store.export(tmp_path / "x", format="xml")


def test_schema_migration_hook_and_newer_schema(tmp_path, monkeypatch):
    FeedbackStore(tmp_path).close()
    with sqlite3.connect(tmp_path / fb.DB_NAME) as conn:
        conn.execute("UPDATE schema_version SET version = 1")
    calls = []
    monkeypatch.setitem(fb.MIGRATIONS, 1, lambda conn: calls.append(conn.in_transaction))
    store = FeedbackStore(tmp_path)
    assert calls == [True]
    assert store._conn().execute("SELECT version FROM schema_version").fetchone()[0] == fb.SCHEMA_VERSION
    store.close()
    with sqlite3.connect(tmp_path / fb.DB_NAME) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(FeedbackError, match="schema 99, newer than this medr2"):
        FeedbackStore(tmp_path)


def test_cli_export_and_stats(tmp_path, capsys, monkeypatch):
    store = FeedbackStore(tmp_path / "d")
    store.submit(full_record())
    store.submit(make(rating=4))
    store.close()
    assert cli_feedback(["export", "--data-dir", str(tmp_path / "d"), "--format", "csv", "--out", str(tmp_path / "a.csv")]) == 0
    assert len(_csv(tmp_path / "a.csv")) == 2 and "a.dictionary.csv" in capsys.readouterr().out
    assert cli_feedback(["export", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert len(read_export(tmp_path / "a.jsonl")) == 2
    monkeypatch.setenv("MEDR2_DATA_DIR", str(tmp_path / "d"))
    assert cli_feedback(["export", "--as", "dpo", "--out", str(tmp_path / "dpo.jsonl")]) == 0
    assert len((tmp_path / "dpo.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert cli_feedback(["stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 2 and stats["corrected"] == 1 and stats["mean_rating"] == 3.0
    assert stats["error_tags"] == {"wrong_location": 1, "omission": 1}
    assert stats["clinically_significant"] == {"wrong_location": 1} and stats["verdicts"] == {"accept": 1, "edit": 1}


@pytest.mark.parametrize("argv, match", [
    (["stats", "--data-dir", "{tmp}/missing"], "no feedback store at"),
    (["export", "--data-dir", "{tmp}", "--format", "xml", "--out", "x"], "invalid choice: 'xml'"),
    (["export", "--data-dir", "{tmp}"], "--out"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_user_errors_one_line_exit_2(tmp_path, capsys, argv, match):
    FeedbackStore(tmp_path).close()
    assert cli_feedback([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "missing").exists()


def test_hub_sync_off_unless_configured(store, monkeypatch):
    monkeypatch.delenv("MEDR2_FEEDBACK_REPO", raising=False)
    assert fb.maybe_start_hub_sync(store) is None
    monkeypatch.setenv("MEDR2_FEEDBACK_REPO", "lab/feedback")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert fb.maybe_start_hub_sync(store) is None  # repo but no token: stays off, nothing contacted


def test_store_shared_across_threads_uses_one_connection_each(store):
    seen = []
    t = threading.Thread(target=lambda: seen.append(store._conn()))
    t.start()
    t.join()
    assert seen[0] is not store._conn() and store._conn() is store._conn()


def test_a_schema_1_store_is_migrated_and_its_records_stay_readable(tmp_path):
    """A store written before `submission_key` and `study` existed: opened by this medr2, its rows read back."""
    v1_columns = [c for c in fb._COLUMNS if c not in ("submission_key", "study")]
    rec = full_record().to_dict()
    rec["schema_version"] = 1
    with sqlite3.connect(tmp_path / fb.DB_NAME) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(f"CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(v1_columns)})")
        conn.execute(f"INSERT INTO feedback ({', '.join(v1_columns)}) VALUES ({', '.join('?' * len(v1_columns))})",
                     [json.dumps(rec[c]) if c in fb._NESTED else rec[c] for c in v1_columns])
    store = FeedbackStore(tmp_path)
    (rid, old), = list(store.iter_records())
    assert old.corrected_report == rec["corrected_report"] and old.study is None and old.submission_key is None
    assert old.schema_version == fb.SCHEMA_VERSION
    # an export line written by schema 1 (no new keys) reads back too
    line = {k: v for k, v in rec.items() if k not in ("submission_key", "study")}
    assert FeedbackRecord.from_dict(line).study is None
    # the new key: a resent review is stored once; a study review is revised in place until it is locked
    keyed = make(rating=2)
    keyed.submission_key = "k1"
    assert store.put(keyed)[1] == "stored" and store.put(keyed) == (store.find("k1")[0], "duplicate")
    study = make(rating=3)
    study.submission_key, study.study = "k2", {"case_id": "case-001", "source": "S1", "locked": False}
    first, _ = store.put(study, revise=True)
    study.rating, study.study = 5, {**study.study, "locked": True}
    assert store.put(study, revise=True) == (first, "revised") and store.get(first).rating == 5
    with pytest.raises(FeedbackError, match="locked"):
        store.put(study, revise=True)
    assert store.count() == 3
    store.close()
