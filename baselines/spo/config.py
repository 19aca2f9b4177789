"""SPO configuration (defaults = official SD1.5 config ``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10``;
baselines.md §2.5)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SPOConfig:
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps per trajectory"})
    guidance_scale: float = field(default=5.0, metadata={"help": "Policy CFG scale in sampling and in the loss"})
    eta: float = field(default=1.0, metadata={"help": "DDIM eta (1 = stochastic, needed for step log-probs)"})
    num_candidates: int = field(default=4, metadata={"help": "K candidates per step (official 4 SD1.5, 2 SDXL)"})
    max_train_timestep: int = field(default=751, metadata={
        "help": "Branch and train only steps with parent t <= this: 751 = official divert_start_step 4 "
                "(t = 951..801 are plain sampling steps)"})
    min_train_timestep: int = field(default=0, metadata={"help": "Branch and train only steps with t >= this"})
    threshold_spo: float = field(default=0.3, metadata={
        "help": "Fixed threshold on p_w - p_l = tanh((s_w - s_l)/2) of the SPM scores (official 0.3 SD1.5, 0.4 SDXL)"})
    prompts_per_round: int = field(default=10, metadata={"help": "Prompts sampled per round per process"})
    score_batch: int = field(default=16, metadata={"help": "Candidates decoded and scored per VAE/SPM call"})
    beta_spo: float = field(default=10.0, metadata={"help": "DPO β on per-element-mean step log-probs (official 10)"})
    ratio_clip: float = field(default=0.1, metadata={"help": "Likelihood-ratio clip ε: ratios clamped to [1-ε, 1+ε]"})
    lr: float = field(default=6e-5, metadata={"help": "AdamW lr, constant (official 6e-5 SD1.5, 1e-5 SDXL)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (official 1e-4)"})
    grad_clip_norm: float = field(default=1.0, metadata={
        "help": "Max gradient norm, really applied (the official clip is a no-op; 0 disables)"})
    train_batch_pairs: int = field(default=10, metadata={
        "help": "Pairs per optimiser update per process (official 10 SD1.5; SDXL 2 × 2 accumulation = 4)"})
    micro_batch_pairs: int = field(default=10, metadata={
        "help": "Pairs per forward/backward inside an update (exact accumulation; memory only)"})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank on attention q/k/v/out (official 4 SD1.5, 64 SDXL)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (None = rank, official)"})
    epochs: int = field(default=10, metadata={"help": "Passes over the training prompts (official 10)"})
    max_updates: int | None = field(default=None, metadata={"help": "Stop after this many updates (None: epochs)"})
    num_train_prompts: int | None = field(default=None, metadata={"help": "Use the first N training prompts"})
