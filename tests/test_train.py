"""Training entry points on micro models: stage 0 (incl. resume), SFT (also under `accelerate launch`, 2 CPU
processes), GRPO (the reward -> advantage -> update path) and export."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medr2.modeling.model import load_model

SFT_ARGS = ["--micro", "true", "--n_train", "6", "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--gradient_checkpointing", "false",
            "--learning_rate", "1e-3", "--vocab_size", "400"]


def _medr2(*args: str, cwd: Path, launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable, "-m"]) + ["medr2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "model"
    proc = _medr2("train-sft", "--recipe", str(Path("recipes/demo/sft.yaml").resolve()), "--output_dir", str(out),
                  "--perception_dir", "", *SFT_ARGS, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sft_writes_a_loadable_model_with_card_and_curve(sft_checkpoint):
    model, processor = load_model(str(sft_checkpoint))
    assert type(processor).__name__.endswith("Processor")
    card = json.loads((sft_checkpoint / "medr2_model.json").read_text())
    assert card["target"] == "medr2" and card["demo"] is True
    summary = json.loads((sft_checkpoint / "training_summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert (sft_checkpoint / "sft_loss.png").stat().st_size > 1000


@pytest.mark.slow
def test_sft_runs_under_accelerate_launch(tmp_path):
    """The `accelerate launch` entry point (one CPU process here; two real ranks: tests/test_ddp.py)."""
    out = tmp_path / "model"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    proc = _medr2("train-sft", "--target", "direct", "--output_dir", str(out), *SFT_ARGS, cwd=Path.cwd(), launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2


def test_sft_rejects_unknown_target(tmp_path):
    proc = _medr2("train-sft", "--target", "poetry", "--output_dir", str(tmp_path), cwd=Path.cwd())
    assert proc.returncode == 2
    assert "target must be" in proc.stderr


@pytest.mark.slow
def test_grpo_cli_wires_the_named_rewards_and_saves_a_loadable_policy(sft_checkpoint, tmp_path):
    out = tmp_path / "grpo"
    proc = _medr2("train-grpo", "--init", str(sft_checkpoint), "--output_dir", str(out), "--n_prompts", "4",
                  "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2",
                  "--max_completion_length", "12", "--logging_steps", "1", "--save_strategy", "no", "--beta", "0.0",
                  cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["rewards"] == ["mccs", "format"] and summary["weights"] == [0.75, 0.25]
    card = json.loads((out / "medr2_model.json").read_text())  # provenance: its init's data plus this run's prompts
    assert card["demo"] is True and (card["training_datasets"][-1]["seed"], card["training_datasets"][-1]["n"]) == (6, 4)
    # an untrained micro policy cannot produce the format within 12 tokens: the guard must score it 0
    assert summary["last_format_failure_rate"] == 1.0
    history = json.loads((out / "grpo_log_history.json").read_text())
    assert any("rewards/format_reward/mean" in h for h in history)
    load_model(str(out))  # the checkpoint loads with the same Auto* calls
    assert (out / "medr2_model.json").is_file()


def test_grpo_turns_rewards_that_differ_within_a_group_into_a_policy_update(sft_checkpoint, tmp_path, monkeypatch):
    """GRPO learns only from reward differences inside a group (advantage = reward - group mean). With a reward that
    differs between sampled completions the policy must move, and the logged rewards must vary; a broken
    reward -> advantage path (all advantages 0, beta 0, no weight decay) would leave every weight where it was."""
    import torch
    from safetensors.torch import load_file

    import medr2.evaluation.rewards as rewards
    from medr2.evaluation.rewards import completion_text, format_reward
    from medr2.training import grpo

    def length_reward(completions, **kwargs):  # the sampled texts differ, so their rewards do
        return [len(completion_text(c)) / 40.0 for c in completions]

    monkeypatch.setattr(rewards, "get_reward_funcs", lambda names, **params: [length_reward, format_reward])
    out = tmp_path / "grpo"
    config = grpo.parse_config(["--init", str(sft_checkpoint), "--output_dir", str(out), "--n_prompts", "4",
                                "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "4",
                                "--max_completion_length", "12", "--logging_steps", "1", "--save_strategy", "no",
                                "--beta", "0.0", "--weight_decay", "0.0", "--learning_rate", "1e-3", "--temperature", "1.5"])
    torch.manual_seed(0)
    grpo.train(config)
    history = [h for h in json.loads((out / "grpo_log_history.json").read_text()) if "reward" in h]
    assert len(history) == 2 and all(h["reward_std"] > 0 for h in history)  # rewards varied within the groups
    before, after = load_file(str(sft_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = [k for k in before if "language_model" in k and not torch.equal(before[k], after[k])]
    assert moved, "no language-model weight moved: the advantages never reached the loss"


def test_grpo_rejects_mismatched_weights(tmp_path):
    proc = _medr2("train-grpo", "--rewards", "mccs,format", "--reward_weights_csv", "1.0", "--output_dir", str(tmp_path), cwd=Path.cwd())
    assert proc.returncode == 2
    assert "weights" in proc.stderr


@pytest.mark.slow
def test_sft_and_evaluate_on_an_r2gen_dataset(sft_checkpoint, tmp_path):
    from medr2.data.datasets import write_phantom_dataset
    from medr2.phantom.generator import generate_studies

    root = tmp_path / "r2gen"
    write_phantom_dataset(generate_studies(10, seed=31), root, val_frac=0.2, test_frac=0.2)
    out = tmp_path / "direct"
    proc = _medr2("train-sft", "--target", "direct", "--dataset_dir", str(root), "--output_dir", str(out), *SFT_ARGS, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "medr2_model.json").read_text())["target"] == "direct"
    # Med-R2 traces on a dataset folder: tests/test_real_reports.py; a bad image cap is refused in one line
    refused = _medr2("train-sft", "--dataset_dir", str(root), "--max_images", "0", "--output_dir", str(out), cwd=Path.cwd())
    assert refused.returncode == 2 and "max_images must be >= 1" in refused.stderr and "Traceback" not in refused.stderr
    ev = _medr2("evaluate", "--model", str(sft_checkpoint), "--data", str(root), "--split", "test", "--n", "2",
                "--max_new_tokens", "8", "--no-nlg", "--out", str(tmp_path / "eval"), cwd=Path.cwd())
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["n"] == 2 and "example-14" in summary["final"] and "side_accuracy" in summary["location"]
    assert "phantom_generator_version" not in summary["config"]  # a dataset on disk: the films are what they are
    ev = _medr2("evaluate", "--model", str(sft_checkpoint), "--n", "2", "--seed", "31", "--max_new_tokens", "8",
                "--no-nlg", "--out", str(tmp_path / "eval_phantoms"), cwd=Path.cwd())
    assert ev.returncode == 0, ev.stderr[-3000:]
    from medr2.phantom.generator import GENERATOR_VERSION

    summary = json.loads((tmp_path / "eval_phantoms" / "eval.json").read_text())
    assert summary["config"]["phantom_generator_version"] == GENERATOR_VERSION  # a seed's films change with it


def test_sft_continues_our_own_checkpoint_with_the_tower_frozen(sft_checkpoint, tmp_path):
    """Continuing a checkpoint (e.g. after a new stage-0 tower) trains projector + language model only."""
    from safetensors.torch import load_file

    out = tmp_path / "continued"
    proc = _medr2("train-sft", "--model_name_or_path", str(sft_checkpoint), "--output_dir", str(out),
                  *SFT_ARGS, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_file(str(sft_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    tower = [k for k in before if "vision_tower" in k]
    language = [k for k in before if "language_model" in k]
    assert tower and language
    assert all((before[k] == after[k]).all() for k in tower)
    assert any((before[k] != after[k]).any() for k in language)


def test_sft_unfreezes_the_tower_at_its_own_low_learning_rate(sft_checkpoint, tmp_path):
    """`--freeze_vision false --vision_learning_rate` trains the tower too, at its own rate: Adam moves each weight
    by about its group's rate per step, so the tower moves ~100x less than the language model here."""
    from safetensors.torch import load_file

    out = tmp_path / "unfrozen"
    proc = _medr2("train-sft", "--model_name_or_path", str(sft_checkpoint), "--output_dir", str(out), *SFT_ARGS,
                  "--freeze_vision", "false", "--vision_learning_rate", "1e-5", "--lr_scheduler_type", "constant",
                  cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_file(str(sft_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))

    def largest_change(part: str) -> float:
        return max(float((before[k] - after[k]).abs().max()) for k in before if part in k)

    tower, language = largest_change("vision_tower"), largest_change("language_model")
    assert 0 < tower < 1e-4 and language > 5e-4, (tower, language)


def test_model_card_states_demo_status_and_both_ce_conventions():
    from medr2.training.export import model_card

    row = {"observation": "Pneumonia", "precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 4}
    metrics = {"n": 10, "config": {"seed": 3},
               "final": {"example-14": {"f1": 0.8}, "per_observation": [row, {**row, "observation": "Fracture", "support": 0}]},
               "final_uncertain_as_positive": {"per_observation": [{**row, "f1": 0.75}]},
               "location": {"side_accuracy": 0.9, "zone_accuracy": 0.5}}
    card = model_card({"target": "medr2", "training_data": "phantoms", "recipe": ["r.yaml"], "commit": "abc"}, metrics, "")
    assert "Not for clinical use" in card
    assert "| Pneumonia | 0.50 | 0.25 | 0.33 | 4 | 0.75 |" in card
    assert "Fracture" not in card  # no support in the test set: no row
    assert "Side correct on 90.0%" in card
    assert "(phantom seed 3, never seen" in card  # an evaluation from before the generator version was recorded
    metrics["config"]["phantom_generator_version"] = 6
    card = model_card({"target": "medr2", "training_data": "phantoms", "recipe": ["r.yaml"], "commit": "abc"}, metrics, "")
    assert "(phantom seed 3, generator v6, never seen" in card


def test_grpo_prompts_can_be_enriched_with_focal_studies():
    from medr2.phantom.generator import generate_studies
    from medr2.phantom.specs import FOCAL_KINDS
    from medr2.training.grpo import MedR2GRPOConfig, prompt_studies

    def focal(studies):
        return sum(any(f.kind in FOCAL_KINDS for f in s.findings) for s in studies)

    plain = prompt_studies(40, seed=6)
    assert [s.study_id for s in plain] == [s.study_id for s in generate_studies(40, 6)]  # 0 = the generator's mix
    enriched = prompt_studies(40, seed=6, focal_fraction=0.8)
    assert len(enriched) == 40 and focal(enriched) >= 32 > focal(plain)
    ids = [s.study_id for s in enriched]
    assert len(set(ids)) == 40 and ids == sorted(ids)  # study ids of one set rise with the study index
    assert focal(prompt_studies(10, seed=6, focal_fraction=1.0)) == 10
    with pytest.raises(ValueError, match="focal_only_fraction"):
        MedR2GRPOConfig(output_dir="/tmp/x", focal_only_fraction=1.5)


def test_photometric_augment_changes_exposure_but_keeps_the_film():
    import numpy as np

    from medr2.training.perception import PerceptionConfig, augment_photometric

    rng = np.random.default_rng(0)
    films = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (3, 64, 1)).astype(np.uint8)  # three grey ramps
    assert augment_photometric(films, 0.0, rng) is films  # off: the cached films go in untouched
    jittered = augment_photometric(films, 0.3, np.random.default_rng(1))
    assert jittered.dtype == np.uint8 and jittered.shape == films.shape
    assert np.abs(jittered.astype(int) - films).mean() > 2  # each film really is re-exposed
    for before, after in zip(films, jittered):  # monotone in intensity: every structure stays where it was
        assert np.corrcoef(before.mean(0), after.mean(0))[0, 1] > 0.98
    again = augment_photometric(films, 0.3, np.random.default_rng(1))
    assert np.array_equal(jittered, again)  # reproducible from the run's seed
    with pytest.raises(ValueError, match="photometric_augment"):
        PerceptionConfig(photometric_augment=1.5)


STAGE0_ARGS = ["--n_train", "8", "--n_val", "6", "--train_seed", "11", "--val_seed", "12", "--vision_hidden", "32",
               "--vision_layers", "1", "--vision_heads", "2", "--vision_intermediate", "64", "--batch_size", "4",
               "--workers", "1"]


def test_train_perception_writes_tower_heads_and_per_class_metrics(tmp_path):
    import numpy as np

    from medr2.training.perception import FINDING_OBS, load_trained

    out = tmp_path / "stage0"
    proc = _medr2("train-perception", "--output_dir", str(out), *STAGE0_ARGS, "--max_steps", "5", "--save_steps", "2",
                  "--photometric_augment", "0.3", "--focal_oversample", "3", cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["steps"] == 5  # the step budget, however long the passes over the films are
    (cache,) = out.glob("examples_v*_11_8_224.npz")  # the film cache a retrain reuses
    (val_cache,) = out.glob("examples_v*_12_6_224.npz")
    metrics = json.loads((out / "perception_metrics.json").read_text())
    val_labels = np.load(val_cache)["labels"]
    expected = {obs: int(val_labels[:, k].sum()) for k, obs in enumerate(FINDING_OBS) if val_labels[:, k].sum()}
    assert {obs: row["support"] for obs, row in metrics["per_class"].items()} == expected  # scored on the val films
    assert metrics["samples_seen"] == 5 * 4
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]
    state = __import__("torch").load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4  # the last multiple of save_steps before the end
    for name in ("vision_tower.safetensors", "perception_heads.safetensors", "perception_loss.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "perception_config.json").read_text())["photometric_augment"] == 0.3
    net, config = load_trained(out)  # what the benchmarks load: the saved run, with its own config
    assert config.vision_hidden == 32 and config.n_train == 8 and not net.training


def test_stage0_rerun_resumes_from_its_checkpoint_and_ends_with_the_same_weights(tmp_path, monkeypatch):
    """A stage-0 run killed after a checkpoint, rerun with the same output folder, continues the step count from the
    checkpoint (only the missing steps run) and ends at the same step budget with the weights of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    from medr2.training import perception

    config = perception.parse_config(["--output_dir", str(tmp_path / "stage0"), *STAGE0_ARGS, "--max_steps", "5",
                                      "--save_steps", "3", "--photometric_augment", "0.3", "--focal_oversample", "3"])
    first = perception.train(config)
    out = Path(config.output_dir)
    uninterrupted = load_file(str(out / "vision_tower.safetensors"))
    for name in ("perception_metrics.json", "vision_tower.safetensors", "perception_heads.safetensors"):
        (out / name).unlink()  # as if killed between the step-3 checkpoint and the end
    steps_run = []
    real_losses = perception.losses
    monkeypatch.setattr(perception, "losses", lambda *a: steps_run.append(1) or real_losses(*a))
    second = perception.train(config)
    assert len(steps_run) == 2  # steps 4 and 5 only: resumed, not restarted
    assert first["steps"] == second["steps"] == 5
    history = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3, 4, 5]
    resumed = load_file(str(out / "vision_tower.safetensors"))
    assert all(torch.allclose(uninterrupted[k], resumed[k], atol=1e-6) for k in uninterrupted)
    assert json.loads((out / "perception_metrics.json").read_text())["steps"] == 5


def test_stage0_continues_from_a_vlm_tower_and_warms_up_the_heads_first(tmp_path):
    """`--init_from` a saved VLM folder takes its vision tower (heads start fresh); with `head_warmup_steps` past
    the run's end the tower stays exactly as loaded while the heads learn."""
    import torch

    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm, train_tokenizer
    from medr2.training.perception import PerceptionConfig, PerceptionNet, load_perception, load_trained, train
    from medr2.training.sft import vision_tower_path

    tiny = TinyVLMConfig.micro("llava")
    vlm, processor = build_tiny_vlm(train_tokenizer(["Findings: normal heart size. Impression: normal."], vocab_size=300), tiny)
    with torch.no_grad():
        for p in vlm.get_submodule(vision_tower_path(vlm)).parameters():
            p.normal_(0.0, 0.05)  # distinct from any fresh initialisation
    vlm.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    expected = {k: v.clone() for k, v in vlm.get_submodule(vision_tower_path(vlm)).state_dict().items()}

    dims = dict(vision_hidden=tiny.vision_hidden, vision_layers=tiny.vision_layers, vision_heads=tiny.vision_heads,
                vision_intermediate=tiny.vision_intermediate)
    net = PerceptionNet(PerceptionConfig(**dims))
    fresh_head = net.patch_head.weight.detach().clone()
    load_perception(net, tmp_path / "vlm")
    assert all(torch.equal(net.tower.state_dict()[k], v) for k, v in expected.items())
    assert torch.equal(net.patch_head.weight, fresh_head)

    config = PerceptionConfig(output_dir=str(tmp_path / "stage0"), n_train=8, n_val=6, train_seed=11, val_seed=12, max_steps=3,
                              batch_size=4, workers=1, init_from=str(tmp_path / "vlm"), head_warmup_steps=100, **dims)
    train(config)
    trained, _ = load_trained(tmp_path / "stage0")
    assert all(torch.equal(trained.tower.state_dict()[k], v) for k, v in expected.items())  # frozen throughout
    torch.manual_seed(config.seed)
    untrained = PerceptionNet(PerceptionConfig(**dims))  # the heads `train` started from (same seed, same order)
    assert not torch.equal(trained.patch_head.weight, untrained.patch_head.weight)  # ... and moved


def test_kind_oversample_repeats_the_named_kinds_and_rejects_bad_specs():
    from types import SimpleNamespace

    from medr2.training.sft import parse_kind_oversample, study_repeats

    kinds = parse_kind_oversample("opacity:3, pneumonia:4")
    assert kinds == {"opacity": 3, "pneumonia": 4}

    def study(*names):
        return SimpleNamespace(findings=[SimpleNamespace(kind=k) for k in names])

    assert study_repeats(study("opacity", "effusion"), 2, kinds) == 3
    assert study_repeats(study("opacity", "pneumonia"), 2, kinds) == 4
    assert study_repeats(study("nodule"), 2, kinds) == 2  # focal, not named
    assert study_repeats(study("effusion"), 2, kinds) == 1
    assert study_repeats(study(), 2, {}) == 1
    for bad in ("opacity", "opacity:0", "ghost:2", "opacity:x"):
        with pytest.raises(ValueError, match="kind_oversample"):
            parse_kind_oversample(bad)


def _micro_perception_dims(layers: int) -> dict:
    from medr2.modeling.model import TinyVLMConfig

    tiny = TinyVLMConfig.micro("llava")
    return dict(vision_hidden=tiny.vision_hidden, vision_layers=layers, vision_heads=tiny.vision_heads,
                vision_intermediate=tiny.vision_intermediate)


def test_deepening_a_trained_tower_keeps_its_output_then_the_new_blocks_learn(tmp_path):
    """Stage 0 can deepen a saved tower (`--vision_layers` above the saved depth): the first blocks are the saved
    ones, the new blocks start as the identity (the same features reach every head), and they train."""
    import torch
    from safetensors.torch import save_file

    from medr2.modeling.model import grow_siglip_depth, siglip_depth
    from medr2.training.perception import PerceptionConfig, PerceptionNet, load_perception, to_pixels

    torch.manual_seed(0)
    shallow = PerceptionNet(PerceptionConfig(**_micro_perception_dims(2)))
    with torch.no_grad():
        for p in shallow.parameters():
            p.normal_(0.0, 0.1)  # a "trained" tower, unlike any fresh initialisation
    folder = tmp_path / "stage0"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in shallow.tower.state_dict().items()}, folder / "vision_tower.safetensors")
    heads = {f"{n}.{k}": v for n in ("patch_head", "zone_head", "image_head", "ctr_head") for k, v in getattr(shallow, n).state_dict().items()}
    save_file(heads, folder / "perception_heads.safetensors")

    deep = PerceptionNet(PerceptionConfig(**_micro_perception_dims(4)))
    load_perception(deep, folder)
    assert siglip_depth(deep.tower) == 4 and deep.tower.config.num_hidden_layers == 4
    films = to_pixels(torch.randint(0, 256, (2, 224, 224), dtype=torch.uint8).numpy())
    with torch.no_grad():
        assert torch.equal(shallow(films)["image"], deep(films)["image"])
    new_block = deep.tower.encoder.layers[3]
    assert float(new_block.mlp.fc2.weight.detach().abs().sum()) == 0.0
    opt = torch.optim.SGD(deep.parameters(), lr=0.1)
    deep(films)["image"].sum().backward()
    opt.step()
    assert float(new_block.mlp.fc2.weight.detach().abs().sum()) > 0.0  # the zeroed branch gets a gradient: it can learn
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_siglip_depth(deep.tower, 2)


