"""The config fields every step-level method shares (TRL's ``DPOConfig(_BaseConfig)`` pattern).

Defaults are the official SD1.5 settings common to LPO (Kwai-Kolors/LPO) and SPO (RockeyCoss/SPO); a method's
config subclasses this, redeclares a field to change its default, and adds its own scorer, threshold and beta.
Batch sizes are per process, as in both official codes. Each field declares its valid values (``"valid":
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
    prompts_per_round: int = field(default=5, metadata={
        "help": "Prompts sampled per round per process", "valid": Range(ge=1)})
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
    official_grad_clip_noop: bool = field(default=False, metadata={
        "help": "Reproduce the official codes' no-op gradient clipping (the norm is logged, never applied)"})
    train_batch_pairs: int = field(default=10, metadata={
        "help": "Pairs per optimiser update per process", "valid": Range(ge=1)})
    micro_batch_pairs: int | None = field(default=None, metadata={
        "help": "Pairs per forward/backward inside an update (exact accumulation, memory only; None: all)",
        "valid": Range(ge=1)})
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
