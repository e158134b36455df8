"""Shared fixtures. Real IU X-Ray report text is read from the torchxrayvision wheel at test time only."""
from __future__ import annotations

import os

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
