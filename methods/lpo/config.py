"""LPO configuration: the shared step-wise fields plus LPO's scorer, threshold and beta.

Defaults are the official SD1.5 settings of Kwai-Kolors/LPO (arXiv 2502.01051, Sec. 4 and App. B).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from lpo_bench.config import Check, Range
from lpo_bench.methods.stepwise.config import THRESHOLD, StepwiseConfig


@dataclass(frozen=True)
class LPOConfig(StepwiseConfig):
    max_train_timestep: int = field(default=1000, metadata={
        "help": "Train steps with t <= this (all 20 by default)", "valid": Range(ge=0, le=1000)})
    lr: float = field(default=6e-5, metadata={
        "help": "AdamW lr (official code 6e-5; the paper's table says 5e-5)", "valid": Range(gt=0)})
    lrm_timestep: Literal["parent", "child"] = field(
        default="parent", metadata={"help": "Timestep fed to the LRM: parent t (official) or the candidates' t'"})
    threshold_min: float = field(default=0.35, metadata={
        "help": "Dynamic threshold at the smallest t", "valid": THRESHOLD})
    threshold_max: float = field(default=0.5, metadata={
        "help": "Dynamic threshold at the largest t", "valid": THRESHOLD})
    threshold_shape: Literal["sigma", "sigma2", "linear", "constant"] = field(
        default="sigma", metadata={"help": "Threshold schedule; constant uses threshold_max"})
    beta_lpo: float = field(default=500.0, metadata={
        "help": "DPO beta on per-element-mean log-probs", "valid": Range(gt=0)})

    CHECKS: ClassVar[tuple[Check, ...]] = (
        *StepwiseConfig.CHECKS,
        Check("threshold_min", "<=", "threshold_max", unless=("threshold_shape", "constant")),
    )
