"""SPO configuration (defaults = official SD1.5 config ``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10``,
RockeyCoss/SPO@27a8642 spo_training_and_inference/configs/, launched on 4 GPUs by accelerate_cfg/1m4g_fp16.yaml;
``prompts_per_round`` and ``train_batch_pairs`` are global: the official per-GPU values x 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lpo_bench.config import Range
from lpo_bench.methods.stepwise.config import THRESHOLD, StepwiseConfig


@dataclass(frozen=True)
class SPOConfig(StepwiseConfig):
    num_candidates: int = field(default=4, metadata={
        "help": "K candidates per step (official 4 SD1.5, 2 SDXL)", "valid": Range(ge=2)})
    max_train_timestep: int = field(default=751, metadata={
        "help": "Branch and train only steps with parent t <= this: 751 = official divert_start_step 4 "
                "(t = 951..801 are plain sampling steps)", "valid": Range(ge=0, le=1000)})
    threshold_spo: float = field(default=0.3, metadata={
        "help": "Fixed threshold on p_w - p_l = tanh((s_w - s_l)/2) of the SPM scores (official 0.3 SD1.5, 0.4 SDXL)",
        "valid": THRESHOLD})
    prompts_per_round: int = field(default=40, metadata={
        "help": "Prompts sampled per round over all processes, split over ranks (official SD1.5: 10 per GPU x 4 "
                "GPUs = 40, RockeyCoss/SPO@27a8642 configs/basic_config.py sample_batch_size)", "valid": Range(ge=1)})
    score_batch: int = field(default=16, metadata={
        "help": "Candidates decoded and scored per VAE/SPM call", "valid": Range(ge=1)})
    beta_spo: float = field(default=10.0, metadata={
        "help": "DPO β on per-element-mean step log-probs (official 10)", "valid": Range(gt=0)})
    lr: float = field(default=6e-5, metadata={
        "help": "AdamW lr, constant (official 6e-5 SD1.5, 1e-5 SDXL)", "valid": Range(gt=0)})
    train_batch_pairs: int = field(default=40, metadata={
        "help": "Pairs per optimiser update over all processes, split over ranks (official SD1.5: 10 per GPU x 4 "
                "GPUs = 40; SDXL 2 x 2 accumulation x 4 GPUs = 16)", "valid": Range(ge=1)})
    micro_batch_pairs: int | None = field(default=10, metadata={
        "help": "Pairs per forward/backward inside an update, per process (exact accumulation; memory only; "
                "official per-GPU batch 10 SD1.5, 2 SDXL)", "valid": Range(ge=1)})
    lora_rank: int = field(default=4, metadata={
        "help": "LoRA rank on attention q/k/v/out (official 4 SD1.5, 64 SDXL)", "valid": Range(ge=1)})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "LoRA alpha (None = rank, official)", "valid": Range(gt=0)})
    epochs: int = field(default=10, metadata={
        "help": "Passes over the training prompts (official 10)", "valid": Range(ge=1)})
