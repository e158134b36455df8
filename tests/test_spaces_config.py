"""Hugging Face Spaces configuration: README front matter == Space.yaml == docs/app.md, pinned to the
installed gradio; requirements.txt == what scripts/sync_requirements.py derives from pyproject.toml."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"sdk", "sdk_version", "app_file", "python_version", "license", "short_description", "suggested_hardware"}


def front_matter(text: str, where: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, f"{where} must start with a '---' YAML front matter block (Spaces reads it)"
    return yaml.safe_load(match.group(1))


def space_yaml() -> dict:
    return yaml.safe_load((ROOT / "Space.yaml").read_text())


def test_space_yaml_is_complete_and_pinned_to_the_installed_gradio():
    import gradio

    cfg = space_yaml()
    assert REQUIRED <= set(cfg), f"Space.yaml lacks {sorted(REQUIRED - set(cfg))}"
    assert cfg["sdk"] == "gradio" and cfg["sdk_version"] == gradio.__version__
    assert (ROOT / cfg["app_file"]).is_file()
    # quoted in the YAML: an unquoted 3.10 would be read as the number 3.1
    assert re.fullmatch(r"3\.\d+", str(cfg["python_version"])) and isinstance(cfg["python_version"], str)
    minimum = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert int(cfg["python_version"].split(".")[1]) >= int(minimum)  # a Python the package installs on
    assert len(cfg["short_description"]) <= 60  # the Hub rejects longer ones


def test_readme_front_matter_equals_space_yaml():
    assert front_matter((ROOT / "README.md").read_text(encoding="utf-8"), "README.md") == space_yaml()


def test_docs_front_matter_block_equals_space_yaml():
    doc = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(---\n.*?\n---\n)```", doc, re.DOTALL)
    assert block, "docs/app.md must hold the README front matter in a ```yaml block"
    assert front_matter(block.group(1), "docs/app.md") == space_yaml()


def test_requirements_txt_matches_pyproject():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_requirements.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    sys.path.insert(0, str(ROOT / "scripts"))
    from sync_requirements import requirements

    reqs = requirements()
    assert "torch==2.13.0" in reqs and any(r.startswith("gradio") for r in reqs)
    assert not any(r.startswith("torchvision") for r in reqs)  # does not import beside torch 2.13


def test_space_deploy_stages_exactly_the_tracked_files_and_flags_the_large_ones(tmp_path):
    """scripts/deploy_space.py uploads HEAD's tracked files (never .venv, runs/, feedback databases) over HTTP,
    because a plain git push of the 13 MB model to a Space is refused without large-file storage."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from deploy_space import HUB_PLAIN_FILE_LIMIT, large_files, stage

    files = stage(tmp_path)
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.split("\n")
    assert sorted(str(f) for f in files) == sorted(t for t in tracked if t)
    assert Path("app.py") in files and Path("assets/model/model.safetensors") in files
    assert not any(f.parts[0] in ("runs", ".venv", "test-artifacts") for f in files)
    flagged = dict(large_files(tmp_path, files))
    assert Path("assets/model/model.safetensors") in flagged
    assert all(size > HUB_PLAIN_FILE_LIMIT for size in flagged.values())
