"""The `medr2` command line: every sub-command answers `--help` (its options are the user's documentation)."""
from __future__ import annotations

import pytest

from medr2.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_prints_its_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats help strings: a bare "%" in a config field's help once crashed `train-perception --help`
    try:
        code = main([name, "--help"])
    except SystemExit as exit_:  # argparse exits; sub-commands that catch it return the code instead
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--" in out


def test_unknown_subcommand_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
