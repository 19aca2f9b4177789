"""Configuration of the SPM stage (torch-free, so a bad ``--rm-set`` is refused in about a second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from lpo_bench.config import Check, Range


@dataclass(frozen=True)
class SPMConfig:
    base: Literal["pickscore", "tiny-clip"] = field(default="pickscore", metadata={
        "help": "Initial scorer: pickscore (PickScore_v1, official) or tiny-clip (small random CLIP; toy, tests)"})
    tiny_image_size: int = field(default=32, metadata={
        "help": "tiny-clip: input image size", "valid": Range(ge=1)})
    tiny_hidden: int = field(default=64, metadata={
        "help": "tiny-clip: width of both towers", "valid": Range(ge=4, multiple_of=4)})
    tiny_layers: int = field(default=3, metadata={
        "help": "tiny-clip: transformer layers per tower", "valid": Range(ge=1)})
    tiny_patch_size: int = field(default=4, metadata={
        "help": "tiny-clip: ViT patch size", "valid": Range(ge=1)})
    tiny_text_from_backbone: bool = field(default=True, metadata={
        "help": "tiny-clip: start the text tower from the backbone's (first) text encoder instead of random"})
    lr: float = field(default=3e-6, metadata={
        "help": "AdamW peak learning rate (official 3e-6 SD1.5, 1e-6 SDXL)", "valid": Range(gt=0)})
    weight_decay: float = field(default=0.3, metadata={
        "help": "AdamW weight decay (official 0.3)", "valid": Range(ge=0)})
    warmup_updates: int = field(default=500, metadata={
        "help": "Warmup updates (official 500; shape: lr_warmup_shape)", "valid": Range(ge=0)})
    lr_warmup_shape: Literal["log", "linear"] = field(default="log", metadata={
        "help": "log: the official DeepSpeed WarmupDecayLR (log-shaped warmup, update 0 at the peak, the schedule "
                "one update behind); linear: peak*(u+1)/warmup, then the same linear decay"})
    max_updates: int = field(default=8000, metadata={
        "help": "Updates on noisy pairs (official 8000 SD1.5, 7000 SDXL)", "valid": Range(ge=1)})
    lr_decay_updates: int = field(default=8000, metadata={
        "help": "Noisy update at which the linear decay reaches 0 (official: max_updates; the official script passes "
                "max_steps x processes and accelerate divides it by the processes again)", "valid": Range(ge=1)})
    clean_warmup_updates: int = field(default=0, metadata={
        "help": "Extra first updates on clean pair images at t=0 (no UNet/VAE); toy only",
        "valid": Range(ge=0)})
    batch_pairs: int = field(default=64, metadata={
        "help": "Pairs per update, global: split over the processes (official 16 × 4 GPUs = 64)",
        "valid": Range(ge=1)})
    micro_batch_pairs: int = field(default=16, metadata={
        "help": "Pairs per forward/backward on one process (exact accumulation)", "valid": Range(ge=1)})
    antialias: bool = field(default=False, metadata={
        "help": "Antialias the bicubic resize to the SPM's input size (official: no antialias)"})
    grad_clip_norm: float = field(default=1.0, metadata={
        "help": "Max gradient norm (0 disables); really clips", "valid": Range(ge=0)})
    guidance_scale: float = field(default=5.0, metadata={
        "help": "CFG scale of the frozen UNet's x̂0 prediction", "valid": Range(ge=1)})
    max_train_pairs: int | None = field(default=None, metadata={
        "help": "Cap on training pairs (None = all)", "valid": Range(ge=1)})
    max_val_pairs: int = field(default=512, metadata={
        "help": "Validation pairs per timestep (ties dropped)", "valid": Range(ge=1)})
    val_timesteps: tuple[int, ...] = field(default=(0, 251, 501, 701, 951), metadata={
        "help": "Timesteps of the validation pairwise accuracy (official)", "valid": Range(ge=0, lt=1000)})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader workers decoding each update's pair images ahead (0: in the training process)",
        "valid": Range(ge=0)})
    encode_batch: int = field(default=32, metadata={
        "help": "VAE encode batch of the validation pairs", "valid": Range(ge=1)})

    # micro_batch_pairs > batch_pairs is fine: an update is then one micro-batch (the quick presets do it)
    CHECKS: ClassVar[tuple[Check, ...]] = (
        Check("warmup_updates", "<=", "max_updates"),
        Check("max_updates", "<=", "lr_decay_updates"),
        Check("tiny_patch_size", "<=", "tiny_image_size"),
    )
