"""Losses shared by the step-level methods: the clipped step-DPO loss of the policy update, and the pairwise
cross-entropy and learning-rate schedule of the step reward-model trainers (LRM for LPO, SPM for SPO)."""

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
    """PickScore-style 2-way cross-entropy with soft labels (the LRM and SPM training loss).

    s0, s1, label_0, weight: [b] -> scalar.
    ℓ_n = -(ℓ0·log p0 + ℓ1·log p1) + 1[tie]·log 0.5 with (p0, p1) = softmax(s0, s1) and ℓ1 = 1 - ℓ0;
    weights w_n (e.g. 1/num_examples_per_prompt) are normalised to sum 1 (uniform when None).
    For a win/lose pair ℓ_n = -log σ(s_w - s_l); an ideal tie (s0 = s1) costs 0.
    """
    per = pair_ce_per_pair(s0, s1, label_0)
    w = torch.ones_like(per) if weight is None else weight.to(per)
    return (per * w).sum() / w.sum()


def pair_ce_batch_sums(per: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, label_0: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """The log sums of a reward-model micro-batch, float64 [3] on the CPU: Σ w_n ℓ_n (ℓ from ``pair_ce_per_pair``),
    the decided pairs the scores order correctly (s0 > s1 when ℓ0 = 1, s0 < s1 when ℓ0 = 0; ties never count), and
    the decided pairs (ℓ0 ≠ 0.5). Summed over micro-batches and ranks, they give the global batch's weighted mean
    loss (÷ Σ w) and accuracy (÷ decided)."""
    with torch.no_grad():
        win = ((s0 > s1) & (label_0 == 1)) | ((s0 < s1) & (label_0 == 0))
        return torch.stack([(per.detach() * weight).sum().double(), win.sum().double(),
                            (label_0 != 0.5).sum().double()]).cpu()


WARMUP_SHAPES = ("log", "linear")


def warmup_linear_decay(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Learning rate at ``step``: linear warmup to ``peak`` over ``warmup`` steps, then linear decay to 0 at
    ``total``. lr(s) = peak·(s+1)/W for s < W, else peak·max(0, (T - s) / max(T - W, 1)).
    The reward-model trainers' ``lr_warmup_shape="linear"`` (their default before the official schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(total - warmup, 1))


def deepspeed_warmup_decay(iteration: int, *, peak: float, warmup: int, total: int, shape: str = "log") -> float:
    """DeepSpeed ``WarmupDecayLR.get_lr()`` with ``warmup_min_lr=0`` at ``last_batch_iteration=iteration``
    (deepspeed/runtime/lr_schedules.py, identical in v0.8.3 and v0.12.3)::

        W = max(2, warmup)
        γ(i) = ln(i + 1) / ln(W)              i < W, shape "log" (DeepSpeed's default warmup_type)
             = i / W                          i < W, shape "linear"
             = max(0, (T - i) / max(1, T - W))    i >= W
        lr = peak · γ(i);   lr = 0 for i < 0 (before the scheduler's first step)

    so the warmup reaches ``peak`` at i = W - 1 and the decay reaches 0 at i = T.
    """
    if shape not in WARMUP_SHAPES:
        raise ValueError(f"warmup shape must be one of {WARMUP_SHAPES}, got {shape!r}")
    if iteration < 0:
        return 0.0
    w = max(2, warmup)
    if iteration < w:
        gamma = math.log(iteration + 1) / math.log(w) if shape == "log" else iteration / w
    else:
        gamma = max(0.0, (total - iteration) / max(1.0, total - w))
    return peak * gamma


def official_update_lr(update: int, *, peak: float, warmup: int, total: int, shape: str = "log") -> float:
    """Learning rate of optimiser update ``update`` (0-based) in the official LRM and SPM trainers.

    Both (Kwai-Kolors/LPO@9c2e8b8 lrm/*/trainer, RockeyCoss/SPO@27a8642 step_aware_preference_model/trainer) build
    DeepSpeed's AdamW at ``lr=peak`` and a ``WarmupDecayLR`` that the engine steps after every optimiser step; in
    the pinned DeepSpeed versions (0.8.3, 0.12.3) the scheduler sets no learning rate at construction (it does from
    0.15.3 on). So update 0 runs at ``peak`` and update u >= 1 at ``deepspeed_warmup_decay(u - 1)``::

        lr(0) = peak;   lr(u) = peak · γ(u - 1)   (γ as in ``deepspeed_warmup_decay``)
    """
    if update <= 0:
        return peak
    return deepspeed_warmup_decay(update - 1, peak=peak, warmup=warmup, total=total, shape=shape)


def reward_model_lr(update: int, *, peak: float, warmup: int, total: int, warmup_shape: str) -> float:
    """The reward-model trainers' learning rate at ``update``: ``warmup_shape="log"`` is the official DeepSpeed
    schedule (``official_update_lr``), ``"linear"`` the earlier linear one (``warmup_linear_decay``)."""
    if warmup_shape == "log":
        return official_update_lr(update, peak=peak, warmup=warmup, total=total, shape="log")
    if warmup_shape == "linear":
        return warmup_linear_decay(update, peak=peak, warmup=warmup, total=total)
    raise ValueError(f"warmup shape must be one of {WARMUP_SHAPES}, got {warmup_shape!r}")


def step_dpo_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ref_logp_w: torch.Tensor,
    ref_logp_l: torch.Tensor,
    *,
    beta: float,
    clip: float = 0.1,
) -> torch.Tensor:
    """Clipped-ratio step-DPO loss of SPO and LPO (paper Eq. 6 plus SPO's ratio clipping).

    All inputs [b] per-element-mean log-probabilities (``step_log_prob``). Per pair:
    r = clip(exp(logp - ref_logp), 1 - clip, 1 + clip);  L = -log σ(β (log r_w - log r_l)).
    Returns [b] (not averaged). A ratio outside the clip range contributes no gradient, exactly as
    the official hard clamp; clamping the log-ratio is equivalent and avoids exp overflow.
    ``beta`` is scoped by the caller: ``beta_lpo`` (500) or ``beta_spo`` (10).
    """
    lo, hi = math.log(1 - clip), math.log(1 + clip)
    log_r_w = torch.clamp(logp_w - ref_logp_w, lo, hi)
    log_r_l = torch.clamp(logp_l - ref_logp_l, lo, hi)
    return -F.logsigmoid(beta * (log_r_w - log_r_l))