def test_sft_deepens_the_vlm_tower_to_a_deeper_stage0_tower_and_saves_the_depth(tmp_path):
    """A stage-0 run that deepened the tower hands a deeper state to SFT: the VLM's tower is deepened to match,
    every key loads, and the saved model reloads with the new depth and the same image features."""
    import torch
    from safetensors.torch import save_file

    from medr2.modeling.model import TinyVLMConfig, build_tiny_vlm, grow_siglip_depth, siglip_depth, train_tokenizer
    from medr2.training.sft import load_pretrained_tower, vision_tower_path

    tiny = TinyVLMConfig.micro("llava")
    vlm, processor = build_tiny_vlm(train_tokenizer(["Findings: normal heart size. Impression: normal."], vocab_size=300), tiny)
    from medr2.training.perception import PerceptionConfig, PerceptionNet

    deeper = PerceptionNet(PerceptionConfig(**_micro_perception_dims(tiny.vision_layers))).tower
    grow_siglip_depth(deeper, tiny.vision_layers + 1)
    with torch.no_grad():
        for p in deeper.parameters():
            p.normal_(0.0, 0.05)
    save_file({k: v.contiguous() for k, v in deeper.state_dict().items()}, tmp_path / "vision_tower.safetensors")
    load_pretrained_tower(vlm, tmp_path / "vision_tower.safetensors")
    tower = vlm.get_submodule(vision_tower_path(vlm))
    assert siglip_depth(tower) == tiny.vision_layers + 1
    pixels = torch.randn(1, 3, tiny.image_size, tiny.image_size)
    with torch.no_grad():
        assert torch.allclose(tower(pixel_values=pixels).last_hidden_state, deeper(pixel_values=pixels).last_hidden_state)
    vlm.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    reloaded, _ = load_model(str(tmp_path / "vlm"))
    again = reloaded.get_submodule(vision_tower_path(reloaded))
    assert reloaded.config.vision_config.num_hidden_layers == tiny.vision_layers + 1
    with torch.no_grad():
        assert torch.allclose(again(pixel_values=pixels).last_hidden_state, deeper(pixel_values=pixels).last_hidden_state)


