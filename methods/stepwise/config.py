"""The config fields every step-level method shares (TRL's ``DPOConfig(_BaseConfig)`` pattern).

Defaults are the official SD1.5 settings common to LPO (Kwai-Kolors/LPO) and SPO (RockeyCoss/SPO); a method's
config subclasses this, redeclares a field to change its default, and adds its own scorer, threshold and beta.
Batch sizes are per process, as in both official codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepwiseConfig:
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps per trajectory"})
    guidance_scale: float = field(default=5.0, metadata={"help": "Policy CFG scale in sampling and in the loss"})
    eta: float = field(default=1.0, metadata={"help": "DDIM eta (1 = stochastic, needed for step log-probs)"})
    num_candidates: int = field(default=4, metadata={"help": "K candidates per step"})
    prompts_per_round: int = field(default=5, metadata={"help": "Prompts sampled per round per process"})
    min_train_timestep: int = field(default=0, metadata={"help": "Branch and train only steps with t >= this"})
    max_train_timestep: int = field(default=1000, metadata={"help": "Branch and train only steps with t <= this"})
    ratio_clip: float = field(default=0.1, metadata={"help": "Likelihood-ratio clip epsilon: ratios in [1-e, 1+e]"})
    lr: float = field(default=6e-5, metadata={"help": "AdamW learning rate, constant (official 6e-5 for SD1.5)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    grad_clip_norm: float = field(default=1.0, metadata={"help": "Max gradient norm, really applied (0 disables)"})
    official_grad_clip_noop: bool = field(default=False, metadata={
        "help": "Reproduce the official codes' no-op gradient clipping (the norm is logged, never applied)"})
    train_batch_pairs: int = field(default=10, metadata={"help": "Pairs per optimiser update per process"})
    micro_batch_pairs: int | None = field(default=None, metadata={
        "help": "Pairs per forward/backward inside an update (exact accumulation, memory only; None: all)"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank on attention q/k/v/out"})
    epochs: int = field(default=5, metadata={"help": "Passes over the training prompts"})
    max_updates: int | None = field(default=None, metadata={"help": "Stop after this many updates (None: epochs)"})
    num_train_prompts: int | None = field(default=None, metadata={"help": "Use the first N training prompts"})
