"""A blinded A/B reader study in a real headless browser (Debian's chromium driven by Playwright).

Two readers sign in at the same time and review all six phantom cases (reference report vs a report file that
calls every film normal); one pastes a correction with Ctrl+V and gives the changed sentence its content reason. Their pages are searched for anything that
unblinds (source names, the report file's name, the cases' file names, captions and ground-truth words).
The coordinator then computes the results in the admin tab, and `medr2 study report` is checked against
statistics computed by hand for the ratings the test entered.

A second study uses the multi design (three sources on two cases: the reference, the normal-calling file and a
terse report file kept in a checkpoint-like folder): one reader rates every report, picks the best one (then "no
clear best"), saves and locks, and the stored reviews and the 'best' counts are checked against those clicks.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
NORMAL = "Findings: Normal heart size. The lungs are clear. No pleural effusion. No pneumothorax."
PASTED = "Findings: Normal heart size. The lungs are clear. Moderate left pleural effusion. No pneumothorax."
# The README's screenshots are re-taken with MEDR2_SCREENSHOTS=docs/screenshots; a plain run writes to its tmp folder.
SHOTS_ENV = "MEDR2_SCREENSHOTS"


def make_study(tmp: Path) -> Path:
    from medr2.study.create import create_study
    from medr2.study.session import add_reader

    cases = tmp / "cases"
    cases.mkdir()
    for p in EXAMPLES.glob("phantom_*"):
        (cases / p.name).write_bytes(p.read_bytes())
    lines = [json.dumps({"image": p.name, "report": NORMAL}) for p in sorted(cases.glob("*.png"))]
    (tmp / "normal_reader.jsonl").write_text("\n".join(lines) + "\n")
    study = create_study(cases, ["reference", str(tmp / "normal_reader.jsonl")], "ab", tmp / "study", seed=7,
                         study_id="ab-demo")
    for name, admin in (("alice", False), ("bob", False), ("coord", True)):
        add_reader(study, name, "password-" + name, admin=admin)
    return study


def serve_study(study_dir: Path):
    """The study page on loopback, as `python app.py --study DIR` serves it; yields (url, study_dir)."""
    sys.path.insert(0, str(ROOT))  # app.py lives at the repository root
    import app
    from medr2.app.study_views import build_study_demo, study_auth

    demo = build_study_demo(study_dir)
    demo.queue(default_concurrency_limit=None)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                auth=study_auth(study_dir), **app.launch_settings())
    yield demo.local_url, study_dir
    demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve_study(make_study(tmp_path_factory.mktemp("study")))


def sign_in(browser, url: str, name: str, total: int = 6):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.rstrip("/"))
    page = context.new_page()
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill("password-" + name)
    page.get_by_role("button", name="Login").click()
    page.wait_for_function(f"document.querySelector('#progress')?.innerText.includes('/ {total}')", timeout=30_000)
    return page


def pick(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} label", has_text=label).first.click()


def review_case(page, study, reader: str, pos: int, paste: bool) -> None:
    """Rate the reference report 5 (others 4) and the normal-calling report 2 (alice) or 3 (bob); prefer the
    reference (bob calls one case equal); tick omission on the normal-calling report."""
    from medr2.study.session import ab_sides, reader_order

    case_id = reader_order(study, reader)[pos]
    sides = ab_sides(study, reader, case_id)
    page.wait_for_function(f"document.querySelector('#progress').innerText.startsWith('Case {pos + 1} /')")
    for side, source in zip("AB", sides):
        reference = source == "S1"
        overall = "5 excellent" if reference else ("2" if reader == "alice" else "3")
        pick(page, f"overall_{side}", overall)
        for item in ("accuracy", "completeness", "clarity"):
            pick(page, f"{item}_{side}", "4" if reference else "N/A")
        if not reference:
            pick(page, f"errors_{side}", "omission")
            if paste:
                box = page.locator(f"#correction_{side} textarea")
                page.evaluate(f"navigator.clipboard.writeText({json.dumps(PASTED)})")
                box.click()
                page.keyboard.press("Control+A")
                page.keyboard.press("Control+V")
                page.wait_for_function(f"document.querySelector('#correction_{side} textarea').value.includes('Moderate left')")
                page.keyboard.press("Tab")  # leave the box: the page asks for a reason for each changed sentence
                page.locator(f"#reason_{side}_1").wait_for(state="visible", timeout=20_000)
                assert "Moderate left pleural effusion" in page.inner_text(f"#reason_{side}_1")
                assert not page.locator(f"#reason_{side}_2").is_visible()
                pick(page, f"reason_{side}_1", "content")
    ref_side = "AB"[sides.index("S1")]
    pick(page, "preference", "Equal" if (reader == "bob" and pos == 5) else f"{ref_side} is better")
    page.locator("#lock" if pos % 2 else "#save").click()
    page.wait_for_function("/Saved|Locked/.test(document.querySelector('#status').innerText)", timeout=20_000)


def page_outside_reports(page) -> tuple[str, str]:
    """(visible text, markup) of the page without the report text boxes (whose text is the reports themselves)."""
    return tuple(page.evaluate("""() => {
        const body = document.body.cloneNode(true);
        body.querySelectorAll('textarea').forEach(t => t.remove());
        document.body.appendChild(body); const text = body.innerText; body.remove();
        return [text, body.outerHTML]; }"""))


def test_two_readers_complete_a_blinded_ab_study_and_the_report_matches_hand_computed_statistics(served, tmp_path):
    from playwright.sync_api import sync_playwright

    from medr2.study.manifest import StudyFolder
    from medr2.study.session import ReviewStore, reader_order

    url, study_dir = served
    study = StudyFolder.open(study_dir)
    key = study.key()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pages = {name: sign_in(browser, url, name) for name in ("alice", "bob")}  # both signed in at once
        # blinded: nothing outside the report boxes names a source, a file or the case's diagnosis
        first = reader_order(study, "alice")[0]
        original = key["cases"][first]["original_name"]  # e.g. phantom_effusion.png
        shown, markup = page_outside_reports(pages["alice"])
        config = json.dumps(pages["alice"].request.get(url + "config").json())
        words = [original, Path(original).stem, Path(original).stem.split("_")[-1], "phantom", "normal_reader",
                 str(study_dir), "case-0"]
        assert [w for w in words if w.lower() in (shown + markup + config).lower()] == []
        assert [w for w in ("reference", "truth", "S1", "S2", "model") if w.lower() in shown.lower()] == []
        assert "Results" not in pages["alice"].inner_text("body"), "readers must not see the admin tab"
        for pos in range(6):  # interleaved: both sessions live at once
            for name, page in pages.items():
                review_case(page, study, name, pos, paste=(name == "alice" and pos == 0))
                if pos < 5:
                    page.locator("#next").click()
        assert "6 saved · 3 locked" in pages["bob"].inner_text("#progress")
        pages["alice"].locator("#prev").click()  # a locked case cannot be changed
        pages["alice"].wait_for_function("document.querySelector('#progress').innerText.startsWith('Case 5 /')")
        if "locked" not in pages["alice"].inner_text("#status"):
            pages["alice"].locator("#prev").click()
        shots = Path(os.environ.get(SHOTS_ENV) or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        pages["bob"].screenshot(path=str(shots / "study_reader.png"), full_page=True)
        coord = sign_in(browser, url, "coord")
        coord.get_by_role("tab", name="Results (coordinators)").click()
        coord.locator("#refresh").click()
        coord.wait_for_function("document.querySelector('#summary').innerText.includes('sign test')", timeout=60_000)
        coord.screenshot(path=str(shots / "study_admin.png"), full_page=True)
        summary = coord.inner_text("#summary")
        browser.close()
    assert "Preference" in summary and "cohen_kappa" in summary

    store = ReviewStore(study)
    reviews = [r for _, r in store.reviews()]
    pasted = [r for r in reviews if r.reviewer == "alice" and r.corrected_report == PASTED]
    store.close()
    assert len(reviews) == 24  # 2 readers x 6 cases x 2 sources, each once
    assert len(pasted) == 1 and {"sentence": "No pleural effusion.", "verdict": "edit",
                                 "edited_text": "Moderate left pleural effusion."} in pasted[0].sentence_verdicts
    assert pasted[0].study["edit_distance"] == 2 and pasted[0].study["edit_reasons"] == [
        {"change": "edit", "sentence": "No pleural effusion.", "edited_text": "Moderate left pleural effusion.",
         "reason": "content"}]
    assert pasted[0].labels["reviewer"]["Pleural Effusion"] == 1
    assert all(r.study["seconds"] > 0 for r in reviews)

    from medr2.study.cli import cli_study

    assert cli_study(["report", str(study_dir)]) == 0
    result = json.loads((study_dir / "results" / "report.json").read_text())
    # hand-computed: reference rated 5 by both (12 x 5); the normal-calling report 2 (alice, 6x) and 3 (bob, 6x)
    ref, other = result["ratings"]["S1"]["overall"], result["ratings"]["S2"]["overall"]
    assert ref["mean"] == 5.0 and ref["n"] == 12
    half = 2.200985 * math.sqrt(12 * 0.25 / 11) / math.sqrt(12)  # t(0.975, 11) * sd / sqrt(n)
    assert other["mean"] == 2.5 and other["low"] == pytest.approx(2.5 - half, abs=1e-4)
    assert result["ratings"]["S2"]["accuracy"]["na"] == 12 and result["ratings"]["S2"]["accuracy"]["n"] == 0
    # preference: reference 11 (alice 6, bob 5), equal 1; exact two-sided sign test 2 * 0.5**11
    pref = result["preference"]
    assert (pref["reference"], pref["normal_reader.jsonl"], pref["equal"]) == (11, 0, 1)
    assert pref["sign_test_p"] == pytest.approx(2 * 0.5 ** 11)
    # omission ticked by both readers on every normal-calling report, never on the reference: perfect agreement
    assert result["error_tags"]["S2"]["omission"]["share"] == 1.0 and result["error_tags"]["S1"]["omission"]["share"] == 0.0
    assert result["agreement"]["error_tags"]["value"] == 1.0
    # verdicts: every sentence accepted except the one alice edited: observed = chance agreement, kappa 0
    assert result["agreement"]["verdicts"]["value"] == pytest.approx(0.0)
    # ICC(2,1) (Shrout & Fleiss) of the overall ratings: rows (5, 5) x 6 and (2, 3) x 6; grand mean 3.75;
    # MSR = 2 * 12 * 1.25**2 / 11 = 37.5/11, MSC = 12 * 2 * 0.25**2 = 1.5, SSE = 40.5 - 37.5 - 1.5 = 1.5, MSE = 1.5/11;
    # ICC = (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / 12) = (36/11) / (41.5/11) = 72/83
    assert result["agreement"]["overall_rating"]["value"] == pytest.approx(72 / 83)
    assert result["edit_reasons"]["S2"]["content"] == 1 and result["edit_reasons"]["S2"]["style"] == 0
    rows = (study_dir / "results" / "responses_long.csv").read_text().splitlines()
    assert rows[0].startswith("study_id,reader,case_id,source") and len(rows) > 24 * 10


TERSE = "No acute cardiopulmonary findings."
MULTI_CASES = ("phantom_effusion", "phantom_cardiomegaly")
# a report file under a folder named like a model checkpoint: the page must show neither
CHECKPOINT = ("runs", "medr2-ft-step1200")
MULTI_OVERALL = {"S1": "5 excellent", "S2": "2", "S3": "3"}  # reference, normal-calling file, terse file


def make_multi_study(tmp: Path) -> Path:
    from medr2.study.create import create_study
    from medr2.study.session import add_reader

    cases = tmp / "cases"
    cases.mkdir()
    for stem in MULTI_CASES:
        for suffix in (".png", ".json"):
            (cases / (stem + suffix)).write_bytes((EXAMPLES / (stem + suffix)).read_bytes())
    (tmp / "normal_reader.jsonl").write_text("".join(
        json.dumps({"image": stem + ".png", "report": NORMAL}) + "\n" for stem in MULTI_CASES))
    ckpt = tmp.joinpath(*CHECKPOINT)
    ckpt.mkdir(parents=True)
    (ckpt / "terse_reports.jsonl").write_text("".join(
        json.dumps({"image": stem + ".png", "report": TERSE}) + "\n" for stem in MULTI_CASES))
    study = create_study(cases, ["reference", str(tmp / "normal_reader.jsonl"), str(ckpt / "terse_reports.jsonl")],
                         "multi", tmp / "study", seed=11, study_id="multi-demo")
    add_reader(study, "carol", "password-carol")
    return study


@pytest.fixture(scope="module")
def served_multi(tmp_path_factory):
    yield from serve_study(make_multi_study(tmp_path_factory.mktemp("multi")))


def test_one_reader_rates_three_blinded_reports_picks_the_best_and_the_stored_counts_match(served_multi):
    import re

    from playwright.sync_api import sync_playwright

    from medr2.feedback.record import ITEM_NA
    from medr2.study.cli import cli_study
    from medr2.study.manifest import StudyFolder
    from medr2.study.session import ReviewStore, ab_sides, reader_order

    url, study_dir = served_multi
    study = StudyFolder.open(study_dir)
    order = reader_order(study, "carol")
    sides = {case: ab_sides(study, "carol", case) for case in order}
    # the reference is best on the first case shown, no report is clearly best on the second
    picks = {order[0]: "ABC"[sides[order[0]].index("S1")], order[1]: "equal"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = sign_in(browser, url, "carol", total=2)
        texts = []
        for pos, case in enumerate(order):
            page.wait_for_function(f"document.querySelector('#progress').innerText.startsWith('Case {pos + 1} / 2')")
            shown, markup = page_outside_reports(page)
            texts.append(shown + markup)
            assert [page.input_value(f"#correction_{side} textarea") for side in "ABC"] == \
                [study.reports[(case, s)] for s in sides[case]]  # each column shows its source's report
            assert not page.locator("#correction_D").count()
            for side, source in zip("ABC", sides[case]):
                pick(page, f"overall_{side}", MULTI_OVERALL[source])
                for item in ("accuracy", "completeness", "clarity"):
                    pick(page, f"{item}_{side}", "4" if source == "S1" else "N/A")
                if source != "S1":
                    pick(page, f"errors_{side}", "omission")
            choice = picks[case]
            pick(page, "preference", "No clear best" if choice == "equal" else f"{choice} is best")
            if pos == 0:  # save first (still revisable), then lock
                page.locator("#save").click()
                page.wait_for_function("document.querySelector('#status').innerText.includes('Saved')", timeout=20_000)
                assert "1 saved · 0 locked" in page.inner_text("#progress")
            page.locator("#lock").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('Locked')", timeout=20_000)
            assert f"{pos + 1} saved · {pos + 1} locked" in page.inner_text("#progress")
            if pos == 0:
                page.locator("#next").click()
        texts.append(json.dumps(page.request.get(url + "config").json()))
        browser.close()

    # blinded: no source name, report file, checkpoint folder or study folder anywhere outside the report boxes
    seen = "\n".join(texts).lower()
    assert "report c" in seen and "no clear best" in seen  # the page text was read, all three columns included
    words = ["normal_reader", "terse_reports", ".jsonl", CHECKPOINT[1], str(study_dir.parent.joinpath(*CHECKPOINT)),
             str(study_dir), "phantom", *MULTI_CASES]
    assert [w for w in words if w.lower() in seen] == []
    assert re.search(r"\breference\b", seen) is None  # ('preference' is a property name)
    assert [w for w in ("S1", "S2", "S3") if re.search(rf"\b{w}\b", "\n".join(texts))] == []

    store = ReviewStore(study)
    reviews = {(r.study["case_id"], r.study["source"]): r for _, r in store.reviews()}
    store.close()
    assert sorted(reviews) == sorted((c, s) for c in order for s in study.sources)  # 2 cases x 3 sources, once each
    for (case, source), r in reviews.items():
        side = "ABC"[sides[case].index(source)]
        choice = picks[case]
        want_pref = "equal" if choice == "equal" else "this" if choice == side else "other"
        assert (r.reviewer, r.study["side"], r.study["preference"], r.study["locked"]) == ("carol", side, want_pref, True)
        assert r.study["items"]["overall"] == int(MULTI_OVERALL[source][0]) == r.rating
        assert r.study["items"]["accuracy"] == (4 if source == "S1" else ITEM_NA)
        assert [t["tag"] for t in r.error_tags] == ([] if source == "S1" else ["omission"])
        assert r.corrected_report == study.reports[(case, source)] and r.study["edit_reasons"] == []
    assert [reviews[(order[0], s)].study["revision"] for s in study.sources] == [2, 2, 2]  # saved, then locked
    assert [reviews[(order[1], s)].study["revision"] for s in study.sources] == [1, 1, 1]

    assert cli_study(["report", str(study_dir)]) == 0
    result = json.loads((study_dir / "results" / "report.json").read_text())
    best = result["best"]
    assert (best["reference"], best["normal_reader.jsonl"], best["terse_reports.jsonl"], best["equal"]) == (1, 0, 0, 1)
    # one choice among three sources: every outcome (1, 0, 0), (0, 1, 0), (0, 0, 1) is as likely as the one seen
    assert best["equal_shares_p"] == pytest.approx(1.0)
    assert "preference" not in result and (study_dir / "results" / "best.png").is_file()
    assert [result["ratings"][s]["overall"]["mean"] for s in ("S1", "S2", "S3")] == [5.0, 2.0, 3.0]
    assert result["ratings"]["S2"]["accuracy"]["na"] == 2 and result["ratings"]["S1"]["accuracy"]["mean"] == 4.0
