"""Step-level math shared by LPO and SPO (and the samplers).

All functions are pure. Notation (as in the SPO and LPO code): ᾱ_t is the cumulative
alpha of the training schedule, t' = t - T/n is the previous timestep of an n-step DDIM
sampler on a T-step schedule ("leading" spacing), and ᾱ_{t'} falls back to the scheduler's
final alpha (ᾱ_0 for SD's ``set_alpha_to_one=False``) when t' < 0.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

ThresholdShape = Literal["sigma", "sigma2", "linear"]


def _alphas(scheduler: Any) -> torch.Tensor:
    return scheduler.alphas_cumprod.double().cpu()


def _final_alpha(scheduler: Any) -> float:
    final = getattr(scheduler, "final_alpha_cumprod", None)
    if final is None:
        return float(_alphas(scheduler)[0])
    return float(final)


def prev_timestep(scheduler: Any, timestep: int, num_inference_steps: int) -> int:
    """t' = t - T // n (may be negative: the last step then uses the final alpha)."""
    return int(timestep) - int(scheduler.config.num_train_timesteps) // int(num_inference_steps)


def alpha_pair(scheduler: Any, timestep: int, num_inference_steps: int) -> tuple[float, float]:
    """(ᾱ_t, ᾱ_{t'}) as floats."""
    a = _alphas(scheduler)
    prev = prev_timestep(scheduler, timestep, num_inference_steps)
    a_prev = float(a[prev]) if prev >= 0 else _final_alpha(scheduler)
    return float(a[int(timestep)]), a_prev


def ddim_step_std(scheduler: Any, timestep: int, num_inference_steps: int, eta: float = 1.0) -> float:
    """Standard deviation of one eta-DDIM step from t to t' (DDIM paper, arXiv 2010.02502, Eq. 16).

    σ_t = η · sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_{t'}).
    For the SD scaled-linear schedule at 20 steps this gives 0.0206 at t = 1 and 0.6444 at t = 951.
    """
    a_t, a_prev = alpha_pair(scheduler, timestep, num_inference_steps)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    return float(eta * math.sqrt(max(var, 0.0)))


def inference_timesteps(scheduler: Any, num_inference_steps: int) -> list[int]:
    """The "leading" timestep grid with offset 1, descending: 951, 901, ..., 1 for T=1000, n=20."""
    total = int(scheduler.config.num_train_timesteps)
    offset = int(getattr(scheduler.config, "steps_offset", 1) or 0)
    ratio = total // int(num_inference_steps)
    return [i * ratio + offset for i in range(int(num_inference_steps))][::-1]


def dynamic_threshold(
    timestep: int,
    scheduler: Any,
    num_inference_steps: int,
    threshold_min: float,
    threshold_max: float,
    shape: ThresholdShape = "sigma",
) -> float:
    """LPO's timestep-dependent pair threshold th(t) (Kwai-Kolors/LPO@9c2e8b8
    lpo/lpo/preference_models/compare_funcs.py ``dynamic_threshold_sigma``).

    sigma:  th = th_min + (σ_t - σ_lo) / (σ_hi - σ_lo) · (th_max - th_min), σ from ``ddim_step_std``
            and σ_lo / σ_hi its values at the smallest / largest grid timestep;
    sigma2: the same with σ²;
    linear: th = th_min + (t - t_lo) / (t_hi - t_lo) · (th_max - th_min).
    Computed from the actual scheduler and step count (the official code hard-codes a table).
    """
    grid = inference_timesteps(scheduler, num_inference_steps)
    t_lo, t_hi = min(grid), max(grid)
    if shape == "linear":
        lo, hi, x = float(t_lo), float(t_hi), float(timestep)
    elif shape in ("sigma", "sigma2"):
        p = 2 if shape == "sigma2" else 1
        lo = ddim_step_std(scheduler, t_lo, num_inference_steps) ** p
        hi = ddim_step_std(scheduler, t_hi, num_inference_steps) ** p
        x = ddim_step_std(scheduler, timestep, num_inference_steps) ** p
    else:
        raise ValueError(f"unknown threshold shape {shape!r}; use sigma, sigma2 or linear")
    frac = 0.0 if hi == lo else (x - lo) / (hi - lo)
    return float(threshold_min + frac * (threshold_max - threshold_min))


def predict_x0(scheduler: Any, x_t: torch.Tensor, eps: torch.Tensor, timestep: int) -> torch.Tensor:
    """x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t) (no clipping, as in SD's DDIM config)."""
    a_t = float(_alphas(scheduler)[int(timestep)])
    return (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)


def ddim_step_mean(
    scheduler: Any, x_t: torch.Tensor, eps: torch.Tensor, timestep: int, num_inference_steps: int, std: float
) -> torch.Tensor:
    """μ_t = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ_t²) ε̂ (DDIM posterior mean, DDIM paper Eq. 12)."""
    _, a_prev = alpha_pair(scheduler, timestep, num_inference_steps)
    x0 = predict_x0(scheduler, x_t, eps, timestep)
    return math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps


def step_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Gaussian log-density of one DDIM step, averaged over all non-batch elements.

    sample, mean: [b, ...]; std: float or [b] -> [b].
    log p = mean_j [ -(x_j - μ_j)² / (2σ²) - log σ - ½ log 2π ] (a per-element MEAN, not a sum,
    as the official ``ddim_with_logprob.py`` of SPO and LPO).
    """
    std_t = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if std_t.ndim == 1:
        std_t = std_t.view(-1, *([1] * (mean.ndim - 1)))
    lp = -((sample.detach() - mean) ** 2) / (2 * std_t**2) - torch.log(std_t) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(dim=1)
