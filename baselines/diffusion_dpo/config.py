"""Diffusion-DPO configuration (defaults = official SD1.5 launcher, SalesforceAIResearch/DiffusionDPO@5233e75
launchers/sd15.sh)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from lpo_bench.config import Check, Range


@dataclass(frozen=True)
class DiffusionDPOConfig:
    beta_dpo: float = field(default=5000.0, metadata={
        "help": "β of -log σ(-(β/2)·Δ) on per-element MEAN ε-errors (official 5000 for SD1.5 and SDXL; "
                "the diffusers SD1.5 script's β'=2500 without ½ is the same loss)", "valid": Range(gt=0)})
    lr: float = field(default=1e-8, metadata={
        "help": "Learning rate; with scale_lr it is per pair and multiplied by pairs_per_update "
                "(official: 1e-8 × 2048 = 2.048e-5)", "valid": Range(gt=0)})
    scale_lr: bool = field(default=True, metadata={"help": "Multiply lr by pairs_per_update (official --scale_lr)"})
    lr_warmup_updates: int = field(default=500, metadata={
        "help": "Linear warmup in optimiser updates, then constant (official 500 SD1.5, 200 SDXL)",
        "valid": Range(ge=0)})
    max_updates: int = field(default=2000, metadata={
        "help": "Optimiser updates to run (official 2000)", "valid": Range(ge=1)})
    pairs_per_update: int = field(default=2048, metadata={
        "help": "Effective batch in pairs per optimiser update, GLOBAL: summed over all ranks, which share it out "
                "(sizes differ by at most one), so a recipe means the same on any number of GPUs "
                "(official 16 GPUs × 1 × 128 = 2048)",
        "valid": Range(ge=1)})
    micro_batch_pairs: int = field(default=1, metadata={
        "help": "Pairs per forward/backward on one rank (memory only); gradient accumulation fills the rank's share "
                "of pairs_per_update",
        "valid": Range(ge=1)})
    optimizer: Literal["adamw", "adafactor"] = field(default="adamw", metadata={
        "help": "adamw (official SD1.5) or adafactor (official SDXL: no relative step, clip_threshold 1)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW β1", "valid": Range(ge=0, lt=1)})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW β2", "valid": Range(ge=0, lt=1)})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW ε", "valid": Range(ge=0)})
    weight_decay: float = field(default=1e-2, metadata={
        "help": "Weight decay (AdamW and Adafactor, official 1e-2)", "valid": Range(ge=0)})
    grad_clip_norm: float = field(default=1.0, metadata={
        "help": "Max gradient norm, really applied (0 disables; official: 1.0 with AdamW, none with Adafactor)",
        "valid": Range(ge=0)})
    caption_dropout: float = field(default=0.2, metadata={
        "help": "Probability of replacing a caption by \"\" (official --proportion_empty_prompts 0.2)",
        "valid": Range(ge=0, le=1)})
    random_flip: bool = field(default=True, metadata={
        "help": "Horizontal flip with p=0.5, independently per image (official); caches both orientations"})
    sft: bool = field(default=False, metadata={
        "help": "SFT variant: ε-MSE on the preferred image only, no reference model"})
    lora_rank: int = field(default=0, metadata={
        "help": "0 = full UNet fine-tuning with a frozen copy as reference (official); >0 = LoRA of this "
                "rank with the adapters-disabled UNet as reference (diffusers example)",
        "valid": Range(ge=0)})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "LoRA alpha (None = rank)", "valid": Range(gt=0)})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "UNet gradient checkpointing (official forces it for SDXL)"})
    max_pairs: int | None = field(default=None, metadata={
        "help": "Use only the first N rows of the training split (None = all; images are decoded per batch and "
                "VAE-encoded once into an on-disk cache under the run directory)",
        "valid": Range(ge=1)})
    encode_batch: int = field(default=32, metadata={
        "help": "VAE encode batch when caching latents (PREP)", "valid": Range(ge=1)})
    latent_cache_dtype: Literal["fp32", "fp16"] = field(default="fp32", metadata={
        "help": "Storage dtype of the cached VAE posterior (mean, std) on disk (run_dir/latent_cache; per pair "
                "2 images × 2 arrays × C·h·w, ×2 with random_flip: 256 KiB in fp16 for SD1.5 with flips)"})
    latent_cache_shard_pairs: int = field(default=4096, metadata={
        "help": "Pairs per shard file of the latent cache (the unit of resuming an interrupted PREP and of sharing "
                "it out over ranks; rounded up to a multiple of encode_batch)", "valid": Range(ge=1)})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes decoding and resizing images in PREP (0: in the main process)",
        "valid": Range(ge=0)})

    # lr_warmup_updates > max_updates is fine: warmup then constant, so a short run just stays in the warmup
    CHECKS: ClassVar[tuple[Check, ...]] = (Check("micro_batch_pairs", "<=", "pairs_per_update"),)
