"""The GRPO trainer: group advantages and policy losses (core_algos), batches of trajectories (batch),
the DeepSpeed engine and its setup, LoRA, the compact LM head, and checkpoints with exact resume.

Nothing here knows about the CLI, the run folder layout or the rollout actors: `GRPOTrainer` takes
scored groups and returns the next policy version (rl/app/train.py drives it).
"""