def test_export_can_store_weights_in_float16_and_the_model_still_runs_in_float32(sft_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    from medr2.training.export import export

    dest = export(sft_checkpoint, tmp_path / "fp16", target="medr2", recipe=["r.yaml"], store_dtype="float16")
    stored = load_file(str(dest / "model.safetensors"))
    original = load_file(str(sft_checkpoint / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert (dest / "model.safetensors").stat().st_size < 0.6 * (sft_checkpoint / "model.safetensors").stat().st_size
    model, _ = load_model(str(dest))
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    key = next(k for k in original if "language_model" in k and k.endswith("q_proj.weight"))
    name = next(n for n in params if n.endswith(key.split("language_model.", 1)[1]) and "language_model" in n)
    assert torch.allclose(params[name], original[key], rtol=1e-3, atol=1e-4)
    assert not torch.equal(params[name], original[key])  # really rounded: float16 was stored, not a copy
    card = (dest / "README.md").read_text()
    assert "weights stored in float16, run in float32" in card and "vision tower: 2 blocks" in card
    assert json.loads((dest / "medr2_model.json").read_text())["weights_stored_as"] == "float16"
    with pytest.raises(ValueError, match="store dtype"):
        export(sft_checkpoint, tmp_path / "bad", target="medr2", recipe=[], store_dtype="int8")


def test_export_carries_the_runs_saliency_depth_choice_and_drops_a_stale_one(sft_checkpoint, tmp_path):
    from medr2.training.export import export

    run = tmp_path / "run"
    shutil.copytree(sft_checkpoint, run)
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "saliency.json").write_text('{"stale": true}')
    export(run, dest, target="medr2", recipe=[])
    assert not (dest / "saliency.json").exists()  # chosen for other weights: gone, the pipeline fuses all blocks
    choice = '{"Fracture": [0, 1]}'
    (run / "saliency.json").write_text(choice)
    export(run, dest, target="medr2", recipe=[])
    assert (dest / "saliency.json").read_text() == choice


@pytest.mark.slow
def test_grpo_on_a_dataset_folder_uses_its_reports_and_says_so_on_the_card(sft_checkpoint, tmp_path):
    """MRG-R1 on an R2Gen-layout dataset: prompts and reference reports from its train split; a folder that is not
    phantoms makes the card non-demo."""
    data = tmp_path / "data"
    assert _medr2("phantom", "--n", "6", "--output_dir", str(data), "--seed", "9", cwd=Path.cwd()).returncode == 0
    (data / "ground_truth.jsonl").unlink()  # now it reads as a real dataset (no phantom ground truth)
    out = tmp_path / "grpo"
    proc = _medr2("train-grpo", "--init", str(sft_checkpoint), "--output_dir", str(out), "--dataset_dir", str(data),
                  "--n_prompts", "2", "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "2",
                  "--max_completion_length", "8", "--logging_steps", "1", "--save_strategy", "no", "--beta", "0.0",
                  cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "medr2_model.json").read_text())
    assert card["demo"] is False and card["training_datasets"][-1]["kind"] != "phantom"
    missing = _medr2("train-grpo", "--init", str(sft_checkpoint), "--output_dir", str(tmp_path / "x"),
                     "--dataset_dir", str(tmp_path / "nowhere"), "--max_steps", "1", cwd=Path.cwd())
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


@pytest.mark.parametrize("film_size", [128, 384])
def test_phantom_sft_rows_are_drawn_at_the_recipes_film_size(tmp_path, film_size):
    from medr2.training.sft import MedR2SFTConfig, _phantom_rows

    config = MedR2SFTConfig(output_dir=str(tmp_path), n_train=3, train_seed=5, film_size=film_size, report_to="none")
    rows = _phantom_rows(config)
    assert rows and {row["images"][0].size for row in rows} == {(film_size, film_size)}
