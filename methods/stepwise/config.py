"""The config fields every step-level method shares (TRL's ``DPOConfig(_BaseConfig)`` pattern).

Defaults are the official SD1.5 settings common to LPO (Kwai-Kolors/LPO) and SPO (RockeyCoss/SPO); a method's
config subclasses this, redeclares a field to change its default, and adds its own scorer, threshold and beta.
``prompts_per_round`` and ``train_batch_pairs`` are GLOBAL (over all processes, split over ranks), so a recipe
trains on the same pairs whatever the number of GPUs; both official codes set them per GPU and ran on 4 GPUs
(``accelerate_cfg/1m4g_fp16.yaml``: num_processes 4), so an official value here is the per-GPU one x 4.
``micro_batch_pairs`` is per process (memory only). Each field declares its valid values (``"valid":
Range(...)``, see ``lpo_bench.config``) and ``CHECKS`` the rules between fields; a subclass that redeclares a
field redeclares its range too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lpo_bench.config import Check, Range

# The training schedule's timesteps are t = 0..999; max_train_timestep = 1000 (the default) means every step.
TIMESTEP = Range(ge=0, lt=1000)
# Pair thresholds are on p_w - p_l = tanh(gap / 2) < 1: 0 keeps every decided step, 1 would keep none.
THRESHOLD = Range(ge=0, lt=1)


@dataclass(frozen=True)
class StepwiseConfig:
    num_inference_steps: int = field(default=20, metadata={
        "help": "DDIM steps per trajectory", "valid": Range(ge=1, le=1000)})
    guidance_scale: float = field(default=5.0, metadata={
        "help": "Policy CFG scale in sampling and in the loss", "valid": Range(ge=1)})
    eta: float = field(default=1.0, metadata={
        "help": "DDIM eta (1 = stochastic, needed for step log-probs)", "valid": Range(gt=0, le=1)})
    num_candidates: int = field(default=4, metadata={"help": "K candidates per step", "valid": Range(ge=2)})
    prompts_per_round: int = field(default=20, metadata={
        "help": "Prompts sampled per round over all processes, split over ranks (official LPO SD1.5: 5 per GPU x 4 "
                "GPUs = 20, Kwai-Kolors/LPO@9c2e8b8 lpo/configs/basic_config.py sample_batch_size)",
        "valid": Range(ge=1)})
    min_train_timestep: int = field(default=0, metadata={
        "help": "Branch and train only steps with t >= this", "valid": TIMESTEP})
    max_train_timestep: int = field(default=1000, metadata={
        "help": "Branch and train only steps with t <= this", "valid": Range(ge=0, le=1000)})
    ratio_clip: float = field(default=0.1, metadata={
        "help": "Likelihood-ratio clip epsilon: ratios in [1-e, 1+e]", "valid": Range(gt=0, lt=1)})
    lr: float = field(default=6e-5, metadata={
        "help": "AdamW learning rate, constant (official 6e-5 for SD1.5)", "valid": Range(gt=0)})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay", "valid": Range(ge=0)})
    grad_clip_norm: float = field(default=1.0, metadata={
        "help": "Max gradient norm, really applied (0 disables)", "valid": Range(ge=0)})
    drop_remainder_pairs: bool = field(default=False, metadata={
        "help": "Official (LPO and SPO): drop the N mod world_size pairs of each round, so the pairs trained on depend "
                "on the number of processes; default: keep them all"})
    official_grad_clip_noop: bool = field(default=False, metadata={
        "help": "Reproduce the official codes' no-op gradient clipping (the norm is logged, never applied)"})
    train_batch_pairs: int = field(default=40, metadata={
        "help": "Pairs per optimiser update over all processes, split over ranks (official SD1.5: 10 per GPU x 4 "
                "GPUs = 40, basic_config.py train_batch_size)", "valid": Range(ge=1)})
    micro_batch_pairs: int | None = field(default=None, metadata={
        "help": "Pairs per forward/backward inside an update, per process (exact accumulation, memory only; None: "
                "all of the process's share)", "valid": Range(ge=1)})
    lora_rank: int = field(default=4, metadata={
        "help": "LoRA rank on attention q/k/v/out", "valid": Range(ge=1)})
    epochs: int = field(default=5, metadata={
        "help": "Passes over the training prompts", "valid": Range(ge=1)})
    max_updates: int | None = field(default=None, metadata={
        "help": "Stop after this many updates (None: epochs)", "valid": Range(ge=1)})
    num_train_prompts: int | None = field(default=None, metadata={
        "help": "Use the first N training prompts", "valid": Range(ge=1)})
    max_rounds_without_pairs: int = field(default=8, metadata={
        "help": "Stop with an error once this many sampling rounds in a row form no training pair",
        "valid": Range(ge=1)})

    # micro_batch_pairs > train_batch_pairs is fine: the update is one micro-batch (quick presets do it)
    CHECKS: ClassVar[tuple[Check, ...]] = (Check("min_train_timestep", "<=", "max_train_timestep"),)
