"""MRG-R1 stage: GRPO (TRL GRPOTrainer) from an SFT checkpoint with the MCCS clinical reward + format reward.

Load -> rewards -> train -> save:
1. the SFT checkpoint (`--init`, any path/hub id `medr2.modeling.model.load_model` reads; LoRA for real LVLMs);
2. prompts: phantom studies of a seed unseen by SFT (or an R2Gen dataset), columns `prompt` (chat with an
   image placeholder), `image` (PIL) and `report` (the reference, which TRL passes to the rewards);
3. rewards by name from `medr2.evaluation.rewards` (`mccs`, `format`, `medr2_format`, `ce_f1`) with weights;
4. TRL GRPOTrainer (group sampling, group-normalised advantages, KL to the reference when beta > 0);
5. checkpoint (`save_pretrained`, loadable with the same Auto* calls), reward/KL/length curves as PNG.

The budget is `max_steps`; `--resume_from_checkpoint PATH` (or `last`) continues a `checkpoint-N` of `output_dir`.

Run: `medr2 train-grpo --config recipes/experiments/grpo_mccs.yaml --init runs/demo/sft_deep`
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig

logger = logging.getLogger(__name__)


@dataclass
class MedR2GRPOConfig(GRPOConfig):
    """GRPO entry point: TRL's GRPOConfig plus data, init and reward choices.

    MRG-R1 publishes GRPO + MCCS + a think/report format reward and (per secondary summaries, unverified)
    the 0.75/0.25 weighting; it does not publish the margin, group size, beta or temperature here — those
    defaults are ours and documented in the README.
    """

    init: str = field(default="runs/sft_medr2", metadata={"help": "SFT checkpoint to start from (path or hub id)"})
    rewards: str = field(default="mccs,format", metadata={"help": "comma-separated reward names from medr2.evaluation.rewards.REWARDS"})
    reward_weights_csv: str = field(default="0.75,0.25", metadata={"help": "weights, same order as rewards (MRG-R1 summaries: 0.75 MCCS + 0.25 format)"})
    mccs_margin: float = field(default=0.5, metadata={"help": "MCCS margin m (unpublished in MRG-R1; see rewards.DEFAULT_MARGIN)"})
    n_prompts: int = field(default=2000, metadata={"help": "studies used as GRPO prompts (phantoms, or the first of the dataset's train split)"})
    dataset_dir: str | None = field(default=None, metadata={"help": "R2Gen-layout dataset (IU X-Ray via `medr2 convert-iu`, MIMIC-CXR) whose train split gives the prompts and reference reports instead of phantoms: MRG-R1 on real reports (docs/datasets.md)",
                                                            "aliases": ["--data_dir"]})
    max_images: int = field(default=1, metadata={"help": "with dataset_dir: images per study in each prompt, frontal first (IU X-Ray: 2 = frontal + lateral); keep 1 for models the single-image pipeline serves"})
    prompt_seed: int = field(default=6, metadata={"help": "phantom seed of the GRPO prompts (unseen by SFT, not the test seed)"})
    focal_only_fraction: float = field(default=0.0, metadata={"help": "at least this fraction of prompts are studies with a focal finding "
                                                                    "(the hard cases; 0 = the generator's own mix)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) on a real LVLM"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; default 2 x lora_r (medr2.training.lora_alpha_for)"})

    def __post_init__(self) -> None:
        from medr2.training import apply_device_defaults

        apply_device_defaults(self)
        names, weights = self.reward_names, [float(w) for w in self.reward_weights_csv.split(",") if w.strip()]
        if len(names) != len(weights):
            raise ValueError(f"{len(names)} rewards ({names}) but {len(weights)} weights ({weights})")
        self.reward_weights = weights
        if self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        if not 0.0 <= self.focal_only_fraction <= 1.0:
            raise ValueError(f"focal_only_fraction must be in [0, 1], got {self.focal_only_fraction}")
        super().__post_init__()

    @property
    def reward_names(self) -> list[str]:
        return [n.strip() for n in self.rewards.split(",") if n.strip()]


def prompt_studies(n: int, seed: int, focal_fraction: float = 0.0) -> list:
    """`n` phantom studies of set `seed`, in seed order. With `focal_fraction` > 0, non-focal studies are
    skipped while they would leave fewer than that fraction focal: MRG-R1's reward can only separate
    completions that differ clinically, and the generator's mix is mostly normal or easy films."""
    from medr2.phantom.generator import generate_studies
    from medr2.phantom.specs import FOCAL_KINDS

    need = math.ceil(focal_fraction * n)
    picked, focal = [], 0
    for study in generate_studies(50 * n + 100, seed):
        is_focal = any(f.kind in FOCAL_KINDS for f in study.findings)
        if is_focal or n - len(picked) > need - focal:  # room left for the focal studies still needed
            picked.append(study)
            focal += is_focal
        if len(picked) == n:
            return picked
    raise RuntimeError(f"phantom set {seed} ran out of studies before {need} focal ones")


