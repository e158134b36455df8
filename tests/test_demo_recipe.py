"""The one command that trains the demo model (`scripts/train_demo_model.sh`) and the recipes it reads.

The fast tests check that every recipe parses with its entry point's parser and that the demo recipes chain
(each stage reads the folder the previous one writes). The slow test runs the whole chain in smoke mode, as CI
does, so the command cannot rot: every stage's output, its step count, the export loading in the pipeline, and a
rerun that skips what is finished.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo"


def _parser_for(recipe: Path):
    from medr2.training import grpo, perception, sft

    if recipe.name.startswith("stage0"):
        return perception.parse_config
    if recipe.name.startswith(("look_reader", "look_region")):  # medr2 fit-look-heads
        from medr2.cli import parse_config
        from medr2.reflection.fit_heads import LookHeadsConfig

        return lambda argv: parse_config("medr2 fit-look-heads", LookHeadsConfig, argv)
    return grpo.parse_config if recipe.name.startswith("grpo") else sft.parse_config


@pytest.mark.parametrize("recipe", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml")
                                          if p.name != "accelerate_zero2.yaml"))
def test_every_recipe_parses_with_its_entry_points_parser(recipe):
    config = _parser_for(Path(recipe))(["--config", str(ROOT / recipe)])
    assert config.output_dir  # every recipe says where its run goes


def test_accelerate_config_is_an_accelerate_config():
    import yaml

    config = yaml.safe_load((ROOT / "recipes" / "qwen2.5-vl" / "accelerate_zero2.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 2


def test_demo_recipes_chain_each_stage_into_the_next():
    from medr2.training import perception, sft

    stage0 = perception.parse_config(["--config", str(DEMO / "stage0.yaml")])
    first = sft.parse_config(["--config", str(DEMO / "sft.yaml")])
    tower = sft.parse_config(["--config", str(DEMO / "sft_tower.yaml")])
    deepen = perception.parse_config(["--config", str(DEMO / "stage0_deepen.yaml")])
    deep = sft.parse_config(["--config", str(DEMO / "sft_deep.yaml")])
    assert first.perception_dir == stage0.output_dir and first.model_name_or_path is None and first.freeze_vision
    assert tower.model_name_or_path == first.output_dir and not tower.freeze_vision and tower.vision_learning_rate == 3e-5
    assert deepen.init_from == tower.output_dir and (stage0.vision_layers, deepen.vision_layers) == (4, 6)
    assert deep.model_name_or_path == tower.output_dir and deep.perception_dir == deepen.output_dir
    mix0 = perception.parse_config(["--config", str(DEMO / "stage0_mix.yaml")])
    mix = sft.parse_config(["--config", str(DEMO / "sft_mix.yaml")])
    assert mix0.init_from == deep.output_dir and mix0.vision_layers == 6
    assert mix.model_name_or_path == deep.output_dir and mix.perception_dir == mix0.output_dir and not mix.freeze_vision
    assert (mix0.renderer, mix.renderer) == ("mix", "mix") and mix0.train_seed != mix.train_seed  # fresh films each
    long0 = perception.parse_config(["--config", str(DEMO / "stage0_mix_long.yaml")])
    long = sft.parse_config(["--config", str(DEMO / "sft_mix_long50.yaml")])
    assert long0.init_from == mix.output_dir and long0.vision_layers == 6 and long0.drr_fraction == 0.7
    assert long.model_name_or_path == mix.output_dir and long.perception_dir == long0.output_dir and not long.freeze_vision
    assert len({mix0.train_seed, mix.train_seed, long0.train_seed, long.train_seed}) == 4  # fresh films at every stage
    # the step budgets sum the shipped model's recorded phases (see each recipe's header)
    assert stage0.max_steps == 10449 + 7585 + 3893 + 6487 + 6581 + 8876 + 7839 + 7496
    assert (first.max_steps, tower.max_steps, deepen.max_steps, deep.max_steps) == (1600 + 5 * 950 + 2 * 1900, 1900, 7258, 2 * 1900)
    for config in (first, tower, deep, mix, long):
        assert config.save_steps < config.max_steps and config.save_total_limit == 1  # a resumable checkpoint
    assert not any("assets/model" in p.read_text() for p in (ROOT / "recipes").rglob("*.yaml"))


def test_flags_override_a_stage0_recipe():
    from medr2.training import perception

    config = perception.parse_config(["--recipe", str(DEMO / "stage0.yaml"), "--max_steps", "7", "--out", "/tmp/x"])
    assert (config.max_steps, config.output_dir, config.n_train) == (7, "/tmp/x", 100000)


SMOKE_STEPS = 4  # scripts/train_demo_model.sh --smoke: every training stage's budget


def _run_smoke(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDR2_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "train_demo_model.sh"), "--smoke", "--output_dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_runs_train_every_stage_export_a_working_model_skip_on_rerun_and_feed_the_ablations(tmp_path):
    from medr2.inference.pipeline import Pipeline, PipelineConfig
    from medr2.phantom.generator import generate_study, study_seeds

    out = tmp_path / "demo"
    proc = _run_smoke(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("stage0", "stage0_deepen", "stage0_mix", "stage0_mix_long"):
        metrics = json.loads((out / stage / "perception_metrics.json").read_text())
        assert metrics["steps"] == SMOKE_STEPS and (out / stage / "vision_tower.safetensors").is_file()
    assert json.loads((out / "stage0_deepen" / "perception_config.json").read_text())["vision_layers"] == 6
    for stage in ("sft", "sft_tower", "sft_deep", "sft_mix", "sft_mix_long50"):
        assert json.loads((out / stage / "training_summary.json").read_text())["steps"] == SMOKE_STEPS
    assert json.loads((out / "stage0_mix" / "perception_config.json").read_text())["renderer"] == "mix"
    config = json.loads((out / "sft_deep" / "config.json").read_text())
    assert config["vision_config"]["num_hidden_layers"] == 6  # the deepened tower reached the VLM
    for split, seed in (("eval_val", 2), ("eval_test", 3), ("eval_val_drr", 2), ("eval_test_drr", 3)):
        summary = json.loads((out / split / "eval.json").read_text())
        assert summary["config"]["seed"] == seed and summary["n"] == 4
        assert summary["config"]["renderer"] == ("drr" if split.endswith("drr") else "procedural")
    card = json.loads((out / "export" / "medr2_model.json").read_text())
    assert card["weights_stored_as"] == "float16" and card["recipe"][-2:] == ["recipes/demo/stage0_mix_long.yaml", "recipes/demo/sft_mix_long50.yaml"]
    assert "n = 4 (phantom seed 3" in (out / "export" / "README.md").read_text()  # the test table is on the card
    assert not (ROOT / "assets" / "model").samefile(out / "export")

    pipe = Pipeline(PipelineConfig(model=str(out / "export"), max_new_tokens=48))
    assert pipe.provenance.demo and pipe.model.config.vision_config.num_hidden_layers == 6
    assert pipe.gate_stats is not None  # the export carries its own input-gate statistics (fitted on its weights)
    from medr2.reflection.heads import LookHeads, tower_of

    heads = LookHeads.load(out / "export", tower_of(pipe.model))  # fitted on the exported tower, on the film mix
    assert heads is not None and heads.meta["fitted_on"].startswith("mixed (50% CT-rendered) phantom films")
    # four steps state too few findings to calibrate: the chain says so and goes on (a full run writes confidence.json)
    assert (out / "confidence.done").read_text().startswith("smoke: too few stated findings")
    from medr2.modeling.model import weights_sha256

    assert pipe.provenance.weights_sha256 == weights_sha256(str(out / "export"))
    result = pipe.run(generate_study(study_seeds(1, 3)[0]).image)
    assert 0 < result.n_tokens <= 48
    # four steps cannot write the schema yet; the answer must still parse, and the result serialise as the CLI prints it
    assert json.loads(json.dumps(result.to_json()))["missing_sections"] == list(result.parsed.missing)

    again = _run_smoke(out)
    assert again.returncode == 0, again.stderr[-4000:]
    stages = ("stage0", "sft", "sft_tower", "stage0_deepen", "sft_deep", "stage0_mix", "sft_mix", "stage0_mix_long",
              "sft_mix_long50", "candidate",
              "saliency_depth", "eval_val", "eval_val_drr", "eval_test", "eval_test_drr", "export", "input_gate", "look_heads", "confidence")
    assert all(f"{stage}: finished earlier" in again.stderr for stage in stages), again.stderr
    assert "running" not in again.stderr

    # The ablations script runs from the same demo run root: every run trains its smoke budget and is evaluated
    # on the same validation and test studies as the Med-R2 SFT it is compared with.
    env = {**os.environ, "MEDR2_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    experiments = tmp_path / "experiments"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_experiments.sh"), "--smoke", "--demo", str(out),
                           "--output_dir", str(experiments)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((experiments / "sft_direct" / "training_summary.json").read_text())["target"] == "direct"
    for run, reward in (("grpo_mccs", "mccs"), ("grpo_cef1", "ce_f1")):
        summary = json.loads((experiments / run / "training_summary.json").read_text())
        assert summary["steps"] == 2 and summary["rewards"][0] == reward and summary["init"] == str(out / "sft")
    for name in ("sft", "sft_direct", "grpo_mccs", "grpo_cef1"):
        ids = [json.loads((experiments / f"eval_{split}_{name}" / "eval.json").read_text())["config"]["seed"]
               for split in ("val", "test")]
        assert ids == [2, 3]
