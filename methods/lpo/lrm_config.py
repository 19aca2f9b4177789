"""Configuration of the LRM stage (torch-free, so a bad ``--rm-set`` is refused in about a second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from lpo_bench.config import Check, Range


@dataclass(frozen=True)
class LRMConfig:
    lr: float = field(default=1e-5, metadata={
        "help": "AdamW peak learning rate (official LRM-1.5 and LRM-XL)", "valid": Range(gt=0)})
    weight_decay: float = field(default=0.3, metadata={"help": "AdamW weight decay", "valid": Range(ge=0)})
    warmup_updates: int = field(default=500, metadata={
        "help": "Warmup updates (shape: lr_warmup_shape), then linear decay reaching 0 at max_updates",
        "valid": Range(ge=0)})
    lr_warmup_shape: Literal["log", "linear"] = field(default="log", metadata={
        "help": "log: the official DeepSpeed WarmupDecayLR (log-shaped warmup, update 0 at the peak, the schedule "
                "one update behind); linear: peak*(u+1)/warmup, then the same linear decay"})
    max_updates: int = field(default=4000, metadata={
        "help": "Optimiser updates (SD1.5 4k, SDXL 8k)", "valid": Range(ge=1)})
    batch_pairs: int = field(default=128, metadata={
        "help": "Pairs per update, global: split over the processes (official 16 x 8 GPUs SD1.5, 4 x 8 SDXL)",
        "valid": Range(ge=1)})
    micro_batch_pairs: int = field(default=16, metadata={
        "help": "Pairs per forward/backward on one process (exact gradient accumulation; memory only)",
        "valid": Range(ge=1)})
    grad_clip_norm: float = field(default=1.0, metadata={
        "help": "Max gradient norm (0 disables); really clips", "valid": Range(ge=0)})
    guidance_scale_vfe: float = field(default=7.5, metadata={
        "help": "VFE guidance on the pooled mid feature; 1 = off", "valid": Range(ge=1)})
    multi_scale: bool = field(default=True, metadata={"help": "Pool all down stages + mid (False: mid only)"})
    text_projection_init: Literal["clip-l14", "identity"] = field(default="clip-l14", metadata={
        "help": "SD1.5/2.1/toy text_projection start: clip-l14 = OpenAI CLIP ViT-L/14's text_projection.weight "
                "(official) when its checkpoint is found offline and matches the text width, else identity; the "
                "source used is recorded in lrm_config.json"})
    largest_timestep: int = field(default=951, metadata={
        "help": "Top of the timestep grid {1, 51, ..., 951}", "valid": Range(ge=1, lt=1000)})
    timestep_stride: int = field(default=50, metadata={
        "help": "Grid stride (official 50: 20 points)", "valid": Range(ge=1)})
    mpcf_strategy: int = field(default=2, metadata={
        "help": "MPCF strategy 1-3 (2 = paper), 0 = no filtering", "valid": Range(ge=0, le=3)})
    train_text_encoder: bool = field(default=True, metadata={"help": "Train the text encoder(s) too (official)"})
    train_unet: bool = field(default=True, metadata={"help": "Train the UNet trunk (official); False: heads only"})
    max_train_pairs: int | None = field(default=None, metadata={
        "help": "Cap on training pairs (None = all)", "valid": Range(ge=1)})
    val_split: Literal["auto", "val", "validation", "validation_unique"] = field(default="auto", metadata={
        "help": "Held-out split for validation accuracy; auto: validation_unique when the data has it (Pick-a-Pic, "
                "as the official trainer), else val"})
    max_val_pairs: int = field(default=512, metadata={
        "help": "Validation pairs per timestep", "valid": Range(ge=1)})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader workers decoding each update's pair images ahead (0: in the training process)",
        "valid": Range(ge=0)})
    encode_batch: int = field(default=64, metadata={
        "help": "VAE encode batch of the validation pairs", "valid": Range(ge=1)})

    CHECKS: ClassVar[tuple[Check, ...]] = (Check("warmup_updates", "<=", "max_updates"),)

    def grid(self) -> list[int]:
        return list(range(1, self.largest_timestep + 1, self.timestep_stride))
