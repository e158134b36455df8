"""The reader-study pages: a signed-in reader reviews frozen reports case by case; admins see the results.

`build_study_demo(study_dir, sign_in)` returns the gradio Blocks that `app.py --study STUDY_DIR` serves. Readers
sign in one of two ways (`SIGN_IN`):
- `password`: gradio's sign-in page, with `study_auth(study_dir)` as `auth=` (the readers file, hashed passwords);
- `hf`: "Sign in with Hugging Face" (`gr.LoginButton`) on a Space whose README sets `hf_oauth: true`; no `auth=`,
  and `hf_reader` maps the signed-in account (`gr.OAuthProfile`) to the reader allow-listed for it.
Every event resolves the reader from the request or the OAuth profile, never from the page, and refuses (one
line) anyone who is not a reader, so a reader can neither act as another nor read another reader's reviews; the
results tab is filled only for admins (the readers file's admin flag) and its handler refuses everyone else.

Blinding: the page draws only on `study.json` and `reports.jsonl` (neutral case ids, the image decoded to pixels,
the indication, report text); sources appear as "Report A" / "Report B" on sides drawn per reader and case
(`medr2.study.session.ab_sides`). Model paths, weights hashes, file names, captions and ground truth live in
`key.json`, which only the admin results read. Hands on: reviews to `medr2.study.session.ReviewStore`.
"""
from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from medr2.app import views as ui  # noqa: E402
from medr2.feedback.record import ERROR_TAGS, ITEM_NA  # noqa: E402
from medr2.feedback.store import FeedbackError  # noqa: E402
from medr2.study.manifest import StudyError, StudyFolder  # noqa: E402
from medr2.study.session import ReviewStore, ab_sides, check_password, hf_user_reader, is_admin, reader_order  # noqa: E402

SIGN_IN = ("password", "hf")  # gradio's sign-in page with the readers file, or Sign in with Hugging Face
SIDES = tuple("ABCDEF")  # one letter per report shown (MAX_SOURCES in medr2.study.manifest)
LIKERT_NA = [("1 poor", 1), ("2", 2), ("3", 3), ("4", 4), ("5 excellent", 5), ("N/A", ITEM_NA)]
TAG_CHOICES = [(t.replace("_", " "), t) for t in ERROR_TAGS]
REASON_CHOICES = [("content", "content"), ("style", "style")]
# Reason slots per report: one per changed sentence; past the last slot, its reason covers the remaining edits.
EDIT_SLOTS = 8


def preference_choices(n_sides: int, design: str) -> list[tuple[str, str]]:
    """The 'which is better / best' choices of a page with n reports (none for a single design)."""
    if design == "ab":
        return [("A is better", "A"), ("B is better", "B"), ("Equal", "equal")]
    if design == "multi":
        return [(f"{SIDES[i]} is best", SIDES[i]) for i in range(n_sides)] + [("No clear best", "equal")]
    return []


def stored_preference(prefs: list[str | None]) -> str | None:
    """The page's choice from the per-report preferences stored (this / other / equal) in side order."""
    if "this" in prefs:
        return SIDES[prefs.index("this")]
    return "equal" if "equal" in prefs else None


def slot_reasons(shown: list[dict], values: list) -> list[str | None]:
    """The reason of each shown edit from the slot radios (the last slot stands for every edit past it)."""
    return [values[min(i, EDIT_SLOTS - 1)] if values else None for i in range(len(shown or []))]


def match_reasons(edits: list[dict], shown: list[dict], given: list[str | None]) -> list[str | None]:
    """The reason of each edit of the submitted correction, from the reasons `given` for the edits `shown`.

    Matched by the whole edit, else (edit / reject) by the model sentence it changes: a reader who retouches an
    edited sentence after giving its reason keeps the reason; an edit the page never showed gets None."""
    exact, loose = {}, {}
    for e, value in zip(shown or [], given):
        if value in ("content", "style"):
            exact[ui.edit_key(e)] = value
            if e["change"] != "add":
                loose.setdefault((e["change"], e["sentence"]), value)
    return [exact.get(ui.edit_key(e)) or (loose.get((e["change"], e["sentence"])) if e["change"] != "add" else None)
            for e in edits]


