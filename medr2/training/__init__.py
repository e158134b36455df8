"""Training stages: perception pretraining of the vision tower (stage 0), SFT (TRL SFTTrainer), GRPO (TRL GRPOTrainer),
and the export of a trained run as a shippable model folder. `docs/training.md` shows how they chain."""


def apply_device_defaults(config) -> None:
    """CPU-only machines: train on the CPU in fp32; never report to a tracking service unless asked."""
    import torch

    if not torch.cuda.is_available():
        config.use_cpu, config.bf16 = True, False
    config.report_to = "none" if config.report_to in (None, "all") else config.report_to


def lora_alpha_for(r: int, alpha: int | None = None) -> int:
    """The one LoRA scaling rule of SFT and GRPO: alpha = 2 x rank unless a recipe sets it.

    Why 2r: the adapter's update is scaled by alpha / r, so 2r keeps that scale at 2 whatever the rank (the common
    choice for LVLM LoRA); SFT's old default (r 16, alpha 32) already followed it.
    """
    return 2 * r if alpha is None else alpha


def with_lora(model, r: int, alpha: int | None = None):
    """`model` wrapped in a peft LoRA adapter on every linear layer (real LVLMs; the tiny model trains fully).

    A model loaded from a LoRA run's folder is already a peft model (`load_model` puts the adapter on its base): its
    adapter is trained on, base frozen, so GRPO from an SFT adapter yields one adapter on the same base (wrapping it
    again would nest adapters and put one on `lm_head`, which TRL's GRPO refuses)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        return model
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha_for(r, alpha), target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def resume_arg(value: str | None):
    """`resume_from_checkpoint` as `Trainer.train` takes it: a checkpoint path, or "last" (also "true") for the newest
    `checkpoint-N` in `output_dir`; empty = start fresh."""
    if not value:
        return None
    return True if value.lower() in ("last", "true") else value
