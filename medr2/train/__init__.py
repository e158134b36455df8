"""Training stages: perception pretraining of the vision tower (stage 0), SFT (TRL SFTTrainer), GRPO (TRL GRPOTrainer)."""
