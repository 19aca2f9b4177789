"""Math shared by the step reward-model trainers (LRM for LPO, SPM for SPO)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pair_ce_per_pair(s0: torch.Tensor, s1: torch.Tensor, label_0: torch.Tensor) -> torch.Tensor:
    """Per-pair PickScore cross-entropy [b] (see ``pair_ce_loss``; not yet weighted or averaged)."""
    logp = F.log_softmax(torch.stack([s0, s1], dim=-1), dim=-1)
    l0 = label_0.to(logp)
    return -(l0 * logp[:, 0] + (1 - l0) * logp[:, 1]) + (l0 == 0.5).to(logp) * math.log(0.5)


def pair_ce_loss(
    s0: torch.Tensor, s1: torch.Tensor, label_0: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """PickScore-style 2-way cross-entropy with soft labels (lpo.md §3.3, baselines.md §2.2).

    s0, s1, label_0, weight: [b] -> scalar.
    ℓ_n = -(ℓ0·log p0 + ℓ1·log p1) + 1[tie]·log 0.5 with (p0, p1) = softmax(s0, s1) and ℓ1 = 1 - ℓ0;
    weights w_n (e.g. 1/num_examples_per_prompt) are normalised to sum 1 (uniform when None).
    For a win/lose pair ℓ_n = -log σ(s_w - s_l); an ideal tie (s0 = s1) costs 0.
    """
    per = pair_ce_per_pair(s0, s1, label_0)
    w = torch.ones_like(per) if weight is None else weight.to(per)
    return (per * w).sum() / w.sum()


def warmup_linear_decay(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Learning rate at ``step``: linear warmup to ``peak`` over ``warmup`` steps, then linear decay to 0 at
    ``total`` (DeepSpeed WarmupDecayLR with a linear warmup)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(total - warmup, 1))
