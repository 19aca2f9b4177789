"""What every training run is asked to do, whatever it trains (policy or step reward model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True)
class RunRequest:
    """Common settings of ``train`` and ``train-reward`` (paths are provenance; contents are hashed)."""

    backbone: str = "toy"
    seed: int = 0
    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    pairs: str | None = None
    pair_scores: str | None = None  # a score-pairs run (or its scores/ folder) joined onto the pairs' metadata
    out_root: str | None = None
    run_id: str | None = None
    overwrite: bool = False
    resume: bool = False
    weights_dir: str | None = None
    device: str | None = None
    checkpoint_every_updates: int = 50
    stop_after_updates: int | None = None  # simulate an interruption (tests)
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the updates, fp32 master weights (harness/precision.py)
    gradient_checkpointing: bool = False  # recompute the UNet's block activations in the backward pass
