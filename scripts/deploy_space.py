"""Publish this repository as a Hugging Face Space, embedded model included.

Why not `git push` to the Space: the Hub refuses files over 10 MB that are not in its large-file storage, and
`assets/model/model.safetensors` is 13.4 MB. `HfApi.upload_folder` sends large files through that storage by
itself. What it uploads is exactly what git tracks at HEAD (`git archive`), so nothing ignored — `.venv`, `runs/`,
feedback databases, test artefacts — can reach a public Space.

Run: `python scripts/deploy_space.py <user-or-org>/<space-name> [--private]` (needs `HF_TOKEN` or a saved login);
     `python scripts/deploy_space.py --dry-run` stages the files and lists the large ones without uploading.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_PLAIN_FILE_LIMIT = 10 * 1024 * 1024  # above this the Hub needs its large-file storage (LFS / Xet)


def stage(dest: Path, repo: Path = ROOT) -> list[Path]:
    """Write the files git tracks at HEAD into `dest`; return them (relative paths), sorted."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())


def large_files(folder: Path, files: list[Path]) -> list[tuple[Path, int]]:
    return [(f, (folder / f).stat().st_size) for f in files if (folder / f).stat().st_size > HUB_PLAIN_FILE_LIMIT]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("space", nargs="?", help="<user-or-org>/<space-name>")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="stage and list, upload nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.space:
        parser.error("give the Space id (<user-or-org>/<space-name>) or --dry-run")
    with tempfile.TemporaryDirectory(prefix="medr2-space-") as tmp:
        folder = Path(tmp)
        files = stage(folder)
        print(f"{len(files)} tracked files staged from HEAD")
        for path, size in large_files(folder, files):
            print(f"  large-file storage: {path} ({size / 2**20:.1f} MB)")
        if args.dry_run:
            return 0
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.space, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=args.space, repo_type="space",
                                   commit_message="medr2: deploy from " + subprocess.run(
                                       ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip())
        print(f"uploaded: {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
