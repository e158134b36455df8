"""Write requirements.txt (what Hugging Face Spaces installs) from pyproject.toml, so the two cannot drift.

Spaces ignores pyproject.toml and reads only requirements.txt. The Space needs the core dependencies plus
the `app` and `saliency` extras; torch is pinned to the exact version this project is tested with.
Run: `python scripts/sync_requirements.py` (rewrite) or `--check` (exit 1 when requirements.txt is stale);
tests/test_spaces_config.py runs the check.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("app", "saliency")  # what app.py imports beyond the core dependencies
PINS = {"torch": "torch==2.13.0"}  # the version CI runs; Spaces' CPU image installs it from PyPI
HEADER = ("# Generated from pyproject.toml by scripts/sync_requirements.py: do not edit by hand.\n"
          "# Hugging Face Spaces installs this file (it ignores pyproject.toml); extras: {extras}.\n")


def _name(spec: str) -> str:
    """The normalised project name of a requirement ("Gradio_Client>=1.0" -> "gradio-client")."""
    return re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1).lower().replace("_", "-")


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Core dependencies + EXTRAS, in pyproject order, deduplicated, with PINS applied."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in EXTRAS:
        if extra not in project.get("optional-dependencies", {}):
            raise SystemExit(f"pyproject.toml has no [project.optional-dependencies] {extra!r}; update EXTRAS")
        specs += project["optional-dependencies"][extra]
    out, seen = [], set()
    for spec in specs:
        name = _name(spec)
        if name not in seen:
            seen.add(name)
            out.append(PINS.get(name, spec))
    return out


def render(pyproject: Path = ROOT / "pyproject.toml") -> str:
    return HEADER.format(extras=", ".join(EXTRAS)) + "\n".join(requirements(pyproject)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if requirements.txt differs from pyproject.toml")
    args = parser.parse_args(argv)
    target, text = ROOT / "requirements.txt", render()
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print("requirements.txt is out of date: run `python scripts/sync_requirements.py`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target.name}: {len(text.splitlines()) - 2} requirements")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