def build_prompts(config: MedR2GRPOConfig, prompt_text: str):
    """GRPO dataset: `prompt` (chat with image placeholder), `image` (PIL), `report` (reference): phantoms, or the
    first `n_prompts` studies of a dataset's train split (the reward reads only the reference report's labels, so real
    reports need no ground-truth masks)."""
    from medr2.data.datasets import to_grpo_dataset

    if config.dataset_dir:
        from PIL import Image

        from medr2.data.datasets import image_files, read_r2gen

        records = read_r2gen(config.dataset_dir, splits=("train",))[: config.n_prompts]
        if not records:
            raise ValueError(f"no train studies in {config.dataset_dir} (see docs/datasets.md)")
        return to_grpo_dataset(records, prompt_text, image_fn=lambda r: [
            Image.open(p).convert("L") for p in image_files(config.dataset_dir, r)[: config.max_images]])
    return to_grpo_dataset(prompt_studies(config.n_prompts, config.prompt_seed, config.focal_only_fraction), prompt_text)


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Reward (total and per function), KL and mean completion length over steps."""
    from medr2.training.plots import Panel, plot_panels

    logs = [h for h in log_history if "reward" in h]
    if not logs:
        return
    steps = [h["step"] for h in logs]
    rewards = {"total": (steps, [h["reward"] for h in logs])}
    for key in sorted(k for k in logs[0] if k.startswith("rewards/") and k.endswith("/mean")):
        rewards[key.split("/")[1]] = (steps, [h.get(key) for h in logs])
    plot_panels(path, [Panel("reward", rewards), Panel("KL to reference", {"kl": (steps, [h.get("kl", 0.0) for h in logs])}),
                       Panel("mean completion length (tokens)",
                             {"length": (steps, [h.get("completions/mean_length", 0.0) for h in logs])})], height=3.4)


def train(config: MedR2GRPOConfig) -> Path:
    from trl import GRPOTrainer

    from medr2.evaluation.rewards import get_reward_funcs
    from medr2.inference.pipeline import read_model_card
    from medr2.modeling.model import load_model
    from medr2.report.traces import DIRECT_PROMPT, MEDR2_PROMPT
    from medr2.training import resume_arg, with_lora

    model, processor = load_model(config.init)
    card = read_model_card(config.init)
    prompt_text = DIRECT_PROMPT if card.get("target") == "direct" else MEDR2_PROMPT
    from peft import PeftModel

    if config.use_lora or isinstance(model, PeftModel):  # an SFT adapter as --init is trained on, never frozen
        model = with_lora(model, config.lora_r, config.lora_alpha)
    params = {"mccs": {"margin": config.mccs_margin}} if "mccs" in config.reward_names else {}
    reward_funcs = get_reward_funcs(config.reward_names, **params)
    dataset = build_prompts(config, prompt_text)
    processor.tokenizer.padding_side = "left"
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                          processing_class=processor)
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_arg(config.resume_from_checkpoint))
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    from medr2.training.export import dataset_source, look_card, phantom_source, training_card

    # what the policy has now seen: its init's sources plus this run's prompts (demo only if all are phantoms)
    source = dataset_source(config.dataset_dir) if config.dataset_dir else phantom_source(config.prompt_seed, config.n_prompts)
    grpo_card = training_card(card.get("target", "medr2"), source, init=config.init)
    grpo_card.update(look_card(card))
    if config.dataset_dir and config.max_images > 1:  # prompts with several views a study; the pipeline sends one
        grpo_card["images_per_study"] = config.max_images
    (out / "medr2_model.json").write_text(json.dumps(grpo_card, indent=2))
    logs = [h for h in trainer.state.log_history if "reward" in h]
    fmt_key = next((f"rewards/{n}/mean" for n in ("format_reward", "medr2_format_reward") if logs and f"rewards/{n}/mean" in logs[-1]), None)
    (out / "training_summary.json").write_text(json.dumps({
        "stage": "grpo", "init": config.init, "rewards": config.reward_names, "weights": config.reward_weights,
        "steps": trainer.state.global_step, "minutes": round((time.time() - start) / 60, 2),
        "first_reward": logs[0]["reward"] if logs else None, "last_reward": logs[-1]["reward"] if logs else None,
        "last_format_failure_rate": (1 - logs[-1][fmt_key]) if fmt_key else None,
        "last_mean_length": logs[-1].get("completions/mean_length") if logs else None,
    }, indent=2))
    (out / "grpo_log_history.json").write_text(json.dumps(trainer.state.log_history))
    plot_curves(trainer.state.log_history, out / "grpo_curves.png")
    return out


def parse_config(argv: list[str]) -> MedR2GRPOConfig:
    """Fields from a YAML recipe (`--config`, alias `--recipe`) and/or flags, flags winning (the one CLI parser)."""
    from medr2.cli import parse_config as parse

    return parse("medr2 train-grpo", MedR2GRPOConfig, argv)


def cli_train_grpo(argv: list[str]) -> int:
    from medr2.cli import UsageError, fail

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_config(argv)
    except UsageError as exc:
        return fail("medr2 train-grpo", exc)
    from medr2.data.datasets import DatasetError

    try:
        print(train(config))
    except (FileNotFoundError, DatasetError) as exc:  # a missing input of the recipe, or a bad dataset folder
        return fail("medr2 train-grpo", exc)
    return 0
