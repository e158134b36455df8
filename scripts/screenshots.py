"""Screenshots of the reviewer app running the embedded demo model, for the README.

Launches the app on 127.0.0.1 with `assets/model`, uploads a film rendered from the chest CT (an example, as a user file) and the real RG1 DICOM in
Debian's headless chromium, waits for the saliency stage, and writes docs/screenshots/model_*.png.

Run: `.venv/bin/python scripts/screenshots.py`
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    import app

    data_dir = tempfile.mkdtemp(prefix="medr2-shots-")
    demo = app.build_demo(app.make_service(data_dir=data_dir))
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **app.launch_settings())
    out = ROOT / "docs" / "screenshots"
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for name, source in (("model_rendered", "rendered_effusion.png"), ("model_rg1_dicom", "rg1_chest.dcm")):
            upload = Path(tmp) / ("IM0001" if source.endswith(".dcm") else source)  # extension-less DICOM, as PACS export
            data = bytearray((ROOT / "assets" / "examples" / source).read_bytes())
            data[-1] ^= 1  # a user upload, not the bundled example
            upload.write_bytes(bytes(data))
            page.goto(demo.local_url)
            page.wait_for_selector("#upload")
            page.locator("#upload input[type=file]").set_input_files(str(upload))
            page.wait_for_function("/[✓✗] saliency/.test(document.querySelector('#stages').innerText)", timeout=180_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(out / f"{name}.png")
        browser.close()
    demo.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
