"""The reviewer app in a real headless browser (Debian's chromium, driven by Playwright).

Upload an extension-less DICOM, wait for the final report, switch the saliency overlay to another finding,
edit the report, rate it, submit the review and check it is in the feedback store. On an example, tick
Delete on one sentence of the per-sentence table (stored as 'reject'; with edited text too, refused). Screenshots go to
test-artifacts/ (gitignored; CI keeps them as artefacts). Chromium comes from apt (`apt-get install -y
chromium`): Playwright's own browser download does not work offline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_app import EXAMPLES, effusion_trace, make_service

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # ~20 s: starts Chromium and the app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]


@pytest.fixture(scope="module")
def served(app_model, tmp_path_factory):
    """The app on 127.0.0.1 (random free port) with the scripted micro model; yields (url, service)."""
    sys.path.insert(0, str(ROOT))
    import app

    base = tmp_path_factory.mktemp("browser")
    service = make_service(app_model, base / "data", base / "uploads", script=effusion_trace(), delay_s=0.005)
    service.upload_root = Path(__import__("gradio").utils.get_upload_folder())
    demo = app.build_demo(service)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **app.launch_settings())
    yield demo.local_url, service
    demo.close()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get update && apt-get install -y chromium`")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_review_a_dicom_end_to_end_in_the_browser(served, page, tmp_path):
    url, service = served
    page.goto(url)
    page.wait_for_selector("#upload")
    assert "not for clinical use" in page.inner_text("#notice")
    dicom = tmp_path / "IM0001"  # extension-less, as PACS exports often are
    data = bytearray((EXAMPLES / "rg1_chest.dcm").read_bytes())
    data[-1] ^= 1  # one pixel bit changed: a real upload, not the bundled example (those are never deleted)
    dicom.write_bytes(bytes(data))
    page.locator("#upload input[type=file]").set_input_files(str(dicom))

    page.wait_for_function("document.querySelector('#stages').innerText.includes('✓ saliency')", timeout=60_000)
    report = page.locator("#report textarea")
    assert "pleural effusion" in report.input_value().lower()
    assert "✓ heart" in page.inner_text("#perception") and "effusion_meniscus" in page.inner_text("#reasoning")
    assert "Pleural Effusion" in page.inner_text("#findings")
    shot(page, "01_study")

    overlay = page.locator("#overlay input")
    before = overlay.input_value()
    overlay.click()
    options = page.get_by_role("option")
    texts = [options.nth(i).inner_text().strip() for i in range(options.count())]
    # the selected option carries a check mark; pick another map (not "No overlay")
    pick = next(i for i, t in enumerate(texts) if not t.startswith("✓") and not t.startswith("No overlay"))
    options.nth(pick).click()
    page.wait_for_function(f"document.querySelector('#overlay input').value !== {before!r}")
    page.wait_for_timeout(500)  # let the new overlay image load before the screenshot
    shot(page, "02_overlay")

    edited = report.input_value().replace("Moderate left pleural effusion. No pneumothorax.",
                                          "Moderate left pleural effusion. Small right pneumothorax.")
    report.fill(edited[:-1])  # fill() alone fires no gradio `input` event; typing the last key does, as a user would
    report.press("End")
    report.type(edited[-1])
    page.wait_for_function("document.querySelector('#verdicts').innerText.includes('Small right pneumothorax.')",
                           timeout=20_000)
    page.locator("#rating label", has_text="2").first.click()
    page.locator("#errors label", has_text="omission").click()
    page.locator("#significant label", has_text="omission").click()
    page.locator("#reviewer textarea").fill("dr-browser")
    before_count = service.store.count()
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stored review')", timeout=20_000)
    shot(page, "03_feedback")

    assert service.store.count() == before_count + 1
    _, record = list(service.store.iter_records())[-1]
    assert record.corrected_report == edited and record.rating == 2
    assert record.labels["reviewer"]["Pneumothorax"] == 1
    assert record.error_tags == [{"tag": "omission", "clinically_significant": True}]
    edit = {"sentence": "No pneumothorax.", "verdict": "edit", "edited_text": "Small right pneumothorax."}
    assert edit in record.sentence_verdicts
    assert record.image_ref is None and record.image_metadata.get("modality") == "CR"
    # the micro model carries no training-film statistics: the gate says so above the report
    assert "Distribution unknown" in page.inner_text("#input_check")

    # A phantom example: its ground truth is shown and becomes a column of the findings table.
    page.get_by_text("Moderate left pleural effusion.", exact=False).first.click()
    page.wait_for_function("document.querySelector('#truth')?.innerText.includes('phantom-15')",
                           timeout=30_000)
    page.wait_for_function("document.querySelector('#stages').innerText.includes('✓ saliency')", timeout=60_000)
    assert "Truth" in page.inner_text("#findings")
    assert "Stored review" not in page.inner_text("#status"), "the feedback form must reset for a new study"
    assert page.locator("#rating input:checked").count() == 0
    shot(page, "04_phantom_truth")


def test_delete_tick_box_rejects_one_sentence_in_the_browser(served, page):
    """Ticking Delete on one row of the per-sentence table stores that sentence as 'reject', the rest as 'accept';
    ticking Delete and writing edited text on the same row is refused with one line and stores nothing."""
    from playwright.sync_api import expect

    url, service = served
    page.goto(url)  # a fresh page: this test must not depend on what another test left on it
    page.wait_for_selector("#upload")
    page.get_by_text("Moderate left pleural effusion.", exact=False).first.click()
    page.wait_for_function("document.querySelector('#stages').innerText.includes('✓ saliency')", timeout=60_000)
    table = page.locator("#verdicts")  # scoped: the findings table's cells carry the same test ids
    expect(table.get_by_test_id("cell-0-0")).not_to_be_empty(timeout=20_000)
    n_rows = int(table.get_by_role("grid").get_attribute("aria-rowcount")) - 1  # minus the header row
    sentences = [table.get_by_test_id(f"cell-{r}-0").inner_text().strip() for r in range(n_rows)]
    assert "No pneumothorax." in sentences and len(sentences) >= 3, sentences
    row = sentences.index("No pneumothorax.")
    tick = table.get_by_test_id(f"cell-{row}-1").locator("input[type=checkbox]")
    assert not tick.is_checked(), "an unedited report must prefill every row as accept"
    tick.click()
    assert tick.is_checked()

    page.locator("#rating label", has_text="2").first.click()
    page.locator("#errors label", has_text="omission").click()
    page.locator("#significant label", has_text="omission").click()
    page.locator("#reviewer textarea").fill("dr-browser")
    before_count = service.store.count()

    # Ticked and rewritten at once: refused with the one-line message naming the row, nothing stored.
    edited_cell = table.get_by_test_id(f"cell-{row}-2")
    edited_cell.dblclick()
    edited_cell.locator("textarea, input").first.fill("Small right pneumothorax.")
    edited_cell.locator("textarea, input").first.press("Enter")
    expect(edited_cell).to_contain_text("Small right pneumothorax.")
    page.locator("#submit").click()
    refusal = f"sentence {row + 1}: tick “Delete” or write the edited text, not both"
    page.get_by_text(refusal).first.wait_for(timeout=20_000)
    shot(page, "05_delete_and_edit_refused")
    assert service.store.count() == before_count
    assert "Stored review" not in page.inner_text("#status")

    # Edited text cleared, Delete still ticked: the sentence is rejected, every other one accepted.
    edited_cell.dblclick()
    edited_cell.locator("textarea, input").first.fill("")
    edited_cell.locator("textarea, input").first.press("Enter")
    expect(edited_cell).not_to_contain_text("pneumothorax")
    assert tick.is_checked()
    page.locator("#submit").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stored review')", timeout=20_000)
    shot(page, "06_delete_stored")

    assert service.store.count() == before_count + 1
    _, record = list(service.store.iter_records())[-1]
    assert [(v["sentence"], v["verdict"]) for v in record.sentence_verdicts] == \
        [(s, "reject" if s == "No pneumothorax." else "accept") for s in sentences]
    assert "No pneumothorax." not in record.corrected_report
    assert all(s in record.corrected_report for s in sentences if s != "No pneumothorax.")
    assert record.rating == 2 and record.reviewer == "dr-browser"
