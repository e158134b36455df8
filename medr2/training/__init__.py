"""Training stages: perception pretraining of the vision tower (stage 0), SFT (TRL SFTTrainer), GRPO (TRL GRPOTrainer)."""


def apply_device_defaults(config) -> None:
    """CPU-only machines: train on the CPU in fp32; never report to a tracking service unless asked."""
    import torch

    if not torch.cuda.is_available():
        config.use_cpu, config.bf16 = True, False
    config.report_to = "none" if config.report_to in (None, "all") else config.report_to
