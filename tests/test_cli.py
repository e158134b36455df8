"""The `medr2` command line: every sub-command answers `--help`, flags parse in both spellings, `--config` YAML
files set options (flags override them), and user errors are one line with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medr2.cli import COMMANDS, UsageError, main, parse_config
from medr2.evaluation.evaluate import EvalConfig

CONFIG_COMMANDS = ("evaluate", "generate", "build-tiny", "phantom", "compare", "saliency-depth")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_prints_its_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats help strings: a bare "%" in a config field's help crashes `--help`
    try:
        code = main([name, "--help"])
    except SystemExit as exit_:  # argparse exits; sub-commands that catch it return the code instead
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--" in out


def test_unknown_subcommand_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_config_commands_reject_an_unknown_flag_in_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--no_such_option", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medr2 {name}:") and "--no_such_option" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["--max_new_tokens", "7", "--dataset_dir", "ds", "--batch_size", "3", "--no_nlg"],
    ["--max-new-tokens", "7", "--dataset-dir", "ds", "--batch-size", "3", "--no-nlg"],
    ["--max_new_tokens=7", "--data", "ds", "--batch-size=3", "--nlg", "false"],  # `--data`: the older name
    ["--max_new_tokens", "7", "--data_dir", "ds", "--batch_size=3", "--no_nlg"],  # `--data_dir`: an alias
])
def test_underscore_and_hyphen_spellings_parse_alike(argv: list[str]) -> None:
    config = parse_config("medr2 evaluate", EvalConfig, argv)
    assert (config.max_new_tokens, config.dataset_dir, config.batch_size, config.nlg) == (7, "ds", 3, False)


def test_light_commands_accept_both_spellings(tmp_path, capsys) -> None:
    src = tmp_path / "reports.csv"
    src.write_text("No acute cardiopulmonary process.\nSmall right pleural effusion.\n")
    for flags in (("--reports_path", "--output_path"), ("--reports-path", "--output-path")):
        out = tmp_path / f"labels{flags[0]}.csv"
        assert main(["label", flags[0], str(src), flags[1], str(out)]) == 0
        assert out.read_text().count("\n") == 3


def test_config_yaml_sets_evaluate_options_and_flags_override_it(tmp_path) -> None:
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("n: 12\nseed: 5\nmax_new_tokens: 32\nnlg: false\noutput_dir: runs/x\n")
    config = parse_config("medr2 evaluate", EvalConfig, ["--config", str(recipe), "--seed", "6"])
    assert (config.n, config.seed, config.max_new_tokens, config.nlg, config.output_dir) == (12, 6, 32, False, "runs/x")
    assert parse_config("medr2 evaluate", EvalConfig, [f"--recipe={recipe}"]).seed == 5  # --recipe: TRL's --config
    recipe.write_text("n: 12\nhedging: random\n")  # a retired option is an error, not silently ignored
    with pytest.raises(UsageError, match="hedging"):
        parse_config("medr2 evaluate", EvalConfig, ["--config", str(recipe)])
    with pytest.raises(UsageError, match="--config needs"):
        parse_config("medr2 evaluate", EvalConfig, ["--config"])


def test_evaluate_runs_from_a_config_file(tmp_path) -> None:
    model = tmp_path / "model"
    assert main(["build-tiny", "--micro", "--out", str(model), "--vocab_size", "400"]) == 0
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"model: {model}\nn: 2\nseed: 31\nmax_new_tokens: 4\nnlg: false\noutput_dir: {tmp_path / 'eval'}\n")
    proc = subprocess.run([sys.executable, "-m", "medr2", "evaluate", "--config", str(recipe), "--batch_size", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["n"] == 2 and summary["config"]["seed"] == 31 and summary["config"]["batch_size"] == 2
    assert summary["config"]["max_new_tokens"] == 4 and "nlg" not in summary
    from medr2.phantom.generator import generate_studies

    predictions = [json.loads(p) for p in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    studies = list(generate_studies(2, 31))
    assert [p["id"] for p in predictions] == [s.study_id for s in studies]
    assert [p["reference"] for p in predictions] == [s.report for s in studies]  # what `medr2 compare` scores against


def test_label_starts_without_torch_or_trl(tmp_path) -> None:
    src = tmp_path / "reports.csv"
    src.write_text("Small right pleural effusion.\n")
    code = ("import sys; from medr2.cli import main; "
            f"rc = main(['label', '--reports_path', {str(src)!r}, '--output_path', {str(tmp_path / 'o.csv')!r}]); "
            "print(rc, 'torch' in sys.modules, 'trl' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split()[-3:] == ["0", "False", "False"], proc.stderr



def test_a_training_stage_whose_input_folder_is_missing_says_so_in_one_line(tmp_path, capsys):
    missing = tmp_path / "no_stage0"
    assert main(["train-sft", "--config", "recipes/demo/sft.yaml", "--perception_dir", str(missing),
                 "--output_dir", str(tmp_path / "sft")]) == 2
    err = capsys.readouterr().err  # transformers may print a FutureWarning first
    last = err.strip().splitlines()[-1]
    assert last.startswith("medr2 train-sft: no stage-0 tower at ") and str(missing) in last and "Traceback" not in err
