"""Screenshot of the reflection panel of a model trained with looks (docs/reflection.md).

Renders a validation phantom (seed 2) at 512 px so the look's crop holds real detail, launches the app on 127.0.0.1
with the given model, uploads the film in Debian's headless chromium, waits for the report, and writes the
reflection panel to docs/screenshots/reflection_look.png.

Run: `.venv/bin/python scripts/screenshot_look.py MODEL_DIR [--index N]`
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--index", type=int, default=0, help="which validation phantom with a focal finding")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "reflection_look.png"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from PIL import Image
    from playwright.sync_api import sync_playwright

    import app
    from medr2.phantom.generator import PhantomConfig, generate_studies
    from medr2.phantom.specs import FOCAL_KINDS

    focal = [s for s in generate_studies(60, 2, PhantomConfig(size=512)) if any(f.kind in FOCAL_KINDS for f in s.findings)]
    study = focal[args.index]
    data_dir = tempfile.mkdtemp(prefix="medr2-shots-")
    demo = app.build_demo(app.make_service(model=args.model, data_dir=data_dir))
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **app.launch_settings())
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        film = Path(tmp) / "film.png"
        Image.fromarray(study.image).save(film)
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(demo.local_url)
        page.wait_for_selector("#upload")
        page.locator("#upload input[type=file]").set_input_files(str(film))
        page.wait_for_function("/[✓✗] saliency/.test(document.querySelector('#stages').innerText)", timeout=180_000)
        page.wait_for_timeout(1000)
        page.locator("#reflection").screenshot(path=args.out)
        print(args.out, "truth:", [(f.kind, f.side, f.zone) for f in study.findings])
        browser.close()
    demo.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
