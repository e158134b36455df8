"""Shared fixtures: the IU X-Ray reports (read from the torchxrayvision wheel at test time only) and the micro
model the app tests serve.

Tiers: `@pytest.mark.slow` marks the integration tests that take several seconds each (the launched app, the
browser, the shipped model, long phantom sweeps). `bash scripts/test.sh` runs everything (CI does);
`bash scripts/test.sh -m "not slow"` is the fast tier for the edit-test loop.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def iu_reports():
    """All IU X-Ray reports (list of medr2.data.datasets.IUReport). The test env installs torchxrayvision --no-deps."""
    from medr2.data.datasets import iter_iu_reports_archive, locate_iu_reports_archive

    archive = locate_iu_reports_archive()
    if archive is None:
        pytest.fail("IU X-Ray reports not found: run `bash scripts/setup_env.sh` (installs torchxrayvision --no-deps)")
    return list(iter_iu_reports_archive(archive))


@pytest.fixture(scope="session")
def app_model(tmp_path_factory) -> Path:
    """An untrained micro LLaVA with a demo model card, built from config (never assets/model): what the app
    tests (test_app.py, test_app_browser.py) load. They script its generation for a meaningful report."""
    from medr2.modeling.model import cli_build_tiny

    out = tmp_path_factory.mktemp("app_model") / "micro"
    assert cli_build_tiny(["--micro", "--out", str(out)]) == 0
    (out / "medr2_model.json").write_text(json.dumps({"target": "medr2", "demo": True, "training_data": "synthetic phantoms"}))
    return out