def reason_slots(edits: list[dict], reasons: list[str | None], interactive: bool = True) -> list:
    """Updates of one report's EDIT_SLOTS reason radios: one per edit, labelled with it; the rest hidden."""
    out = []
    for j in range(EDIT_SLOTS):
        if j >= len(edits):
            out.append(gr.update(visible=False, value=None))
            continue
        if j == EDIT_SLOTS - 1 and len(edits) > EDIT_SLOTS:
            rest = reasons[j:]
            label = f"Edits {j + 1}–{len(edits)} ({len(edits) - j} more): the same reason for each"
            value = rest[0] if len(set(rest)) == 1 else None
        else:
            label, value = ui.edit_label(j + 1, edits[j]), reasons[j]
        out.append(gr.update(visible=True, label=label + " — about", value=value, interactive=interactive))
    return out


def study_auth(study_dir: str | Path):
    """gradio `auth=`: the study's readers file (salted PBKDF2 hashes)."""
    return lambda name, password: check_password(study_dir, name, password)


def missing_oauth_packages() -> list[str]:
    """What `sign_in="hf"` lacks of gradio's `oauth` extra (installed with the gradio SDK on Spaces): the signed
    session cookie (itsdangerous) and, on a Space, the OAuth client that talks to the Hub (authlib)."""
    import importlib.util

    from gradio.utils import get_space

    needed = ["itsdangerous"] + (["authlib"] if get_space() else [])
    return [m for m in needed if importlib.util.find_spec(m) is None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _reader(request: gr.Request | None) -> str:
    name = getattr(request, "username", None)
    if not name:
        raise gr.Error("Sign in first: this study page needs a reader name and password.")
    return name


def hf_reader(study_dir: str | Path, profile: gr.OAuthProfile | None) -> str:
    """The reader handle of a Hugging Face account signed in on the page; gr.Error (one line) for a visitor not
    signed in or an account the coordinator has not allow-listed (`medr2 study readers add --hf_users`)."""
    if profile is None:
        raise gr.Error("Sign in with Hugging Face first (the button at the top of the page).")
    name = hf_user_reader(study_dir, profile.username)
    if name is None:
        raise gr.Error(f"The Hugging Face account {profile.username} is not a reader of this study; ask the study "
                       "coordinator to add it.")
    return name


def _pixels(path: Path) -> np.ndarray:
    from medr2.imaging.loader import load_image

    return np.stack([load_image(path).pixels] * 3, axis=-1)


def build_study_demo(study_dir: str | Path, sign_in: str = "password") -> gr.Blocks:
    if sign_in not in SIGN_IN:
        raise StudyError(f"--sign_in must be one of {', '.join(SIGN_IN)}, got {sign_in!r}")
    study = StudyFolder.open(study_dir)
    reviews = ReviewStore(study)
    n_sides = min(len(study.sources), len(SIDES))
    design = study.design
    items = study.items
    choices = preference_choices(n_sides, design)
    per = 1 + len(items) + 2 + 1 + EDIT_SLOTS  # answers per report: correction, items, errors, significant, edits

    def progress_text(reader: str, pos: int) -> str:
        saved, locked, total = reviews.progress(reader)
        return f"**Case {pos + 1} / {total}** · {saved} saved · {locked} locked"

    def show(state: dict) -> list:
        reader, pos = state["reader"], state["pos"]
        case_id = state["order"][pos]
        case = study.case(case_id)
        sides = ab_sides(study, reader, case_id)
        stored = [reviews.get(reader, case_id, s) for s in sides]
        locked = any(r is not None and (r.study or {}).get("locked") for r in stored)
        state["opened_at"] = _now()
        values: list[Any] = [state, _pixels(study.image_path(case_id)),
                             f"**Indication** {case['indication']}" if case.get("indication") else "",
                             progress_text(reader, pos)]
        for i in range(n_sides):
            rec, report = stored[i], study.reports[(case_id, sides[i])]
            st = (rec.study or {}) if rec else {}
            correction = rec.corrected_report if rec else report
            values.append(gr.update(value=correction, interactive=not locked))
            values += [st.get("items", {}).get(k) for k, _ in items]
            tags = rec.error_tags if rec else []
            values += [[t["tag"] for t in tags], [t["tag"] for t in tags if t["clinically_significant"]]]
            edits = ui.sentence_edits(report, correction)
            saved = [{"change": "edit", "edited_text": "", **r} for r in st.get("edit_reasons") or []]
            reasons = match_reasons(edits, saved, [r["reason"] for r in saved])
            values += [edits, *reason_slots(edits, reasons, interactive=not locked)]
        values.append(stored_preference([(r.study or {}).get("preference") if r else None for r in stored]))
        values.append(stored[0].comment if stored[0] else "")
        values.append("Locked: this case can no longer be changed." if locked else
                      ("Saved earlier: you can revise it until you lock it." if stored[0] else ""))
        return values

    def who(request: gr.Request | None, profile: gr.OAuthProfile | None) -> str:
        """The reader of an event: the password sign-in's name, or the allow-listed Hugging Face account's."""
        return hf_reader(study.root, profile) if sign_in == "hf" else _reader(request)

    def signed_out(message: str) -> list:
        """The page for a visitor who is not (yet) a reader: no case, no report, the reason on top."""
        values: list[Any] = [None, None, "", f"**{message}**"]
        for _ in range(n_sides):
            values += [gr.update(value="", interactive=False), *[None] * len(items), [], [], [],
                       *[gr.update(visible=False, value=None)] * EDIT_SLOTS]
        return [*values, None, "", "", gr.update(visible=False)]

    def start(request: gr.Request, profile: gr.OAuthProfile | None):
        try:
            reader = who(request, profile)
        except gr.Error as exc:
            return signed_out(exc.message)
        order = reader_order(study, reader)
        states = [reviews.case_state(reader, c) for c in order]
        pos = states.index("new") if "new" in states else (states.index("saved") if "saved" in states else 0)
        return [*show({"reader": reader, "order": order, "pos": pos}), gr.update(visible=is_admin(study.root, reader))]

    def check(state: dict | None, request: gr.Request, profile: gr.OAuthProfile | None) -> str:
        reader = who(request, profile)
        if not state or state["reader"] != reader:
            raise gr.Error("Reload the page: it belongs to another sign-in.")
        return reader

    def move(state: dict, step: int, request: gr.Request, profile: gr.OAuthProfile | None):
        check(state, request, profile)
        state = {**state, "pos": max(0, min(len(state["order"]) - 1, state["pos"] + step))}
        return show(state)

    def refresh_edits(i: int, state: dict, correction: str, shown: list, request: gr.Request,
                      profile: gr.OAuthProfile | None, *values):
        """One report's reason slots after its correction changed (typed, pasted): reasons given are kept."""
        reader = check(state, request, profile)
        case_id = state["order"][state["pos"]]
        report = study.reports[(case_id, ab_sides(study, reader, case_id)[i])]
        edits = ui.sentence_edits(report, correction or "")
        return [edits, *reason_slots(edits, match_reasons(edits, shown, slot_reasons(shown, list(values))))]

    def save(state: dict, lock: bool, request: gr.Request, profile: gr.OAuthProfile | None, *answers):
        reader = check(state, request, profile)
        case_id = state["order"][state["pos"]]
        sides = ab_sides(study, reader, case_id)
        pref, comment = answers[n_sides * per], answers[n_sides * per + 1]
        if choices and not pref:
            raise gr.Error("Say which report is better (or that they are equal) before saving." if design == "ab" else
                           "Say which report is best (or that none is clearly best) before saving.")
        try:
            for i in range(n_sides):
                chunk = answers[i * per:(i + 1) * per]
                correction, ratings = chunk[0] or "", chunk[1:1 + len(items)]
                errors, significant, shown = chunk[1 + len(items):4 + len(items)]
                slots = list(chunk[4 + len(items):])
                missing = [label for (k, label), v in zip(items, ratings) if v in (None, "")]
                if missing:
                    raise StudyError(f"report {SIDES[i]}: rate “{missing[0]}” (or choose N/A)")
                report = study.reports[(case_id, sides[i])]
                edits = ui.sentence_edits(report, correction)
                reasons = match_reasons(edits, shown, slot_reasons(shown, slots))
                for n, (edit, reason) in enumerate(zip(edits, reasons), 1):
                    if reason is None:
                        raise StudyError(f"report {SIDES[i]}, {ui.edit_label(n, edit, cap=40)} — say whether it is "
                                         "about content or style")
                preference = None
                if choices:
                    preference = "equal" if pref == "equal" else "this" if pref == SIDES[i] else "other"
                reviews.save(reader, case_id, sides[i], side=SIDES[i] if design != "single" else None,
                             correction=correction,
                             items={k: (v if v == ITEM_NA else int(v)) for (k, _), v in zip(items, ratings)},
                             errors=list(errors or []), significant=list(significant or []),
                             edit_reasons={ui.edit_key(e): r for e, r in zip(edits, reasons)},
                             preference=preference, comment=comment or "", opened_at=state["opened_at"],
                             order_index=state["pos"], lock=lock)
        except (StudyError, FeedbackError) as exc:
            raise gr.Error(f"Not saved: {exc}") from None
        values = show({**state})
        values[-1] = "Locked: this case can no longer be changed." if lock else "✓ Saved. You can revise it until you lock it."
        return values

    def results(request: gr.Request, profile: gr.OAuthProfile | None):
        if not is_admin(study.root, who(request, profile)):
            raise gr.Error("Only the study's coordinators can see the results.")
        import json

        from medr2.study.analysis import markdown, write_report

        out = write_report(study)
        text = markdown(json.loads((out / "report.json").read_text()))
        return text, sorted(str(p) for p in out.glob("*.png")), str(out / "responses_long.csv")

    with gr.Blocks(title="medr2 — reader study", analytics_enabled=False) as demo:
        state = gr.State(None, time_to_live=8 * 3600)
        gr.Markdown("## medr2 · reader study")
        if sign_in == "hf":
            with gr.Row():
                # Signing in (or out) reloads the page, and `start` then resolves the reader again.
                gr.LoginButton(elem_id="hf_login", scale=0, min_width=280)
        with gr.Tabs():
            with gr.Tab("Cases", id="cases"):
                progress = gr.Markdown(elem_id="progress")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=320):
                        image = gr.Image(label="Radiograph", type="numpy", interactive=False, height=520, format="png",
                                         buttons=["fullscreen"], show_label=False, elem_id="study_image")
                        indication = gr.Markdown(elem_id="indication")
                    side_fields: list = []
                    per_side: list[tuple] = []  # (correction, shown edits, reason slots) of each report
                    for i in range(n_sides):
                        with gr.Column(scale=4, min_width=280):
                            gr.Markdown(f"#### Report {SIDES[i]}" if n_sides > 1 else "#### Report")
                            correction = gr.Textbox(label="Report (edit it to correct it)", lines=8, max_lines=20,
                                                    elem_id=f"correction_{SIDES[i]}")
                            side_fields.append(correction)
                            side_fields += [gr.Radio(LIKERT_NA, label=label, elem_id=f"{k}_{SIDES[i]}") for k, label in items]
                            side_fields.append(gr.CheckboxGroup(TAG_CHOICES, label="Errors", elem_id=f"errors_{SIDES[i]}"))
                            side_fields.append(gr.CheckboxGroup(TAG_CHOICES, label="…of which clinically significant",
                                                                elem_id=f"significant_{SIDES[i]}"))
                            shown = gr.State([])  # the edits the reason slots below stand for
                            gr.Markdown("Each change to the report: is it about content or style?",
                                        elem_id=f"reasons_{SIDES[i]}")
                            slots = [gr.Radio(REASON_CHOICES, label=f"Edit {j + 1}", visible=False,
                                              elem_id=f"reason_{SIDES[i]}_{j + 1}") for j in range(EDIT_SLOTS)]
                            side_fields += [shown, *slots]
                            per_side.append((correction, shown, slots))
                preference = gr.Radio(choices, label="Which report is better?" if design == "ab" else "Which report is best?",
                                      visible=bool(choices), elem_id="preference")
                comment = gr.Textbox(label="Comment", lines=2, elem_id="comment")
                with gr.Row():
                    prev_btn = gr.Button("← Previous", elem_id="prev")
                    save_btn = gr.Button("Save", variant="primary", elem_id="save")
                    lock_btn = gr.Button("Save and lock", elem_id="lock")
                    next_btn = gr.Button("Next →", elem_id="next")
                status = gr.Markdown(elem_id="status")
            with gr.Tab("Results (coordinators)", id="results", visible=False) as results_tab:
                refresh = gr.Button("Compute results", elem_id="refresh")
                summary = gr.Markdown(elem_id="summary")
                figures = gr.Gallery(label="Plots", columns=3, height=360, object_fit="contain", elem_id="figures")
                download = gr.File(label="Long-format export (CSV)", elem_id="download")
        outputs = [state, image, indication, progress, *side_fields, preference, comment, status]
        private = dict(api_visibility="private", concurrency_limit=None)
        demo.load(start, None, [*outputs, results_tab], **private)

        # gradio hands the request (the password sign-in's name) to parameters annotated gr.Request, and the
        # Hugging Face account signed in (None if none) to those annotated gr.OAuthProfile | None
        def go_back(request: gr.Request, profile: gr.OAuthProfile | None, s):
            return move(s, -1, request, profile)

        def go_on(request: gr.Request, profile: gr.OAuthProfile | None, s):
            return move(s, 1, request, profile)

        def save_case(request: gr.Request, profile: gr.OAuthProfile | None, s, *answers):
            return save(s, False, request, profile, *answers)

        def lock_case(request: gr.Request, profile: gr.OAuthProfile | None, s, *answers):
            return save(s, True, request, profile, *answers)

        for i, (correction, shown, slots) in enumerate(per_side):
            def edits_of(request: gr.Request, profile: gr.OAuthProfile | None, s, text, seen, *values, i=i):
                return refresh_edits(i, s, text, seen, request, profile, *values)

            # `input` follows typing; `blur` also catches a paste the browser reported no keystroke for. Save
            # recomputes the edits from the submitted text whichever ran last.
            for trigger in (correction.input, correction.blur):
                trigger(edits_of, [state, correction, shown, *slots], [shown, *slots], trigger_mode="always_last",
                        show_progress="hidden", **private)
        prev_btn.click(go_back, [state], outputs, **private)
        next_btn.click(go_on, [state], outputs, **private)
        answers = [*side_fields, preference, comment]
        save_btn.click(save_case, [state, *answers], outputs, **private)
        lock_btn.click(lock_case, [state, *answers], outputs, **private)
        refresh.click(results, None, [summary, figures, download], **private)
    return demo


