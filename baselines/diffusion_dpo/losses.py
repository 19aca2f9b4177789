"""Diffusion-DPO loss (Wallace et al., CVPR 2024, Eq. 14; SalesforceAIResearch/DiffusionDPO@5233e75
train.py) and its SFT variant.

All functions are pure and return per-pair values ``Tensor[b]``; averaging happens in the method.

Equivalent parameterisations, so numbers are never mixed up:

* Official ``train.py`` and the diffusers SDXL script: ``-log σ(-(β/2)·Δ)`` on per-element MEAN
  squared errors, β = ``beta_dpo`` = 5000. This module implements exactly that form.
* Diffusers SD1.5 LoRA script: ``-log σ(β'·(ref_diff - model_diff))`` with no ½ and default
  β' = 2500, which is the same loss as β = 5000 here (β = 2·β').
* Paper form: squared L2 NORMS (sums over the D = C·H·W latent elements) with coefficient
  β_sum. Because means are sums / D, β_sum = β / (2·D): β = 5000 ↔ β_sum = 0.153 for SD1.5
  (D = 16,384) and 0.038 for SDXL (D = 65,536). Using sums with β = 5000 would be D× too sharp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all non-batch elements: pred, target [b, c, h, w] -> [b]."""
    return ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)


def dpo_logit(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, *, beta_dpo: float
) -> torch.Tensor:
    """z = -(β/2)·Δ with Δ = (e_w - e_l) - (e_ref_w - e_ref_l); all inputs [b] -> [b].

    z > 0 when the policy denoises the winner better (relative to the reference) than the loser.
    """
    delta = (err_w - err_l) - (ref_err_w - ref_err_l)
    return -0.5 * beta_dpo * delta


def diffusion_dpo_loss(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, *, beta_dpo: float
) -> torch.Tensor:
    """Per-pair Diffusion-DPO loss, Tensor[b].

    Inputs are per-pair mean squared ε-errors [b] (``per_sample_mse``: mean over C, H, W) of the
    policy (err_*) and the frozen reference (ref_err_*) on the winner (w) and loser (l), noised
    with the same t and ε:

        L = -log σ( -(β_dpo / 2) · [(e_w - e_l) - (e_ref_w - e_ref_l)] )

    At initialisation (policy = reference) L = log 2 ≈ 0.693.
    """
    return -F.logsigmoid(dpo_logit(err_w, err_l, ref_err_w, ref_err_l, beta_dpo=beta_dpo))


def implicit_accuracy(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor
) -> torch.Tensor:
    """Per-pair implicit-reward accuracy [b]: 1 if z > 0, 0 if z < 0, 0.5 on an exact tie (diffusers)."""
    z = dpo_logit(err_w, err_l, ref_err_w, ref_err_l, beta_dpo=1.0)
    return (z > 0).float() + 0.5 * (z == 0).float()


def sft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SFT variant (``--sft``): plain ε-MSE on the preferred image, per sample [b].

    pred, target: [b, c, h, w]. The mean of this over the batch equals the official
    ``F.mse_loss(pred, ε)`` (mean over everything).
    """
    return per_sample_mse(pred, target)