def serve_study(study_dir: str, sign_in: str, host: str, port: int, queue_size: int, launch_settings: dict) -> int:
    """Serve a reader study: behind gradio's sign-in page (`password`, the readers file's hashes) or with Sign in
    with Hugging Face (`hf`: no `auth=`, every event maps the OAuth account to an allow-listed reader)."""
    from medr2.study.session import load_readers

    try:
        StudyFolder.open(study_dir)
        if sign_in not in SIGN_IN:
            raise StudyError(f"--sign_in (or $MEDR2_SIGN_IN) must be one of {', '.join(SIGN_IN)}, got {sign_in!r}")
        readers = load_readers(study_dir)
        if sign_in == "hf" and not any(e.get("hf_user") for e in readers.values()):
            raise StudyError(f"no Hugging Face readers yet: `medr2 study readers add --hf_users USER --study_dir {study_dir}`")
        if sign_in == "password" and not any("hash" in e for e in readers.values()):
            raise StudyError(f"no readers with a password yet: `medr2 study readers add NAME --study_dir {study_dir}`")
        if sign_in == "hf" and missing_oauth_packages():
            raise StudyError(f"--sign_in hf needs gradio's oauth extra ({', '.join(missing_oauth_packages())} "
                             "missing): pip install 'gradio[oauth]'")
        # with a LoginButton, gradio sets up OAuth as the page is built: a Space without `hf_oauth: true`, or a
        # machine off Spaces not logged in to the Hub (gradio then signs in as that login), is a ValueError
        demo = build_study_demo(study_dir, sign_in)
    except (ValueError, FeedbackError, OSError) as exc:  # StudyError is a ValueError
        print(f"app.py: {exc}", file=sys.stderr)
        return 2
    demo.queue(default_concurrency_limit=None, max_size=queue_size * 4)
    if sign_in == "hf":
        demo.launch(server_name=host, server_port=port, **launch_settings)
    else:
        demo.launch(server_name=host, server_port=port, auth=study_auth(study_dir),
                    auth_message="Sign in with the reader name and password the study coordinator gave you.",
                    **launch_settings)
    return 0
